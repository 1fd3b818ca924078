//! What the monitors and the pools report about a node, and what it changes: a check's outcome
//! (state, lag, the primary's choice), a failed connection of a pool (a ban until the next
//! check), and the counters tests and waiting relays follow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tracing::{info, warn};

use super::lag::{PrimarySample, ReplicaSample, Verdict};
use super::topology::{Health, Outcome, State, Topology};
use crate::shutdown::Poker;

impl Topology {
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
            rt.failed_at = Some(Instant::now());
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

    /// Takes the outcome of one monitor attempt on `node`.
    pub(crate) fn record(&self, node: usize, outcome: Outcome) {
        let addr = &self.settings.nodes[node].addr;
        let mut st = self.lock();
        match outcome {
            Outcome::Checked { connected, .. }
                if st.nodes[node].health == Health::Banned
                    && st.nodes[node].failed_at.is_some_and(|f| connected < f) =>
            {
                // On a connection begun before a connection of the proxy failed there (a
                // fault may reach connections one by one): it says nothing about the node
                // since. The failure asked the monitor to reconnect for its next check.
            }
            Outcome::Checked { check, sent_at, .. } => {
                let rt = &mut st.nodes[node];
                if rt.health != Health::Up && rt.health != Health::Unchecked {
                    info!(node = %addr, "node answers again");
                }
                rt.health = Health::Up;
                rt.last_error = None;
                rt.seen = Some((check, sent_at));
                // A store, not a max: a replica rebuilt from an older backup moves backwards.
                if self.known_replay[node].swap(check.lsn.0, Ordering::Relaxed) < check.lsn.0 {
                    self.replayed[node].notify_waiters();
                }
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
        self.attempts[node].fetch_add(1, Ordering::Release);
    }

    /// How many monitor attempts on `node` have been recorded (each one's view published).
    pub fn attempts(&self, node: usize) -> u64 {
        self.attempts[node].load(Ordering::Acquire)
    }

    /// How many times a check found `node` failed after it had answered (see `failures`).
    pub fn failures(&self, node: usize) -> &AtomicU64 {
        &self.failures[node]
    }

    /// Wakes every session through `waker` when a node fails (the first call sets it).
    pub fn wake_on_failure(&self, waker: Poker) {
        let _ = self.waker.set(waker);
    }

    fn fail(&self, st: &mut State, node: usize, health: Health, error: String) {
        // The first failed check since the node last answered (also when a failed connection
        // of a pool banned it just before): repeated failures wake nobody.
        let rt = &st.nodes[node];
        if rt.seen.is_some() || rt.health == Health::Up {
            self.failures[node].fetch_add(1, Ordering::AcqRel);
            if let Some(w) = self.waker.get() {
                w.poke();
            }
        }
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
}
