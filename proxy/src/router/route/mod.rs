//! The routing decision for one unit of client work (a Query, or extended-protocol messages up
//! to Sync): the primary, or a replica that has replayed at least the client's causal token
//! (and, for a unit a routing rule sent there, whose lag is within the rule's limits).
//!
//! - `types`: per-client routing state, [`Target`] and [`Choice`].
//! - `unit`: what a unit needs ([`UnitInfo`]) and the precedence that decides for a client.
//! - this module: the [`Router`] of one database, from a unit to a target and to a node.
//! - `explain`: `SHOW ROUTE` support.
//! - `learn`: learning function volatility from the primary's `pg_proc`.

mod explain;
mod learn;
mod types;
mod unit;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

pub use explain::Explanation;
pub use types::{Affinity, Choice, ClientRouting, RouteMode, Target};
use unit::Verdict;
pub use unit::{DecidedBy, RuleFacts, UnitInfo};

use super::classify::{Classifier, FunctionTable};
use super::rules::{LagLimit, RuleAction, RuleSet};
use crate::cluster::balancer::eligible;
use crate::cluster::{LagLimits, Lsn, Pick, Role, Topology};
use crate::config::{PrimaryReads, RoutingSettings};

/// Routing for one configured database: its classifier and its topology.
#[derive(Debug)]
pub struct Router {
    classifier: ArcSwap<Classifier>,
    topology: Arc<Topology>,
    settings: RoutingSettings,
    /// Rotation for `primary_reads = "include"` and `any` rules.
    turn: AtomicU32,
    /// The database has nodes to read from besides a configured primary.
    splits: bool,
    /// The built-in function knowledge with the config's overrides (pg_proc is added to it).
    base_functions: FunctionTable,
}

/// Where a unit goes and why (see [`Router::route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The target.
    pub target: Target,
    /// What decided it.
    pub by: DecidedBy,
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

    /// The database's routing rules.
    pub fn rules(&self) -> &RuleSet {
        &self.settings.rules
    }

    /// The database's routing rules, None when it has none (what unit scanning takes).
    pub fn rule_set(&self) -> Option<&RuleSet> {
        (!self.settings.rules.is_empty()).then_some(&*self.settings.rules)
    }

    /// Routing state for a new client (user name and `application_name` select the rules that
    /// apply to it).
    pub fn client_routing(&self, user: &str, application_name: &str) -> ClientRouting {
        let mut c = ClientRouting::default();
        self.refresh_client(&mut c, user, application_name);
        c
    }

    /// Recomputes which rules apply to a client (after its `application_name` may have
    /// changed). Nothing to do when the database has no rules.
    pub fn refresh_client(&self, client: &mut ClientRouting, user: &str, application_name: &str) {
        let rules = &self.settings.rules;
        if rules.is_empty() {
            return;
        }
        client.rules_on = rules.session_mask(user, application_name);
        client.rules_primary = rules.primary_mask();
    }

    /// Whether reads may go anywhere but the primary (else routing is skipped entirely).
    pub fn splits(&self) -> bool {
        self.splits
    }

    /// The current classifier (lock-free).
    pub fn classifier(&self) -> Guard<Arc<Classifier>> {
        self.classifier.load()
    }

    /// Replaces the classifier (on reload).
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
        self.route(unit, client).target
    }

    /// Where `unit` goes for this client, and what decided it.
    pub fn route(&self, unit: &UnitInfo, client: &ClientRouting) -> Route {
        let (verdict, by) = unit.resolve(client);
        let target = match verdict {
            Verdict::Primary => Target::Primary,
            Verdict::Replica { rules, any } => {
                let min_lsn = client.floor().max(unit.min_lsn.unwrap_or(Lsn::ZERO));
                if rules == 0 {
                    Target::replica(min_lsn)
                } else {
                    let (limits, any) = self.rule_policy(rules, any);
                    if any && self.primary_less_loaded(limits.as_ref()) {
                        Target::Primary
                    } else {
                        Target::Replica { min_lsn, limits }
                    }
                }
            }
        };
        Route { target, by }
    }

    /// The lag limits that decide which replicas may serve a read that the rules `rules` (a
    /// mask) send to a replica: per rule its own limits, the database's for a limit it does
    /// not set; over several rules the stricter of each. None: the database's limits. Also
    /// whether the primary is a candidate too (`any`, and every one of them has action `any`).
    fn rule_policy(&self, mut rules: u64, any: bool) -> (Option<LagLimits>, bool) {
        let db = self.topology.settings().lag_limits();
        let mut lag: Option<LagLimit> = None;
        let mut all_any = any;
        while rules != 0 {
            let i = rules.trailing_zeros() as usize;
            rules &= rules - 1;
            if let Some(r) = self.settings.rules.get(i) {
                let own = LagLimit {
                    time: r.lag.time.or(db.time),
                    bytes: r.lag.bytes.or(db.bytes),
                };
                lag = Some(lag.map_or(own, |l| l.and(own)));
                all_any &= r.action == RuleAction::Any;
            }
        }
        let limits = lag
            .map(|l| LagLimits {
                time: l.time,
                bytes: l.bytes,
            })
            .filter(|l| *l != db);
        (limits, all_any)
    }

    /// For a read an `any` rule lets run anywhere: whether the primary is less loaded than the
    /// best replica eligible by `limits`, comparing (outstanding + 1) / weight with the
    /// primary at weight 1 (ties rotate with the replicas that tie). With no eligible replica
    /// of positive weight: the primary.
    fn primary_less_loaded(&self, limits: Option<&LagLimits>) -> bool {
        let view = self.topology.view();
        let Some(p) = view.primary else {
            return false;
        };
        // Best replica load as (outstanding + 1, weight), and how many tie with it.
        let mut best: Option<(u64, u64)> = None;
        let mut ties = 0u32;
        for (i, n) in view.nodes.iter().enumerate() {
            if n.weight == 0 || !eligible(n, limits) {
                continue;
            }
            let c = (
                u64::from(self.topology.outstanding(i)) + 1,
                u64::from(n.weight),
            );
            match best {
                // c.0 / c.1 < b.0 / b.1
                Some(b) if c.0 * b.1 < b.0 * c.1 => (best, ties) = (Some(c), 1),
                Some(b) if c.0 * b.1 == b.0 * c.1 => ties += 1,
                Some(_) => {}
                None => (best, ties) = (Some(c), 1),
            }
        }
        let Some((load, weight)) = best else {
            return true;
        };
        let primary = (u64::from(self.topology.outstanding(p)) + 1) * weight;
        primary < load
            || (primary == load
                && self
                    .turn
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(ties + 1))
    }

    /// The node for a read that must see `min_lsn`, among the replicas `limits` makes
    /// eligible (None: the database's limits; see [`Target::Replica`]). `prefer`: the replica
    /// to take when it ties with the best (see [`Affinity`]; ignored with
    /// `replica_round_robin`).
    pub fn choose(
        &self,
        min_lsn: Lsn,
        limits: Option<&LagLimits>,
        prefer: Option<usize>,
    ) -> Choice {
        let prefer = prefer.filter(|_| !self.settings.replica_round_robin);
        let pick = self.topology.pick_replica_within(min_lsn, limits, prefer);
        if self.settings.primary_reads == PrimaryReads::Include {
            // The primary takes every (replicas + 1)-th read.
            let view = self.topology.view();
            let replicas = view
                .nodes
                .iter()
                .filter(|n| n.role == Role::Replica)
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

#[cfg(test)]
mod tests;
