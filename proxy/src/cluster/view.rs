//! The published [`View`] of one database's nodes: what the node states mean for routing, and
//! how the monitors' knowledge (`topology::State`) becomes a view (primary choice, per-node
//! state, administrator bans).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::lag::Verdict;
use super::topology::{ConfiguredRole, Health, NodeConfig, NodeRt, State, Topology};
use super::Lsn;
use crate::config::NodeAddr;

/// Why an administrator-banned node is out of rotation (`NodeStatus::last_error`).
pub const ADMIN_BAN_ERROR: &str = "banned by an administrator (BAN)";

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
    /// Failed a check or a connection (out of rotation with backoff), or banned by an
    /// administrator (out of rotation until unbanned).
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
    /// Distance from pgtier's zone (see `ClusterSettings::zone_rank`).
    pub zone_rank: u8,
    /// WAL timeline (primaries).
    pub timeline: Option<u32>,
    /// Why the node is Down or Banned.
    pub last_error: Option<String>,
}

/// A consistent picture of the database's nodes.
#[derive(Debug, Clone)]
pub struct View {
    /// Index of the node that accepts writes, if one is known (None while an administrator bans
    /// the primary: banning it stops writes).
    pub primary: Option<usize>,
    /// The primary's WAL position at the last check.
    pub primary_lsn: Lsn,
    /// Every node, by id.
    pub nodes: Arc<[NodeStatus]>,
    /// Incremented at every publication.
    pub generation: u64,
}

impl View {
    pub(super) fn same(&self, other: &View) -> bool {
        self.primary == other.primary
            && self.primary_lsn == other.primary_lsn
            && self.nodes == other.nodes
    }
}

impl Topology {
    /// The primary from the nodes' last checks (see the module docs).
    pub(super) fn choose_primary(&self, st: &mut State) -> Option<usize> {
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

    /// The view `st` describes (without publishing it). `st.primary` stays the node the
    /// checks found accepting writes (replica lag is measured against it); the view's primary
    /// is None while an administrator bans it.
    pub(super) fn build_view(&self, st: &mut State, generation: u64) -> View {
        let found = self.choose_primary(st);
        st.primary = found;
        let primary = found.filter(|&p| !st.nodes[p].admin_banned);
        let nodes: Arc<[NodeStatus]> = st
            .nodes
            .iter()
            .zip(&self.settings.nodes)
            .enumerate()
            .map(|(i, (rt, cfg))| self.status(i, rt, cfg, found))
            .collect();
        View {
            primary,
            primary_lsn: st.primary_sample.map_or(Lsn::ZERO, |s| s.lsn),
            nodes,
            generation,
        }
    }

    /// Rebuilds the view from `st` and publishes it if it changed.
    pub(super) fn refresh(&self, st: &mut State) {
        let old = self.view.load();
        let view = self.build_view(st, old.generation + 1);
        if view.same(&old) {
            return;
        }
        if view.primary != old.primary {
            match view.primary {
                Some(p) => info!(node = %self.settings.nodes[p].addr, "primary"),
                None => warn!("no primary: writes wait"),
            }
        }
        for (new, was) in view.nodes.iter().zip(old.nodes.iter()) {
            if (new.role, new.state) != (was.role, was.state) {
                info!(node = %new.addr, role = ?new.role, state = ?new.state, was = ?was.state, "node state");
            }
            if new.state == NodeState::Banned && was.state != NodeState::Banned {
                self.bans.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(old);
        self.view.store(Arc::new(view));
        self.published.send_modify(|g| *g += 1);
    }

    /// One node's status; `primary` is the node found accepting writes (banned or not).
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
        // An administrator's ban overrides whatever the checks say; the role and lag stay
        // visible (SHOW REPLICAS).
        let (state, last_error) = if rt.admin_banned {
            (NodeState::Banned, Some(ADMIN_BAN_ERROR.to_owned()))
        } else {
            (state, rt.last_error.clone())
        };
        NodeStatus {
            addr: cfg.addr.clone(),
            role,
            state,
            replay_lsn: seen.map_or(Lsn::ZERO, |c| c.lsn),
            byte_lag: rt.last_lag.map(|l| l.bytes),
            time_lag: rt.last_lag.and_then(|l| l.time),
            weight: cfg.weight,
            zone_rank: self.settings.zone_rank(cfg),
            timeline: seen.and_then(|c| c.timeline),
            last_error,
        }
    }
}
