//! The routing decision for one unit of client work (a Query, or extended-protocol messages up
//! to Sync): the primary, or a replica that has replayed at least the client's causal token.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use tracing::{info, warn};

use super::classify::{
    Class, Classification, Classifier, FunctionTable, Hint, Reason, PG_PROC_QUERY,
};
use crate::cluster::catalog::read_functions;
use crate::cluster::{Lsn, Pick, Topology};
use crate::config::{PrimaryReads, RoutingSettings};

/// Limit on reading `pg_proc`.
const CATALOG_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between attempts to read `pg_proc`.
const CATALOG_RETRY_MAX: Duration = Duration::from_secs(30);

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
}

impl ClientRouting {
    /// The WAL position every read of this client must see.
    pub fn floor(&self) -> Lsn {
        self.causal.max(self.min_lsn)
    }
}

/// What one unit of client work needs, merged over its statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitInfo {
    /// Write if any statement is.
    pub class: Class,
    /// The first hint comment.
    pub hint: Option<Hint>,
    /// The highest `pgtier:min_lsn` comment.
    pub min_lsn: Option<Lsn>,
    /// A statement leaves session state: the client will be pinned to this server.
    pub pins: bool,
    /// A statement certainly writes (no hint or override sends it to a replica).
    pub certain_write: bool,
}

impl Default for UnitInfo {
    fn default() -> UnitInfo {
        UnitInfo {
            class: Class::Read,
            hint: None,
            min_lsn: None,
            pins: false,
            certain_write: false,
        }
    }
}

impl UnitInfo {
    /// A unit that must run on the primary.
    pub fn write() -> UnitInfo {
        UnitInfo {
            class: Class::Write,
            certain_write: true,
            ..UnitInfo::default()
        }
    }

    /// Adds one statement's classification.
    pub fn add(&mut self, c: &Classification) {
        self.add_class(c.class);
        self.hint = self.hint.or(c.hint);
        self.min_lsn = self.min_lsn.max(c.min_lsn);
        self.certain_write |= c.class == Class::Write && certainly_writes(c.reason);
    }

    /// Adds what another unit (or statement) needs.
    pub fn merge(&mut self, other: &UnitInfo) {
        self.add_class(other.class);
        self.hint = self.hint.or(other.hint);
        self.min_lsn = self.min_lsn.max(other.min_lsn);
        self.pins |= other.pins;
        self.certain_write |= other.certain_write;
    }

    /// Adds a class (Write wins).
    pub fn add_class(&mut self, class: Class) {
        if class == Class::Write {
            self.class = Class::Write;
        }
    }

    /// Whether this unit may run on a replica for this client.
    pub fn replica_ok(&self, client: &ClientRouting) -> bool {
        if self.pins || self.certain_write {
            // A pinned replica would take the client's later writes; a write would only fail.
            return false;
        }
        match (self.hint, client.mode) {
            (Some(Hint::Primary), _) => false,
            (Some(Hint::Replica), _) => true,
            (None, RouteMode::Primary) => false,
            (None, RouteMode::Replica) => true,
            (None, RouteMode::Auto) => self.class == Class::Read,
        }
    }
}

/// Whether a Write classification is certain (a hint or `pgtier.route` cannot send it to a
/// replica), as opposed to "could not prove it reads only".
fn certainly_writes(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::WriteStatement
            | Reason::LockingClause
            | Reason::WritableCte
            | Reason::SelectInto
            | Reason::WriteFunction
            | Reason::CopyFrom
            | Reason::CopyToServer
            | Reason::ExplainAnalyze
    )
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
    },
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

/// Routing for one configured database: its classifier and its topology.
#[derive(Debug)]
pub struct Router {
    classifier: ArcSwap<Classifier>,
    topology: Arc<Topology>,
    settings: RoutingSettings,
    /// Rotation for `primary_reads = "include"`.
    turn: AtomicU32,
    /// The database has nodes to read from besides a configured primary.
    splits: bool,
    /// The built-in function knowledge with the config's overrides (pg_proc is added to it).
    base_functions: FunctionTable,
}

impl Router {
    /// A router over `topology` with the built-in function knowledge and the config's
    /// `write_functions` / `read_only_functions`. `splits`: there are replicas to route to.
    pub fn new(
        topology: Arc<Topology>,
        settings: RoutingSettings,
        functions: FunctionTable,
        cache: usize,
        splits: bool,
    ) -> Router {
        Router {
            classifier: ArcSwap::from_pointee(Classifier::new(functions.clone(), cache)),
            topology,
            settings,
            turn: AtomicU32::new(0),
            splits,
            base_functions: functions,
        }
    }

    /// Whether reads may go anywhere but the primary (else routing is skipped entirely).
    pub fn splits(&self) -> bool {
        self.splits
    }

    /// Learns function volatility from the primary's `pg_proc` in the background, retrying
    /// until it succeeds (until then, unknown functions count as writes).
    pub fn learn_functions(self: &Arc<Self>) {
        if !self.splits {
            return;
        }
        let router = Arc::downgrade(self);
        tokio::spawn(learn_loop(router));
    }

    /// The current classifier (lock-free).
    pub fn classifier(&self) -> Guard<Arc<Classifier>> {
        self.classifier.load()
    }

    /// Replaces the classifier (after learning function volatility, or on reload).
    pub fn set_classifier(&self, c: Classifier) {
        self.classifier.store(Arc::new(c));
    }

    /// The database's nodes.
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topology
    }

    /// The routing settings.
    pub fn settings(&self) -> &RoutingSettings {
        &self.settings
    }

    /// Where `unit` goes for this client.
    pub fn target(&self, unit: &UnitInfo, client: &ClientRouting) -> Target {
        if !unit.replica_ok(client) {
            return Target::Primary;
        }
        Target::Replica {
            min_lsn: client.floor().max(unit.min_lsn.unwrap_or(Lsn::ZERO)),
        }
    }

    /// The node for a read that must see `min_lsn`.
    pub fn choose(&self, min_lsn: Lsn) -> Choice {
        let pick = self.topology.pick_replica(min_lsn);
        if self.settings.primary_reads == PrimaryReads::Include {
            // The primary takes every (replicas + 1)-th read.
            let view = self.topology.view();
            let replicas = view
                .nodes
                .iter()
                .filter(|n| n.role == crate::cluster::Role::Replica)
                .count() as u32;
            if self
                .turn
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(replicas + 1)
            {
                return Choice::Primary;
            }
        }
        match pick {
            Pick::Ready(i) => Choice::Node(i),
            Pick::Check(i) => Choice::Check(i),
            Pick::None => Choice::Primary,
        }
    }
}

async fn learn_loop(router: Weak<Router>) {
    let mut pause = Duration::from_secs(1);
    loop {
        let Some(r) = router.upgrade() else { return };
        let login = r.topology.settings().login.clone();
        let primary = r.topology.wait_for_primary(CATALOG_TIMEOUT).await;
        if let Some(p) = primary {
            let addr = r.topology.settings().nodes[p].addr.clone();
            match read_functions(&addr, &login, PG_PROC_QUERY, CATALOG_TIMEOUT).await {
                Ok(rows) => {
                    let n = rows.len();
                    let mut table = r.base_functions.clone();
                    table.learn_pg_proc(rows);
                    r.classifier().set_functions(table);
                    info!(node = %addr, functions = n, "learned function volatility from pg_proc");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?pause, "cannot read pg_proc: calls of functions outside the built-in lists go to the primary until it is read")
                }
            }
        }
        drop(r);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(CATALOG_RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_and_modes_decide_replica_eligibility() {
        let read = UnitInfo::default();
        let write = UnitInfo::write();
        let auto = ClientRouting::default();
        assert!(read.replica_ok(&auto));
        assert!(!write.replica_ok(&auto));
        let to_primary = ClientRouting {
            mode: RouteMode::Primary,
            ..auto
        };
        assert!(!read.replica_ok(&to_primary));
        // The replica hint overrides "not provably read-only", never a certain write.
        let unproven = UnitInfo {
            class: Class::Write,
            hint: Some(Hint::Replica),
            ..read
        };
        assert!(unproven.replica_ok(&auto));
        let certain = UnitInfo {
            hint: Some(Hint::Replica),
            ..write
        };
        assert!(!certain.replica_ok(&auto));
        let pinning = UnitInfo {
            pins: true,
            hint: Some(Hint::Replica),
            ..read
        };
        assert!(!pinning.replica_ok(&auto));
        let forced = UnitInfo {
            hint: Some(Hint::Primary),
            ..read
        };
        assert!(!forced.replica_ok(&auto));
    }

    #[test]
    fn the_floor_is_the_later_of_own_and_borrowed_tokens() {
        let c = ClientRouting {
            causal: Lsn(10),
            min_lsn: Lsn(20),
            ..ClientRouting::default()
        };
        assert_eq!(c.floor(), Lsn(20));
    }
}
