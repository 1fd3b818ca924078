//! Live reload under load: pgbench runs through pgtier while the config is reloaded 20 times
//! (SIGHUP and admin RELOAD alternately; pool sizes change, a replica is added and removed).
//! Zero failed transactions.

use std::process::Command;
use std::time::Duration;

use pgtier_kit::fixture::{replica_in_rotation, scram_role, simple_rows, ConfigBuilder};
use pgtier_kit::Cluster;
use tokio_postgres::NoTls;

fn config(cluster: &Cluster, pool_size: u32, replicas: usize, port: u16) -> String {
    let list: Vec<String> = cluster.replicas()[..replicas]
        .iter()
        .map(|r| format!("\"{}\"", r.addr()))
        .collect();
    ConfigBuilder::new(cluster)
        .global("admin_users = [\"admin\"]")
        .global("lag_check_interval = \"50ms\"")
        .global(&format!("pool_size = {pool_size}"))
        .user("admin", "password = \"admin-pw\"")
        .user("appuser", "password = \"app-pw\"")
        .database(&format!("replicas = [{}]", list.join(", ")))
        .render(port)
}

fn pgbench(port: u16, args: &[&str]) -> std::process::Output {
    Command::new(pgtier_kit::bin_path("pgbench").unwrap())
        .args(args)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "appuser",
            "app",
        ])
        .env("PGPASSWORD", "app-pw")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_pgbench_lose_no_transaction() {
    let cluster = Cluster::start(2).unwrap();
    scram_role(&cluster, "appuser", "app-pw").unwrap();
    let port = pgtier_kit::free_port().unwrap();
    let px = pgtier_kit::Pgtier::start(port, &config(&cluster, 4, 1, port)).unwrap();
    replica_in_rotation(&px, "appuser", "app-pw").await.unwrap();
    let init = pgbench(port, &["-i", "-s", "1", "-q"]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );

    let bench = std::thread::spawn(move || {
        pgbench(
            port,
            &[
                "-c",
                "8",
                "-j",
                "2",
                "-T",
                "14",
                "-b",
                "tpcb-like",
                "-b",
                "select-only",
            ],
        )
    });
    let (admin, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=admin password=admin-pw dbname=pgtier"),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // The reloads start once pgbench runs: its 8 clients connected (SHOW CLIENTS) and 50
    // transactions through the pool (SHOW STATS).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let clients = simple_rows(&admin, "SHOW CLIENTS")
            .await
            .iter()
            .filter(|r| r.get("user") == Some("appuser"))
            .count();
        let xacts: u64 = simple_rows(&admin, "SHOW STATS")
            .await
            .iter()
            .filter(|r| r.get("database") == Some("app"))
            .map(|r| {
                r.get("total_xact_count")
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap()
            })
            .sum();
        if clients >= 8 && xacts >= 50 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pgbench is not running: {clients} clients, {xacts} transactions"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..20u32 {
        let text = config(&cluster, 4 + i % 3, 1 + (i as usize % 2), port);
        std::fs::write(px.config_path(), text).unwrap();
        if i % 2 == 0 {
            px.signal(libc::SIGHUP);
        } else {
            admin.simple_query("RELOAD").await.unwrap();
        }
        // Each reload is done (logged) before the next config is written.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while px.log().matches("config reloaded").count() < i as usize + 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "reload {} not logged:\n{}",
                i + 1,
                px.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Pacing, not synchronisation: the reloads spread over the 14 s pgbench run.
        tokio::time::sleep(Duration::from_millis(550)).await;
    }
    let out = bench.join().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = px.log();
    assert!(
        out.status.success(),
        "pgbench failed:\n{text}\n--- pgtier log ---\n{log}"
    );
    assert!(
        text.contains("number of failed transactions: 0 "),
        "failed transactions:\n{text}"
    );
    let processed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next()?.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(processed > 100, "too few transactions:\n{text}");
    let reloads = log.matches("config reloaded").count();
    assert_eq!(reloads, 20, "{log}");
    println!("reload under load: {processed} transactions, 20 reloads, 0 failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reclassifies_prepared_statements_and_keeps_replicas() {
    let cluster = Cluster::start(1).unwrap();
    scram_role(&cluster, "appuser", "app-pw").unwrap();
    cluster
        .ddl(
            "app",
            "CREATE OR REPLACE FUNCTION f_ro() RETURNS int VOLATILE LANGUAGE sql AS 'SELECT 1'",
        )
        .unwrap();
    cluster.wait_replicas_caught_up().unwrap();
    let port = pgtier_kit::free_port().unwrap();
    let px = pgtier_kit::Pgtier::start(port, &config(&cluster, 4, 1, port)).unwrap();
    replica_in_rotation(&px, "appuser", "app-pw").await.unwrap();
    let app = pgtier_kit::fixture::connect(&px, "appuser", "app-pw")
        .await
        .unwrap();
    let stmt = app
        .prepare("SELECT f_ro(), pg_is_in_recovery()")
        .await
        .unwrap();
    let on_replica = |row: tokio_postgres::Row| row.get::<_, bool>(1);
    // A volatile function pgtier does not know: the primary.
    assert!(!on_replica(app.query_one(&stmt, &[]).await.unwrap()));

    let text = config(&cluster, 4, 1, port).replacen(
        "[users.",
        "read_only_functions = [\"f_ro\"]\n[users.",
        1,
    );
    std::fs::write(px.config_path(), text).unwrap();
    px.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while px.log().matches("config reloaded").count() < 1 {
        assert!(std::time::Instant::now() < deadline, "{}", px.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The same prepared statement is classified again: now it may read from the replica,
    // which stayed in rotation (its nodes did not change).
    assert!(
        on_replica(app.query_one(&stmt, &[]).await.unwrap()),
        "after the reload the call of a read-only function should go to the replica:\n{}",
        px.log()
    );
}
