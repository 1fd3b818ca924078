//! The nodes of one database and what is known about them, published lock-free for the
//! routing hot path.
//!
//! One monitor task per node (see `monitor`) checks it every `lag_check_interval` and reports
//! here; every report rebuilds the [`View`] (published through arc-swap when it changed) under a
//! mutex the hot path never takes.
//!
//! # Node states
//! - `Unknown`: never checked successfully yet, or a replica without a lag verdict (no primary
//!   measured yet). Not eligible.
//! - `Down`: the last connect was refused (TCP refused, or SQLSTATE 57P03 "starting up /
//!   shutting down").
//! - `Banned`: the last connect or check failed otherwise (error, dropped connection, timeout),
//!   or the proxy called [`Topology::report_failure`].
//!   Down and Banned nodes are retried with exponential backoff (100 ms doubling to 500 ms, so
//!   a node that is back rejoins within a second however long it was away; a `report_failure`
//!   makes the monitor reconnect after at most one interval) and re-admitted at the first
//!   successful check.
//! - `Healthy` / `Lagging`: answered the last check; for replicas see `lag` for the limits and
//!   the hysteresis (over a limit → Lagging at once; back after 2 checks under 80 % of both).
//! - `Excluded`: answers, but in a role pgtier will not use (below).
//!
//! # Roles (trusted, but verified)
//! `NodeStatus::role` is always what the node itself reports (`pg_is_in_recovery()`); the
//! configured role only restricts what pgtier does with it:
//! - `ConfiguredRole::Primary` found in recovery: never used for writes (`View::primary` is None
//!   then) and not for reads either: it is `Excluded` (a demoted primary is an operator's
//!   business; use role = "auto" for automatic failover).
//! - `ConfiguredRole::Replica` found out of recovery (promoted behind pgtier's back, a possible
//!   split brain): `Excluded`, neither writes nor reads: its data may have forked from the
//!   primary's, which would break read-your-writes.
//! - `ConfiguredRole::Auto`: the role it reports; out of recovery makes it a primary candidate.
//!
//! `View::primary` is the configured Primary unless a successful check found it in recovery (a
//! monitor that cannot log in, or a node that is down, does not take writes away from it: they
//! then fail with the server's own error, as they would without pgtier). Without a configured
//! Primary it is the one reachable Auto node out of recovery at its last check. With several, the one on the highest timeline wins (a promoted replica
//! is on a newer timeline than the old primary it replaced); a tie (or an unknown timeline)
//! means no primary at all: writes wait rather than risk a split brain, and every candidate is
//! `Excluded`. `View::primary` never points at a node whose last check found it in recovery.
//!
//! Byte and time lag of replicas are measured against the latest sample of `View::primary`
//! (kept while the primary is unreachable, so replicas keep serving reads).
//!
//! # Administrator bans (`BAN` / `UNBAN` in the admin console)
//! [`Topology::admin_ban`] takes a node out of rotation whatever its monitor reports: state
//! `Banned` (last error "banned by an administrator (BAN)"), never chosen for reads, and if it
//! is the primary, `View::primary` is None until [`Topology::admin_unban`]: banning the primary
//! stops writes (they wait `primary_wait_timeout`, then fail), which is what an operator asks
//! for. Its monitor keeps checking it (replica lag is still measured against a banned primary).
//! After the unban the next successful check re-admits it.
//!
//! The view itself (node states, primary choice, publication) is built in `view`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::shutdown::Poker;
use arc_swap::{ArcSwap, Guard};
use tokio::sync::{watch, Notify};
use tracing::warn;

pub use crate::config::{ClusterSettings, ConfiguredRole, MonitorLogin, NodeConfig};
use crate::tls::ServerTls;

use super::lag::{Lag, LagLimits, LagState, PrimarySample};
pub use super::view::{NodeState, NodeStatus, Role, View, ADMIN_BAN_ERROR};
use super::{balancer, monitor, Lsn};

impl ClusterSettings {
    /// The lag limits.
    pub fn lag_limits(&self) -> LagLimits {
        LagLimits {
            time: self.max_replica_lag,
            bytes: self.max_replica_lag_bytes,
        }
    }
}

/// A replica chosen for a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// This replica is known to have replayed at least the requested LSN.
    Ready(usize),
    /// This replica is the best choice but its last known replay LSN is older than requested:
    /// ask it (`pg_last_wal_replay_lsn()`) before using it.
    Check(usize),
    /// No replica is eligible.
    None,
}

/// Live state of one database's nodes.
#[derive(Debug)]
pub struct Topology {
    pub(super) settings: ClusterSettings,
    /// TLS towards the nodes (for the monitors).
    pub(super) tls: ServerTls,
    pub(super) view: ArcSwap<View>,
    /// Highest replay LSN known per node (monitor or on-demand checks).
    pub(super) known_replay: Box<[AtomicU64]>,
    /// Reads in flight per node (for least-outstanding choice).
    outstanding: Box<[AtomicU32]>,
    /// Rotates tie-breaks between equally loaded replicas.
    turn: AtomicU32,
    /// What the monitors know (never taken on the hot path).
    state: Mutex<State>,
    /// Bumped at every publication of a new view.
    pub(super) published: watch::Sender<u64>,
    /// Times a node entered `Banned` (automatic or administrator), for metrics.
    pub(super) bans: AtomicU64,
    /// Whether monitors check the nodes (false: `unmonitored`, nothing ever re-checks a node).
    pub(super) monitored: bool,
    /// Per node: wakes its monitor (report_failure, drop).
    pub(super) wake: Box<[Arc<Notify>]>,
    /// Per node: wakes the reads waiting for its replay position when another read's check
    /// or the monitor raises it (see [`Topology::wait_replay`]).
    pub(super) replayed: Box<[Notify]>,
    /// Per node: the monitor must open a new connection before its next check.
    pub(super) reconnect: Box<[AtomicBool]>,
    /// Per node: monitor attempts recorded (checked, refused or failed), counted after the
    /// view they changed is published: "N checks later" without a clock.
    pub(super) attempts: Box<[AtomicU64]>,
    /// Per node: how many times a check found it failed after it answered (a relay waiting on
    /// it gives up when this moves: a silent node's replies are not waited for past the check
    /// that found it silent).
    pub(super) failures: Box<[AtomicU64]>,
    /// Wakes every session (an admin wake-up) when a node fails, so that those waiting on it
    /// look at `failures`; set by the runtime. Nothing is registered per transaction.
    pub(super) waker: std::sync::OnceLock<Poker>,
}

/// One node's measurement at a successful check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Check {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// Replay LSN in recovery, else the current WAL LSN.
    pub lsn: Lsn,
    /// Receive LSN (in recovery, while streaming).
    pub receive: Option<Lsn>,
    /// `now() − pg_last_xact_replay_timestamp()`.
    pub since_last_replayed_xact: Option<Duration>,
    /// Timeline (out of recovery).
    pub timeline: Option<u32>,
}

/// What a monitor reports after one attempt.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// Checked; `sent_at` is when the query was sent, `connected` when the monitor began
    /// connecting for the connection it was sent on.
    Checked {
        check: Check,
        sent_at: Instant,
        connected: Instant,
    },
    /// The node refused the connection.
    Refused(String),
    /// Connect or check failed or timed out.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Health {
    Unchecked,
    Up,
    Banned,
    Down,
}

#[derive(Debug)]
pub(super) struct NodeRt {
    pub(super) health: Health,
    pub(super) last_error: Option<String>,
    /// Last successful check and when it was sent.
    pub(super) seen: Option<(Check, Instant)>,
    pub(super) lag: LagState,
    pub(super) last_lag: Option<Lag>,
    /// Banned by an administrator: out of rotation whatever the checks say.
    pub(super) admin_banned: bool,
    /// When a connection of the proxy last failed on the node: a check on a connection begun
    /// before then (which the fault may not have reached yet) does not lift that ban.
    pub(super) failed_at: Option<Instant>,
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) nodes: Vec<NodeRt>,
    /// The node the checks found accepting writes (even while an administrator bans it).
    pub(super) primary: Option<usize>,
    pub(super) primary_sample: Option<PrimarySample>,
    /// Warned about several primaries (until resolved).
    pub(super) split_warned: bool,
}

impl Topology {
    fn new(settings: ClusterSettings) -> Topology {
        Topology::with_tls(settings, ServerTls::disabled())
    }

    fn with_tls(settings: ClusterSettings, tls: ServerTls) -> Topology {
        let n = settings.nodes.len();
        let nodes: Arc<[NodeStatus]> = settings
            .nodes
            .iter()
            .map(|n| NodeStatus {
                addr: n.addr.clone(),
                role: Role::Unknown,
                state: NodeState::Unknown,
                replay_lsn: Lsn::ZERO,
                byte_lag: None,
                time_lag: None,
                weight: n.weight,
                zone_rank: settings.zone_rank(n),
                timeline: None,
                last_error: None,
            })
            .collect();
        Topology {
            view: ArcSwap::from_pointee(View {
                primary: None,
                primary_lsn: Lsn::ZERO,
                nodes,
                generation: 0,
            }),
            known_replay: (0..n).map(|_| AtomicU64::new(0)).collect(),
            replayed: (0..n).map(|_| Notify::new()).collect(),
            outstanding: (0..n).map(|_| AtomicU32::new(0)).collect(),
            turn: AtomicU32::new(0),
            state: Mutex::new(State {
                nodes: (0..n)
                    .map(|_| NodeRt {
                        health: Health::Unchecked,
                        last_error: None,
                        seen: None,
                        lag: LagState::default(),
                        last_lag: None,
                        admin_banned: false,
                        failed_at: None,
                    })
                    .collect(),
                primary: None,
                primary_sample: None,
                split_warned: false,
            }),
            published: watch::Sender::new(0),
            bans: AtomicU64::new(0),
            monitored: true,
            wake: (0..n).map(|_| Arc::new(Notify::new())).collect(),
            reconnect: (0..n).map(|_| AtomicBool::new(false)).collect(),
            attempts: (0..n).map(|_| AtomicU64::new(0)).collect(),
            failures: (0..n).map(|_| AtomicU64::new(0)).collect(),
            waker: std::sync::OnceLock::new(),
            settings,
            tls,
        }
    }

    /// Starts watching the configured nodes: one monitor task per node on the current tokio
    /// runtime (they end when the topology is dropped). Every node is `Unknown` until its first
    /// check. Outside a runtime no monitor runs (logged) and nothing ever becomes eligible.
    /// The monitors connect with `tls`.
    pub fn start(settings: ClusterSettings, tls: ServerTls) -> Arc<Topology> {
        Topology::spawn_monitors(Arc::new(Topology::with_tls(settings, tls)))
    }

    /// One monitor task per node on the current tokio runtime (none outside one, logged).
    fn spawn_monitors(topology: Arc<Topology>) -> Arc<Topology> {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                for node in 0..topology.node_count() {
                    monitor::spawn(&rt, &topology, node);
                }
            }
            Err(_) => warn!("cluster topology started outside a tokio runtime: no node monitors"),
        }
        topology
    }

    /// Like [`Topology::start`], but nodes that `previous` also has (same address and
    /// configured role) start from what it knew, admin bans included: a reload that adds or
    /// removes a replica does not take the others out of rotation until their next check.
    pub fn start_after(
        settings: ClusterSettings,
        tls: ServerTls,
        previous: &Topology,
    ) -> Arc<Topology> {
        let topology = Topology::with_tls(settings, tls);
        {
            let old = previous.lock();
            let mut st = topology.lock();
            for (i, cfg) in topology.settings.nodes.iter().enumerate() {
                let Some(j) = previous
                    .settings
                    .nodes
                    .iter()
                    .position(|o| o.addr == cfg.addr && o.role == cfg.role)
                else {
                    continue;
                };
                let o = &old.nodes[j];
                st.nodes[i] = NodeRt {
                    health: o.health,
                    last_error: o.last_error.clone(),
                    seen: o.seen,
                    lag: o.lag.clone(),
                    last_lag: o.last_lag,
                    admin_banned: o.admin_banned,
                    failed_at: o.failed_at,
                };
                topology.known_replay[i].store(
                    previous.known_replay[j].load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
            }
            st.primary_sample = old.primary_sample;
            topology.refresh(&mut st);
        }
        Topology::spawn_monitors(Arc::new(topology))
    }

    /// A topology without monitors that takes every node at its configured role (Auto as a
    /// replica) and reports it healthy: for tests and tools that need no live cluster.
    pub fn unmonitored(settings: ClusterSettings) -> Arc<Topology> {
        let mut topology = Topology::new(settings);
        topology.monitored = false;
        {
            // As if every node had answered one check in its configured role, so that the view
            // is built (and admin bans applied) the same way as for monitored topologies.
            let mut st = topology.lock();
            let now = Instant::now();
            for (rt, cfg) in st.nodes.iter_mut().zip(&topology.settings.nodes) {
                let check = Check {
                    in_recovery: cfg.role != ConfiguredRole::Primary,
                    lsn: Lsn::ZERO,
                    receive: None,
                    since_last_replayed_xact: None,
                    timeline: None,
                };
                rt.health = Health::Up;
                rt.seen = Some((check, now));
                rt.lag.assume_healthy();
            }
            let view = topology.build_view(&mut st, 1);
            topology.view.store(Arc::new(view));
        }
        Arc::new(topology)
    }

    /// The settings this topology runs with.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// The TLS its monitors connect with.
    pub fn tls(&self) -> &ServerTls {
        &self.tls
    }

    /// Number of configured nodes.
    pub fn node_count(&self) -> usize {
        self.settings.nodes.len()
    }

    /// The current view (lock-free).
    pub fn view(&self) -> Guard<Arc<View>> {
        self.view.load()
    }

    /// The highest replay LSN known for `node` (monitor or on-demand checks).
    pub fn known_replay(&self, node: usize) -> Lsn {
        Lsn(self.known_replay[node].load(Ordering::Relaxed))
    }

    /// Reads in flight on `node`.
    pub fn outstanding(&self, node: usize) -> u32 {
        self.outstanding[node].load(Ordering::Relaxed)
    }

    /// Raises the known replay LSN of `node` (from an on-demand check).
    pub fn observe_replay(&self, node: usize, lsn: Lsn) {
        if self.known_replay[node].fetch_max(lsn.0, Ordering::Relaxed) < lsn.0 {
            self.replayed[node].notify_waiters();
        }
    }

    /// Waits up to `within` until the known replay position of `node` reaches `min_lsn`
    /// (another read's check or the monitor raising it); returns that position, or None.
    pub async fn wait_replay(&self, node: usize, min_lsn: Lsn, within: Duration) -> Option<Lsn> {
        let deadline = tokio::time::Instant::now() + within;
        let notified = self.replayed[node].notified();
        tokio::pin!(notified);
        loop {
            // Registered before the load: a raise between the two is not missed.
            notified.as_mut().enable();
            let known = self.known_replay(node);
            if known >= min_lsn {
                return Some(known);
            }
            crate::timers::timeout_at(deadline, notified.as_mut())
                .await
                .ok()?;
            notified.set(self.replayed[node].notified());
        }
    }

    /// The primary's node id, if one is known now.
    pub fn primary_now(&self) -> Option<usize> {
        self.view.load().primary
    }

    /// Waits up to `timeout` for a primary to be known; returns its index.
    pub async fn wait_for_primary(&self, timeout: Duration) -> Option<usize> {
        // Every write asks: known now, it costs one load (no clock read, no subscription).
        if let Some(primary) = self.view.load().primary {
            return Some(primary);
        }
        // Boxed: only a write while no primary is known waits (and holds a timer).
        Box::pin(self.wait_until(timeout, |v| v.primary.is_some()))
            .await
            .and_then(|v| v.primary)
    }

    /// Waits up to `timeout` for a view satisfying `pred` (checked now and at every
    /// publication); returns it, or None at the timeout.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&View) -> bool,
    ) -> Option<Arc<View>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.published.subscribe();
        loop {
            let view = self.view.load_full();
            if pred(&view) {
                return Some(view);
            }
            match crate::timers::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// Chooses a replica for a read that must see `min_lsn` (see `balancer`).
    pub fn pick_replica(&self, min_lsn: Lsn) -> Pick {
        self.pick_replica_within(min_lsn, None, None)
    }

    /// Chooses a replica for a read that must see `min_lsn`, among the replicas `limits`
    /// makes eligible (None: the database's, see [`balancer::eligible`]); `prefer` wins a tie.
    pub fn pick_replica_within(
        &self,
        min_lsn: Lsn,
        limits: Option<&LagLimits>,
        prefer: Option<usize>,
    ) -> Pick {
        let view = self.view.load();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        balancer::choose(
            &view.nodes,
            &self.outstanding,
            &self.known_replay,
            min_lsn,
            limits,
            turn,
            prefer,
        )
    }

    /// Counts a read in flight on `node` until the guard drops.
    pub fn begin(self: &Arc<Self>, node: usize) -> InFlight {
        self.outstanding[node].fetch_add(1, Ordering::Relaxed);
        InFlight {
            topology: self.clone(),
            node,
        }
    }

    // ---- monitor side ----

    pub(crate) fn wake_handle(&self, node: usize) -> Arc<Notify> {
        self.wake[node].clone()
    }

    /// Whether the monitor of `node` must drop its connection (clears the request).
    pub(crate) fn take_reconnect(&self, node: usize) -> bool {
        self.reconnect[node].swap(false, Ordering::Relaxed)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Monitors sleeping in backoff notice at once.
        for w in self.wake.iter() {
            w.notify_one();
        }
    }
}

/// A request in flight on a node (see `Topology::begin`).
#[derive(Debug)]
pub struct InFlight {
    topology: Arc<Topology>,
    node: usize,
}

impl InFlight {
    /// The node.
    pub fn node(&self) -> usize {
        self.node
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.topology.outstanding[self.node].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[path = "topology_tests.rs"]
mod tests;
