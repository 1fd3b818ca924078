//! The nodes of one database and what is known about them, published lock-free for the
//! routing hot path.
//!
//! SKELETON: no monitors run yet; every configured node is taken at its configured role and
//! reported healthy. The real monitors (lag, health, bans, primary detection) replace this.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};

use super::Lsn;
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
    /// Limit on a monitor's connect + login and on each check.
    pub connect_timeout: Duration,
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
}

/// One node as last seen.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// Address.
    pub addr: NodeAddr,
    /// Role last seen.
    pub role: Role,
    /// Rotation state.
    pub state: NodeState,
    /// Last replay LSN measured by the monitor (replicas).
    pub replay_lsn: Lsn,
    /// Primary LSN − replay LSN at the last check (replicas).
    pub byte_lag: Option<u64>,
    /// Time lag at the last check (replicas; 0 when fully replayed).
    pub time_lag: Option<Duration>,
    /// Configured weight.
    pub weight: u32,
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
}

impl Topology {
    /// Starts watching the configured nodes (monitor tasks end when the topology is dropped).
    pub fn start(settings: ClusterSettings) -> Arc<Topology> {
        let nodes: Arc<[NodeStatus]> = settings
            .nodes
            .iter()
            .map(|n| NodeStatus {
                addr: n.addr.clone(),
                role: match n.role {
                    ConfiguredRole::Primary => Role::Primary,
                    _ => Role::Replica,
                },
                state: NodeState::Healthy,
                replay_lsn: Lsn::ZERO,
                byte_lag: None,
                time_lag: None,
                weight: n.weight,
            })
            .collect();
        let primary = nodes.iter().position(|n| n.role == Role::Primary);
        let n = nodes.len();
        Arc::new(Topology {
            view: ArcSwap::from_pointee(View {
                primary,
                primary_lsn: Lsn::ZERO,
                nodes,
            }),
            known_replay: (0..n).map(|_| AtomicU64::new(0)).collect(),
            outstanding: (0..n).map(|_| AtomicU32::new(0)).collect(),
            settings,
        })
    }

    /// The settings this topology runs with.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// The current view (lock-free).
    pub fn view(&self) -> Guard<Arc<View>> {
        self.view.load()
    }

    /// Raises the known replay LSN of `node` (from an on-demand check).
    pub fn observe_replay(&self, node: usize, lsn: Lsn) {
        self.known_replay[node].fetch_max(lsn.0, Ordering::Relaxed);
    }

    /// A connection to `node` failed or was refused: take it out of rotation (with backoff).
    pub fn report_failure(&self, _node: usize) {}

    /// Waits up to `timeout` for a primary to be known; returns its index.
    pub async fn wait_for_primary(&self, _timeout: Duration) -> Option<usize> {
        self.view().primary
    }

    /// Chooses a replica for a read that must see `min_lsn` (least outstanding, weighted).
    pub fn pick_replica(&self, min_lsn: Lsn) -> Pick {
        let view = self.view();
        let best = view
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.role == Role::Replica && n.state == NodeState::Healthy)
            .min_by_key(|(i, _)| self.outstanding[*i].load(Ordering::Relaxed))
            .map(|(i, _)| i);
        match best {
            None => Pick::None,
            Some(i) if self.known_replay[i].load(Ordering::Relaxed) >= min_lsn.0 => Pick::Ready(i),
            Some(i) => Pick::Check(i),
        }
    }

    /// Counts a read in flight on `node` until the guard drops.
    pub fn begin(self: &Arc<Self>, node: usize) -> InFlight {
        self.outstanding[node].fetch_add(1, Ordering::Relaxed);
        InFlight {
            topology: self.clone(),
            node,
        }
    }
}

/// A request in flight on a node (see `Topology::begin`).
#[derive(Debug)]
pub struct InFlight {
    topology: Arc<Topology>,
    node: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.topology.outstanding[self.node].fetch_sub(1, Ordering::Relaxed);
    }
}
