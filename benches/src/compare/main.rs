//! Comparison harness: starts a kit cluster, pgtier and PgBouncer (same pool size, transaction
//! mode), then runs `pgbench -S` in simple and extended mode directly, through pgtier and
//! through PgBouncer, interleaved and repeated. Prints TPS, average latency, each proxy's CPU
//! microseconds per transaction (from /proc), and RSS per idle client.
//!
//! `cargo build --release -p pgtier && cargo run --release -p pgtier-benches --bin compare -- --help`
//!
//! `--replicas 2`: the cluster has two streaming replicas and pgtier splits reads and writes
//! over the three nodes (`--pool` connections per node, 10 by default); PgBouncer serves the
//! primary alone with the same pool. The report adds the share of transactions the replicas
//! committed. `--replicas 0` (the default) is the primary-only comparison (pool 20).
//!
//! `PGTIER_BASELINE_BIN=path` adds another pgtier build as the target `baseline`, interleaved
//! with the others (A/B of two builds in one run).
//!
//! `--tls require` (or `prefer`): pgtier and PgBouncer serve a certificate from a test CA with
//! that `client_tls_sslmode`, Postgres runs with `ssl = on`, and every pgbench and idle client
//! uses `sslmode=require`. The proxies reach Postgres in plain text (pgtier
//! `server_tls_sslmode = "disable"`, PgBouncer's default), so only the client side differs.
//!
//! Layout: `options` (command line), `setup` (cluster, proxies, targets), `measure` (the
//! interleaved pgbench rounds), `report` (tables), `connections` (connection-rate runs, TLS
//! helpers), `idle` (RSS per idle client).

#[path = "../args.rs"]
mod args;
mod connections;
mod idle;
mod measure;
mod options;
#[path = "../pgbench.rs"]
mod pgbench;
#[path = "../pgbouncer.rs"]
mod pgbouncer;
#[path = "../procstat.rs"]
mod procstat;
mod report;
mod setup;

use anyhow::Result;

use crate::options::Options;
use crate::setup::Bench;

fn main() -> Result<()> {
    let o = Options::parse()?;
    let bench = Bench::start(&o)?;
    let targets = bench.targets(&o)?;
    eprintln!(
        "pgbench -S, {} clients, pool {}{}, {} s per run, {} rounds, interleaved, sslmode {}",
        o.clients,
        o.pool,
        if o.replicas > 0 { " per node" } else { "" },
        o.duration,
        o.rounds,
        o.client_kinds().join(" and ")
    );
    let (by_round, failures) = measure::rounds(&bench.cluster, &targets, &o)?;
    report::medians(&o, &targets, &by_round, &failures);
    report::paired_ratios(&o, &targets, &by_round, &failures);

    let rt = tokio::runtime::Runtime::new()?;
    let connector = bench
        .ca
        .as_ref()
        .map(|ca| connections::tls_connector(&ca.ca_file()))
        .transpose()?;
    if o.handshakes > 0 && o.handshake_rounds > 0 {
        connections::handshake_rates(&o, &targets, &rt, connector.as_ref())?;
    }
    if o.idle > 0 {
        idle::idle_rss(&o, &targets, &rt, connector.as_ref())?;
    }
    Ok(())
}
