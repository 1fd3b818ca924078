//! Replica choice for one read: the routing hot path (no allocation, no lock).
//!
//! Eligible: role `Replica` and state `Healthy`; or, for a read with its own lag limits (a
//! routing rule's, see [`eligible`]), role `Replica`, state `Healthy` or `Lagging`, and a last
//! measured lag within those limits. Among them the best minimises
//! `(outstanding + 1) / weight` (compared by cross-multiplication); replicas with weight 0 are
//! considered only when no replica with a positive weight is eligible (then by outstanding
//! count). A preferred replica (the client's last, see `router::route::Affinity`) wins a tie;
//! otherwise ties rotate among the tied replicas with every pick, so equal replicas share an
//! idle load evenly (a second pass over the nodes, still without allocation).
//!
//! Then the requested LSN: the best replica if its known replay LSN reaches it (`Ready`), else the
//! best of the same tier that does (`Ready`), else the best one to be asked first (`Check`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::{LagLimits, Lsn, NodeState, NodeStatus, Pick, Role};
use crate::config::topology::ZONE_EXCLUDED;

/// Whether `node` may serve a read: a `Healthy` replica when `limits` is None (the database's
/// limits, with the monitor's hysteresis); with `limits`, a `Healthy` or `Lagging` replica
/// whose last measured lag is within them (tighter or looser than the database's). A replica
/// never measured is not eligible then; an unknown time lag leaves only the byte limit, as
/// for the database's limits. `Unknown`, `Banned`, `Down` and `Excluded` nodes never are.
pub fn eligible(node: &NodeStatus, limits: Option<&LagLimits>) -> bool {
    if node.role != Role::Replica {
        return false;
    }
    let Some(limits) = limits else {
        return node.state == NodeState::Healthy;
    };
    if !matches!(node.state, NodeState::Healthy | NodeState::Lagging) {
        return false;
    }
    let Some(bytes) = node.byte_lag else {
        return false;
    };
    limits.bytes.is_none_or(|max| bytes <= max)
        && match (limits.time, node.time_lag) {
            (Some(max), Some(t)) => t <= max,
            _ => true,
        }
}

/// Chooses among `nodes` (by id) with per-node outstanding counts and known replay LSNs,
/// eligible by `limits` (see [`eligible`]); `prefer` wins a tie it is part of, else `turn`
/// rotates the tie-breaks.
pub fn choose(
    nodes: &[NodeStatus],
    outstanding: &[AtomicU32],
    known_replay: &[AtomicU64],
    min_lsn: Lsn,
    limits: Option<&LagLimits>,
    turn: u32,
    prefer: Option<usize>,
) -> Pick {
    // A node's candidate and whether it has replayed `min_lsn`.
    let fresh = |i: usize| {
        let c = candidate(nodes, outstanding, i, limits)?;
        let replayed = known_replay
            .get(i)
            .is_some_and(|k| k.load(Ordering::Relaxed) >= min_lsn.0);
        Some((c, replayed))
    };
    // The first nodes' are computed once, in the first pass: the tie-breaking pass reads them
    // back (a second `eligible` test per node showed in profiles), so both passes agree on
    // who ties.
    let mut seen: [Option<(Candidate, bool)>; SEEN] = [None; SEEN];
    let mut best = Best::default();
    let mut ready = Best::default();
    let scanned = nodes.len().min(known_replay.len());
    for i in 0..scanned {
        let Some((c, replayed)) = fresh(i) else {
            continue;
        };
        if let Some(slot) = seen.get_mut(i) {
            *slot = Some((c, replayed));
        }
        best.offer(c);
        if replayed {
            ready.offer(c);
        }
    }
    let chosen = |b: &Best, ready_only: bool| {
        let qualified = |i: usize| {
            let (c, replayed) = match seen.get(i).filter(|_| i < scanned) {
                Some(c) => (*c)?,
                None => fresh(i)?,
            };
            (!ready_only || replayed).then_some(c)
        };
        if let Some(p) = prefer.filter(|&p| p < nodes.len()) {
            if let (Some(top), Some(c)) = (b.top, qualified(p)) {
                if !top.better_than(&c) {
                    return p;
                }
            }
        }
        b.rotate(turn, qualified, nodes.len())
    };
    match (best.top, ready.top) {
        (None, _) => Pick::None,
        (Some(b), Some(r)) if r.tier() == b.tier() => Pick::Ready(chosen(&ready, true)),
        (Some(_), _) => Pick::Check(chosen(&best, false)),
    }
}

/// How many nodes' candidates [`choose`] keeps from its first pass (more are computed again).
const SEEN: usize = 8;

fn candidate(
    nodes: &[NodeStatus],
    outstanding: &[AtomicU32],
    i: usize,
    limits: Option<&LagLimits>,
) -> Option<Candidate> {
    let node = &nodes[i];
    if !eligible(node, limits) || node.zone_rank == ZONE_EXCLUDED {
        return None;
    }
    let weight = u64::from(node.weight);
    Some(Candidate {
        node: i,
        load: u64::from(outstanding[i].load(Ordering::Relaxed)) + 1,
        weight,
        tier: 2 * u8::from(weight == 0) + u8::from(node.zone_rank != 0),
    })
}

/// The best candidate and how many share its score.
#[derive(Debug, Default)]
struct Best {
    top: Option<Candidate>,
    ties: u32,
}

impl Best {
    fn offer(&mut self, c: Candidate) {
        match self.top {
            Some(t) if t.better_than(&c) => {}
            Some(t) if c.ties_with(&t) => self.ties += 1,
            _ => {
                self.top = Some(c);
                self.ties = 1;
            }
        }
    }

    /// The `turn % ties`-th candidate tying with the best (a second pass: fair rotation among
    /// equals whatever their positions). Counts that moved in between fall back to the best.
    fn rotate(&self, turn: u32, cand: impl Fn(usize) -> Option<Candidate>, n: usize) -> usize {
        let top = self.top.expect("a best candidate");
        if self.ties <= 1 {
            return top.node;
        }
        let mut k = turn % self.ties;
        for i in 0..n {
            let Some(c) = cand(i) else { continue };
            if c.ties_with(&top) {
                if k == 0 {
                    return i;
                }
                k -= 1;
            }
        }
        top.node
    }
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    node: usize,
    /// Outstanding requests + 1.
    load: u64,
    weight: u64,
    /// 0: positive weight in pgtier's zone; 1: positive weight elsewhere; 2, 3: the same with
    /// weight 0 (only when nothing else is eligible).
    tier: u8,
}

impl Candidate {
    /// Its tier (see the field).
    fn tier(&self) -> u8 {
        self.tier
    }

    /// Strictly better.
    fn better_than(&self, other: &Candidate) -> bool {
        match self.tier.cmp(&other.tier) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal if self.weight == 0 => self.load < other.load,
            // load/weight < other.load/other.weight
            std::cmp::Ordering::Equal => self.load * other.weight < other.load * self.weight,
        }
    }

    /// Neither is better than the other.
    fn ties_with(&self, other: &Candidate) -> bool {
        self.tier == other.tier
            && if self.weight == 0 {
                // Tier 2 and 3 hold weight 0 only: compared by load.
                self.load == other.load
            } else {
                self.load * other.weight == other.load * self.weight
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeAddr;

    fn node(role: Role, state: NodeState, weight: u32) -> NodeStatus {
        NodeStatus {
            addr: NodeAddr {
                host: "h".into(),
                port: 1,
            },
            role,
            state,
            replay_lsn: Lsn::ZERO,
            byte_lag: None,
            time_lag: None,
            weight,
            zone_rank: 0,
            timeline: None,
            last_error: None,
        }
    }

    #[test]
    fn replicas_in_pgtiers_zone_first_then_other_zones() {
        let zoned = |rank| NodeStatus {
            zone_rank: rank,
            ..node(Replica, Healthy, 1)
        };
        // Node 1 remote and idle, node 2 local and busier: the local one.
        let nodes = [node(Primary, Healthy, 1), zoned(1), zoned(0)];
        let out = atomics32(&[0, 0, 5]);
        let known = atomics64(&[100; 3]);
        assert_eq!(
            choose(&nodes, &out, &known, Lsn(0), None, 0, None),
            Pick::Ready(2)
        );
        // The local one has not replayed the token: asked first, not skipped for the remote.
        let known = atomics64(&[300, 300, 100]);
        assert_eq!(
            choose(&nodes, &out, &known, Lsn(200), None, 0, None),
            Pick::Check(2)
        );
        // The local one down: the remote one; excluded (zone_mode only): none.
        let nodes = [
            node(Primary, Healthy, 1),
            zoned(1),
            NodeStatus {
                state: Down,
                ..zoned(0)
            },
        ];
        assert_eq!(
            choose(&nodes, &out, &known, Lsn(0), None, 0, None),
            Pick::Ready(1)
        );
        let nodes = [
            node(Primary, Healthy, 1),
            zoned(ZONE_EXCLUDED),
            NodeStatus {
                state: Down,
                ..zoned(0)
            },
        ];
        assert_eq!(
            choose(&nodes, &out, &known, Lsn(0), None, 0, None),
            Pick::None
        );
        // A remote replica with weight comes before a local one with weight 0.
        let nodes = [
            node(Primary, Healthy, 1),
            zoned(1),
            NodeStatus {
                weight: 0,
                ..zoned(0)
            },
        ];
        assert_eq!(
            choose(&nodes, &out, &known, Lsn(0), None, 0, None),
            Pick::Ready(1)
        );
    }

    /// The picks of turns `0..n`.
    fn turns(n: u32, pick: impl Fn(u32) -> Pick) -> Vec<Pick> {
        (0..n).map(pick).collect()
    }

    fn atomics32(v: &[u32]) -> Vec<AtomicU32> {
        v.iter().map(|&x| AtomicU32::new(x)).collect()
    }

    fn atomics64(v: &[u64]) -> Vec<AtomicU64> {
        v.iter().map(|&x| AtomicU64::new(x)).collect()
    }

    use NodeState::*;
    use Role::{Primary, Replica};

    #[test]
    fn only_healthy_replicas_are_eligible() {
        let nodes = [
            node(Primary, Healthy, 1),
            node(Replica, Lagging, 1),
            node(Replica, Banned, 1),
            node(Replica, Down, 1),
            node(Replica, Unknown, 1),
            node(Replica, Excluded, 1),
        ];
        let out = atomics32(&[0; 6]);
        let known = atomics64(&[100; 6]);
        for turn in 0..6 {
            assert_eq!(
                choose(&nodes, &out, &known, Lsn(1), None, turn, None),
                Pick::None
            );
        }
        assert_eq!(choose(&[], &[], &[], Lsn(1), None, 0, None), Pick::None);
    }

    #[test]
    fn a_preferred_replica_wins_ties_only() {
        let nodes = [
            node(Primary, Healthy, 1),
            node(Replica, Healthy, 1),
            node(Replica, Healthy, 1),
            node(Replica, Lagging, 1),
        ];
        let known = atomics64(&[0, 100, 100, 100]);
        let tied = atomics32(&[0, 2, 2, 0]);
        // A tie: the preferred replica whatever the turn (Ready and Check alike).
        for t in 0..4 {
            for (lsn, pick) in [(50, Pick::Ready(2)), (500, Pick::Check(2))] {
                assert_eq!(
                    choose(&nodes, &tied, &known, Lsn(lsn), None, t, Some(2)),
                    pick
                );
            }
        }
        // Busier than the best: the best.
        let busier = atomics32(&[0, 1, 2, 0]);
        assert_eq!(
            choose(&nodes, &busier, &known, Lsn(50), None, 0, Some(2)),
            Pick::Ready(1)
        );
        // Behind the token while the other has it: the one that has it.
        let behind = atomics64(&[0, 100, 10, 100]);
        assert_eq!(
            choose(&nodes, &tied, &behind, Lsn(50), None, 1, Some(2)),
            Pick::Ready(1)
        );
        // Not eligible (lagging), not a replica, or not a node: the rotation decides.
        for prefer in [3, 0, 9] {
            let picks = turns(2, |t| {
                choose(&nodes, &tied, &known, Lsn(50), None, t, Some(prefer))
            });
            assert_eq!(picks, [Pick::Ready(1), Pick::Ready(2)], "prefer {prefer}");
        }
    }

    #[test]
    fn least_outstanding_weighted_with_rotating_ties() {
        let nodes = [
            node(Primary, Healthy, 1),
            node(Replica, Healthy, 1),
            node(Replica, Healthy, 1),
        ];
        let known = atomics64(&[0, 100, 100]);
        let out = atomics32(&[0, 3, 1]);
        assert_eq!(
            choose(&nodes, &out, &known, Lsn(50), None, 0, None),
            Pick::Ready(2)
        );
        // Ties rotate evenly, whatever the positions of ineligible nodes.
        let out = atomics32(&[0, 2, 2]);
        let picks = turns(4, |t| choose(&nodes, &out, &known, Lsn(50), None, t, None));
        assert_eq!(
            picks,
            [
                Pick::Ready(1),
                Pick::Ready(2),
                Pick::Ready(1),
                Pick::Ready(2)
            ]
        );
        let picks = turns(4, |t| choose(&nodes, &out, &known, Lsn(500), None, t, None));
        assert_eq!(
            picks,
            [
                Pick::Check(1),
                Pick::Check(2),
                Pick::Check(1),
                Pick::Check(2)
            ]
        );
        // Weight 3 vs 1: node 1 takes up to 3x the outstanding requests of node 2.
        let nodes = [
            node(Primary, Healthy, 1),
            node(Replica, Healthy, 3),
            node(Replica, Healthy, 1),
        ];
        let out = atomics32(&[0, 5, 1]); // 6/3 = 2 == 2/1: tie
        let out2 = atomics32(&[0, 4, 1]); // 5/3 < 2/1
        let out3 = atomics32(&[0, 6, 1]); // 7/3 > 2/1
        assert_eq!(
            choose(&nodes, &out2, &known, Lsn(0), None, 0, None),
            Pick::Ready(1)
        );
        assert_eq!(
            choose(&nodes, &out3, &known, Lsn(0), None, 0, None),
            Pick::Ready(2)
        );
        let picks = turns(2, |t| choose(&nodes, &out, &known, Lsn(0), None, t, None));
        assert_eq!(picks, [Pick::Ready(1), Pick::Ready(2)]);
    }

    #[test]
    fn more_nodes_than_the_first_pass_keeps_rotate_over_all_ties() {
        // 12 replicas (past SEEN): the tied ones are found on both sides of the kept ones.
        let mut nodes = vec![node(Primary, Healthy, 1)];
        nodes.extend((0..12).map(|_| node(Replica, Healthy, 1)));
        let mut load = vec![0u32; 13];
        for (i, l) in load.iter_mut().enumerate().skip(1) {
            // Nodes 3 and 11 are the least busy; 11 has not replayed 50.
            *l = if i == 3 || i == 11 { 1 } else { 4 };
        }
        let out = atomics32(&load);
        let mut replay = vec![100u64; 13];
        replay[11] = 10;
        let known = atomics64(&replay);
        let picks = turns(4, |t| choose(&nodes, &out, &known, Lsn(0), None, t, None));
        assert_eq!(picks, [3, 11, 3, 11].map(Pick::Ready));
        // Only node 3 has replayed 50 among the best: it alone, every turn.
        let picks = turns(3, |t| choose(&nodes, &out, &known, Lsn(50), None, t, None));
        assert_eq!(picks, [Pick::Ready(3); 3]);
        // Node 11 preferred: a tie it is part of is its own (when it has replayed).
        assert_eq!(
            choose(&nodes, &out, &known, Lsn(0), None, 0, Some(11)),
            Pick::Ready(11)
        );
        assert_eq!(
            choose(&nodes, &out, &known, Lsn(50), None, 0, Some(11)),
            Pick::Ready(3)
        );
    }

    #[test]
    fn a_tie_is_exactly_neither_better() {
        let mut all = Vec::new();
        for load in 1..5u64 {
            for weight in 0..4u64 {
                for remote in [false, true] {
                    all.push(Candidate {
                        node: 0,
                        load,
                        weight,
                        tier: 2 * u8::from(weight == 0) + u8::from(remote),
                    });
                }
            }
        }
        for a in &all {
            for b in &all {
                let neither = !a.better_than(b) && !b.better_than(a);
                assert_eq!(a.ties_with(b), neither, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn weight_zero_only_when_nothing_else_is_eligible() {
        let mut nodes = [node(Replica, Healthy, 0), node(Replica, Healthy, 1)];
        let out = atomics32(&[0, 50]);
        let known = atomics64(&[100, 10]);
        for t in 0..2 {
            // Even needing a check, the weighted replica wins over a ready weight-0 one.
            assert_eq!(
                choose(&nodes, &out, &known, Lsn(50), None, t, None),
                Pick::Check(1)
            );
            assert_eq!(
                choose(&nodes, &out, &known, Lsn(5), None, t, None),
                Pick::Ready(1)
            );
        }
        nodes[1].state = Lagging;
        assert_eq!(
            choose(&nodes, &out, &known, Lsn(50), None, 0, None),
            Pick::Ready(0)
        );
        assert_eq!(
            choose(&nodes, &out, &known, Lsn(500), None, 1, None),
            Pick::Check(0)
        );
    }

    #[test]
    fn min_lsn_prefers_a_ready_replica_then_checks_the_best() {
        let nodes = [
            node(Primary, Healthy, 1),
            node(Replica, Healthy, 1),
            node(Replica, Healthy, 1),
        ];
        let out = atomics32(&[0, 0, 9]);
        let known = atomics64(&[0, 100, 200]);
        // Best by load (1) is ready.
        assert_eq!(
            choose(&nodes, &out, &known, Lsn(100), None, 0, None),
            Pick::Ready(1)
        );
        // Best by load is not ready, the other is: take the ready one despite its load.
        assert_eq!(
            choose(&nodes, &out, &known, Lsn(150), None, 0, None),
            Pick::Ready(2)
        );
        // Neither is ready: check the best by load.
        assert_eq!(
            choose(&nodes, &out, &known, Lsn(201), None, 0, None),
            Pick::Check(1)
        );
    }

    #[test]
    fn own_limits_tighten_or_loosen_from_measured_lag() {
        let lagged = |state, bytes: Option<u64>, ms: Option<u64>| NodeStatus {
            byte_lag: bytes,
            time_lag: ms.map(std::time::Duration::from_millis),
            ..node(Replica, state, 1)
        };
        let nodes = [
            node(Primary, Healthy, 1),
            lagged(Healthy, Some(10), Some(5)),
            lagged(Lagging, Some(5_000), Some(3_000)),
            lagged(Banned, Some(0), Some(0)),
            lagged(Unknown, Some(0), Some(0)),
            lagged(Excluded, Some(0), Some(0)),
            lagged(Healthy, None, None),
        ];
        let out = atomics32(&[0; 7]);
        let known = atomics64(&[100; 7]);
        let within = |bytes, ms: Option<u64>| LagLimits {
            bytes,
            time: ms.map(std::time::Duration::from_millis),
        };
        let picks = |l: LagLimits| -> Vec<Pick> {
            (0..4)
                .map(|t| choose(&nodes, &out, &known, Lsn(1), Some(&l), t, None))
                .collect()
        };
        // Looser: the Lagging replica within them shares the reads.
        let loose = picks(within(Some(10_000), Some(10_000)));
        assert!(loose.contains(&Pick::Ready(1)) && loose.contains(&Pick::Ready(2)));
        // Tighter: only the replica within them; the Healthy one over them is out.
        assert_eq!(picks(within(Some(100), None)), [Pick::Ready(1); 4]);
        assert_eq!(picks(within(None, Some(1))), [Pick::None; 4]);
        // Without own limits: Healthy replicas only (the unmeasured one too).
        let default: Vec<Pick> = (0..4)
            .map(|t| choose(&nodes, &out, &known, Lsn(1), None, t, None))
            .collect();
        assert!(default
            .iter()
            .all(|p| matches!(p, Pick::Ready(1) | Pick::Ready(6))));
        // An unknown time lag leaves the byte limit.
        let unknown_time = [node(Primary, Healthy, 1), lagged(Lagging, Some(5), None)];
        let l = within(Some(10), Some(1));
        assert!(eligible(&unknown_time[1], Some(&l)));
    }
}
