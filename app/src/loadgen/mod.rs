//! The load generator: seeds the API, drives N virtual users for a fixed time (optionally at a
//! fixed total rate), prints a progress line a second, then throughput, latency percentiles,
//! errors and the share of database reads pgtier served from replicas (from pgtier's
//! `/metrics`; per-node `pg_stat_database` transaction counts as a secondary measure).

pub mod client;
pub mod pgtier_metrics;
pub mod seed;
pub mod stats;
pub mod workload;

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use self::client::Http;
use self::pgtier_metrics::RoutedReads;
use self::stats::{ms, percentile};
use self::workload::{run_user, Shared, OPS};

/// `pgtier-app loadgen` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Base URL of the app.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Virtual users (concurrent request loops).
    #[arg(long, default_value_t = 50)]
    pub users: usize,
    /// How long to drive load, e.g. 30s, 2m, 500ms.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Total requests per second to aim for (default: as fast as the users can go).
    #[arg(long)]
    pub rate: Option<f64>,
    /// pgtier's Prometheus endpoint (its `metrics_listen`), e.g.
    /// http://127.0.0.1:9930/metrics: scraped before and after the run for the share of reads
    /// served by replicas.
    #[arg(long = "pgtier-metrics", value_name = "URL")]
    pub pgtier_metrics: Option<String>,
    /// Only count this database's transactions in --pgtier-metrics (default: every database).
    #[arg(long = "pgtier-database", value_name = "NAME")]
    pub pgtier_database: Option<String>,
    /// A Postgres node's DSN (repeat for the primary and each replica) for a secondary
    /// measure: the replica share of all transactions in pg_stat_database (writes included).
    #[arg(long = "node-dsn")]
    pub node_dsn: Vec<String>,
    /// Tutors to create for this run.
    #[arg(long, default_value_t = 100)]
    pub tutors: usize,
    /// Students to create for this run (at least one per user is used round-robin).
    #[arg(long, default_value_t = 200)]
    pub students: usize,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

impl Options {
    /// Defaults for `url`.
    pub fn new(url: &str) -> Options {
        Options {
            url: url.to_owned(),
            users: 50,
            duration: Duration::from_secs(30),
            rate: None,
            pgtier_metrics: None,
            pgtier_database: None,
            node_dsn: Vec::new(),
            tutors: 100,
            students: 200,
            quiet: false,
        }
    }
}

/// Parses "30s", "2m", "500ms", "1h" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (ms, s, m, h)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("{s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Per-operation results.
#[derive(Debug, Clone)]
pub struct OpStats {
    /// Operation name.
    pub name: &'static str,
    /// Requests.
    pub count: usize,
    /// 95th percentile latency.
    pub p95: Duration,
}

/// The end-of-run report.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Requests finished in the measured period.
    pub requests: u64,
    /// Length of the measured period.
    pub elapsed: Duration,
    /// Requests per second.
    pub throughput: f64,
    /// Latency percentiles.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest request.
    pub max: Duration,
    /// Failures (transport, 5xx, unexpected 4xx, stale reads).
    pub errors: u64,
    /// Expected 409s from races.
    pub conflicts: u64,
    /// Reads that missed the user's own write.
    pub stale_reads: u64,
    /// What pgtier routed during the run, when `--pgtier-metrics` was given (`Err`: the
    /// scrape after the run failed; the rest of the report still stands).
    pub pgtier_reads: Option<Result<RoutedReads, String>>,
    /// Share of all database transactions (writes included) run on replicas, from
    /// `pg_stat_database`, when node DSNs were given.
    pub replica_share: Option<f64>,
    /// By operation.
    pub ops: Vec<OpStats>,
    /// The first error messages.
    pub first_errors: Vec<String>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "requests {} in {:.1} s: {:.0} req/s",
            self.requests,
            self.elapsed.as_secs_f64(),
            self.throughput
        )?;
        writeln!(
            f,
            "latency p50 {}  p95 {}  p99 {}  max {}",
            ms(self.p50),
            ms(self.p95),
            ms(self.p99),
            ms(self.max)
        )?;
        writeln!(
            f,
            "errors {}  stale reads {}  conflicts (expected 409) {}",
            self.errors, self.stale_reads, self.conflicts
        )?;
        match &self.pgtier_reads {
            Some(Ok(r)) => {
                let share = r
                    .share()
                    .map_or("n/a".to_owned(), |s| format!("{:.1}%", s * 100.0));
                write!(
                    f,
                    "replica share of routed reads {share} (pgtier: {} reads served by replicas, \
                     {} fell back to the primary; {} writes on the primary",
                    r.replica_reads, r.primary_fallbacks, r.primary_writes
                )?;
                if r.primary_other > 0 {
                    write!(f, ", {} other primary", r.primary_other)?;
                }
                writeln!(f, ")")?;
            }
            Some(Err(e)) => writeln!(f, "replica share of routed reads n/a: {e}")?,
            None if self.replica_share.is_none() => writeln!(
                f,
                "replica share n/a (pass --pgtier-metrics http://PGTIER:PORT/metrics)"
            )?,
            None => {}
        }
        if let Some(s) = self.replica_share {
            writeln!(
                f,
                "node replica share {:.1}% of all database transactions, writes included \
                 (pg_stat_database)",
                s * 100.0
            )?;
        }
        for o in &self.ops {
            writeln!(f, "  {:<14} {:>7}  p95 {}", o.name, o.count, ms(o.p95))?;
        }
        for e in &self.first_errors {
            writeln!(f, "  error: {e}")?;
        }
        Ok(())
    }
}

/// Seeds, drives the load and returns the report.
pub async fn run(opts: &Options) -> Result<Summary> {
    if opts.users == 0 {
        bail!("--users must be at least 1");
    }
    let http = Http::new(&opts.url);
    let health = http
        .get("/health")
        .await
        .with_context(|| format!("reaching the app at {}", opts.url))?;
    if health.status != 200 {
        bail!(
            "{}/health: HTTP {} {}",
            opts.url,
            health.status,
            health.text()
        );
    }
    let run_tag = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let t = Instant::now();
    let world = seed::seed(&http, &run_tag, opts.tutors.max(1), opts.students.max(1)).await?;
    if !opts.quiet {
        println!(
            "seeded {} subjects, {} tutors, {} students in {:.1} s",
            world.subjects.len(),
            world.tutors.len(),
            world.students.len(),
            t.elapsed().as_secs_f64()
        );
    }
    let world = Arc::new(world);
    let pgtier_db = opts.pgtier_database.as_deref();
    // Taken after seeding so only the run's own requests count; failing here, before any
    // load, is cheap, so a wrong URL stops the run.
    let routing_before = match &opts.pgtier_metrics {
        Some(url) => Some(pgtier_metrics::scrape(url, pgtier_db).await?),
        None => None,
    };
    let before = if opts.node_dsn.is_empty() {
        None
    } else {
        Some(stats::snapshot(&opts.node_dsn).await?)
    };
    let shared = Arc::new(Shared::default());
    // A run-specific start slot keeps this run's bookings off earlier runs' hours.
    let minutes = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0);
    shared
        .slot
        .store((minutes * 7919) % (8 * 365 * 24), Ordering::Relaxed);
    let interval = opts
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(opts.users as f64 / r));
    let start = Instant::now();
    let deadline = start + opts.duration;
    let mut users = Vec::new();
    for n in 0..opts.users {
        users.push(tokio::spawn(run_user(
            n,
            http.clone(),
            world.clone(),
            shared.clone(),
            deadline,
            interval,
        )));
    }
    let progress = (!opts.quiet).then(|| tokio::spawn(progress(shared.clone(), start, deadline)));
    let mut lat: Vec<Vec<u32>> = vec![Vec::new(); OPS.len()];
    for u in users {
        for (i, v) in u.await?.into_iter().enumerate() {
            lat[i].extend(v);
        }
    }
    let elapsed = start.elapsed();
    if let Some(p) = progress {
        p.abort();
    }
    let pgtier_reads = match (&opts.pgtier_metrics, routing_before) {
        (Some(url), Some(before)) => Some({
            // pgtier may count a transaction just after relaying its last reply.
            tokio::time::sleep(Duration::from_millis(100)).await;
            match pgtier_metrics::scrape(url, pgtier_db).await {
                Ok(after) if after.series == 0 => Err(format!(
                    "no {} samples{} at {url} (is it pgtier's metrics_listen?)",
                    pgtier_metrics::TRANSACTIONS,
                    pgtier_db.map_or(String::new(), |d| format!(" for database {d:?}"))
                )),
                Ok(after) => Ok(RoutedReads::between(&before, &after)),
                // After a whole run, keep the report rather than fail it.
                Err(e) => Err(format!("{e:#}")),
            }
        }),
        _ => None,
    };
    let replica_share = match before {
        Some(before) => {
            // Postgres publishes a backend's counters within about a second of its last
            // transaction.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let after = stats::snapshot(&opts.node_dsn).await?;
            stats::replica_share(&before, &after)
        }
        None => None,
    };
    let mut all: Vec<u32> = lat.iter().flatten().copied().collect();
    all.sort_unstable();
    let ops = OPS
        .iter()
        .zip(lat.iter_mut())
        .map(|(name, v)| {
            v.sort_unstable();
            OpStats {
                name,
                count: v.len(),
                p95: percentile(v, 95.0),
            }
        })
        .collect();
    let requests = all.len() as u64;
    let first_errors = shared
        .first_errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Summary {
        requests,
        elapsed,
        throughput: requests as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 50.0),
        p95: percentile(&all, 95.0),
        p99: percentile(&all, 99.0),
        max: all
            .last()
            .map_or(Duration::ZERO, |m| Duration::from_micros(u64::from(*m))),
        errors: shared.errors.load(Ordering::Relaxed),
        conflicts: shared.conflicts.load(Ordering::Relaxed),
        stale_reads: shared.stale_reads.load(Ordering::Relaxed),
        pgtier_reads,
        replica_share,
        ops,
        first_errors,
    })
}

async fn progress(shared: Arc<Shared>, start: Instant, deadline: Instant) {
    let mut tick = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut last_errors = 0;
    loop {
        tick.tick().await;
        let mut w = std::mem::take(&mut *shared.window.lock().unwrap_or_else(|p| p.into_inner()));
        w.sort_unstable();
        let errors = shared.errors.load(Ordering::Relaxed);
        println!(
            "[{:>4.0}s] {:>6} req/s  p50 {:>9}  p95 {:>9}  p99 {:>9}  errors +{} (total {})",
            start.elapsed().as_secs_f64(),
            w.len(),
            ms(percentile(&w, 50.0)),
            ms(percentile(&w, 95.0)),
            ms(percentile(&w, 99.0)),
            errors - last_errors,
            errors
        );
        last_errors = errors;
        if Instant::now() >= deadline {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
