//! Failures that once panicked a client's or an admin's task (issue 13): a read that fails on
//! two replicas, KILL racing a RELOAD that removes the database, malformed fixed-layout
//! messages (which servers closed on, and pgtier banned them for), and a panic in a client's
//! task (provoked by the debug builds' `PGTIER_TEST_PANIC`), which must end only that client
//! and close its server.

use std::time::{Duration, Instant};

use pgtier_kit::fixture::{replica_in_rotation, simple_rows as rows, ConfigBuilder};
use pgtier_kit::pids::rss_kib;
use pgtier_kit::{wire, Cluster, Pgtier};
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(10);
const USER: &str = "pgtier_trust";

fn builder(c: &Cluster) -> ConfigBuilder {
    pgtier_kit::fixture::ensure_app_db(c).unwrap();
    c.create_trust_role(USER).unwrap();
    ConfigBuilder::new(c)
        .global("admin_users = [\"admin\"]")
        .global("lag_check_interval = \"50ms\"")
        .user(USER, "auth = \"trust\"")
        .user("admin", "password = \"admin-pw\"")
}

async fn admin(px: &Pgtier) -> tokio_postgres::Client {
    pgtier_kit::fixture::admin_console(px, "admin", "admin-pw").await
}

/// SHOW REPLICAS' state of every replica of the cluster.
async fn replica_states(adm: &tokio_postgres::Client, c: &Cluster) -> Vec<String> {
    let rows = rows(adm, "SHOW REPLICAS").await;
    c.replicas()
        .iter()
        .map(|n| {
            let row = rows
                .iter()
                .find(|r| r.get("node") == Some(n.addr().as_str()));
            row.and_then(|r| r.get("state")).unwrap_or("?").to_owned()
        })
        .collect()
}

/// Waits until SHOW REPLICAS has both replicas healthy: one in the rotation is what
/// `replica_in_rotation` waits for, and the other's first check may still be on its way.
async fn both_healthy(adm: &tokio_postgres::Client, c: &Cluster) {
    let deadline = Instant::now() + LIMIT;
    while replica_states(adm, c).await != ["healthy", "healthy"] {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            replica_states(adm, c).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain query on a fresh client works, outside any transaction.
async fn still_serves(px: &Pgtier) {
    let (mut s, _) = wire::login_trust(&px.addr(), USER, "app").await.unwrap();
    let r = wire::send_all(&mut s, &[wire::query("SELECT 7")], LIMIT)
        .await
        .unwrap();
    assert_eq!(wire::first_value(&r), "7");
    assert_eq!(r.last().unwrap().body, b"I", "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_failing_on_two_replicas_gets_08006_not_a_dropped_connection() {
    let c = Cluster::shared();
    let px = builder(c).with_replicas(c).start().unwrap();
    replica_in_rotation(&px, USER, "").await.unwrap();
    // Both replicas, so that the retry finds the second one (not the primary).
    both_healthy(&admin(&px).await, c).await;
    let (mut s, _) = wire::login_trust(&px.addr(), USER, "app").await.unwrap();
    s.write_all(&wire::query("SELECT pg_sleep(60), 'fails-on-two-replicas'"))
        .await
        .unwrap();
    // Wherever the read runs, its backend is terminated before it replies: the first failure
    // is retried on the other replica, the second must reach the client as an error.
    let deadline = Instant::now() + 3 * LIMIT;
    let mut terminated = 0;
    while terminated < 2 {
        assert!(
            Instant::now() < deadline,
            "the read did not reach a replica twice ({terminated} terminated):\n{}",
            px.log()
        );
        for r in c.replicas() {
            let n = r
                .psql(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE query LIKE '%''fails-on-two-' || 'replicas''%' AND pid <> pg_backend_pid()",
                )
                .unwrap();
            terminated += n.parse::<u32>().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, message) = wire::expect_fatal(&mut s, LIMIT)
        .await
        .unwrap_or_else(|e| panic!("no error before the close ({e}):\n{}", px.log()));
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("failed on two servers"), "{message}");
    assert!(wire::closed_within(&mut s, LIMIT).await);
    still_serves(&px).await;
    assert!(!px.log().contains("panicked"), "{}", px.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_racing_a_reload_that_removes_the_database_answers() {
    let c = Cluster::shared();
    let base = builder(c);
    let with = base.clone().database(&format!(
        "[databases.gone]\nprimary = \"{}\"",
        c.primary().addr()
    ));
    // The debug build's reload point reloads the file during the first KILL, right after it
    // checked the name: a RELOAD landing there, which a stress loop hits too rarely to test.
    let px = with
        .start_with_env(&[("PGTIER_TEST_RELOAD_IN_ADMIN", "1")])
        .unwrap();
    std::fs::write(px.config_path(), base.render(px.port())).unwrap();
    let adm = admin(&px).await;
    adm.simple_query("KILL gone")
        .await
        .unwrap_or_else(|e| panic!("KILL during a reload: {e:?}\n{}", px.log()));
    assert!(
        px.log().contains("test reload point"),
        "built without debug assertions?\n{}",
        px.log()
    );
    // The same session goes on, on the new config.
    let e = adm.simple_query("KILL gone").await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("3D000"), "{e:?}");
    let dbs = rows(&adm, "SHOW DATABASES").await;
    assert!(dbs.iter().all(|r| r.get("name") != Some("gone")));
    assert!(!px.log().contains("panicked"), "{}", px.log());
}

/// `tag` with `body`, a frame whose declared length matches the body.
fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    wire::message(tag, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_08p01_before_any_server_and_ban_no_replica() {
    let c = Cluster::shared();
    let px = builder(c).with_replicas(c).start().unwrap();
    replica_in_rotation(&px, USER, "").await.unwrap();
    let adm = admin(&px).await;
    both_healthy(&adm, c).await;
    let bind_overrun = {
        // Two parameter values announced, none there.
        let mut b = b"\0\0\0\0\0\x02".to_vec();
        b.extend(0i16.to_be_bytes());
        b
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // The case: a Sync whose length says 65,536 bytes, with that many bytes.
        ("Sync", frame(b'S', &vec![0; 65_532])),
        ("Flush", [frame(b'H', b"x"), wire::sync()].concat()),
        (
            "Bind",
            [
                wire::parse("", "SELECT 1"),
                frame(b'B', &bind_overrun),
                wire::sync(),
            ]
            .concat(),
        ),
        (
            "Describe",
            [frame(b'D', &[b'S'; 20_000]), wire::sync()].concat(),
        ),
        ("Query", frame(b'Q', b"SELECT 1\0SELECT 2")),
        ("Execute", [frame(b'E', b"\0\0\0"), wire::sync()].concat()),
    ];
    for (name, bytes) in cases {
        let (mut s, _) = wire::login_trust(&px.addr(), USER, "app").await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let (code, message) = wire::expect_fatal(&mut s, LIMIT)
            .await
            .unwrap_or_else(|e| panic!("{name}: no error ({e}):\n{}", px.log()));
        assert_eq!(code, "08P01", "{name}: {message}");
        assert!(
            message.starts_with(&format!("pgtier: malformed {name} message")),
            "{name}: {message}"
        );
        assert!(wire::closed_within(&mut s, LIMIT).await, "{name}");
        // No server saw the bytes, so none was failed, retried on or banned.
        assert_eq!(
            replica_states(&adm, c).await,
            ["healthy", "healthy"],
            "after {name}:\n{}",
            px.log()
        );
    }
    still_serves(&px).await;
    assert!(!px.log().contains("panicked"), "{}", px.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_client_task_ends_that_client_only_and_closes_its_server() {
    const MARK: &str = "pgtier-test-panic-now";
    let c = Cluster::shared();
    let px = builder(c)
        .start_with_env(&[("PGTIER_TEST_PANIC", MARK)])
        .unwrap();
    let adm = admin(&px).await;
    let (mut s, _) = wire::login_trust(&px.addr(), USER, "app").await.unwrap();
    wire::send_all(&mut s, &[wire::query("BEGIN")], LIMIT)
        .await
        .unwrap();
    let r = wire::send_all(&mut s, &[wire::query("SELECT pg_backend_pid()")], LIMIT)
        .await
        .unwrap();
    let pid = wire::first_value(&r);
    // The server is inside a transaction when the client's task panics.
    s.write_all(&wire::query(&format!("SELECT '{MARK}'")))
        .await
        .unwrap();
    let (code, message) = wire::expect_fatal(&mut s, LIMIT).await.unwrap_or_else(|e| {
        panic!(
            "no error before the close ({e}); built without debug assertions?\n{}",
            px.log()
        )
    });
    assert_eq!(code, "XX000", "{message}");
    assert!(wire::closed_within(&mut s, LIMIT).await);
    // The server connection was closed, not pooled: its backend leaves Postgres.
    let deadline = Instant::now() + LIMIT;
    while c
        .primary()
        .psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
        ))
        .unwrap()
        != "0"
    {
        assert!(Instant::now() < deadline, "backend {pid} still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Counters: no client and no server left behind.
    let deadline = Instant::now() + LIMIT;
    while !rows(&adm, "SHOW CLIENTS").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the client stays in SHOW CLIENTS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in rows(&adm, "SHOW POOLS").await {
        for col in ["cl_active", "cl_waiting", "sv_active"] {
            assert_eq!(r.get(col), Some("0"), "{col}");
        }
    }
    assert!(rows(&adm, "SHOW SERVERS")
        .await
        .iter()
        .all(|r| r.get("remote_pid") != Some(pid.as_str())));
    // The process goes on; the next client gets a clean server (not one in a transaction).
    still_serves(&px).await;
    let log = px.log();
    assert!(log.contains("panic in pgtier (a bug)"), "{log}");
    assert!(log.contains("test panic (PGTIER_TEST_PANIC)"), "{log}");
    assert!(!log.contains("stack backtrace"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_ending_the_session_over_the_clients_doing_is_not_banned() {
    let c = Cluster::shared();
    let px = builder(c).with_replicas(c).start().unwrap();
    replica_in_rotation(&px, USER, "").await.unwrap();
    let (mut s, _) = wire::login_trust(&px.addr(), USER, "app").await.unwrap();
    // The client's own idle-in-transaction timeout: the primary ends the session (FATAL 25P03).
    wire::send_all(
        &mut s,
        &[wire::query(
            "BEGIN; SET LOCAL idle_in_transaction_session_timeout = '100ms'",
        )],
        LIMIT,
    )
    .await
    .unwrap();
    let (code, message) = wire::expect_fatal(&mut s, LIMIT).await.unwrap();
    assert_eq!(code, "25P03", "{message}");
    // The server's error is the last word (no 08006 of pgtier's after it)...
    assert!(wire::read_msg(&mut s, LIMIT).await.is_err());
    // ...and the node was not taken for a failing one.
    let log = px.log();
    assert!(!log.contains("connection failure reported"), "{log}");
    assert!(!log.contains("server connection lost"), "{log}");
    still_serves(&px).await;
}

/// What a panic costs in RSS, with std's hook and with pgtier's, with and without
/// RUST_BACKTRACE. A measurement, not a check: run it on a release build with fault injection,
/// `cargo build --release -p pgtier --features fault-injection` and
/// `PGTIER_BIN=target/release/pgtier cargo test -p pgtier-kit --test no_panics panic_rss -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; see its doc comment"]
async fn panic_rss_cost() {
    const MARK: &str = "pgtier-test-panic-now";
    let c = Cluster::shared();
    for (hook, backtrace) in [("std", "0"), ("std", "1"), ("pgtier", "0"), ("pgtier", "1")] {
        let mut env = vec![("PGTIER_TEST_PANIC", MARK), ("RUST_BACKTRACE", backtrace)];
        if hook == "std" {
            env.push(("PGTIER_TEST_DEFAULT_PANIC_HOOK", "1"));
        }
        let px = builder(c).start_with_env(&env).unwrap();
        // Warm up: the same path without the panic.
        for _ in 0..20 {
            still_serves(&px).await;
        }
        let before = rss_kib(px.pid());
        let mut after = Vec::new();
        for i in 1..=3 {
            let (mut s, _) = wire::login_trust(&px.addr(), USER, "app").await.unwrap();
            s.write_all(&wire::query(&format!("SELECT '{MARK}'")))
                .await
                .unwrap();
            let (code, _) = wire::expect_fatal(&mut s, LIMIT).await.unwrap();
            assert_eq!(code, "XX000");
            let deadline = Instant::now() + LIMIT;
            while px.log().matches("reason=\"internal error\"").count() < i {
                assert!(Instant::now() < deadline, "{}", px.log());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            still_serves(&px).await;
            after.push(rss_kib(px.pid()));
        }
        println!(
            "hook {hook:6} RUST_BACKTRACE={backtrace}: RSS {before} KiB before, after panics 1-3: {after:?} KiB (+{} KiB)",
            after[2] as i64 - before as i64
        );
    }
}
