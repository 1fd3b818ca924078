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
