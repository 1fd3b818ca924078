//! Comparison harness: starts a kit cluster, pgtier and PgBouncer (same pool size, transaction
//! mode), then runs `pgbench -S` in simple and extended mode directly, through pgtier and
//! through PgBouncer, interleaved and repeated. Prints TPS, average latency, each proxy's CPU
//! microseconds per transaction (from /proc), and RSS per idle client.
//!
//! `cargo build --release -p pgtier && cargo run --release -p pgtier-benches --bin compare -- --help`
//!
//! `PGTIER_BASELINE_BIN=path` adds another pgtier build as the target `baseline`, interleaved
//! with the others (A/B of two builds in one run).

mod args;
mod pgbench;
mod pgbouncer;
mod procstat;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use args::Args;
use pgbench::{field, pgbench};
use pgtier_kit::{free_port, Cluster, Pgtier};

/// pgbench query modes compared.
const MODES: [&str; 3] = ["simple", "extended", "prepared"];

struct Options {
    rounds: usize,
    duration: u64,
    clients: u32,
    pool: u32,
    idle: usize,
    scale: u32,
    /// pgtier's `workers` setting.
    workers: u32,
    /// Targets to run (all by default): direct, pgtier, pgbouncer.
    targets: Vec<String>,
    /// pgbench modes to run (all by default).
    modes: Vec<String>,
}

impl Options {
    fn parse() -> Result<Options> {
        let a = Args::parse(
            "compare [--rounds 3] [--duration 10] [--clients 32] [--pool 20] [--idle 1000] \
             [--scale 10] [--workers 1] [--targets direct,pgtier,pgbouncer] \
             [--modes simple,extended,prepared]",
            &[
                "rounds", "duration", "clients", "pool", "idle", "scale", "workers", "targets",
                "modes",
            ],
        )?;
        let targets = ["direct", "pgtier", "pgbouncer"];
        Ok(Options {
            rounds: a.number("rounds", 3)?,
            duration: a.number("duration", 10)?,
            clients: a.number("clients", 32)?,
            pool: a.number("pool", 20)?,
            idle: a.number("idle", 1000)?,
            scale: a.number("scale", 10)?,
            workers: a.number("workers", 1)?,
            targets: a.list("targets", &targets, &targets)?,
            modes: a.list("modes", &MODES, &MODES)?,
        })
    }
}

impl Options {
    /// pgbench threads: 2, or 1 for a single client (pgbench needs clients >= threads).
    fn threads(&self) -> String {
        self.clients.clamp(1, 2).to_string()
    }
}

/// One endpoint pgbench can talk to.
struct Target {
    name: &'static str,
    port: u16,
    pid: Option<u32>,
}

/// One pgbench run's numbers.
#[derive(Clone, Copy)]
struct Sample {
    tps: f64,
    latency_ms: f64,
    cpu_us_per_tx: Option<f64>,
    /// The part of `cpu_us_per_tx` spent in the kernel.
    sys_us_per_tx: Option<f64>,
    /// CPU the whole machine spent per transaction (pgbench, Postgres, the proxy, the rest).
    machine_us_per_tx: f64,
    /// Of it, pgbench's.
    pgbench_us_per_tx: f64,
    /// Of it, the PostgreSQL processes'.
    postgres_us_per_tx: f64,
    /// pgbench's context switches per transaction.
    pgbench_switches_per_tx: f64,
    /// Context switches of the live PostgreSQL processes per transaction (backends that exited
    /// during the run, as in direct runs, are not counted).
    postgres_switches_per_tx: f64,
}

fn run(t: &Target, mode: &str, o: &Options) -> Result<Sample> {
    let cpu0 = t.pid.map(procstat::cpu).transpose()?;
    let machine0 = procstat::machine_busy_us()?;
    let (pgbench0, postgres0) = (procstat::children(), procstat::postgres());
    let out = pgbench(
        t.port,
        &[
            "-n",
            "-S",
            "-M",
            mode,
            "-c",
            &o.clients.to_string(),
            "-j",
            &o.threads(),
            "-T",
            &o.duration.to_string(),
        ],
    )?;
    let cpu1 = t.pid.map(procstat::cpu).transpose()?;
    let machine1 = procstat::machine_busy_us()?;
    let (pgbench1, postgres1) = (procstat::children(), procstat::postgres());
    let tx = field(&out, "number of transactions actually processed:").context("no tx count")?;
    let per_tx = |before: u64, after: u64| after.saturating_sub(before) as f64 / tx;
    let failed = field(&out, "number of failed transactions:").unwrap_or(0.0);
    if failed > 0.0 {
        bail!("{failed} failed transactions via {}:\n{out}", t.name);
    }
    Ok(Sample {
        tps: field(&out, "tps =").context("no tps")?,
        latency_ms: field(&out, "latency average =").context("no latency")?,
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
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

/// Prints, per mode and target, the median (and range) of each round's ratio to PgBouncer's
/// run of the same round: runs made seconds apart share most of the machine's noise.
fn paired_ratios(
    o: &Options,
    targets: &[Target],
    by_round: &BTreeMap<(&str, &str, usize), Sample>,
    failures: &BTreeMap<(&str, &str), String>,
) {
    println!("\n## Per-round ratios to PgBouncer's run of the same round\n");
    println!(
        "| mode | target | rounds | TPS ratio median (min-max) | CPU ratio median (min-max) |"
    );
    println!("|---|---|---|---|---|");
    // Not against a PgBouncer that failed some runs of the mode (as in the table above).
    let modes = o.modes.iter().map(String::as_str);
    for mode in modes.filter(|m| !failures.contains_key(&(*m, "pgbouncer"))) {
        for t in targets.iter().filter(|t| t.name != "pgbouncer") {
            let pairs: Vec<(Sample, Sample)> = (1..=o.rounds)
                .filter_map(|r| {
                    Some((
                        *by_round.get(&(mode, t.name, r))?,
                        *by_round.get(&(mode, "pgbouncer", r))?,
                    ))
                })
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let summary = |v: Vec<f64>| {
                if v.is_empty() {
                    return "-".to_owned();
                }
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("{:.2}x ({lo:.2}-{hi:.2})", median(v))
            };
            let tps = pairs.iter().map(|(a, b)| a.tps / b.tps).collect();
            let cpu = pairs
                .iter()
                .filter_map(|(a, b)| Some(a.cpu_us_per_tx? / b.cpu_us_per_tx?))
                .collect();
            println!(
                "| {mode} | {} | {} | {} | {} |",
                t.name,
                pairs.len(),
                summary(tps),
                summary(cpu)
            );
        }
    }
}

/// Opens `n` idle logged-in clients and returns the proxy's RSS growth per client, in KiB.
async fn rss_per_idle_client(pid: u32, port: u16, n: usize) -> Result<f64> {
    let dsn = format!("host=127.0.0.1 port={port} user=bench password=bench dbname=bench");
    // Warm the pool and the allocator first.
    let (warm, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
    let warm_task = tokio::spawn(conn);
    warm.simple_query("SELECT 1").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = procstat::rss_kib(pid)?;
    let mut clients = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(50) {
        let mut batch = Vec::new();
        for _ in 0..50.min(n - chunk * 50) {
            let dsn = dsn.clone();
            batch.push(tokio::spawn(async move {
                tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await
            }));
        }
        for b in batch {
            let (c, conn) = b.await??;
            clients.push((c, tokio::spawn(conn)));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = procstat::rss_kib(pid)?;
    drop(clients);
    drop(warm);
    warm_task.abort();
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

fn main() -> Result<()> {
    let o = Options::parse()?;
    eprintln!("starting the kit cluster (primary only)");
    let cluster = Cluster::start(0)?;
    cluster.create_role_and_db("bench", "bench", "bench")?;
    let primary = cluster.primary().port();
    pgbench(primary, &["-i", "-q", "-s", &o.scale.to_string()])?;

    let pgtier_port = free_port()?;
    let config = format!(
        "listen = \"127.0.0.1:{pgtier_port}\"\nlog_level = \"warn\"\npool_mode = \"transaction\"\n\
         max_client_conn = 5000\nworkers = {}\n[users.bench]\npassword = \"bench\"\n\
         [databases.bench]\nprimary = \"127.0.0.1:{primary}\"\npool_size = {}\n",
        o.workers, o.pool
    );
    let pgtier = Pgtier::start(pgtier_port, &config)?;
    // Another build of pgtier, run as the target "baseline" (A/B of two builds in one run).
    let baseline = match std::env::var_os("PGTIER_BASELINE_BIN") {
        Some(bin) => {
            let port = free_port()?;
            let config = config.replace(&format!(":{pgtier_port}\""), &format!(":{port}\""));
            Some(Pgtier::start_bin(bin.into(), port, &config)?)
        }
        None => None,
    };
    let bouncer_dir =
        std::env::temp_dir().join(format!("pgtier-bench-pgbouncer-{}", std::process::id()));
    let bouncer = pgbouncer::PgBouncer::start(
        &bouncer_dir,
        free_port()?,
        primary,
        "bench",
        "bench",
        "bench",
        o.pool,
    )?;

    let targets = [
        Target {
            name: "direct",
            port: primary,
            pid: None,
        },
        Target {
            name: "pgtier",
            port: pgtier.port(),
            pid: Some(pgtier.pid()),
        },
        Target {
            name: "pgbouncer",
            port: bouncer.port,
            pid: Some(bouncer.pid()),
        },
    ]
    .into_iter()
    .chain(baseline.as_ref().map(|b| Target {
        name: "baseline",
        port: b.port(),
        pid: Some(b.pid()),
    }))
    .filter(|t| t.name == "baseline" || o.targets.iter().any(|n| n == t.name))
    .collect::<Vec<_>>();
    eprintln!(
        "pgbench -S, {} clients, pool {}, {} s per run, {} rounds, interleaved",
        o.clients, o.pool, o.duration, o.rounds
    );
    // Warm-up: opens the pools and the caches.
    for t in &targets {
        pgbench(
            t.port,
            &[
                "-n",
                "-S",
                "-c",
                &o.clients.to_string(),
                "-j",
                &o.threads(),
                "-T",
                "2",
            ],
        )?;
    }
    // Samples by (mode, target, round): the round pairs runs made next to each other.
    let mut by_round: BTreeMap<(&str, &str, usize), Sample> = BTreeMap::new();
    let mut failures: BTreeMap<(&str, &str), String> = BTreeMap::new();
    for round in 1..=o.rounds {
        for mode in o.modes.iter().map(String::as_str) {
            for t in &targets {
                let s = match run(t, mode, &o) {
                    Ok(s) => s,
                    Err(e) => {
                        let first = e
                            .to_string()
                            .lines()
                            .rev()
                            .find(|l| l.contains("error"))
                            .unwrap_or("")
                            .to_owned();
                        eprintln!("round {round} {mode:8} {:9} FAILED: {first}", t.name);
                        failures.entry((mode, t.name)).or_insert(first);
                        continue;
                    }
                };
                eprintln!(
                    "round {round} {mode:8} {:9} tps {:9.0}  latency {:6.3} ms  machine {:5.1} us/tx (pgbench {:4.1}, postgres {:4.1})  switches/tx pgbench {:.2} postgres {:.2}  cpu/tx {}",
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
                        .map_or("-".into(), |(c, k)| format!("{c:.1} us (kernel {k:.1})"))
                );
                by_round.insert((mode, t.name, round), s);
            }
        }
    }

    println!(
        "\n## pgbench -S, {} clients, pool {}, medians of {} interleaved runs of {} s\n",
        o.clients, o.pool, o.rounds, o.duration
    );
    println!("| mode | target | TPS | avg latency ms | machine CPU us/tx | pgbench | postgres | proxy CPU us/tx | of it kernel | TPS vs PgBouncer | CPU vs PgBouncer |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for mode in o.modes.iter().map(String::as_str) {
        let med = |name: &str, f: fn(&Sample) -> Option<f64>| -> Option<f64> {
            let v: Vec<f64> = by_round
                .iter()
                .filter(|((m, n, _), _)| *m == mode && *n == name)
                .filter_map(|(_, s)| f(s))
                .collect();
            (!v.is_empty()).then(|| median(v))
        };
        // No ratios against a PgBouncer that failed some runs of this mode (a lucky run of
        // `-M prepared` is not a baseline).
        let pgb_ok = !failures.contains_key(&(mode, "pgbouncer"));
        let pgb_tps = med("pgbouncer", |s| Some(s.tps)).filter(|_| pgb_ok);
        let pgb_cpu = med("pgbouncer", |s| s.cpu_us_per_tx).filter(|_| pgb_ok);
        for t in &targets {
            if let Some(why) = failures.get(&(mode, t.name)) {
                println!("| {mode} | {} | failed: {why} | | | | | | | | |", t.name);
                continue;
            }
            let tps = med(t.name, |s| Some(s.tps)).unwrap_or(0.0);
            let lat = med(t.name, |s| Some(s.latency_ms)).unwrap_or(0.0);
            let cpu = med(t.name, |s| s.cpu_us_per_tx);
            let sys = med(t.name, |s| s.sys_us_per_tx);
            let machine = med(t.name, |s| Some(s.machine_us_per_tx)).unwrap_or(0.0);
            let bench = med(t.name, |s| Some(s.pgbench_us_per_tx)).unwrap_or(0.0);
            let postgres = med(t.name, |s| Some(s.postgres_us_per_tx)).unwrap_or(0.0);
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "-".into(),
            };
            println!(
                "| {mode} | {} | {tps:.0} | {lat:.3} | {machine:.1} | {bench:.1} | {postgres:.1} | {} | {} | {} | {} |",
                t.name,
                cpu.map_or("-".into(), |c| format!("{c:.1}")),
                sys.map_or("-".into(), |c| format!("{c:.1}")),
                ratio(Some(tps), pgb_tps),
                ratio(cpu, pgb_cpu),
            );
        }
    }

    paired_ratios(&o, &targets, &by_round, &failures);

    if o.idle > 0 {
        let rt = tokio::runtime::Runtime::new()?;
        println!(
            "\n## RSS per idle client ({} idle logged-in clients)\n",
            o.idle
        );
        println!("| proxy | KiB per idle client |");
        println!("|---|---|");
        for t in targets.iter().filter(|t| t.pid.is_some()) {
            let kib = rt.block_on(rss_per_idle_client(t.pid.unwrap(), t.port, o.idle))?;
            println!("| {} | {kib:.2} |", t.name);
        }
    }
    drop(bouncer);
    drop(baseline);
    drop(pgtier);
    drop(cluster);
    Ok(())
}
