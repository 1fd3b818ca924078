//! SHOW STATS averages: every `STATS_PERIOD` the totals are sampled, and the averages are the
//! difference with the previous sample (rates per second; times per transaction or query), as
//! PgBouncer's `stats_period`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{DbTotals, Metrics};

/// How often averages are recomputed.
pub const STATS_PERIOD: Duration = Duration::from_secs(15);

/// Averages of one database over the last period (PgBouncer's avg_* columns and units).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Averages {
    /// Transactions per second.
    pub xact_count: u64,
    /// Queries per second.
    pub query_count: u64,
    /// Bytes received per second.
    pub recv: u64,
    /// Bytes sent per second.
    pub sent: u64,
    /// µs per transaction.
    pub xact_time: u64,
    /// µs per query.
    pub query_time: u64,
    /// µs of waiting for a server per transaction.
    pub wait_time: u64,
}

/// The last sample and the averages computed from it.
#[derive(Debug, Default)]
pub(super) struct Period {
    state: Mutex<Option<(Instant, HashMap<String, DbTotals>)>>,
    averages: Mutex<HashMap<String, Averages>>,
}

fn averages(old: &DbTotals, new: &DbTotals, secs: f64) -> Averages {
    let d = |a: u64, b: u64| b.saturating_sub(a);
    let xacts = d(old.xact_count, new.xact_count);
    let queries = d(old.query_count, new.query_count);
    let per_sec = |v: u64| (v as f64 / secs.max(0.001)) as u64;
    let per = |v: u64, n: u64| v.checked_div(n).unwrap_or(0);
    Averages {
        xact_count: per_sec(xacts),
        query_count: per_sec(queries),
        recv: per_sec(d(old.received, new.received)),
        sent: per_sec(d(old.sent, new.sent)),
        xact_time: per(d(old.xact_us, new.xact_us), xacts),
        query_time: per(d(old.query_us, new.query_us), queries),
        wait_time: per(d(old.wait_us, new.wait_us), xacts),
    }
}

impl Metrics {
    /// Samples the totals and recomputes the averages (called every [`STATS_PERIOD`]).
    pub fn tick_period(&self) {
        let now = Instant::now();
        let totals: HashMap<String, DbTotals> = self.totals().into_iter().collect();
        let mut state = self.period.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, old)) = state.as_ref() {
            let secs = now.duration_since(*at).as_secs_f64();
            let avgs = totals
                .iter()
                .map(|(db, t)| {
                    let zero = DbTotals::default();
                    (db.clone(), averages(old.get(db).unwrap_or(&zero), t, secs))
                })
                .collect();
            *self
                .period
                .averages
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = avgs;
        }
        *state = Some((now, totals));
    }

    /// The averages of `database` over the last complete period (zeros before the first).
    pub fn averages(&self, database: &str) -> Averages {
        self.period
            .averages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(database)
            .copied()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_are_rates_and_per_transaction_times() {
        let old = DbTotals::default();
        let new = DbTotals {
            xact_count: 30,
            query_count: 60,
            received: 3000,
            sent: 6000,
            xact_us: 3000,
            query_us: 1200,
            wait_us: 300,
            replica_xacts: 0,
        };
        let a = averages(&old, &new, 15.0);
        assert_eq!((a.xact_count, a.query_count), (2, 4));
        assert_eq!((a.recv, a.sent), (200, 400));
        assert_eq!((a.xact_time, a.query_time, a.wait_time), (100, 20, 10));
        assert_eq!(averages(&new, &new, 15.0), Averages::default());
    }
}
