//! More real drivers through pgtier in transaction mode, each run as one process against one
//! pgtier (pool of 3 per server, the shared cluster's primary and two replicas): PostgreSQL
//! JDBC (Debian's libpostgresql-jdbc-java) with prepareThreshold default and 1, the Ruby `pg`
//! gem (Debian's ruby-pg), PHP PDO pgsql (Debian's php-pgsql) with emulated prepares off,
//! Node `postgres` (porsager, npm) and Rust sqlx (its own cargo project in tests/sqlx, runtime
//! API). The programs live in tests/java, tests/ruby, tests/php, tests/node and tests/sqlx; each
//! checks password (SCRAM) login, simple and parameterized queries, named prepared statements
//! reused by 30 connections across many transactions, rollback, an error in a transaction and
//! recovery, COPY and cancel where the driver has them, routing (writes on the primary,
//! read-your-writes, autocommit reads on a replica) and a 20 workers x 200 operations run with
//! 0 errors.
//!
//! scripts/test.sh installs the toolchains. Where one cannot be installed (a registry is down,
//! not root) it writes target/drivers-unavailable/NAME with the reason and the test prints a
//! NOTICE and is skipped; a driver missing without that file, or broken, fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use pgtier_kit::fixture::{scram_role, ConfigBuilder};
use pgtier_kit::programs::run_against;
use pgtier_kit::{Cluster, Pgtier};

/// Server connections per pool: 30 clients share them in the statement-reuse checks.
const POOL: u32 = 3;
const WORKERS: &str = "20";
const OPS: &str = "200";

fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    tests_dir().parent().unwrap().join("target")
}

/// pgtier on the shared cluster with its replicas, for login role `user` (SCRAM, password =
/// the user's name). Each driver has its own role, so the default `user` causal scope of one
/// driver's writes does not hold back another's reads when they run at the same time.
fn start(user: &str) -> Pgtier {
    start_with(user, &[])
}

/// [`start`] with extra top-level config lines.
fn start_with(user: &str, globals: &[&str]) -> Pgtier {
    let c = Cluster::shared();
    scram_role(c, user, user).unwrap();
    let mut b = ConfigBuilder::new(c);
    for g in globals {
        b = b.global(g);
    }
    b.global("pool_mode = \"transaction\"")
        .global("query_wait_timeout = \"60s\"")
        .global("log_level = \"debug\"")
        .user(user, &format!("password = \"{user}\""))
        .database(&format!("pool_size = {POOL}"))
        .with_replicas(c)
        .start()
        .unwrap()
}

/// False (after printing a NOTICE) when scripts/test.sh could not install `name`'s toolchain;
/// otherwise runs `probe` and fails the test if it does not succeed.
fn available(name: &str, probe: &[&str], hint: &str) -> bool {
    let marker = target_dir().join("drivers-unavailable").join(name);
    if let Ok(why) = std::fs::read_to_string(&marker) {
        eprintln!("NOTICE: {name} test skipped: its toolchain could not be installed: {why}");
        println!("skipped: {name} ({})", why.trim());
        return false;
    }
    let out = Command::new(probe[0]).args(&probe[1..]).output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => panic!(
            "{name} is not usable (`{}` failed): {hint}\n{}{}",
            probe.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "{name} is not installed (`{}`: {e}): {hint}",
            probe.join(" ")
        ),
    }
}

/// Runs `program args... HOST PORT USER DB PASSWORD WORKERS OPS` (killed after 240 s), asserts
/// it exited 0 and printed `ok_line`, and that pgtier routed some reads to a replica and did
/// not panic; returns its stdout.
fn run(px: &Pgtier, user: &str, program: &[&str], ok_line: &str) -> String {
    let port = px.port().to_string();
    let program: Vec<&std::ffi::OsStr> = program.iter().map(|p| p.as_ref()).collect();
    let args = ["127.0.0.1", &port, user, "app", user, WORKERS, OPS];
    let dir = tests_dir();
    let stdout = run_against(px, 240, &program, &args, Some(&dir));
    let log = px.log();
    assert!(
        stdout.contains(&format!(
            "{ok_line} OK: {WORKERS} workers x {OPS} operations"
        )),
        "{stdout}"
    );
    assert!(stdout.contains(", 0 errors,"), "{stdout}");
    // The debug log's routing lines: reads did use the replicas.
    assert!(log.contains("replica=true"), "no read went to a replica");
    stdout
}

#[test]
fn jdbc_prepare_threshold_default_and_1_batches_copy_cancel() {
    let jar = "/usr/share/java/postgresql.jar";
    if !available(
        "jdbc",
        &["java", "-version"],
        "install default-jdk-headless and libpostgresql-jdbc-java (scripts/test.sh does)",
    ) {
        return;
    }
    assert!(
        Path::new(jar).is_file(),
        "{jar} is missing: apt-get install libpostgresql-jdbc-java (scripts/test.sh does)"
    );
    // pgjdbc runs `SET extra_float_digits = 3` right after login: Postgres does not report
    // that parameter, and pgtier follows it (always an extra parameter) instead of pinning, so
    // the default config routes JDBC's reads to replicas (`run` asserts some did).
    let px = start("drv_jdbc");
    let out = run(
        &px,
        "drv_jdbc",
        &["java", "-cp", jar, "java/JdbcDriver.java"],
        "jdbc",
    );
    assert!(out.contains("prepareThreshold=default: ok") && out.contains("prepareThreshold=1: ok"));
}

#[test]
fn ruby_pg_exec_params_prepare_copy_cancel() {
    if !available(
        "ruby-pg",
        &["ruby", "-e", "require 'pg'"],
        "apt-get install ruby ruby-pg (scripts/test.sh does)",
    ) {
        return;
    }
    let px = start("drv_ruby");
    run(&px, "drv_ruby", &["ruby", "ruby/pg_driver.rb"], "ruby-pg");
}

#[test]
fn php_pdo_pgsql_without_emulated_prepares() {
    if !available(
        "php-pdo-pgsql",
        &["php", "-r", "exit(extension_loaded('pdo_pgsql') ? 0 : 1);"],
        "apt-get install php-cli php-pgsql (scripts/test.sh does)",
    ) {
        return;
    }
    let px = start("drv_php");
    run(&px, "drv_php", &["php", "php/pdo_driver.php"], "pdo_pgsql");
}

#[test]
fn node_postgres_porsager_prepared_copy_cancel() {
    if !available(
        "node-postgres-js",
        &["node", "--version"],
        "install Node.js and npm, then `npm ci` in tests/node (scripts/test.sh does)",
    ) {
        return;
    }
    let module = tests_dir()
        .join("node")
        .join("node_modules")
        .join("postgres");
    assert!(
        module.is_dir(),
        "npm package `postgres` is missing: run `npm ci` in tests/node (scripts/test.sh does)"
    );
    let px = start("drv_postgresjs");
    run(
        &px,
        "drv_postgresjs",
        &["node", "node/postgresjs_driver.mjs"],
        "postgres.js",
    );
}

#[test]
fn sqlx_statement_cache_transactions_copy() {
    let manifest = tests_dir().join("sqlx").join("Cargo.toml");
    if !available(
        "sqlx",
        &["cargo", "--version"],
        "scripts/test.sh builds tests/sqlx",
    ) {
        return;
    }
    let px = start("drv_sqlx");
    // The `query!` macros describe their statements at compile time: the table they use must
    // exist, and DATABASE_URL name its database (the primary, as a developer's database would;
    // the program then runs against pgtier).
    let c = Cluster::shared();
    c.ddl(
        "app",
        "CREATE TABLE IF NOT EXISTS sqlx_checked (id int PRIMARY KEY, name text NOT NULL, score int); \
         GRANT ALL ON sqlx_checked TO drv_sqlx",
    )
    .unwrap();
    // scripts/test.sh built sqlx and its macros; only this crate compiles here (offline: the
    // crates were fetched there).
    let target = target_dir().join("sqlx");
    let out = Command::new("cargo")
        .args(["build", "--offline", "--quiet", "--features", "checked"])
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .env(
            "DATABASE_URL",
            format!(
                "postgres://drv_sqlx:drv_sqlx@127.0.0.1:{}/app",
                c.primary().port()
            ),
        )
        .env("SQLX_OFFLINE", "false")
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "building tests/sqlx failed (run scripts/test.sh, which fetches its crates):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = target.join("debug").join("sqlx_driver");
    let stdout = run(&px, "drv_sqlx", &[bin.to_str().unwrap()], "sqlx");
    assert!(
        stdout.contains("query! macros (checked at compile time): ok"),
        "{stdout}"
    );
}
