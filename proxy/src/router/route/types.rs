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
    /// The replica of the client's last read and when that read ended.
    pub last_read: Affinity,
}

impl ClientRouting {
    /// The WAL position every read of this client must see.
    pub fn floor(&self) -> Lsn {
        self.causal.max(self.min_lsn).max(self.shared)
    }
}

/// The replica a client last read from, and when that read ended: a read that starts soon
/// after prefers the same replica among equally loaded ones (`replica_round_robin = false`).
/// Its server process has just run, so it answers sooner than one woken from a longer sleep;
/// a pause longer than [`Affinity::WINDOW`] lets idle-time reads rotate again, so a replica
/// back in rotation gets its share. It lives in every idle client: 6 bytes, aligned to 2, so
/// that it fits beside the route mode in the padding of [`ClientRouting`] (48 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(2))]
pub struct Affinity {
    /// Node id; `u16::MAX`: none yet.
    node: u16,
    /// When the read ended, in microseconds of the anchored clock
    /// ([`crate::clock::unix_micros_at`]), truncated: it wraps after about 71 minutes, and a
    /// wrapped time can only make a tie-break stick or rotate once.
    ended_us: u32,
}

impl Default for Affinity {
    fn default() -> Self {
        Affinity {
            node: u16::MAX,
            ended_us: 0,
        }
    }
}

impl Affinity {
    /// How soon after the last read the next one must start to prefer its replica.
    pub const WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

    /// Notes a read on replica `node` that ended at `ended_us` (anchored clock, µs).
    pub fn note(&mut self, node: usize, ended_us: u64) {
        self.node = u16::try_from(node).unwrap_or(u16::MAX);
        self.ended_us = ended_us as u32;
    }

    /// The replica a read starting at `now_us` (anchored clock, µs) should prefer, if any.
    pub fn prefer(&self, now_us: u64) -> Option<usize> {
        if self.node == u16::MAX {
            return None;
        }
        let since = (now_us as u32).wrapping_sub(self.ended_us);
        (since <= Self::WINDOW.as_micros() as u32).then_some(usize::from(self.node))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Affinity;

    #[test]
    fn affinity_holds_within_its_window_only() {
        let mut a = Affinity::default();
        let t0 = crate::clock::anchored_now();
        assert_eq!(a.prefer(t0), None, "no read yet");
        a.note(2, t0);
        assert_eq!(a.prefer(t0), Some(2));
        assert_eq!(a.prefer(t0 + Affinity::WINDOW.as_micros() as u64), Some(2));
        assert_eq!(
            a.prefer(t0 + (Affinity::WINDOW + Duration::from_micros(2)).as_micros() as u64),
            None
        );
        // A clock reading from before the read (never sticks).
        a.note(1, t0 + Duration::from_millis(5).as_micros() as u64);
        assert_eq!(a.prefer(t0), None);
        // Node ids past u16 are not kept.
        a.note(70_000, t0);
        assert_eq!(a.prefer(t0), None);
        assert_eq!(std::mem::size_of::<super::ClientRouting>(), 48);
    }
}
