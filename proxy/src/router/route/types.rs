//! What routing keeps per client and what it hands back: the client's routing state, the
//! target of a unit and the node chosen for a read.

use crate::cluster::{LagLimits, Lsn};

/// A client's routing override (`SET pgtier.route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteMode {
    /// Classify each statement.
    #[default]
    Auto,
    /// Everything to the primary.
    Primary,
    /// Reads and unclassifiable statements to a replica (writes still fail there).
    Replica,
}

impl RouteMode {
    /// The value as `SHOW pgtier.route` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteMode::Auto => "auto",
            RouteMode::Primary => "primary",
            RouteMode::Replica => "replica",
        }
    }
}

/// What pgtier keeps per client for routing.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientRouting {
    /// `SET pgtier.route`.
    pub mode: RouteMode,
    /// The primary's WAL position after the client's last write transaction.
    pub causal: Lsn,
    /// `SET pgtier.min_lsn`: a token from another connection.
    pub min_lsn: Lsn,
    /// The token of the client's causal scope, as read when its unit was routed.
    pub shared: Lsn,
    /// The database's routing rules whose `users` / `application_names` match this client
    /// (see [`super::Router::refresh_client`]); 0: no rule applies.
    pub rules_on: u64,
    /// The database's rules with action `primary`.
    pub rules_primary: u64,
}

impl ClientRouting {
    /// The WAL position every read of this client must see.
    pub fn floor(&self) -> Lsn {
        self.causal.max(self.min_lsn).max(self.shared)
    }
}

/// Where a unit goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The primary.
    Primary,
    /// A replica that has replayed at least `min_lsn` (else the primary).
    Replica {
        /// The WAL position the read must see.
        min_lsn: Lsn,
        /// Lag limits of the routing rules that sent it here, which decide which replicas are
        /// eligible from their last measured lag (tighter or looser than the database's). None:
        /// the database's limits (replicas in rotation).
        limits: Option<LagLimits>,
    },
}

impl Target {
    /// A replica within the database's lag limits.
    pub fn replica(min_lsn: Lsn) -> Target {
        Target::Replica {
            min_lsn,
            limits: None,
        }
    }
}

/// Where a read goes, given the replicas' state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// This node, known to be recent enough.
    Node(usize),
    /// This replica, after asking it for its replay position.
    Check(usize),
    /// The primary.
    Primary,
}
