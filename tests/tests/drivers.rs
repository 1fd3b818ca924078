//! Real non-Rust drivers through pgtier in transaction mode: asyncpg (its statement cache is
//! the classic breaker of transaction pooling), psycopg 3 with `prepare=True` and node-postgres
//! named queries. The scripts live in tests/python/ and tests/node/; CI installs the drivers
//! with `python3 -m pip install -r tests/python/requirements.txt` and `npm ci` in tests/node
//! (scripts/test.sh does both).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use pgtier_kit::fixture::{scram_role, ConfigBuilder};
use pgtier_kit::programs::run_against;
use pgtier_kit::{Cluster, Pgtier};

const POOL: u32 = 4;

fn start() -> Pgtier {
    builder().start().unwrap()
}

/// The same pgtier, reading from the cluster's replicas: a write a driver pipelines with its
/// reads must still reach the primary.
fn start_with_replicas() -> Pgtier {
    builder()
        .with_replicas(Cluster::shared())
        .global("log_level = \"debug\"")
        .start()
        .unwrap()
}

fn builder() -> ConfigBuilder {
    let c = Cluster::shared();
    scram_role(c, "drivers", "drivers").unwrap();
    ConfigBuilder::new(c)
        .global("pool_mode = \"transaction\"")
        .global("query_wait_timeout = \"30s\"")
        .user("drivers", "auth = \"trust\"\nserver_password = \"drivers\"")
        .database(&format!("pool_size = {POOL}"))
}

fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// Fails the test (never skips it) when the driver is not installed.
fn require(module: &str) {
    let out = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .expect("running python3 (is Python 3 installed?)");
    assert!(
        out.status.success(),
        "Python module `{module}` is missing: run `python3 -m pip install -r {}` \
         (scripts/test.sh and CI do)\n{}",
        python_dir().join("requirements.txt").display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node")
}

/// Runs tests/python/SCRIPT against pgtier (killed after 180 s); returns its stdout.
fn run_script(px: &Pgtier, script: &str, extra: &[&str]) -> String {
    // A script drops and creates its own tables in the shared cluster: one script at a time
    // (each runs with and without replicas).
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    run_with(px, "python3", &python_dir().join(script), extra)
}

/// Runs `interpreter path` against pgtier (killed after 180 s); returns its stdout.
fn run_with(px: &Pgtier, interpreter: &str, path: &std::path::Path, extra: &[&str]) -> String {
    let port = px.port().to_string();
    let mut args = vec!["127.0.0.1", &port, "drivers", "app"];
    args.extend_from_slice(extra);
    run_against(
        px,
        180,
        &[interpreter.as_ref(), path.as_os_str()],
        &args,
        None,
    )
}

#[test]
fn asyncpg_20_connections_with_its_statement_cache_on_a_pool_of_4() {
    require("asyncpg");
    let px = start();
    let out = run_script(&px, "asyncpg_driver.py", &["20", "200"]);
    assert!(
        out.contains("asyncpg OK") && out.contains("20 connections x 200 iterations"),
        "{out}"
    );
    // asyncpg's names are per connection: clashes would have been errors.
    let log = px.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn psycopg3_prepared_statements_8_connections_on_a_pool_of_4() {
    require("psycopg");
    let px = start();
    let out = run_script(&px, "psycopg_driver.py", &["8", "200"]);
    assert!(
        out.contains("psycopg OK") && out.contains("8 connections x 200 iterations"),
        "{out}"
    );
    let log = px.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn psycopg3_pipelines_and_executemany_with_replicas() {
    require("psycopg");
    let px = start_with_replicas();
    let out = run_script(&px, "psycopg_driver.py", &["4", "60"]);
    assert!(out.contains("psycopg OK"), "{out}");
    let log = px.log();
    assert!(!log.contains("panicked"), "{log}");
    // The debug log's routing lines: reads did use the replicas.
    assert!(log.contains("replica=true"), "no read went to a replica");
}

#[test]
fn asyncpg_with_replicas() {
    require("asyncpg");
    let px = start_with_replicas();
    let out = run_script(&px, "asyncpg_driver.py", &["4", "60"]);
    assert!(out.contains("asyncpg OK"), "{out}");
    let log = px.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("replica=true"), "no read went to a replica");
}

#[test]
fn node_postgres_named_queries_8_connections_on_a_pool_of_4() {
    // Skipped (with a notice) only where Node.js itself is missing; a missing `pg` package
    // fails the test.
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("NOTICE: node is not installed: node-postgres test skipped");
        return;
    }
    let module = node_dir().join("node_modules").join("pg");
    assert!(
        module.is_dir(),
        "npm package `pg` is missing: run `npm ci` in {} (scripts/test.sh and CI do)",
        node_dir().display()
    );
    let px = start();
    let out = run_with(&px, "node", &node_dir().join("pg_driver.js"), &["8", "200"]);
    assert!(
        out.contains("node-postgres OK") && out.contains("8 connections x 200 iterations"),
        "{out}"
    );
    let log = px.log();
    assert!(!log.contains("panicked"), "{log}");
}
