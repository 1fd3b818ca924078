//! LISTEN/NOTIFY in transaction mode without pinning: pgtier answers LISTEN/UNLISTEN itself,
//! listens on one shared server connection per database, and delivers each notification to
//! every client listening on its channel, between the client's transactions.

mod listen_support;

use std::time::Duration;

use listen_support::*;
use pgtier_kit::fixture::{admin_console, scram_role, server_connections};
use pgtier_kit::{Cluster, Pgtier};
use tokio_postgres::SimpleQueryMessage;

#[tokio::test(flavor = "multi_thread")]
async fn a_notify_reaches_every_listener_once_with_channel_payload_and_pid() {
    let px = start("ln_basic", &[], 2);
    let mut ls = Vec::new();
    for _ in 0..3 {
        let l = listener(px.port(), "ln_basic").await;
        // LISTEN folds unquoted names like Postgres; a quoted name is kept as written.
        l.c.batch_execute("LISTEN Jobs").await.unwrap();
        l.c.batch_execute("LISTEN \"Mixed\"").await.unwrap();
        ls.push(l);
    }
    // Through pgtier (the sender's pid is that of the pooled server that ran the NOTIFY).
    let mut sender = listener(px.port(), "ln_basic").await;
    sender.c.batch_execute("BEGIN").await.unwrap();
    let pid: i32 = value(&sender.c, "SELECT pg_backend_pid()")
        .await
        .parse()
        .unwrap();
    sender
        .c
        .batch_execute("NOTIFY jobs, 'through pgtier'; COMMIT")
        .await
        .unwrap();
    // Straight to the primary.
    let d = direct("ln_basic").await;
    let direct_pid: i32 = value(&d, "SELECT pg_backend_pid()").await.parse().unwrap();
    d.batch_execute("SELECT pg_notify('Mixed', 'direct')")
        .await
        .unwrap();
    for l in &mut ls {
        assert_eq!(
            next(l).await,
            Got::Note("jobs".into(), "through pgtier".into(), pid)
        );
        assert_eq!(
            next(l).await,
            Got::Note("Mixed".into(), "direct".into(), direct_pid)
        );
    }
    // Exactly once: a marker sent after both arrives next, with nothing in between.
    d.batch_execute("NOTIFY jobs, 'marker'").await.unwrap();
    for l in &mut ls {
        assert_eq!(
            next(l).await,
            Got::Note("jobs".into(), "marker".into(), direct_pid)
        );
    }
    // The sender does not listen: it got nothing.
    assert_eq!(sender.got.try_recv().ok(), None);
    // SHOW LISTENERS: the two channels, three clients each.
    let admin = admin_console(&px, "admin", "admin").await;
    let rows = admin.simple_query("SHOW LISTENERS").await.unwrap();
    let mut seen = Vec::new();
    for m in rows {
        if let SimpleQueryMessage::Row(r) = m {
            seen.push((r.get(1).unwrap().to_owned(), r.get(2).unwrap().to_owned()));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("Mixed".to_owned(), "3".to_owned()),
            ("jobs".into(), "3".into())
        ]
    );
    // SHOW CLIENTS: how many channels each client listens on.
    let mut listening = Vec::new();
    for m in admin.simple_query("SHOW CLIENTS").await.unwrap() {
        if let SimpleQueryMessage::Row(r) = m {
            listening.push(r.get("listening").unwrap().to_owned());
        }
    }
    listening.sort();
    assert_eq!(
        listening,
        ["0", "2", "2", "2"],
        "3 listeners and the sender"
    );
    assert!(!px.log().contains("pinned"), "a listener was pinned");
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_listeners_share_a_pool_of_five() {
    const N: usize = 500;
    let px = start("ln_many", &["max_client_conn = 2000"], 5);
    let port = px.port();
    let mut tasks = Vec::new();
    for _ in 0..N {
        tasks.push(tokio::spawn(async move {
            let l = listener(port, "ln_many").await;
            l.c.batch_execute("LISTEN fanout").await.unwrap();
            // And a query, so each client also uses the pool.
            assert_eq!(value(&l.c, "SELECT 1").await, "1");
            l
        }));
    }
    let mut ls = Vec::new();
    for t in tasks {
        ls.push(t.await.unwrap());
    }
    // The pool's five at most, plus the one listening connection.
    let servers = server_connections(Cluster::shared(), "ln_many").unwrap();
    eprintln!("server connections with {N} listeners: {servers}");
    assert!(
        servers <= 5 + 1,
        "{servers} server connections: {}",
        Cluster::shared()
            .primary()
            .psql("SELECT pid, backend_start, state, query FROM pg_stat_activity WHERE usename = 'ln_many'")
            .unwrap()
    );
    let d = direct("ln_many").await;
    let pid: i32 = value(&d, "SELECT pg_backend_pid()").await.parse().unwrap();
    let t0 = std::time::Instant::now();
    d.batch_execute("NOTIFY fanout, 'one'; NOTIFY fanout, 'two'")
        .await
        .unwrap();
    for l in &mut ls {
        assert_eq!(next(l).await, Got::Note("fanout".into(), "one".into(), pid));
        assert_eq!(next(l).await, Got::Note("fanout".into(), "two".into(), pid));
    }
    eprintln!(
        "2 notifications reached {N} listeners in {:?}",
        t0.elapsed()
    );
    for l in &mut ls {
        assert_eq!(l.got.try_recv().ok(), None, "a notification came twice");
    }
    // And the test's own direct connection.
    let servers = server_connections(Cluster::shared(), "ln_many").unwrap();
    assert!(servers <= 5 + 1 + 1, "{servers} server connections");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_client_gets_its_notifications_after_its_transaction() {
    let px = start("ln_busy", &[], 2);
    let mut a = listener(px.port(), "ln_busy").await;
    a.c.batch_execute("LISTEN busy").await.unwrap();
    a.c.batch_execute("BEGIN").await.unwrap();
    let d = direct("ln_busy").await;
    d.batch_execute("NOTIFY busy, 'while in a transaction'")
        .await
        .unwrap();
    // The client is inside a transaction: its statements' replies are not interrupted.
    for _ in 0..20 {
        assert_eq!(value(&a.c, "SELECT 42").await, "42");
    }
    a.c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        next(&mut a).await,
        Got::Note(
            "busy".into(),
            "while in a transaction".into(),
            value(&d, "SELECT pg_backend_pid()").await.parse().unwrap()
        )
    );
    // A client that notifies its own channel gets it too, as on Postgres.
    a.c.batch_execute("NOTIFY busy, 'self'").await.unwrap();
    assert!(matches!(next(&mut a).await, Got::Note(ch, p, _) if ch == "busy" && p == "self"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unlisten_and_a_rolled_back_listen_stop_delivery() {
    let px = start("ln_unlisten", &[], 2);
    let mut a = listener(px.port(), "ln_unlisten").await;
    a.c.batch_execute("LISTEN one; ").await.unwrap();
    a.c.batch_execute("LISTEN two").await.unwrap();
    a.c.batch_execute("UNLISTEN one").await.unwrap();
    let d = direct("ln_unlisten").await;
    d.batch_execute("NOTIFY one, 'x'; NOTIFY two, 'y'")
        .await
        .unwrap();
    assert!(matches!(next(&mut a).await, Got::Note(ch, _, _) if ch == "two"));
    a.c.batch_execute("UNLISTEN *").await.unwrap();
    a.c.batch_execute("LISTEN three").await.unwrap();
    d.batch_execute("NOTIFY two, 'x'; NOTIFY three, 'y'")
        .await
        .unwrap();
    assert!(matches!(next(&mut a).await, Got::Note(ch, _, _) if ch == "three"));
    // A statement that would pin a client listening through pgtier is refused (pinned, it
    // would stay in its relay, where notifications are not written).
    let err =
        a.c.batch_execute("BEGIN; LISTEN four; ROLLBACK")
            .await
            .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"));
    // LISTEN inside a transaction block of a client that listens on nothing through pgtier
    // runs on its server (which it then keeps); rolled back, it has no effect, as on Postgres.
    let mut b = listener(px.port(), "ln_unlisten").await;
    b.c.batch_execute("BEGIN; LISTEN four; ROLLBACK")
        .await
        .unwrap();
    b.c.batch_execute("LISTEN five").await.unwrap();
    d.batch_execute("NOTIFY four, 'x'; NOTIFY three, 'z'; NOTIFY five, 'w'")
        .await
        .unwrap();
    assert!(matches!(next(&mut a).await, Got::Note(ch, p, _) if ch == "three" && p == "z"));
    assert!(matches!(next(&mut b).await, Got::Note(ch, p, _) if ch == "five" && p == "w"));
    assert_eq!(a.got.try_recv().ok(), None);
    assert_eq!(b.got.try_recv().ok(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn extended_protocol_listen_is_answered_by_pgtier_too() {
    let px = start("ln_ext", &[], 1);
    let mut a = listener(px.port(), "ln_ext").await;
    // Prepared (Parse + Describe), then executed (Bind + Execute), then closed.
    assert_eq!(a.c.execute("LISTEN ext_one", &[]).await.unwrap(), 0);
    let st = a.c.prepare("LISTEN ext_two").await.unwrap();
    a.c.execute(&st, &[]).await.unwrap();
    drop(st);
    // The pool's one server is free: a was not pinned by its LISTENs.
    let b = listener(px.port(), "ln_ext").await;
    b.c.batch_execute("BEGIN").await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(2), a.c.batch_execute("BEGIN"))
        .await
        .is_err();
    assert!(
        err,
        "a ran beside b's transaction on a pool of one: a holds a server"
    );
    b.c.batch_execute("COMMIT").await.unwrap();
    a.c.batch_execute("COMMIT").await.unwrap();
    let d = direct("ln_ext").await;
    d.batch_execute("NOTIFY ext_one, '1'; NOTIFY ext_two, '2'")
        .await
        .unwrap();
    assert!(matches!(next(&mut a).await, Got::Note(ch, p, _) if ch == "ext_one" && p == "1"));
    assert!(matches!(next(&mut a).await, Got::Note(ch, p, _) if ch == "ext_two" && p == "2"));
    let st = a.c.prepare("UNLISTEN ext_one").await.unwrap();
    a.c.execute(&st, &[]).await.unwrap();
    d.batch_execute("NOTIFY ext_one, '3'; NOTIFY ext_two, '4'")
        .await
        .unwrap();
    assert!(matches!(next(&mut a).await, Got::Note(ch, p, _) if ch == "ext_two" && p == "4"));
    assert!(!px.log().contains("pinned"), "a listener was pinned");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_that_does_not_read_is_closed_while_others_keep_receiving() {
    let px = start("ln_slow", &["max_pending_notifications = 5"], 2);
    let mut slow = listener(px.port(), "ln_slow").await;
    let mut fast = listener(px.port(), "ln_slow").await;
    slow.c.batch_execute("LISTEN flood").await.unwrap();
    fast.c.batch_execute("LISTEN flood").await.unwrap();
    // Busy in a transaction, the slow client gets nothing meanwhile: its queue fills.
    slow.c.batch_execute("BEGIN").await.unwrap();
    let d = direct("ln_slow").await;
    // The fast client takes each before the next is sent: a burst of 10 could overflow its
    // queue of 5 too on a loaded machine, before its session ran to deliver (seen in CI).
    for i in 0..10 {
        d.batch_execute(&format!("NOTIFY flood, '{i}'"))
            .await
            .unwrap();
        assert!(matches!(next(&mut fast).await, Got::Note(_, p, _) if p == i.to_string()));
    }
    // Back between transactions, it is closed: FATAL 53400, nothing delivered silently short.
    let _ = slow.c.batch_execute("COMMIT").await;
    let code = tokio::time::timeout(ARRIVES, &mut slow.ended)
        .await
        .expect("the slow client is closed")
        .unwrap();
    assert_eq!(code.as_deref(), Some("53400"));
    assert_eq!(
        slow.got.try_recv().ok(),
        None,
        "a partial queue was delivered"
    );
    // The others go on.
    d.batch_execute("NOTIFY flood, 'after'").await.unwrap();
    assert!(matches!(next(&mut fast).await, Got::Note(_, p, _) if p == "after"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_listening_connection_is_reopened_and_clients_are_told() {
    let px = start("ln_lost", &[], 2);
    let mut a = listener(px.port(), "ln_lost").await;
    a.c.batch_execute("LISTEN survive").await.unwrap();
    let d = direct("ln_lost").await;
    d.batch_execute("NOTIFY survive, 'before'").await.unwrap();
    assert!(matches!(next(&mut a).await, Got::Note(_, p, _) if p == "before"));
    // Kill pgtier's listening connection on the server.
    let killed = value(
        &d,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE usename = 'ln_lost' AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .await;
    assert_eq!(killed, "1");
    match next(&mut a).await {
        Got::Notice(code, message) => {
            assert_eq!(code, "01000");
            assert!(message.contains("re-established"), "{message}");
        }
        other => panic!("expected a notice, got {other:?}"),
    }
    d.batch_execute("NOTIFY survive, 'after'").await.unwrap();
    assert!(matches!(next(&mut a).await, Got::Note(_, p, _) if p == "after"));
}

#[test]
fn psycopg_and_asyncpg_listeners_get_each_notification_once() {
    for module in ["psycopg", "asyncpg"] {
        let ok = std::process::Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "Python module `{module}` is missing: run `python3 -m pip install -r tests/python/requirements.txt`"
        );
    }
    let px = start("ln_py", &[], 2);
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/listen_notify.py");
    let port = px.port().to_string();
    let out = pgtier_kit::programs::run_against(
        &px,
        120,
        &["python3".as_ref(), script.as_os_str()],
        &["127.0.0.1", &port, "ln_py", "app", "200"],
        None,
    );
    assert!(out.contains("listen_notify OK"), "{out}");
    assert!(
        !px.log().contains("pinned"),
        "a listener was pinned:\n{}",
        px.log()
    );
}

#[test]
fn node_postgres_listeners_get_each_notification_once() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node");
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("NOTICE: node is not installed: node-postgres listen test skipped");
        return;
    }
    assert!(
        dir.join("node_modules").join("pg").is_dir(),
        "node-postgres is missing: run `npm ci` in {}",
        dir.display()
    );
    let px = start("ln_node", &[], 2);
    let port = px.port().to_string();
    let out = pgtier_kit::programs::run_against(
        &px,
        120,
        &["node".as_ref(), dir.join("pg_listen.js").as_os_str()],
        &["127.0.0.1", &port, "ln_node", "app", "100"],
        None,
    );
    assert!(out.contains("node-postgres listen OK"), "{out}");
    assert!(
        !px.log().contains("pinned"),
        "a listener was pinned:\n{}",
        px.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_pgtier_listens_on_the_promoted_primary_and_tells_clients() {
    const PW: &str = "ln-failover-pw";
    let cluster = Cluster::start(1).unwrap();
    scram_role(&cluster, "ln_failover", PW).unwrap();
    let nodes: Vec<String> = std::iter::once(cluster.primary())
        .chain(cluster.replicas())
        .map(|n| format!("{{ addr = \"{}\" }}", n.addr()))
        .collect();
    // Auto roles: the promoted replica becomes the primary.
    let port = pgtier_kit::free_port().unwrap();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nlag_check_interval = \"50ms\"\nprimary_wait_timeout = \"20s\"\n\
         [users.ln_failover]\npassword = \"{PW}\"\n[databases.app]\nnodes = [{}]\n",
        nodes.join(", ")
    );
    let px = Pgtier::start(port, &config).unwrap();
    let dsn = format!(
        "host=127.0.0.1 port={port} user=ln_failover password={PW} dbname=app connect_timeout=30"
    );
    let mut a = listener_dsn(&dsn).await;
    a.c.batch_execute("LISTEN moves").await.unwrap();
    let sender = listener_dsn(&dsn).await;
    sender
        .c
        .batch_execute("NOTIFY moves, 'before'")
        .await
        .unwrap();
    assert!(matches!(next(&mut a).await, Got::Note(_, p, _) if p == "before"));

    cluster.primary().stop_immediate().unwrap();
    let promoted = cluster.replica(0);
    promoted.promote().unwrap();
    // Told once pgtier listens again (on the promoted node)...
    match next(&mut a).await {
        Got::Notice(code, message) => {
            assert_eq!(code, "01000");
            assert!(message.contains("re-established"), "{message}");
        }
        other => panic!("expected a notice, got {other:?}"),
    }
    // ...where a NOTIFY through pgtier (a write: the new primary) reaches the listener.
    let sender = listener_dsn(&dsn).await;
    let row = sender
        .c
        .query_one(
            "SELECT inet_server_port(), pg_notify('moves', 'after')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0) as u16, promoted.port());
    assert!(matches!(next(&mut a).await, Got::Note(_, p, _) if p == "after"));
    assert!(px.log().contains("LISTEN connection lost"), "{}", px.log());
}

/// Fan-out measurement (not a check): NOTIFYs per second delivered to `PGTIER_FANOUT_LISTENERS`
/// listeners (default 300) through pgtier and directly, on a cluster of its own whose
/// `max_connections` leaves room for that many direct LISTEN sessions (the 1,000 do
/// not fit in the shared kit cluster's 400). Run with the release build:
/// `cargo build --release -p pgtier && PGTIER_BIN=target/release/pgtier cargo nextest run -p
/// pgtier-kit --test listen_notify --run-ignored ignored-only --no-capture fanout`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn fanout_throughput_through_pgtier_and_direct() {
    let listeners: usize = std::env::var("PGTIER_FANOUT_LISTENERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    const NOTES: usize = 2000;
    let max_connections =
        (listeners as u32 + 100).max(pgtier_kit::cluster::DEFAULT_MAX_CONNECTIONS);
    let cluster = Cluster::start_with_max_connections(0, max_connections).unwrap();
    scram_role(&cluster, "ln_bench", "ln_bench").unwrap();
    let px = pgtier_kit::fixture::ConfigBuilder::new(&cluster)
        .user(
            "ln_bench",
            "auth = \"trust\"\nserver_password = \"ln_bench\"",
        )
        .database("pool_size = 5")
        .global("max_client_conn = 5000")
        .global("max_pending_notifications = 10000")
        .start()
        .unwrap();
    let direct_port = cluster.primary().port();
    for (target, port, pw) in [
        ("pgtier", px.port(), ""),
        ("direct", direct_port, " password=ln_bench"),
    ] {
        let mut ls = Vec::new();
        for _ in 0..listeners {
            let l = listener_dsn(&format!(
                "host=127.0.0.1 port={port} user=ln_bench{pw} dbname=app connect_timeout=30"
            ))
            .await;
            l.c.batch_execute("LISTEN fan").await.unwrap();
            ls.push(l);
        }
        let servers = server_connections(&cluster, "ln_bench").unwrap();
        let d = listener_dsn(&format!(
            "host=127.0.0.1 port={direct_port} user=ln_bench password=ln_bench dbname=app"
        ))
        .await;
        let t0 = std::time::Instant::now();
        // One transaction: Postgres delivers all of them at its commit.
        d.c.batch_execute(&format!(
            "SELECT pg_notify('fan', g::text) FROM generate_series(1, {NOTES}) g"
        ))
        .await
        .unwrap();
        let waits: Vec<_> = ls
            .into_iter()
            .map(|mut l| {
                tokio::spawn(async move {
                    for _ in 0..NOTES {
                        next(&mut l).await;
                    }
                })
            })
            .collect();
        for w in waits {
            w.await.unwrap();
        }
        let took = t0.elapsed();
        eprintln!(
            "FANOUT {target}: {NOTES} notifications to {listeners} listeners in {took:?}: {:.0} notifications/s sent, {:.0} deliveries/s; {servers} server connections for the listeners",
            NOTES as f64 / took.as_secs_f64(),
            (NOTES * listeners) as f64 / took.as_secs_f64(),
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_and_pg_notify_go_to_the_primary_with_replicas_in_rotation() {
    let c = Cluster::shared();
    let px = pgtier_kit::fixture::start_routing(c, "ln_route", "ln_route", &[])
        .await
        .unwrap();
    let dsn = format!(
        "host=127.0.0.1 port={} user=ln_route password=ln_route dbname=app connect_timeout=30",
        px.port()
    );
    let mut a = listener_dsn(&dsn).await;
    a.c.batch_execute("LISTEN routed").await.unwrap();
    let s = listener_dsn(&dsn).await;
    // A plain read goes to a replica here...
    let (port, replica) = pgtier_kit::fixture::read_node(&s.c).await.unwrap();
    assert!(replica, "reads are routed to replicas (port {port})");
    // ...a NOTIFY and a pg_notify() are writes: the primary (a replica would refuse them).
    s.c.batch_execute("NOTIFY routed, 'one'").await.unwrap();
    let row =
        s.c.query_one("SELECT inet_server_port(), pg_notify('routed', 'two')", &[])
            .await
            .unwrap();
    assert_eq!(row.get::<_, i32>(0) as u16, c.primary().port());
    assert!(matches!(next(&mut a).await, Got::Note(_, p, _) if p == "one"));
    assert!(matches!(next(&mut a).await, Got::Note(_, p, _) if p == "two"));
}
