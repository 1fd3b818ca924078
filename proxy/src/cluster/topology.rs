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
//!   Down and Banned nodes are retried with exponential backoff (100 ms doubling to 5 s; a
//!   `report_failure` makes the monitor reconnect after at most one interval) and re-admitted
//!   at the first successful check.
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

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use super::lag::{Lag, LagLimits, LagState, PrimarySample, ReplicaSample, Verdict};
use super::{balancer, monitor, Lsn};
use crate::config::NodeAddr;

/// The role a node is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfiguredRole {
    /// Always the primary.
    Primary,
    /// Always a replica.
    Replica,
    /// Whatever `pg_is_in_recovery()` says (failover without a config change).
    Auto,
}

/// One configured node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Address.
    pub addr: NodeAddr,
    /// Configured role.
    pub role: ConfiguredRole,
    /// Share of reads relative to other replicas (0: no reads unless nothing else is eligible).
    pub weight: u32,
}

/// Credentials the monitors log in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorLogin {
    /// Server user.
    pub user: String,
    /// Server password, if needed.
    pub password: Option<String>,
    /// Database name on the servers.
    pub dbname: String,
}

/// Everything the topology of one database needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Nodes, in configured order (indexes are node ids).
    pub nodes: Vec<NodeConfig>,
    /// How often each node is checked.
    pub lag_check_interval: Duration,
    /// A replica whose time lag exceeds this leaves the rotation (None: no limit).
    pub max_replica_lag: Option<Duration>,
    /// A replica whose byte lag exceeds this leaves the rotation (None: no limit).
    pub max_replica_lag_bytes: Option<u64>,
    /// Monitor credentials.
    pub login: MonitorLogin,
    /// Limit on a monitor's connect + login; each check is limited to the smaller of this and
    /// 1 s.
    pub connect_timeout: Duration,
}

impl ClusterSettings {
    /// The lag limits.
    pub fn lag_limits(&self) -> LagLimits {
        LagLimits {
            time: self.max_replica_lag,
            bytes: self.max_replica_lag_bytes,
        }
    }

    /// Limit on one check round trip.
    pub fn check_timeout(&self) -> Duration {
        self.connect_timeout.min(Duration::from_secs(1))
    }
}

/// The role a node was last seen in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts writes.
    Primary,
    /// In recovery (streaming replica).
    Replica,
    /// Not measured yet, or unreachable.
    Unknown,
}

/// Whether a node may serve traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Not measured yet: no verdict.
    Unknown,
    /// In rotation.
    Healthy,
    /// Replica over a lag limit: out of rotation until back under.
    Lagging,
    /// Failed a check or a connection: out of rotation with backoff.
    Banned,
    /// Refuses connections.
    Down,
    /// Answers, but in a role pgtier does not use: a configured primary in recovery, a
    /// configured replica out of recovery, or one of several primaries it cannot choose
    /// between. No traffic.
    Excluded,
}

/// One node as last seen.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    /// Address.
    pub addr: NodeAddr,
    /// Role last seen.
    pub role: Role,
    /// Rotation state.
    pub state: NodeState,
    /// Last replay LSN measured by the monitor (replicas; the current LSN for primaries).
    pub replay_lsn: Lsn,
    /// Primary LSN − replay LSN at the last check (replicas).
    pub byte_lag: Option<u64>,
    /// Time lag at the last check (replicas; 0 when fully replayed).
    pub time_lag: Option<Duration>,
    /// Configured weight.
    pub weight: u32,
    /// WAL timeline (primaries).
    pub timeline: Option<u32>,
    /// Why the node is Down or Banned.
    pub last_error: Option<String>,
}

/// A consistent picture of the database's nodes.
#[derive(Debug, Clone)]
pub struct View {
    /// Index of the node that accepts writes, if one is known.
    pub primary: Option<usize>,
    /// The primary's WAL position at the last check.
    pub primary_lsn: Lsn,
    /// Every node, by id.
    pub nodes: Arc<[NodeStatus]>,
    /// Incremented at every publication.
    pub generation: u64,
}

impl View {
    fn same(&self, other: &View) -> bool {
        self.primary == other.primary
            && self.primary_lsn == other.primary_lsn
            && self.nodes == other.nodes
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
    settings: ClusterSettings,
    view: ArcSwap<View>,
    /// Highest replay LSN known per node (monitor or on-demand checks).
    known_replay: Box<[AtomicU64]>,
    /// Reads in flight per node (for least-outstanding choice).
    outstanding: Box<[AtomicU32]>,
    /// Rotates tie-breaks between equally loaded replicas.
    turn: AtomicU32,
    /// What the monitors know (never taken on the hot path).
    state: Mutex<State>,
    /// Bumped at every publication of a new view.
    published: watch::Sender<u64>,
    /// Per node: wakes its monitor (report_failure, drop).
    wake: Box<[Arc<Notify>]>,
    /// Per node: the monitor must open a new connection before its next check.
    reconnect: Box<[AtomicBool]>,
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
    /// Checked; `sent_at` is when the query was sent.
    Checked { check: Check, sent_at: Instant },
    /// The node refused the connection.
    Refused(String),
    /// Connect or check failed or timed out.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Unchecked,
    Up,
    Banned,
    Down,
}

#[derive(Debug)]
struct NodeRt {
    health: Health,
    last_error: Option<String>,
    /// Last successful check and when it was sent.
    seen: Option<(Check, Instant)>,
    lag: LagState,
    last_lag: Option<Lag>,
}

#[derive(Debug)]
struct State {
    nodes: Vec<NodeRt>,
    primary: Option<usize>,
    primary_sample: Option<PrimarySample>,
    /// Warned about several primaries (until resolved).
    split_warned: bool,
}

impl Topology {
    fn new(settings: ClusterSettings) -> Topology {
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
                    })
                    .collect(),
                primary: None,
                primary_sample: None,
                split_warned: false,
            }),
            published: watch::Sender::new(0),
            wake: (0..n).map(|_| Arc::new(Notify::new())).collect(),
            reconnect: (0..n).map(|_| AtomicBool::new(false)).collect(),
            settings,
        }
    }

    /// Starts watching the configured nodes: one monitor task per node on the current tokio
    /// runtime (they end when the topology is dropped). Every node is `Unknown` until its first
    /// check. Outside a runtime no monitor runs (logged) and nothing ever becomes eligible.
    pub fn start(settings: ClusterSettings) -> Arc<Topology> {
        let topology = Arc::new(Topology::new(settings));
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

    /// A topology without monitors that takes every node at its configured role (Auto as a
    /// replica) and reports it healthy: for tests and tools that need no live cluster.
    pub fn unmonitored(settings: ClusterSettings) -> Arc<Topology> {
        let topology = Topology::new(settings);
        let nodes: Arc<[NodeStatus]> = topology
            .view
            .load()
            .nodes
            .iter()
            .zip(&topology.settings.nodes)
            .map(|(s, n)| NodeStatus {
                role: match n.role {
                    ConfiguredRole::Primary => Role::Primary,
                    _ => Role::Replica,
                },
                state: NodeState::Healthy,
                ..s.clone()
            })
            .collect();
        let primary = nodes.iter().position(|n| n.role == Role::Primary);
        topology.view.store(Arc::new(View {
            primary,
            primary_lsn: Lsn::ZERO,
            nodes,
            generation: 1,
        }));
        Arc::new(topology)
    }

    /// The settings this topology runs with.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
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
        self.known_replay[node].fetch_max(lsn.0, Ordering::Relaxed);
    }

    /// A connection to `node` failed or was refused: take it out of rotation now (Banned,
    /// unless already Down) and have its monitor reconnect and re-check within one interval;
    /// the next successful check re-admits it.
    pub fn report_failure(&self, node: usize) {
        if node >= self.node_count() {
            return;
        }
        {
            let mut st = self.lock();
            let rt = &mut st.nodes[node];
            if rt.health != Health::Down {
                if rt.health != Health::Banned {
                    warn!(node = %self.settings.nodes[node].addr, "connection failure reported: node banned until its next successful check");
                }
                rt.health = Health::Banned;
                rt.last_error = Some("a connection of the proxy failed".into());
                rt.lag.reset();
                rt.last_lag = None;
            }
            self.refresh(&mut st);
        }
        self.reconnect[node].store(true, Ordering::Relaxed);
        self.wake[node].notify_one();
    }

    /// Waits up to `timeout` for a primary to be known; returns its index.
    pub async fn wait_for_primary(&self, timeout: Duration) -> Option<usize> {
        self.wait_until(timeout, |v| v.primary.is_some())
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
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// Chooses a replica for a read that must see `min_lsn` (see `balancer`).
    pub fn pick_replica(&self, min_lsn: Lsn) -> Pick {
        self.pick_replica_within(min_lsn, None)
    }

    /// Chooses a replica for a read that must see `min_lsn`, among the replicas `limits`
    /// makes eligible (None: the database's, see [`balancer::eligible`]).
    pub fn pick_replica_within(&self, min_lsn: Lsn, limits: Option<&LagLimits>) -> Pick {
        let view = self.view.load();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        balancer::choose(
            &view.nodes,
            &self.outstanding,
            &self.known_replay,
            min_lsn,
            limits,
            turn,
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

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the outcome of one monitor attempt on `node`.
    pub(crate) fn record(&self, node: usize, outcome: Outcome) {
        let addr = &self.settings.nodes[node].addr;
        let mut st = self.lock();
        match outcome {
            Outcome::Checked { check, sent_at } => {
                let rt = &mut st.nodes[node];
                if rt.health != Health::Up && rt.health != Health::Unchecked {
                    info!(node = %addr, "node answers again");
                }
                rt.health = Health::Up;
                rt.last_error = None;
                rt.seen = Some((check, sent_at));
                // A store, not a max: a replica rebuilt from an older backup moves backwards.
                self.known_replay[node].store(check.lsn.0, Ordering::Relaxed);
                // The primary may change with this check; then lag is measured against it.
                st.primary = self.choose_primary(&mut st);
                if st.primary == Some(node) {
                    st.primary_sample = Some(PrimarySample {
                        lsn: check.lsn,
                        at: sent_at,
                    });
                }
                if check.in_recovery {
                    let sample = ReplicaSample {
                        replay: check.lsn,
                        receive: check.receive,
                        since_last_replayed_xact: check.since_last_replayed_xact,
                    };
                    let primary = st.primary_sample;
                    let limits = self.settings.lag_limits();
                    let rt = &mut st.nodes[node];
                    let before = rt.lag.verdict();
                    let judged = rt
                        .lag
                        .observe(&sample, primary.as_ref(), &limits, Instant::now());
                    rt.last_lag = judged.map(|(lag, _)| lag);
                    if let Some((lag, v)) = judged {
                        if before.is_some() && before != Some(v) {
                            match v {
                                Verdict::Lagging => {
                                    warn!(node = %addr, bytes = lag.bytes, time = ?lag.time, "replica lagging: out of rotation")
                                }
                                Verdict::Healthy => {
                                    info!(node = %addr, bytes = lag.bytes, time = ?lag.time, "replica caught up: back in rotation")
                                }
                            }
                        }
                    }
                } else {
                    let rt = &mut st.nodes[node];
                    rt.lag.reset();
                    rt.last_lag = None;
                }
            }
            Outcome::Refused(e) => self.fail(&mut st, node, Health::Down, e),
            Outcome::Failed(e) => self.fail(&mut st, node, Health::Banned, e),
        }
        self.refresh(&mut st);
    }

    fn fail(&self, st: &mut State, node: usize, health: Health, error: String) {
        let rt = &mut st.nodes[node];
        if rt.health != health || rt.last_error.as_deref() != Some(error.as_str()) {
            warn!(node = %self.settings.nodes[node].addr, state = ?health, error = %error, "node check failed");
        }
        rt.health = health;
        rt.last_error = Some(error);
        rt.seen = None;
        rt.lag.reset();
        rt.last_lag = None;
    }

    /// The primary from the nodes' last checks (see the module docs).
    fn choose_primary(&self, st: &mut State) -> Option<usize> {
        // A node configured as the primary is trusted until a check shows it in recovery: a
        // monitor that cannot log in, or a node that is down, does not stop writes from being
        // tried there (they fail with the server's own error, as without pgtier).
        if let Some(i) = self
            .settings
            .nodes
            .iter()
            .position(|n| n.role == ConfiguredRole::Primary)
        {
            let rt = &st.nodes[i];
            let disproven = rt.health == Health::Up && rt.seen.is_some_and(|(c, _)| c.in_recovery);
            return (!disproven).then_some(i);
        }
        let mut best: Option<(usize, Option<u32>)> = None;
        let mut tie = false;
        let mut candidates = 0;
        for (i, rt) in st.nodes.iter().enumerate() {
            let Some((check, _)) = rt.seen else { continue };
            if rt.health != Health::Up
                || check.in_recovery
                || self.settings.nodes[i].role == ConfiguredRole::Replica
            {
                continue;
            }
            candidates += 1;
            match best {
                None => best = Some((i, check.timeline)),
                Some((_, tl)) => match (check.timeline, tl) {
                    (Some(a), Some(b)) if a > b => {
                        best = Some((i, check.timeline));
                        tie = false;
                    }
                    (Some(a), Some(b)) if a < b => {}
                    _ => tie = true,
                },
            }
        }
        if tie {
            if !st.split_warned {
                warn!(
                    candidates,
                    "several nodes accept writes on the same timeline: no primary until one is left"
                );
                st.split_warned = true;
            }
            return None;
        }
        st.split_warned = false;
        best.map(|(i, _)| i)
    }

    /// Rebuilds the view from `st` and publishes it if it changed.
    fn refresh(&self, st: &mut State) {
        let primary = self.choose_primary(st);
        st.primary = primary;
        let old = self.view.load();
        if primary != old.primary {
            match primary {
                Some(p) => info!(node = %self.settings.nodes[p].addr, "primary"),
                None => warn!("no primary: writes wait"),
            }
        }
        let nodes: Arc<[NodeStatus]> = st
            .nodes
            .iter()
            .zip(&self.settings.nodes)
            .enumerate()
            .map(|(i, (rt, cfg))| self.status(i, rt, cfg, primary))
            .collect();
        let primary_lsn = st.primary_sample.map_or(Lsn::ZERO, |s| s.lsn);
        let view = View {
            primary,
            primary_lsn,
            nodes,
            generation: old.generation + 1,
        };
        if view.same(&old) {
            return;
        }
        for (new, was) in view.nodes.iter().zip(old.nodes.iter()) {
            if (new.role, new.state) != (was.role, was.state) {
                info!(node = %new.addr, role = ?new.role, state = ?new.state, was = ?was.state, "node state");
            }
        }
        drop(old);
        self.view.store(Arc::new(view));
        self.published.send_modify(|g| *g += 1);
    }

    fn status(
        &self,
        i: usize,
        rt: &NodeRt,
        cfg: &NodeConfig,
        primary: Option<usize>,
    ) -> NodeStatus {
        let (role, state) = match (rt.health, rt.seen) {
            (Health::Down, _) => (Role::Unknown, NodeState::Down),
            (Health::Banned, _) => (Role::Unknown, NodeState::Banned),
            (Health::Unchecked, _) | (Health::Up, None) => (Role::Unknown, NodeState::Unknown),
            (Health::Up, Some((check, _))) if !check.in_recovery => (
                Role::Primary,
                if primary == Some(i) {
                    NodeState::Healthy
                } else {
                    NodeState::Excluded
                },
            ),
            (Health::Up, Some(_)) if cfg.role == ConfiguredRole::Primary => {
                (Role::Replica, NodeState::Excluded)
            }
            (Health::Up, Some(_)) => (
                Role::Replica,
                match rt.lag.verdict() {
                    None => NodeState::Unknown,
                    Some(Verdict::Healthy) => NodeState::Healthy,
                    Some(Verdict::Lagging) => NodeState::Lagging,
                },
            ),
        };
        let seen = rt.seen.map(|(c, _)| c);
        NodeStatus {
            addr: cfg.addr.clone(),
            role,
            state,
            replay_lsn: seen.map_or(Lsn::ZERO, |c| c.lsn),
            byte_lag: rt.last_lag.map(|l| l.bytes),
            time_lag: rt.last_lag.and_then(|l| l.time),
            weight: cfg.weight,
            timeline: seen.and_then(|c| c.timeline),
            last_error: rt.last_error.clone(),
        }
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
