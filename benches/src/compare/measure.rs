//! The measuring loop: pgbench -S runs against each target, interleaved round by round, with
//! each proxy's CPU (from /proc), the machine's, and where the transactions committed.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use pgtier_kit::Cluster;

use crate::options::{Options, RunKind};
use crate::pgbench::{field, pgbench_ssl};
use crate::procstat;

/// One endpoint pgbench can talk to.
pub(crate) struct Target {
    /// `direct`, `replica`, `replicas`, `pgtier`, `pgbouncer` or `baseline`.
    pub(crate) name: &'static str,
    pub(crate) port: u16,
    /// A second port that gets half the clients, at the same time (`replicas`).
    pub(crate) also: Option<u16>,
    /// The proxy's process (None for Postgres itself).
    pub(crate) pid: Option<u32>,
}

/// One pgbench run's numbers.
#[derive(Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) tps: f64,
    pub(crate) latency_ms: f64,
    pub(crate) cpu_us_per_tx: Option<f64>,
    /// The part of `cpu_us_per_tx` spent in the kernel.
    pub(crate) sys_us_per_tx: Option<f64>,
    /// CPU the whole machine spent per transaction (pgbench, Postgres, the proxy, the rest).
    pub(crate) machine_us_per_tx: f64,
    /// Of it, pgbench's.
    pub(crate) pgbench_us_per_tx: f64,
    /// Of it, the PostgreSQL processes'.
    pub(crate) postgres_us_per_tx: f64,
    /// pgbench's context switches per transaction.
    pub(crate) pgbench_switches_per_tx: f64,
    /// Context switches of the live PostgreSQL processes per transaction (backends that exited
    /// during the run, as in direct runs, are not counted).
    pub(crate) postgres_switches_per_tx: f64,
    /// The share of the run's transactions the replicas committed (None without replicas).
    /// Approximate: Postgres 15 flushes an idle backend's statistics up to 10 s late, so
    /// about the last second of one run's commits is counted in a later run (PgBouncer's runs
    /// show a few percent "on replicas" that way, and the next pgtier run as much on the
    /// primary).
    pub(crate) replica_share: Option<f64>,
}

/// Samples by (run kind label, target, round): a round pairs runs made next to each other.
pub(crate) type ByRound = BTreeMap<(String, &'static str, usize), Sample>;

/// The first error line of each (run kind label, target) that failed.
pub(crate) type Failures = BTreeMap<(String, &'static str), String>;

/// Transactions committed in database `bench` on each node (primary first).
fn commits(cluster: &Cluster) -> Result<Vec<i64>> {
    if cluster.replicas().is_empty() {
        return Ok(Vec::new());
    }
    std::iter::once(cluster.primary())
        .chain(cluster.replicas())
        .map(|n| {
            let v = n.psql("SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'")?;
            Ok(v.trim().parse()?)
        })
        .collect()
}

/// The replicas' share of the commits between two `commits` readings (None without replicas).
fn replica_share(before: &[i64], after: &[i64]) -> Option<f64> {
    if before.len() < 2 {
        return None;
    }
    let delta: Vec<i64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    Some(delta[1..].iter().sum::<i64>() as f64 / delta.iter().sum::<i64>().max(1) as f64)
}

/// One pgbench run of `kind` against `t`, with the CPU and commits counted around it.
fn run(cluster: &Cluster, t: &Target, kind: &RunKind, o: &Options) -> Result<Sample> {
    let mode = kind.mode.as_str();
    let cpu0 = t.pid.map(procstat::cpu).transpose()?;
    let machine0 = procstat::machine_busy_us()?;
    // The bench cluster's postmasters (their backends and reaped children count).
    let postmasters: Vec<i32> = std::iter::once(cluster.primary())
        .chain(cluster.replicas())
        .filter_map(|n| n.postmaster_pid())
        .collect();
    let (pgbench0, postgres0) = (procstat::children(), procstat::postgres(&postmasters));
    let commits0 = commits(cluster)?;
    let outs = pgbench_on(t, kind.sslmode, o, &["-S", "-M", mode], o.duration)?;
    let cpu1 = t.pid.map(procstat::cpu).transpose()?;
    let machine1 = procstat::machine_busy_us()?;
    let (pgbench1, postgres1) = (procstat::children(), procstat::postgres(&postmasters));
    let commits1 = commits(cluster)?;
    // Split runs: transactions and TPS add up; latency is the transactions' average.
    let (mut tx, mut tps, mut latency_total) = (0.0, 0.0, 0.0);
    for out in &outs {
        let failed = field(out, "number of failed transactions:").unwrap_or(0.0);
        if failed > 0.0 {
            bail!("{failed} failed transactions via {}:\n{out}", t.name);
        }
        let n = field(out, "number of transactions actually processed:").context("no tx count")?;
        tx += n;
        tps += field(out, "tps =").context("no tps")?;
        latency_total += n * field(out, "latency average =").context("no latency")?;
    }
    let per_tx = |before: u64, after: u64| after.saturating_sub(before) as f64 / tx;
    Ok(Sample {
        tps,
        latency_ms: latency_total / tx,
        cpu_us_per_tx: cpu0
            .zip(cpu1)
            .map(|(a, b)| (b.total_us() - a.total_us()) as f64 / tx),
        sys_us_per_tx: cpu0
            .zip(cpu1)
            .map(|(a, b)| (b.sys_us - a.sys_us) as f64 / tx),
        machine_us_per_tx: per_tx(machine0, machine1),
        pgbench_us_per_tx: per_tx(pgbench0.0, pgbench1.0),
        pgbench_switches_per_tx: per_tx(pgbench0.1, pgbench1.1),
        postgres_us_per_tx: per_tx(postgres0.0, postgres1.0),
        postgres_switches_per_tx: per_tx(postgres0.1, postgres1.1),
        replica_share: replica_share(&commits0, &commits1),
    })
}

/// Runs `pgbench -n` with `args` for `secs` against `t` with `--clients`; a split target's
/// two ports get half the clients each, at the same time. Returns each run's report.
fn pgbench_on(
    t: &Target,
    sslmode: &str,
    o: &Options,
    args: &[&str],
    secs: u64,
) -> Result<Vec<String>> {
    let ports: Vec<u16> = std::iter::once(t.port).chain(t.also).collect();
    let clients = (o.clients / ports.len() as u32).max(1);
    // Two pgbench threads in all (one for a single client: pgbench needs clients >= threads).
    let threads = clients.clamp(1, 2 / ports.len() as u32).to_string();
    let (clients, secs) = (clients.to_string(), secs.to_string());
    let mut all = vec!["-n"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-c", &clients, "-j", &threads, "-T", &secs]);
    std::thread::scope(|s| {
        let runs: Vec<_> = ports
            .iter()
            .map(|&port| {
                let all = &all;
                s.spawn(move || pgbench_ssl(port, Some(sslmode), all))
            })
            .collect();
        runs.into_iter()
            .map(|r| {
                r.join()
                    .map_err(|_| anyhow::anyhow!("pgbench thread panicked"))?
            })
            .collect()
    })
}

/// Warms every target up, then runs every kind of run against every target, round after
/// round. A failed run is recorded, not fatal (e.g. `-M prepared` through PgBouncer 1.18).
pub(crate) fn rounds(
    cluster: &Cluster,
    targets: &[Target],
    o: &Options,
) -> Result<(ByRound, Failures)> {
    // Warm-up: opens the pools and the caches.
    for t in targets {
        pgbench_on(t, o.sslmode(), o, &["-S"], 2)?;
    }
    let mut by_round = ByRound::new();
    let mut failures = Failures::new();
    for round in 1..=o.rounds {
        for kind in &o.run_kinds() {
            let mode = kind.label.as_str();
            for t in targets {
                let s = match run(cluster, t, kind, o) {
                    Ok(s) => s,
                    Err(e) => {
                        let first = e
                            .to_string()
                            .lines()
                            .rev()
                            .find(|l| l.contains("error"))
                            .unwrap_or("")
                            .to_owned();
                        eprintln!("round {round} {mode:14} {:9} FAILED: {first}", t.name);
                        failures.entry((mode.to_owned(), t.name)).or_insert(first);
                        continue;
                    }
                };
                eprintln!(
                    "round {round} {mode:14} {:9} tps {:9.0}  latency {:6.3} ms  machine {:5.1} us/tx (pgbench {:4.1}, postgres {:4.1})  switches/tx pgbench {:.2} postgres {:.2}  cpu/tx {}{}",
                    t.name,
                    s.tps,
                    s.latency_ms,
                    s.machine_us_per_tx,
                    s.pgbench_us_per_tx,
                    s.postgres_us_per_tx,
                    s.pgbench_switches_per_tx,
                    s.postgres_switches_per_tx,
                    s.cpu_us_per_tx
                        .zip(s.sys_us_per_tx)
                        .map_or("-".into(), |(c, k)| format!("{c:.1} us (kernel {k:.1})")),
                    s.replica_share
                        .map_or(String::new(), |r| format!("  on replicas {:.0}%", r * 100.0))
                );
                by_round.insert((mode.to_owned(), t.name, round), s);
            }
        }
    }
    Ok((by_round, failures))
}
