//! Bounds on peers that stop taking data: a client that stops reading a large result loses
//! its server within `client_write_timeout`, a server that stops reading within
//! `server_write_timeout`, an idle admin console within `admin_idle_timeout`, and a client
//! that pipelines past a unit the routing gate holds back is not read without bound.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pgtier_kit::fixture::{
    ensure_app_db, replica_in_rotation, scram_role, simple_rows, ConfigBuilder,
};
use pgtier_kit::node::Node;
use pgtier_kit::pids::rss_kib;
use pgtier_kit::{wire, Cluster, Pgtier};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};

/// Longest wait for anything that should happen within a second or two.
const LIMIT: Duration = Duration::from_secs(15);
const USER: &str = "bounds";
const ADMIN: &str = "bounds_admin";

fn cluster() -> &'static Cluster {
    static SETUP: OnceLock<()> = OnceLock::new();
    let c = Cluster::shared();
    SETUP.get_or_init(|| {
        ensure_app_db(c).unwrap();
        scram_role(c, USER, USER).unwrap();
    });
    c
}

/// pgtier with a trust user and an admin, `extra` global lines, and replicas if asked.
fn start(extra: &[&str], replicas: bool) -> Pgtier {
    let c = cluster();
    let mut b = ConfigBuilder::new(c)
        .global(&format!("admin_users = [\"{ADMIN}\"]"))
        .global("lag_check_interval = \"50ms\"")
        .user(
            USER,
            &format!("auth = \"trust\"\nserver_password = \"{USER}\""),
        )
        .user(ADMIN, "auth = \"trust\"");
    for line in extra {
        b = b.global(line);
    }
    if replicas {
        b = b.with_replicas(c);
    }
    b.start().unwrap()
}

async fn connect(px: &Pgtier, user: &str, db: &str) -> Client {
    let dsn = format!(
        "host=127.0.0.1 port={} user={user} dbname={db} connect_timeout=10",
        px.port()
    );
    let (c, conn) = tokio_postgres::connect(&dsn, NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

/// A direct connection to a node (not through pgtier).
async fn direct(node: &Node) -> Client {
    node.connect("app").await.unwrap()
}

/// Backends on a node whose query contains `marker` (other than the asking one) and that
/// match `filter`.
async fn backends(pg: &Client, marker: &str, filter: &str) -> i64 {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
         AND strpos(query, '{marker}') > 0 AND {filter}"
    );
    pg.query_one(&sql, &[]).await.unwrap().get(0)
}

/// Polls `check` until it holds, failing with `what` after `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two handles on one socket: one to write from a task, one to read.
fn two_handles(s: TcpStream) -> (TcpStream, TcpStream) {
    let s = s.into_std().unwrap();
    let other = s.try_clone().unwrap();
    (
        TcpStream::from_std(s).unwrap(),
        TcpStream::from_std(other).unwrap(),
    )
}

/// `SELECT 1` Query messages of about `each` bytes (padded with a comment) after `head`,
/// `total` bytes in all.
fn pipeline(head: &[Vec<u8>], each: usize, total: usize) -> Vec<u8> {
    let mut out = head.concat();
    let one = wire::query(&format!("SELECT 1 /* {} */", "x".repeat(each)));
    while out.len() < total {
        out.extend_from_slice(&one);
    }
    out
}

/// pgtier's `pgtier_write_timeouts_total` for database app and `peer`, from `/metrics`.
fn write_timeouts(metrics_port: u16, peer: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let series = format!("pgtier_write_timeouts_total{{database=\"app\",peer=\"{peer}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in {body}"))
        .to_owned()
}

/// After a stall, the pool of size 1 serves another client, and the admin console counts one
/// client (that one), no waiter, one idle server and no active one.
async fn pool_recovered(px: &Pgtier) {
    let b = connect(px, USER, "app").await;
    let t0 = Instant::now();
    let r = tokio::time::timeout(LIMIT, b.simple_query("SELECT 1")).await;
    assert!(
        matches!(r, Ok(Ok(_))),
        "another client was not served on the pool of size 1 within {LIMIT:?}: {r:?}"
    );
    eprintln!("next client served after {:?}", t0.elapsed());
    let admin = connect(px, ADMIN, "pgtier").await;
    let pools = simple_rows(&admin, "SHOW POOLS").await;
    let app: Vec<_> = pools
        .iter()
        .filter(|r| r.get("database") == Some("app"))
        .collect();
    assert_eq!(app.len(), 1);
    for (col, want) in [
        ("cl_active", "1"),
        ("cl_waiting", "0"),
        ("sv_active", "0"),
        ("sv_idle", "1"),
    ] {
        assert_eq!(app[0].get(col), Some(want), "SHOW POOLS {col}");
    }
    let servers = simple_rows(&admin, "SHOW SERVERS").await;
    assert_eq!(
        servers.len(),
        1,
        "SHOW SERVERS: one connection, the new one"
    );
    let clients = simple_rows(&admin, "SHOW CLIENTS").await;
    let app_clients = clients
        .iter()
        .filter(|r| r.get("database") == Some("app"))
        .count();
    assert_eq!(app_clients, 1, "SHOW CLIENTS: the stalled client is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_server_within_client_write_timeout() {
    let mport = pgtier_kit::free_port().unwrap();
    let px = start(
        &[
            &format!("metrics_listen = \"127.0.0.1:{mport}\""),
            "client_write_timeout = \"1s\"",
            "query_wait_timeout = \"60s\"",
            "pool_size = 1",
        ],
        false,
    );
    let pg = direct(cluster().primary()).await;
    let (mut a, _) = wire::login_trust(&px.addr(), USER, "app").await.unwrap();
    // About 4 GB of rows, never read.
    a.write_all(&wire::query(
        "SELECT repeat('x', 2000) /* stalled-reader */ FROM generate_series(1, 2000000)",
    ))
    .await
    .unwrap();
    // Every buffer on the way is full: Postgres waits to write to pgtier.
    wait_until(LIMIT, "the server blocked writing the result", || {
        backends(&pg, "stalled-reader", "wait_event = 'ClientWrite'").map(|n| n == 1)
    })
    .await;
    pool_recovered(&px).await;
    // The server was closed, not returned: its backend ends.
    wait_until(LIMIT, "the stalled client's backend ended", || {
        backends(&pg, "stalled-reader", "true").map(|n| n == 0)
    })
    .await;
    assert!(
        wire::closed_within(&mut a, LIMIT).await,
        "the stalled client was not closed"
    );
    let log = px.wait_for_log("client_write_timeout", LIMIT);
    assert!(
        log.contains("client accepted no data for client_write_timeout"),
        "{log}"
    );
    assert_eq!(write_timeouts(mport, "client"), "1");
    assert_eq!(write_timeouts(mport, "server"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_reading_is_closed_within_server_write_timeout() {
    let mport = pgtier_kit::free_port().unwrap();
    let px = start(
        &[
            &format!("metrics_listen = \"127.0.0.1:{mport}\""),
            "server_write_timeout = \"1s\"",
            "query_wait_timeout = \"60s\"",
            "pool_size = 1",
        ],
        false,
    );
    let pg = direct(cluster().primary()).await;
    let (a, _) = wire::login_trust(&px.addr(), USER, "app").await.unwrap();
    let (mut reader, mut writer) = two_handles(a);
    // The server sleeps and reads nothing meanwhile; far more than the socket buffers hold is
    // pipelined behind it.
    let payload = pipeline(
        &[wire::query("SELECT pg_sleep(60) /* stalled-server */")],
        // Few messages (pgtier bounds the replies a client may have outstanding).
        1 << 20,
        160 << 20,
    );
    let sender = tokio::spawn(async move {
        let _ = writer.write_all(&payload).await;
    });
    let t0 = Instant::now();
    let (code, message) = wire::expect_fatal(&mut reader, LIMIT).await.unwrap();
    eprintln!("client closed after {:?}: {code} {message}", t0.elapsed());
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("server_write_timeout"), "{message}");
    pool_recovered(&px).await;
    // Its query was cancelled and the connection closed: the backend ends long before 60 s.
    wait_until(LIMIT, "the stalled server's backend ended", || {
        backends(&pg, "stalled-server", "true").map(|n| n == 0)
    })
    .await;
    sender.abort();
    let log = px.wait_for_log("server_write_timeout", LIMIT);
    assert!(
        log.contains("server accepted no data for server_write_timeout"),
        "{log}"
    );
    assert_eq!(write_timeouts(mport, "server"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_admin_console_is_closed_after_admin_idle_timeout() {
    let px = start(&["admin_idle_timeout = \"1s\""], false);
    let (mut s, _) = wire::login_trust(&px.addr(), ADMIN, "pgtier")
        .await
        .unwrap();
    // Busy for three times the limit: each command starts the idle time again.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let r = wire::send_all(&mut s, &[wire::query("SHOW VERSION")], LIMIT)
            .await
            .unwrap();
        assert_eq!(wire::tags(&r), "TDCZ");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A command sent in part does not count as activity.
    s.write_all(&wire::query("SHOW VERSION")[..3])
        .await
        .unwrap();
    let idle = Instant::now();
    let (code, message) = wire::expect_fatal(&mut s, LIMIT).await.unwrap();
    assert_eq!(code, "57P05", "{message}");
    assert!(message.contains("admin_idle_timeout"), "{message}");
    assert!(
        idle.elapsed() < Duration::from_secs(5),
        "{:?}",
        idle.elapsed()
    );
    assert!(wire::closed_within(&mut s, LIMIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_held_back_on_a_replica_stops_reading_the_client() {
    let px = start(&[], true);
    replica_in_rotation(&px, USER, "").await.unwrap();
    let replicas = [
        direct(cluster().replica(0)).await,
        direct(cluster().replica(1)).await,
    ];
    let (a, _) = wire::login_trust(&px.addr(), USER, "app").await.unwrap();
    let (_reader, mut writer) = two_handles(a);
    // A slow read (a replica), then a unit that needs the primary (held back until the
    // replica has answered), then 160 MB more that pgtier has no reason to read meanwhile.
    const FLOOD: usize = 160 << 20;
    let payload = pipeline(
        &[
            wire::query("SELECT pg_sleep(6) /* held-gate */"),
            wire::query("/* pgtier:primary */ SELECT 1"),
        ],
        0,
        FLOOD,
    );
    let base = rss_kib(px.pid());
    let sent = Arc::new(AtomicUsize::new(0));
    let progress = sent.clone();
    let sender = tokio::spawn(async move {
        for chunk in payload.chunks(64 << 10) {
            if writer.write_all(chunk).await.is_err() {
                return;
            }
            progress.fetch_add(chunk.len(), Ordering::Relaxed);
        }
    });
    let on_replica = || async {
        let mut n = 0;
        for r in &replicas {
            n += backends(r, "held-gate", "state = 'active'").await;
        }
        n
    };
    wait_until(LIMIT, "the slow read runs on a replica", || {
        on_replica().map(|n| n == 1)
    })
    .await;
    // While the replica sleeps: what pgtier took from the client, and its memory.
    let (mut accepted, mut peak) = (0, 0);
    while on_replica().await == 1 && accepted < FLOOD {
        accepted = sent.load(Ordering::Relaxed);
        peak = peak.max(rss_kib(px.pid()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sender.abort();
    eprintln!(
        "while held: client wrote {} MiB; pgtier RSS {base} KiB before, peak {peak} KiB",
        accepted >> 20
    );
    // Socket buffers (up to 4 MiB sending, 32 MiB receiving here) and one read buffer.
    assert!(
        accepted < 48 << 20,
        "pgtier read {} MiB from a client whose next unit waits",
        accepted >> 20
    );
    assert!(
        peak.saturating_sub(base) < 24 * 1024,
        "pgtier RSS grew from {base} KiB to {peak} KiB while a unit was held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_unit_and_what_follows_it_run_in_order_once_the_replica_answers() {
    let px = start(&[], true);
    replica_in_rotation(&px, USER, "").await.unwrap();
    let (mut s, _) = wire::login_trust(&px.addr(), USER, "app").await.unwrap();
    let q = |sql: &str| wire::query(sql);
    s.write_all(
        &[
            q("SELECT pg_is_in_recovery() FROM pg_sleep(0.3)"),
            q("/* pgtier:primary */ SELECT pg_is_in_recovery()"),
            q("SELECT 'after'"),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let mut values = Vec::new();
    for _ in 0..3 {
        values.push(wire::first_value(
            &wire::read_until_ready(&mut s, LIMIT).await.unwrap(),
        ));
    }
    assert_eq!(values, ["t", "f", "after"]);
}

/// `map` on futures of this file's checks, without pulling in futures-util's FutureExt.
trait MapExt: Future + Sized {
    fn map<T>(self, f: impl FnOnce(Self::Output) -> T) -> impl Future<Output = T> {
        async move { f(self.await) }
    }
}

impl<F: Future> MapExt for F {}
