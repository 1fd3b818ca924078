//! Read/write splitting benchmark on a kit cluster (primary + 2 replicas):
//! 1. `pgbench -S` through pgtier routing to the replicas vs through pgtier with the primary
//!    only (same pool size per node), interleaved and repeated: TPS, and where the reads ran.
//! 2. Read-after-write: N clients each loop over INSERT (autocommit) then SELECT of the row just
//!    written, through pgtier: throughput, the share of those reads served by replicas (from
//!    `pg_is_in_recovery()` in the result), and stale reads (row not found), which must be 0.
//!
//! With `--zones prefer|only`, the routing pgtier runs in zone `b`, replica 1 in zone `b` and
//! replica 0 in zone `a`: both parts also report the local-zone share (of the transactions or
//! reads replicas served, the share served by the replica in pgtier's zone).
//!
//! `cargo build --release -p pgtier && cargo run --release -p pgtier-benches --bin routing -- --help`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgtier_kit::{free_port, Cluster, Pgtier};

mod args;
mod pgbench;
use args::Args;
use pgbench::{field, pgbench};

struct Options {
    rounds: usize,
    duration: u64,
    clients: u32,
    pool: u32,
    scale: u32,
    /// `off`, or the `zone_mode` of the routing pgtier.
    zones: String,
}

impl Options {
    fn parse() -> Result<Options> {
        let a = Args::parse(
            "routing [--rounds 3] [--duration 8] [--clients 32] [--pool 10] [--scale 10] \
             [--zones off|prefer|only]",
            &["rounds", "duration", "clients", "pool", "scale", "zones"],
        )?;
        Ok(Options {
            rounds: a.number("rounds", 3)?,
            duration: a.number("duration", 8)?,
            clients: a.number("clients", 32)?,
            pool: a.number("pool", 10)?,
            scale: a.number("scale", 10)?,
            zones: a.one_of("zones", "off", &["off", "prefer", "only"])?,
        })
    }
}

/// Transactions committed in database `bench` on each node (primary first).
fn commits(cluster: &Cluster) -> Result<Vec<i64>> {
    std::iter::once(cluster.primary())
        .chain(cluster.replicas())
        .map(|n| {
            let v = n.psql("SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'")?;
            Ok(v.trim().parse()?)
        })
        .collect()
}

/// The zone of the routing pgtier and of replica `LOCAL` (replica 0 is in zone `a`).
const ZONE: &str = "b";
/// The replica in pgtier's zone (index among the replicas).
const LOCAL: usize = 1;

/// pgtier's config: the primary only, or with the replicas (with `zones` other than `off`, in
/// zones, pgtier in [`ZONE`] with that `zone_mode`).
fn config(port: u16, cluster: &Cluster, replicas: bool, pool: u32, zones: &str) -> String {
    let list: Vec<String> = cluster
        .replicas()
        .iter()
        .enumerate()
        .map(|(i, r)| match zones {
            "off" => format!("\"{}\"", r.addr()),
            _ => format!(
                "{{ addr = \"{}\", zone = \"{}\" }}",
                r.addr(),
                if i == LOCAL { ZONE } else { "a" }
            ),
        })
        .collect();
    let zone = match zones {
        "off" => String::new(),
        mode => format!("zone = \"{ZONE}\"\nzone_mode = \"{mode}\"\n"),
    };
    format!(
        "listen = \"127.0.0.1:{port}\"\nlog_level = \"warn\"\nmax_client_conn = 5000\n{zone}\
         [users.bench]\npassword = \"bench\"\n[databases.bench]\nprimary = \"{}\"\n\
         replicas = [{}]\npool_size = {pool}\n",
        cluster.primary().addr(),
        if replicas {
            list.join(", ")
        } else {
            String::new()
        },
    )
}

/// What the read-after-write loop counted.
struct Raw {
    iterations: u64,
    stale: u64,
    on_replica: u64,
    /// Reads served by the replica listening on the `local` port given.
    on_local: u64,
}

async fn read_after_write(port: u16, clients: u32, duration: Duration, local: u16) -> Result<Raw> {
    let dsn = format!("host=127.0.0.1 port={port} user=bench password=bench dbname=bench");
    let (setup, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    setup
        .batch_execute("CREATE TABLE IF NOT EXISTS raw_bench (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
        .await?;
    let (done, stale, on_replica, on_local) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let dsn = dsn.clone();
        let (done, stale, on_replica, on_local) = (
            done.clone(),
            stale.clone(),
            on_replica.clone(),
            on_local.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let insert = c
                .prepare("INSERT INTO raw_bench DEFAULT VALUES RETURNING id")
                .await?;
            let select = c
                .prepare("SELECT count(*), pg_is_in_recovery(), inet_server_port() FROM raw_bench WHERE id = $1")
                .await?;
            while Instant::now() < end {
                let id: i64 = c.query_one(&insert, &[]).await?.get(0);
                let row = c.query_one(&select, &[&id]).await?;
                if row.get::<_, i64>(0) != 1 {
                    stale.fetch_add(1, Ordering::Relaxed);
                }
                if row.get::<_, bool>(1) {
                    on_replica.fetch_add(1, Ordering::Relaxed);
                    if row.get::<_, Option<i32>>(2) == Some(i32::from(local)) {
                        on_local.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(Raw {
        iterations: done.load(Ordering::Relaxed),
        stale: stale.load(Ordering::Relaxed),
        on_replica: on_replica.load(Ordering::Relaxed),
        on_local: on_local.load(Ordering::Relaxed),
    })
}

fn main() -> Result<()> {
    let o = Options::parse()?;
    eprintln!("starting the kit cluster (primary + 2 replicas)");
    let cluster = Cluster::start(2)?;
    cluster.create_role_and_db("bench", "bench", "bench")?;
    pgbench(
        cluster.primary().port(),
        &["-i", "-q", "-s", &o.scale.to_string()],
    )?;
    cluster.wait_replicas_caught_up()?;
    let only_port = free_port()?;
    let only = Pgtier::start(
        only_port,
        &config(only_port, &cluster, false, o.pool, "off"),
    )?;
    let split_port = free_port()?;
    let split = Pgtier::start(
        split_port,
        &config(split_port, &cluster, true, o.pool, &o.zones),
    )?;
    let zoned = o.zones != "off";
    // Share of what replicas served that the replica in pgtier's zone served.
    let local_share = |per_node: &[i64]| {
        per_node[1 + LOCAL] as f64 / per_node[1..].iter().sum::<i64>().max(1) as f64
    };
    let targets = [("primary only", only.port()), ("2 replicas", split.port())];
    let clients = o.clients.to_string();
    let secs = o.duration.to_string();
    for (_, port) in targets {
        pgbench(port, &["-n", "-S", "-c", &clients, "-j", "2", "-T", "2"])?;
    }
    let mut tps: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut replica_share = Vec::new();
    let mut local_shares = Vec::new();
    for round in 1..=o.rounds {
        for (i, (name, port)) in targets.iter().enumerate() {
            let before = commits(&cluster)?;
            let out = pgbench(
                *port,
                &[
                    "-n", "-S", "-M", "extended", "-c", &clients, "-j", "2", "-T", &secs,
                ],
            )?;
            let after = commits(&cluster)?;
            let delta: Vec<i64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            let t = field(&out, "tps =").context("no tps")?;
            let share =
                delta[1..].iter().sum::<i64>() as f64 / delta.iter().sum::<i64>().max(1) as f64;
            eprintln!("round {round} {name:12} tps {t:9.0}  commits per node {delta:?}  replica share {:.0}%", share * 100.0);
            tps[i].push(t);
            if i == 1 {
                replica_share.push(share);
                local_shares.push(local_share(&delta));
            }
        }
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (base, split_tps) = (med(tps[0].clone()), med(tps[1].clone()));
    println!(
        "\n## pgbench -S -M extended, {} clients, pool {} per node, medians of {} runs of {} s\n",
        o.clients, o.pool, o.rounds, o.duration
    );
    if zoned {
        println!(
            "pgtier in zone {ZONE} (zone_mode = \"{}\"), replica {LOCAL} in zone {ZONE}, the other in zone a\n",
            o.zones
        );
    }
    println!("| target | TPS | vs primary only | share of transactions on replicas | local-zone share of those |");
    println!("|---|---|---|---|---|");
    println!("| primary only | {base:.0} | 1.00x | 0% | - |");
    println!(
        "| primary + 2 replicas | {split_tps:.0} | {:.2}x | {:.0}% | {} |",
        split_tps / base,
        med(replica_share) * 100.0,
        if zoned {
            format!("{:.1}%", med(local_shares) * 100.0)
        } else {
            "- (no zones)".to_owned()
        }
    );
    // The kit runs with synchronous_commit off (fast set-up); production runs with it on,
    // which ships each commit to the replicas at once (else up to wal_writer_delay later).
    cluster
        .primary()
        .psql("ALTER SYSTEM SET synchronous_commit = on")?;
    cluster.primary().psql("SELECT pg_reload_conf()")?;
    let rt = tokio::runtime::Runtime::new()?;
    let raw = rt.block_on(read_after_write(
        split.port(),
        o.clients,
        Duration::from_secs(o.duration),
        cluster.replica(LOCAL).port(),
    ))?;
    let (n, stale, on_replica) = (raw.iterations, raw.stale, raw.on_replica);
    println!(
        "\n## read-after-write (synchronous_commit = on), {} clients, {} s: INSERT then SELECT of that row\n",
        o.clients, o.duration
    );
    println!(
        "| iterations | per second | reads on replicas | local-zone share of those | stale reads |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {n} | {:.0} | {:.1}% | {} | {stale} |",
        n as f64 / o.duration as f64,
        on_replica as f64 * 100.0 / n.max(1) as f64,
        if zoned {
            format!(
                "{:.1}%",
                raw.on_local as f64 * 100.0 / on_replica.max(1) as f64
            )
        } else {
            "- (no zones)".to_owned()
        }
    );
    drop(split);
    drop(only);
    drop(cluster);
    if stale > 0 {
        bail!("{stale} stale reads");
    }
    Ok(())
}
