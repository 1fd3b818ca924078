//! Replication lag of one replica: the measurement (bytes and time behind the primary) and the
//! hysteresis that decides whether the replica is in or out of the read rotation.
//!
//! Pure code: the monitor feeds it samples and the current instant, nothing here does I/O.
//!
//! # Measurement
//! - **Byte lag** = the latest primary sample's `pg_current_wal_lsn()` − the replica's
//!   `pg_last_wal_replay_lsn()` (0 if the replica is ahead of that sample).
//! - **Time lag** is 0 when the replica is *caught up*: it has replayed everything it received
//!   (`replay >= pg_last_wal_receive_lsn()`) and is not behind the primary sample. Otherwise it is
//!   the smaller of two upper bounds of how stale the replica's data can be:
//!   - `now() − pg_last_xact_replay_timestamp()` on the replica (its own clock, so no skew between
//!     pgtier and the replica), and
//!   - the time since the primary sample it was last caught up with was taken (pgtier's monotonic
//!     clock).
//!
//!   The second bound is what keeps an idle primary from looking like growing lag: a lone WAL
//!   record without a transaction (a checkpoint, `RUNNING_XACTS`) puts the replica a few bytes
//!   behind for a moment while its last replayed commit may be hours old.
//!   With neither bound known (never caught up, no transaction replayed yet) the time lag is
//!   unknown and only the byte limit applies.
//!
//! # Verdict (hysteresis)
//! - No verdict (the node stays `Unknown`) until the replica *and* the primary were measured.
//! - The first verdict has no hysteresis: within both limits → `Healthy` at once (no ban at
//!   startup), over either → `Lagging`.
//! - `Healthy` → `Lagging` at the first check over either limit (strictly greater).
//! - `Lagging` → `Healthy` after [`RECOVER_CHECKS`] consecutive checks at or under
//!   [`RECOVER_PERCENT`] % of both limits (with the default 100 ms interval: about 200 ms after
//!   the replica caught up). Any other check restarts the count.
//! - [`LagState::reset`] (the node failed) forgets the verdict: the next successful check is a
//!   first verdict again.

use std::time::{Duration, Instant};

use super::Lsn;

/// A lagging replica returns to the rotation only once under this percentage of each limit.
pub const RECOVER_PERCENT: u64 = 80;
/// ... on this many consecutive checks.
pub const RECOVER_CHECKS: u32 = 2;

/// Lag limits of one database (None: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LagLimits {
    /// Time lag limit.
    pub time: Option<Duration>,
    /// Byte lag limit.
    pub bytes: Option<u64>,
}

impl LagLimits {
    fn over(&self, lag: &Lag) -> bool {
        self.bytes.is_some_and(|b| lag.bytes > b)
            || matches!((self.time, lag.time), (Some(limit), Some(t)) if t > limit)
    }

    fn well_under(&self, lag: &Lag) -> bool {
        let bytes_ok = self.bytes.is_none_or(|b| {
            u128::from(lag.bytes) * 100 <= u128::from(b) * u128::from(RECOVER_PERCENT)
        });
        let time_ok = match (self.time, lag.time) {
            (Some(limit), Some(t)) => {
                t.as_nanos() * 100 <= limit.as_nanos() * u128::from(RECOVER_PERCENT)
            }
            _ => true,
        };
        bytes_ok && time_ok
    }
}

/// What the monitor read from the primary at one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimarySample {
    /// `pg_current_wal_lsn()`.
    pub lsn: Lsn,
    /// When the check was sent: the primary was at least at `lsn` then.
    pub at: Instant,
}

/// What the monitor read from a replica at one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaSample {
    /// `pg_last_wal_replay_lsn()`.
    pub replay: Lsn,
    /// `pg_last_wal_receive_lsn()` (None when not streaming).
    pub receive: Option<Lsn>,
    /// `now() − pg_last_xact_replay_timestamp()` on the replica (None before any replayed
    /// transaction).
    pub since_last_replayed_xact: Option<Duration>,
}

/// Lag of a replica at one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// Primary LSN − replay LSN.
    pub bytes: u64,
    /// How stale the replica's data may be (0 when caught up; None when unknown).
    pub time: Option<Duration>,
}

/// In or out of the read rotation because of lag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limits.
    Healthy,
    /// Over a limit (or not yet back under the recovery threshold).
    Lagging,
}

/// Lag bookkeeping of one replica across checks.
#[derive(Debug, Clone, Default)]
pub struct LagState {
    verdict: Option<Verdict>,
    good_checks: u32,
    /// When the primary sample this replica was last caught up with was taken.
    caught_up_at: Option<Instant>,
    last_replay: Lsn,
}

impl LagState {
    /// The current verdict (None: not measured yet).
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
    }

    /// Takes the replica as within limits without a measurement (unmonitored topologies).
    pub(crate) fn assume_healthy(&mut self) {
        self.verdict = Some(Verdict::Healthy);
    }

    /// Forgets the verdict and the staleness bound (the node failed or was restarted).
    pub fn reset(&mut self) {
        *self = LagState::default();
    }

    /// Takes one replica sample, with the latest primary sample if any, at `now`; returns the
    /// lag and the verdict (None while the primary was never measured).
    pub fn observe(
        &mut self,
        replica: &ReplicaSample,
        primary: Option<&PrimarySample>,
        limits: &LagLimits,
        now: Instant,
    ) -> Option<(Lag, Verdict)> {
        if replica.replay < self.last_replay {
            // Rebuilt from an older backup: what it was caught up with says nothing now.
            self.caught_up_at = None;
        }
        self.last_replay = replica.replay;
        let primary = primary?;
        let lag = self.measure(replica, primary, now);
        let verdict = match self.verdict {
            None | Some(Verdict::Healthy) => {
                self.good_checks = 0;
                if limits.over(&lag) {
                    Verdict::Lagging
                } else {
                    Verdict::Healthy
                }
            }
            Some(Verdict::Lagging) => {
                if limits.well_under(&lag) {
                    self.good_checks += 1;
                } else {
                    self.good_checks = 0;
                }
                if self.good_checks >= RECOVER_CHECKS {
                    self.good_checks = 0;
                    Verdict::Healthy
                } else {
                    Verdict::Lagging
                }
            }
        };
        self.verdict = Some(verdict);
        Some((lag, verdict))
    }

    fn measure(&mut self, r: &ReplicaSample, p: &PrimarySample, now: Instant) -> Lag {
        let bytes = p.lsn.bytes_after(r.replay);
        let replayed_all_received = r.receive.is_none_or(|rcv| r.replay >= rcv);
        if replayed_all_received && r.replay >= p.lsn {
            self.caught_up_at = Some(self.caught_up_at.map_or(p.at, |t| t.max(p.at)));
            return Lag {
                bytes,
                time: Some(Duration::ZERO),
            };
        }
        let since_caught_up = self.caught_up_at.map(|t| now.saturating_duration_since(t));
        let time = match (r.since_last_replayed_xact, since_caught_up) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Lag { bytes, time }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limits(ms: u64, bytes: u64) -> LagLimits {
        LagLimits {
            time: Some(MS * ms as u32),
            bytes: Some(bytes),
        }
    }

    fn replica(replay: u64, receive: u64, since_xact_ms: Option<u64>) -> ReplicaSample {
        ReplicaSample {
            replay: Lsn(replay),
            receive: Some(Lsn(receive)),
            since_last_replayed_xact: since_xact_ms.map(Duration::from_millis),
        }
    }

    fn primary(lsn: u64, at: Instant) -> PrimarySample {
        PrimarySample { lsn: Lsn(lsn), at }
    }

    #[test]
    fn no_verdict_before_the_primary_is_measured() {
        let mut s = LagState::default();
        let t0 = Instant::now();
        assert_eq!(
            s.observe(&replica(100, 100, None), None, &limits(1000, 10), t0),
            None
        );
        assert_eq!(s.verdict(), None);
        let (lag, v) = s
            .observe(
                &replica(100, 100, None),
                Some(&primary(100, t0)),
                &limits(1000, 10),
                t0,
            )
            .unwrap();
        assert_eq!(
            v,
            Verdict::Healthy,
            "zero lag at the first check: healthy at once"
        );
        assert_eq!(
            lag,
            Lag {
                bytes: 0,
                time: Some(Duration::ZERO)
            }
        );
    }

    #[test]
    fn time_lag_is_zero_when_caught_up_even_if_the_last_commit_is_old() {
        let mut s = LagState::default();
        let t0 = Instant::now();
        let lim = limits(1000, 1 << 20);
        // Idle primary: the last replayed transaction is an hour old, but nothing is missing.
        for i in 0..30 {
            let now = t0 + MS * 100 * i;
            let (lag, v) = s
                .observe(
                    &replica(500, 500, Some(3_600_000 + 100 * u64::from(i))),
                    Some(&primary(500, now)),
                    &lim,
                    now,
                )
                .unwrap();
            assert_eq!(lag.time, Some(Duration::ZERO));
            assert_eq!(lag.bytes, 0);
            assert_eq!(v, Verdict::Healthy);
        }
        // A lone non-transaction record (checkpoint): 40 bytes behind for one check. The time
        // lag is bounded by the last caught-up sample, not by the hour-old commit.
        let now = t0 + MS * 3100;
        let (lag, v) = s
            .observe(
                &replica(500, 540, Some(3_603_100)),
                Some(&primary(540, now)),
                &lim,
                now,
            )
            .unwrap();
        assert_eq!(lag.bytes, 40);
        assert_eq!(lag.time, Some(MS * 200));
        assert_eq!(v, Verdict::Healthy);
    }

    #[test]
    fn not_caught_up_while_received_wal_is_unreplayed() {
        let mut s = LagState::default();
        let t0 = Instant::now();
        let lim = limits(1000, 1 << 20);
        // Replay >= primary sample (taken earlier) but more was received: not fully caught up.
        let (lag, _) = s
            .observe(
                &replica(500, 600, Some(30)),
                Some(&primary(500, t0)),
                &lim,
                t0,
            )
            .unwrap();
        assert_eq!(
            lag,
            Lag {
                bytes: 0,
                time: Some(MS * 30)
            }
        );
        // Never caught up and no transaction replayed: time unknown, bytes still judged.
        let mut s = LagState::default();
        let r = ReplicaSample {
            since_last_replayed_xact: None,
            ..replica(100, 200, None)
        };
        let (lag, v) = s.observe(&r, Some(&primary(200, t0)), &lim, t0).unwrap();
        assert_eq!(
            lag,
            Lag {
                bytes: 100,
                time: None
            }
        );
        assert_eq!(v, Verdict::Healthy);
        let (_, v) = s
            .observe(&r, Some(&primary(2 << 20, t0)), &lim, t0)
            .unwrap();
        assert_eq!(v, Verdict::Lagging);
    }

    #[test]
    fn over_a_limit_is_lagging_at_once_and_back_after_two_checks_well_under() {
        let mut s = LagState::default();
        let t0 = Instant::now();
        let lim = limits(1000, 1000);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let obs = |s: &mut LagState, replay: u64, p: u64, since_ms: u64, now: Instant| {
            s.observe(
                &replica(replay, replay, Some(since_ms)),
                Some(&primary(p, now)),
                &lim,
                now,
            )
            .unwrap()
            .1
        };
        assert_eq!(obs(&mut s, 100, 100, 0, at(0)), Verdict::Healthy);
        // Exactly at the byte limit: still healthy (over means strictly greater).
        assert_eq!(obs(&mut s, 100, 1100, 50, at(100)), Verdict::Healthy);
        assert_eq!(obs(&mut s, 100, 1101, 50, at(200)), Verdict::Lagging);
        // Under the limit but above 80 %: stays lagging however often.
        for i in 0..5 {
            assert_eq!(
                obs(&mut s, 1000, 1900, 50, at(300 + 100 * i)),
                Verdict::Lagging
            );
        }
        // 80 % exactly counts as well under; one good check is not enough.
        assert_eq!(obs(&mut s, 1000, 1800, 50, at(900)), Verdict::Lagging);
        // A bad check in between restarts the count.
        assert_eq!(obs(&mut s, 1000, 1900, 50, at(1000)), Verdict::Lagging);
        assert_eq!(obs(&mut s, 1900, 1900, 0, at(1100)), Verdict::Lagging);
        assert_eq!(obs(&mut s, 1900, 1900, 0, at(1200)), Verdict::Healthy);
        assert_eq!(obs(&mut s, 1900, 1900, 0, at(1300)), Verdict::Healthy);
    }

    #[test]
    fn time_limit_uses_the_staleness_bound() {
        let mut s = LagState::default();
        let t0 = Instant::now();
        let lim = LagLimits {
            time: Some(MS * 300),
            bytes: None,
        };
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (_, v) = s
            .observe(
                &replica(100, 100, Some(10_000)),
                Some(&primary(100, at(0))),
                &lim,
                at(0),
            )
            .unwrap();
        assert_eq!(v, Verdict::Healthy);
        // Replay paused at 100 while the primary moves on: staleness grows from the last
        // caught-up sample (t0), not from the 10 s old commit.
        let mut verdicts = Vec::new();
        for ms in [100, 200, 300, 400] {
            let r = replica(100, 100 + ms, Some(10_000 + ms));
            let (lag, v) = s
                .observe(&r, Some(&primary(100 + ms, at(ms))), &lim, at(ms))
                .unwrap();
            assert_eq!(lag.time, Some(MS * ms as u32));
            verdicts.push(v);
        }
        assert_eq!(
            verdicts,
            [
                Verdict::Healthy,
                Verdict::Healthy,
                Verdict::Healthy,
                Verdict::Lagging
            ]
        );
        // Caught up again: time 0, back after two checks.
        let (lag, v) = s
            .observe(
                &replica(600, 600, Some(0)),
                Some(&primary(600, at(500))),
                &lim,
                at(500),
            )
            .unwrap();
        assert_eq!((lag.time, v), (Some(Duration::ZERO), Verdict::Lagging));
        let (_, v) = s
            .observe(
                &replica(600, 600, Some(0)),
                Some(&primary(600, at(600))),
                &lim,
                at(600),
            )
            .unwrap();
        assert_eq!(v, Verdict::Healthy);
    }

    #[test]
    fn reset_and_rewind_forget_the_past() {
        let mut s = LagState::default();
        let t0 = Instant::now();
        let lim = limits(100, 1000);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        s.observe(
            &replica(5000, 5000, None),
            Some(&primary(5000, at(0))),
            &lim,
            at(0),
        )
        .unwrap();
        // Rebuilt from an older backup: the old caught-up instant must not bound its lag.
        let (lag, _) = s
            .observe(
                &replica(4000, 4500, Some(50)),
                Some(&primary(5000, at(100))),
                &lim,
                at(100),
            )
            .unwrap();
        assert_eq!(
            lag,
            Lag {
                bytes: 1000,
                time: Some(MS * 50)
            }
        );
        // Lagging, then the node fails: the next check is a first verdict (healthy at once).
        let (_, v) = s
            .observe(
                &replica(4000, 4500, Some(500)),
                Some(&primary(6000, at(200))),
                &lim,
                at(200),
            )
            .unwrap();
        assert_eq!(v, Verdict::Lagging);
        s.reset();
        assert_eq!(s.verdict(), None);
        let (_, v) = s
            .observe(
                &replica(6000, 6000, None),
                Some(&primary(6000, at(300))),
                &lim,
                at(300),
            )
            .unwrap();
        assert_eq!(v, Verdict::Healthy);
    }

    #[test]
    fn no_limits_never_lag() {
        let mut s = LagState::default();
        let t0 = Instant::now();
        let (lag, v) = s
            .observe(
                &replica(0, 0, Some(99_999)),
                Some(&primary(1 << 40, t0)),
                &LagLimits::default(),
                t0,
            )
            .unwrap();
        assert_eq!(lag.bytes, 1 << 40);
        assert_eq!(v, Verdict::Healthy);
    }
}
