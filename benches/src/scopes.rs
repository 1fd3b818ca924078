//! Causal scopes under the bundled app's load (issue 18): for each `causal_scope`, with both
//! replicas healthy and with one replica's replay paused (lag limits off, so that it stays in
//! the read rotation: the worst case of a replica that is behind but looks fine), the app runs
//! with its own causal-token plumbing off (`APP_CAUSAL_TOKENS=false`) and the load generator
//! reports throughput, latency, the replica share of routed reads and stale reads (a row its
//! own user just created and could not read back).
//!
//! `cargo build --release -p pgtier && cargo run --release -p pgtier-benches --bin scopes -- --help`

use std::time::Duration;

use anyhow::{Context, Result};
use pgtier_app::loadgen::{self, Options as LoadOptions};
use pgtier_kit::fixture::{scram_role, ConfigBuilder};
use pgtier_kit::{free_port, Cluster, Pgtier};

mod args;
use args::Args;

const USER: &str = "tutor_app";

struct Options {
    rounds: usize,
    duration: u64,
    users: usize,
    scopes: Vec<String>,
    /// `causal_read_wait` in milliseconds.
    read_wait: u64,
}

impl Options {
    fn parse() -> Result<Options> {
        let a = Args::parse(
            "scopes [--rounds 2] [--duration 10] [--users 20] [--scopes connection,user,database] [--read-wait-ms 2]",
            &["rounds", "duration", "users", "scopes", "read-wait-ms"],
        )?;
        Ok(Options {
            rounds: a.number("rounds", 2)?,
            duration: a.number("duration", 10)?,
            users: a.number("users", 20)?,
            read_wait: a.number("read-wait-ms", 2)?,
            scopes: a.list(
                "scopes",
                &["connection", "user", "database"],
                &["connection", "user", "application_name", "database"],
            )?,
        })
    }
}

/// One load-generator run's figures.
struct Run {
    scope: String,
    paused: bool,
    throughput: f64,
    p50: Duration,
    p95: Duration,
    replica_share: f64,
    stale: u64,
    errors: u64,
}

fn pgtier_with(c: &Cluster, scope: &str, metrics: u16, read_wait: u64) -> Result<Pgtier> {
    ConfigBuilder::new(c)
        .global(&format!("causal_read_wait = \"{read_wait}ms\""))
        .global(&format!("causal_scope = \"{scope}\""))
        .global(&format!("metrics_listen = \"127.0.0.1:{metrics}\""))
        .global("lag_check_interval = \"50ms\"")
        .global("max_replica_lag = 0")
        .global("max_replica_lag_bytes = 0")
        .global("log_level = \"warn\"")
        .user(USER, &format!("password = \"{USER}\""))
        .with_replicas(c)
        .database("pool_size = 10")
        .start()
}

async fn run_one(c: &Cluster, scope: &str, paused: bool, o: &Options) -> Result<Run> {
    let metrics = free_port()?;
    let px = pgtier_with(c, scope, metrics, o.read_wait)?;
    let mut cfg = pgtier_app::Config::new(format!(
        "postgres://{USER}:{USER}@127.0.0.1:{}/app?connect_timeout=5",
        px.port()
    ));
    cfg.listen = "127.0.0.1:0".parse()?;
    cfg.pool_size = 20;
    cfg.causal_tokens = false;
    let app = pgtier_app::serve(cfg).await?;
    c.wait_replicas_caught_up()?;
    if paused {
        c.replica(0).pause_replay()?;
    }
    let mut lo = LoadOptions::new(&app.url());
    lo.users = o.users;
    lo.duration = Duration::from_secs(o.duration);
    lo.pgtier_metrics = Some(format!("http://127.0.0.1:{metrics}/metrics"));
    lo.tutors = 20;
    lo.students = 40;
    lo.quiet = true;
    let summary = loadgen::run(&lo).await;
    if paused {
        c.replica(0).resume_replay()?;
    }
    let s = summary?;
    let routed = match s.pgtier_reads {
        Some(Ok(r)) => r,
        Some(Err(e)) => anyhow::bail!("scraping pgtier's metrics: {e}"),
        None => anyhow::bail!("no pgtier metrics"),
    };
    let reads = routed.replica_reads + routed.primary_fallbacks;
    let run = Run {
        scope: scope.to_owned(),
        paused,
        throughput: s.throughput,
        p50: s.p50,
        p95: s.p95,
        replica_share: if reads == 0 {
            0.0
        } else {
            routed.replica_reads as f64 / reads as f64
        },
        stale: s.stale_reads,
        errors: s.errors,
    };
    drop(app);
    drop(px);
    Ok(run)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = Options::parse()?;
    let c = Cluster::start(2).context("starting the kit cluster")?;
    scram_role(&c, USER, USER)?;
    let mut runs = Vec::new();
    // Interleaved: every (scope, replica state) once per round.
    for round in 0..o.rounds {
        for paused in [false, true] {
            for scope in &o.scopes {
                let r = run_one(&c, scope, paused, &o).await?;
                println!(
                    "round {round} scope {:<16} {:<8} {:>6.0} req/s  p50 {:>6.2} ms  p95 {:>6.2} ms  replica share {:>5.1}%  stale {}  errors {}",
                    r.scope,
                    if r.paused { "paused" } else { "healthy" },
                    r.throughput,
                    r.p50.as_secs_f64() * 1e3,
                    r.p95.as_secs_f64() * 1e3,
                    r.replica_share * 100.0,
                    r.stale,
                    r.errors
                );
                runs.push(r);
            }
        }
    }
    println!(
        "\nmedians over {} rounds ({} virtual users, {} s each, causal_read_wait {} ms, app without causal tokens)",
        o.rounds, o.users, o.duration, o.read_wait
    );
    println!("| causal_scope | replica 0 | req/s | p50 ms | p95 ms | replica share of reads | stale reads (total) | errors (total) |");
    println!("|---|---|---|---|---|---|---|---|");
    for paused in [false, true] {
        for scope in &o.scopes {
            let mine: Vec<&Run> = runs
                .iter()
                .filter(|r| &r.scope == scope && r.paused == paused)
                .collect();
            let m = |f: &dyn Fn(&Run) -> f64| median(mine.iter().map(|r| f(r)).collect());
            println!(
                "| {scope} | {} | {:.0} | {:.2} | {:.2} | {:.1}% | {} | {} |",
                if paused { "replay paused" } else { "healthy" },
                m(&|r| r.throughput),
                m(&|r| r.p50.as_secs_f64() * 1e3),
                m(&|r| r.p95.as_secs_f64() * 1e3),
                m(&|r| r.replica_share * 100.0),
                mine.iter().map(|r| r.stale).sum::<u64>(),
                mine.iter().map(|r| r.errors).sum::<u64>(),
            );
        }
    }
    Ok(())
}
