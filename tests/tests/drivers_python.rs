//! The Python half of the driver/ORM matrix (issue 20): psycopg2, SQLAlchemy 2 (sync on
//! psycopg 3, async on asyncpg) with the seeds' one-engine pattern, and the Django ORM, each
//! through pgtier in transaction mode with replicas, one process per driver (scripts in
//! tests/python/). Plus the seeds' app pattern end to end: examples/python-one-engine (FastAPI,
//! one SQLAlchemy engine on one DATABASE_URL) under concurrent create-then-read load with a
//! replica whose replay is paused: 0 stale reads, and pgtier's metrics show the replica share.
//!
//! scripts/test.sh installs the drivers from tests/python/requirements-matrix.txt; if the
//! registry cannot provide them it exports PGTIER_PY_MATRIX_UNAVAILABLE=1 and these tests skip
//! with a NOTICE. Anywhere else a missing or broken driver fails its test.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgtier_kit::fixture::{scram_role, ConfigBuilder};
use pgtier_kit::{free_port, Cluster, Pgtier};

const USER: &str = "pymatrix";
const PASSWORD: &str = "pymatrix-pw";
/// Server connections per (database, user): 30 clients share 3.
const POOL: u32 = 3;

/// The scripts create their own tables in the shared cluster, and the app test pauses a
/// replica: one test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python")
}

fn example_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/python-one-engine")
}

/// pgtier in transaction mode over the shared cluster's primary and replicas, SCRAM password
/// auth for the clients (the same password towards the servers).
fn builder() -> ConfigBuilder {
    let c = Cluster::shared();
    scram_role(c, USER, PASSWORD).unwrap();
    ConfigBuilder::new(c)
        .global("pool_mode = \"transaction\"")
        .global("query_wait_timeout = \"60s\"")
        .global("lag_check_interval = \"50ms\"")
        .user(USER, &format!("password = \"{PASSWORD}\""))
        .with_replicas(c)
        .database(&format!("pool_size = {POOL}"))
}

/// Whether the Python distributions `dists` (and their modules `modules`) can be used. A
/// missing one skips (returns false, with a NOTICE) only where scripts/test.sh could not
/// install them (PGTIER_PY_MATRIX_UNAVAILABLE=1); otherwise it fails the test, and so does a
/// driver that is installed but does not import.
fn python_has(dists: &[&str], modules: &[&str]) -> bool {
    let check = format!(
        "import importlib.metadata as m, sys\n\
         missing = []\n\
         for d in {dists:?}:\n\
         \x20   try: m.version(d)\n\
         \x20   except m.PackageNotFoundError: missing.append(d)\n\
         print(' '.join(missing))\n"
    );
    let out = Command::new("python3")
        .args(["-c", &check])
        .output()
        .expect("running python3 (is Python 3 installed?)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let missing = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !missing.is_empty() {
        if std::env::var_os("PGTIER_PY_MATRIX_UNAVAILABLE").is_some() {
            eprintln!(
                "NOTICE: Python packages {missing} could not be installed (registry unavailable): test skipped"
            );
            return false;
        }
        panic!(
            "Python packages missing: {missing}: run `python3 -m pip install -r {}` \
             (scripts/test.sh and CI do)",
            python_dir().join("requirements-matrix.txt").display()
        );
    }
    for m in modules {
        let out = Command::new("python3")
            .args(["-c", &format!("import {m}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "Python module `{m}` is installed but does not import:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    true
}

/// Runs `python3 tests/python/SCRIPT HOST PORT USER PASSWORD app EXTRA...` (killed after
/// 180 s); returns its stdout, failing with the script's output and pgtier's log tail.
fn run_script(px: &Pgtier, script: &str, extra: &[&str]) -> String {
    let t0 = Instant::now();
    let out = Command::new("timeout")
        .args(["-s", "KILL", "180", "python3"])
        .arg(python_dir().join(script))
        .args(["127.0.0.1", &px.port().to_string(), USER, PASSWORD, "app"])
        .args(extra)
        .current_dir(python_dir())
        .env("PYTHONUNBUFFERED", "1")
        .output()
        .unwrap_or_else(|e| panic!("running python3: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "{script}: {} in {:.1} s\n{stdout}{stderr}",
        out.status,
        t0.elapsed().as_secs_f64()
    );
    let log = px.log();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    assert!(
        out.status.success(),
        "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- pgtier log (last 40 lines, newest first)\n{}",
        out.status,
        tail.join("\n")
    );
    assert!(!log.contains("panicked"), "pgtier panicked:\n{log}");
    stdout
}

/// Asserts that the script printed `check NAME ok` for every name.
fn assert_checks(out: &str, names: &[&str]) {
    for n in names {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("check {n} ok"))),
            "check `{n}` did not pass:\n{out}"
        );
    }
}

const COMMON_CHECKS: &[&str] = &[
    "connect-password",
    "simple-and-parameterized",
    "routing",
    "transactions",
    "copy",
    "cancel",
    "small-pool",
    "concurrency",
];

#[test]
fn psycopg2_libpq_matrix() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !python_has(&["psycopg2-binary"], &["psycopg2"]) {
        return;
    }
    let px = builder().start().unwrap();
    let out = run_script(&px, "psycopg2_driver.py", &["20", "200", "30"]);
    assert_checks(&out, COMMON_CHECKS);
    assert_checks(&out, &["sql-prepare"]);
    assert!(out.contains("psycopg2 OK"), "{out}");
}

#[test]
fn sqlalchemy2_sync_psycopg3_one_engine_matrix() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !python_has(&["SQLAlchemy", "psycopg"], &["sqlalchemy", "psycopg"]) {
        return;
    }
    let px = builder().start().unwrap();
    let out = run_script(&px, "sqlalchemy_driver.py", &["20", "200", "30", "sync"]);
    assert_checks(&out, COMMON_CHECKS);
    assert!(out.contains("sqlalchemy-sync OK"), "{out}");
}

#[test]
fn sqlalchemy2_async_asyncpg_one_engine_matrix() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !python_has(&["SQLAlchemy", "asyncpg", "greenlet"], &["sqlalchemy", "asyncpg"]) {
        return;
    }
    let px = builder().start().unwrap();
    let out = run_script(&px, "sqlalchemy_driver.py", &["20", "200", "30", "async"]);
    assert_checks(&out, COMMON_CHECKS);
    assert!(out.contains("sqlalchemy-async OK"), "{out}");
}
