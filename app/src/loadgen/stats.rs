//! Latency percentiles, a tiny RNG, timestamps without a date crate, and the replica share
//! measured from `pg_stat_database` on each node.

use std::time::Duration;

use anyhow::{Context, Result};

/// Percentile `p` (0..=100) of sorted latencies in microseconds.
pub fn percentile(sorted: &[u32], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    Duration::from_micros(u64::from(sorted[i]))
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// xorshift64*: enough randomness to pick operations, no crate needed.
pub struct Rng(u64);

impl Rng {
    /// Seeded (0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Picks an element.
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// `hours` after 2030-01-01T00:00:00Z, as RFC 3339.
pub fn rfc3339_hours_after_2030(hours: u64) -> String {
    // Days from 1970-01-01 to 2030-01-01.
    const DAYS_2030: i64 = 21915;
    let days = DAYS_2030 + (hours / 24) as i64;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:00:00Z", hours % 24)
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Transactions counted by one node: (is a replica, xact_commit + xact_rollback).
pub async fn node_xacts(dsn: &str) -> Result<(bool, i64)> {
    // sslmode/sslrootcert work here as in DATABASE_URL.
    let (config, connector) = crate::tls::parse(dsn).context("--node-dsn")?;
    let client = connector
        .connect(&config)
        .await
        // Not the DSN itself: it may hold a password.
        .with_context(|| format!("connecting to node {:?}", config.get_hosts()))?;
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), (xact_commit + xact_rollback)::int8 \
             FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Snapshot of every node's counters.
pub async fn snapshot(dsns: &[String]) -> Result<Vec<(bool, i64)>> {
    let mut out = Vec::new();
    for d in dsns {
        out.push(node_xacts(d).await?);
    }
    Ok(out)
}

/// Share of transactions run on replicas between two snapshots (None without replicas'
/// activity data).
pub fn replica_share(before: &[(bool, i64)], after: &[(bool, i64)]) -> Option<f64> {
    let (mut replica, mut total) = (0i64, 0i64);
    for ((_, b), (is_replica, a)) in before.iter().zip(after) {
        let d = (a - b).max(0);
        total += d;
        if *is_replica {
            replica += d;
        }
    }
    (total > 0).then(|| replica as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339_hours_after_2030(0), "2030-01-01T00:00:00Z");
        assert_eq!(rfc3339_hours_after_2030(25), "2030-01-02T01:00:00Z");
        assert_eq!(rfc3339_hours_after_2030(59 * 24), "2030-03-01T00:00:00Z");
        assert_eq!(rfc3339_hours_after_2030(365 * 24), "2031-01-01T00:00:00Z");
    }

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_micros(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_micros(99));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }

    #[test]
    fn share() {
        let b = [(false, 10), (true, 0), (true, 5)];
        let a = [(false, 20), (true, 20), (true, 15)];
        assert_eq!(replica_share(&b, &a), Some(0.75));
    }
}
