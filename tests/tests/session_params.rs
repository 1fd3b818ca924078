//! Reported session parameters (TimeZone, DateStyle, application_name...) follow each client in
//! transaction mode: set once, they apply to every server that serves the client, and never
//! leak to other clients sharing those servers.

use std::sync::OnceLock;

use pgtier_kit::fixture::{scram_role, ConfigBuilder};
use pgtier_kit::{Cluster, Pgtier};
use tokio_postgres::{Client, NoTls};

fn pgtier() -> &'static Pgtier {
    static PX: OnceLock<Pgtier> = OnceLock::new();
    PX.get_or_init(|| {
        let c = Cluster::shared();
        scram_role(c, "params", "params").unwrap();
        ConfigBuilder::new(c)
            .user("params", "auth = \"trust\"\nserver_password = \"params\"")
            .database("pool_size = 1")
            .start()
            .unwrap()
    })
}

async fn client(extra: &str) -> Client {
    let dsn = format!(
        "host=127.0.0.1 port={} user=params dbname=app {extra}",
        pgtier().port()
    );
    let (c, conn) = tokio_postgres::connect(&dsn, NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

async fn setting(c: &Client, name: &str) -> String {
    let rows = c
        .simple_query(&format!(
            "SELECT current_setting('{name}'), pg_backend_pid()"
        ))
        .await
        .unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
            _ => None,
        })
        .expect("a row")
}

#[tokio::test(flavor = "multi_thread")]
async fn set_follows_the_client_and_does_not_leak() {
    // pool_size = 1: both clients share one server connection.
    let a = client("").await;
    let b = client("").await;
    let default_tz = setting(&b, "TimeZone").await;
    assert_ne!(default_tz, "Asia/Tokyo");
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'SQL, DMY'")
        .await
        .unwrap();
    for _ in 0..10 {
        assert_eq!(setting(&b, "TimeZone").await, default_tz);
        assert_ne!(setting(&b, "DateStyle").await, "SQL, DMY");
        assert_eq!(setting(&a, "TimeZone").await, "Asia/Tokyo");
        assert_eq!(setting(&a, "DateStyle").await, "SQL, DMY");
    }
    // Back to the default: nothing left to sync.
    a.batch_execute("RESET TimeZone; RESET DateStyle")
        .await
        .unwrap();
    assert_eq!(setting(&a, "TimeZone").await, default_tz);
    assert_eq!(setting(&b, "TimeZone").await, default_tz);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolled_back_set_is_undone_for_the_client() {
    let a = client("").await;
    let b = client("").await;
    let default_tz = setting(&b, "TimeZone").await;
    a.batch_execute("BEGIN; SET TimeZone = 'America/New_York'")
        .await
        .unwrap();
    assert_eq!(setting(&a, "TimeZone").await, "America/New_York");
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(setting(&b, "TimeZone").await, default_tz);
    assert_eq!(setting(&a, "TimeZone").await, default_tz);
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_parameters_apply_on_every_server() {
    let named = client("application_name=billing-worker").await;
    let plain = client("").await;
    for _ in 0..5 {
        assert_eq!(setting(&named, "application_name").await, "billing-worker");
        assert_eq!(setting(&plain, "application_name").await, "pgtier");
    }
}

/// A startup parameter value Postgres would refuse at startup ends the session with 22023 and
/// the server's message at the first request, instead of failing every request.
#[tokio::test]
async fn an_invalid_startup_parameter_value_is_refused_like_postgres_would() {
    use pgtier_kit::wire;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(pgtier().addr())
        .await
        .unwrap();
    let startup = wire::startup_packet(
        0,
        &[
            ("user", "params"),
            ("database", "app"),
            ("TimeZone", "Nowhere/Bogus"),
        ],
    );
    s.write_all(&startup).await.unwrap();
    wire::read_until_ready(&mut s, Duration::from_secs(10))
        .await
        .unwrap();
    s.write_all(&wire::query("SELECT 1")).await.unwrap();
    let (code, message) = wire::expect_fatal(&mut s, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(code, "22023", "{message}");
    assert!(message.contains("Nowhere/Bogus"), "{message}");
    assert!(wire::closed_within(&mut s, Duration::from_secs(5)).await);
    // The pool's one server connection was not lost to it: others are served.
    let c = client("").await;
    assert!(!setting(&c, "TimeZone").await.is_empty());
}

/// A pgtier syncing two unreported parameters on one server connection; waiting for it fails
/// fast (a pinned client would hold the only server).
fn pgtier_with_extras() -> &'static Pgtier {
    static PX: OnceLock<Pgtier> = OnceLock::new();
    PX.get_or_init(|| {
        let c = Cluster::shared();
        scram_role(c, "extras", "extras").unwrap();
        ConfigBuilder::new(c)
            .global("track_extra_params = [\"work_mem\", \"Statement_Timeout\"]")
            .global("query_wait_timeout = \"3s\"")
            .user("extras", "auth = \"trust\"\nserver_password = \"extras\"")
            .database("pool_size = 1")
            .start()
            .unwrap()
    })
}

async fn extras_client() -> Client {
    let dsn = format!(
        "host=127.0.0.1 port={} user=extras dbname=app",
        pgtier_with_extras().port()
    );
    let (c, conn) = tokio_postgres::connect(&dsn, NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

/// (SHOW work_mem, SHOW statement_timeout, backend pid).
async fn extras(c: &Client) -> (String, String, String) {
    let rows = c
        .simple_query("SHOW work_mem; SHOW statement_timeout; SELECT pg_backend_pid()::text")
        .await
        .unwrap();
    let v: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
            _ => None,
        })
        .collect();
    (v[0].clone(), v[1].clone(), v[2].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn track_extra_params_sync_without_pinning() {
    // pool_size = 1: all three clients share one server connection, so none may be pinned.
    let a = extras_client().await;
    let b = extras_client().await;
    let c = extras_client().await;
    let (mem0, timeout0, pid) = extras(&c).await;
    a.batch_execute("SET work_mem = '1234kB'").await.unwrap();
    a.batch_execute("SET SESSION statement_timeout TO '4s'")
        .await
        .unwrap();
    b.batch_execute("set work_mem to 2345").await.unwrap();
    // A value the server rejects changes nothing.
    assert!(b.batch_execute("SET work_mem = 'lots'").await.is_err());
    for _ in 0..5 {
        let (m, t, p) = extras(&a).await;
        assert_eq!((m.as_str(), t.as_str(), &p), ("1234kB", "4s", &pid));
        let (m, t, p) = extras(&b).await;
        assert_eq!((m.as_str(), &t, &p), ("2345kB", &timeout0, &pid));
        assert_eq!(
            extras(&c).await,
            (mem0.clone(), timeout0.clone(), pid.clone())
        );
    }
    // RESET and SET ... TO DEFAULT go back to the server's default.
    a.batch_execute("RESET work_mem").await.unwrap();
    a.batch_execute("SET statement_timeout TO DEFAULT")
        .await
        .unwrap();
    assert_eq!(
        extras(&a).await,
        (mem0.clone(), timeout0.clone(), pid.clone())
    );
    assert_eq!(extras(&b).await.0, "2345kB");
    // RESET ALL too.
    b.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(
        extras(&b).await,
        (mem0.clone(), timeout0.clone(), pid.clone())
    );
    // Still no client pinned: every statement ran on the one server connection.
    assert!(
        !pgtier_with_extras().log().contains("pinned"),
        "{}",
        pgtier_with_extras().log()
    );
}

/// A `track_extra_params` value from the startup packet (asyncpg's `server_settings`, JDBC
/// options) is the client's value on every server, and not another client's.
#[tokio::test(flavor = "multi_thread")]
async fn startup_values_of_extra_params_follow_the_client() {
    use pgtier_kit::wire;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    let limit = Duration::from_secs(10);
    let mut s = tokio::net::TcpStream::connect(pgtier_with_extras().addr())
        .await
        .unwrap();
    let startup = wire::startup_packet(
        0,
        &[
            ("user", "extras"),
            ("database", "app"),
            ("work_mem", "3210kB"),
        ],
    );
    s.write_all(&startup).await.unwrap();
    wire::read_until_ready(&mut s, limit).await.unwrap();
    let other = extras_client().await;
    let (default_mem, _, _) = extras(&other).await;
    for _ in 0..3 {
        s.write_all(&wire::query("SHOW work_mem")).await.unwrap();
        let reply = wire::read_until_ready(&mut s, limit).await.unwrap();
        assert_eq!(wire::first_value(&reply), "3210kB");
        assert_eq!(extras(&other).await.0, default_mem);
    }
    // A followed SET, then RESET: back to the startup value, as on Postgres (still followed,
    // so the other client keeps being served by the one server connection).
    for reset in ["RESET work_mem", "SET work_mem TO DEFAULT", "RESET ALL"] {
        s.write_all(&wire::query("SET work_mem = '1MB'"))
            .await
            .unwrap();
        wire::read_until_ready(&mut s, limit).await.unwrap();
        s.write_all(&wire::query(reset)).await.unwrap();
        wire::read_until_ready(&mut s, limit).await.unwrap();
        s.write_all(&wire::query("SHOW work_mem")).await.unwrap();
        let reply = wire::read_until_ready(&mut s, limit).await.unwrap();
        assert_eq!(wire::first_value(&reply), "3210kB", "after {reset}");
        assert_eq!(extras(&other).await.0, default_mem);
    }
}

/// (SHOW work_mem, backend pid) over a raw protocol connection.
async fn show_work_mem(s: &mut tokio::net::TcpStream) -> (String, String) {
    use pgtier_kit::wire;
    use tokio::io::AsyncWriteExt;
    s.write_all(&wire::query("SHOW work_mem; SELECT pg_backend_pid()::text"))
        .await
        .unwrap();
    let reply = wire::read_until_ready(s, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let values: Vec<String> = reply
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| wire::first_value(std::slice::from_ref(m)))
        .collect();
    (values[0].clone(), values[1].clone())
}

/// A SET of a `track_extra_params` parameter sent the way JDBC and psycopg send a plain
/// statement (unnamed Parse, Bind, Describe, Execute, Sync) is followed like a simple-query SET:
/// the client keeps its value on the shared server connection, others do not see it, a value
/// the server rejects changes nothing, and nobody is pinned.
#[tokio::test(flavor = "multi_thread")]
async fn an_extended_protocol_set_is_followed_without_pinning() {
    use pgtier_kit::wire;
    use std::time::Duration;
    let limit = Duration::from_secs(10);
    let (mut s, _) = wire::login_trust(&pgtier_with_extras().addr(), "extras", "app")
        .await
        .unwrap();
    let extended = |sql: &str| {
        vec![
            wire::parse("", sql),
            wire::bind(""),
            wire::message(b'D', b"P\0"),
            wire::execute(),
            wire::sync(),
        ]
    };
    let other = extras_client().await;
    let (default_mem, _, pid) = extras(&other).await;
    let reply = wire::send_all(&mut s, &extended("SET work_mem = '4321kB'"), limit)
        .await
        .unwrap();
    assert_eq!(wire::tags(&reply), "12nCZ");
    for _ in 0..3 {
        assert_eq!(
            show_work_mem(&mut s).await,
            ("4321kB".to_owned(), pid.clone())
        );
        assert_eq!(extras(&other).await.0, default_mem);
    }
    // A value the server rejects changes nothing.
    let reply = wire::send_all(&mut s, &extended("SET work_mem = 'lots'"), limit)
        .await
        .unwrap();
    let error = reply.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(error.field(b'C').as_deref(), Some("22023"));
    assert_eq!(show_work_mem(&mut s).await.0, "4321kB");
    assert_eq!(extras(&other).await.0, default_mem);
    // RESET the same way.
    wire::send_all(&mut s, &extended("RESET work_mem"), limit)
        .await
        .unwrap();
    assert_eq!(
        show_work_mem(&mut s).await,
        (default_mem.clone(), pid.clone())
    );
    let log = pgtier_with_extras().log();
    assert!(!log.contains("pinned"), "{log}");
}

/// Two clients with different `search_path` (tracked, so neither is pinned) share one server
/// connection and one server-side statement (same text): each still reads its own schema's
/// table, because Postgres re-parses a prepared statement whose search_path changed.
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_shared_by_text_follows_each_clients_search_path() {
    let c = Cluster::shared();
    scram_role(c, "paths", "paths").unwrap();
    c.ddl(
        "app",
        "CREATE SCHEMA IF NOT EXISTS sp_a; CREATE SCHEMA IF NOT EXISTS sp_b;
         DROP TABLE IF EXISTS sp_a.sp_t, sp_b.sp_t;
         CREATE TABLE sp_a.sp_t (v text); INSERT INTO sp_a.sp_t VALUES ('a');
         CREATE TABLE sp_b.sp_t (v text); INSERT INTO sp_b.sp_t VALUES ('b');
         GRANT USAGE ON SCHEMA sp_a, sp_b TO paths;
         GRANT SELECT ON sp_a.sp_t, sp_b.sp_t TO paths;",
    )
    .unwrap();
    let px = ConfigBuilder::new(c)
        .global("track_extra_params = [\"search_path\"]")
        .global("query_wait_timeout = \"3s\"")
        .user("paths", "auth = \"trust\"\nserver_password = \"paths\"")
        .database("pool_size = 1")
        .start()
        .unwrap();
    let connect = || async {
        let dsn = format!("host=127.0.0.1 port={} user=paths dbname=app", px.port());
        let (client, conn) = tokio_postgres::connect(&dsn, NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    };
    let (a, b) = (connect().await, connect().await);
    a.batch_execute("SET search_path = sp_a").await.unwrap();
    b.batch_execute("SET search_path = sp_b").await.unwrap();
    let sa = a.prepare("SELECT v FROM sp_t").await.unwrap();
    let sb = b.prepare("SELECT v FROM sp_t").await.unwrap();
    for _ in 0..5 {
        let va: String = a.query_one(&sa, &[]).await.unwrap().get(0);
        let vb: String = b.query_one(&sb, &[]).await.unwrap().get(0);
        assert_eq!((va.as_str(), vb.as_str()), ("a", "b"));
    }
    assert!(!px.log().contains("pinned"), "{}", px.log());
}
