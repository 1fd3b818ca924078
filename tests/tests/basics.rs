//! Queries, drivers, psql and authentication through pgtier against a real cluster.

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use pgtier_kit::fixture::{connect, scram_role, ConfigBuilder};
use pgtier_kit::{wire, Cluster, Pgtier};
use tokio::io::AsyncWriteExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

const LIMIT: Duration = Duration::from_secs(10);

fn cluster() -> &'static Cluster {
    static SETUP: OnceLock<()> = OnceLock::new();
    let c = Cluster::shared();
    SETUP.get_or_init(|| {
        scram_role(c, "basic", "basic_pw").unwrap();
        c.create_md5_role("md5user", "md5_pw").unwrap();
        c.create_trust_role("pgtier_trust").unwrap();
        c.primary()
            .psql("ALTER ROLE basic SET search_path = public")
            .unwrap();
    });
    c
}

fn base() -> ConfigBuilder {
    ConfigBuilder::new(cluster())
        .user("basic", "password = \"basic_pw\"")
        .user("md5user", "password = \"md5_pw\"\nauth = \"md5\"")
        .user("pgtier_trust", "auth = \"trust\"")
        .user(
            "badserver",
            "password = \"client_pw\"\nserver_user = \"basic\"\nserver_password = \"wrong\"",
        )
}

fn pgtier() -> &'static Pgtier {
    static PX: OnceLock<Pgtier> = OnceLock::new();
    PX.get_or_init(|| base().database("pool_size = 4").start().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn simple_and_unnamed_extended_queries() {
    let px = pgtier();
    let c = connect(px, "basic", "basic_pw").await.unwrap();
    let msgs = c
        .simple_query("SELECT 1 AS x; SELECT 'two' AS y")
        .await
        .unwrap();
    let values: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "two"]);

    // query_typed uses the unnamed statement: Parse/Bind/Execute/Sync in one round trip.
    for i in 0..50i32 {
        let row = c
            .query_typed_one(
                "SELECT $1::int + 1, inet_server_port(), pg_is_in_recovery()",
                &[(&i, Type::INT4)],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        assert_eq!(row.get::<_, i32>(1), cluster().primary().port() as i32);
        assert!(!row.get::<_, bool>(2));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_stay_on_one_server_and_errors_pass_through() {
    let px = pgtier();
    let mut c = connect(px, "basic", "basic_pw").await.unwrap();
    c.batch_execute("CREATE TABLE IF NOT EXISTS basics_tx (id int primary key)")
        .await
        .unwrap();
    c.batch_execute("DELETE FROM basics_tx").await.unwrap();
    let tx = c.transaction().await.unwrap();
    let pid1: i32 = tx
        .query_typed_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    tx.execute_typed("INSERT INTO basics_tx VALUES ($1)", &[(&1i32, Type::INT4)])
        .await
        .unwrap();
    let pid2: i32 = tx
        .query_typed_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        pid1, pid2,
        "a transaction must stay on one server connection"
    );
    tx.commit().await.unwrap();

    // A Postgres error reaches the client unchanged, and the session goes on.
    let err = c
        .batch_execute("INSERT INTO basics_tx VALUES (1)")
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code(), &SqlState::UNIQUE_VIOLATION);
    assert!(db.message().contains("duplicate key"), "{}", db.message());
    assert_eq!(db.table(), Some("basics_tx"));
    let n: i64 = c
        .query_typed_one("SELECT count(*) FROM basics_tx", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    // An error inside a transaction block: rollback works and the server is reusable.
    c.batch_execute("BEGIN").await.unwrap();
    assert!(c.batch_execute("SELECT 1/0").await.is_err());
    let err = c.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    c.batch_execute("ROLLBACK").await.unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn session_mode_keeps_named_statements_and_settings() {
    let px = base().global("pool_mode = \"session\"").start().unwrap();
    let c = connect(&px, "basic", "basic_pw").await.unwrap();
    c.batch_execute("SET application_name = 'session-test'")
        .await
        .unwrap();
    let stmt = c
        .prepare("SELECT $1::text || current_setting('application_name')")
        .await
        .unwrap();
    for i in 0..20 {
        let row = c.query_one(&stmt, &[&i.to_string()]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("{i}session-test"));
    }
}

#[test]
fn psql_through_pgtier() {
    let px = pgtier();
    let out = Command::new(pgtier_kit::bin_path("psql").unwrap())
        .args(["-X", "-A", "-t", "-c", "SELECT 40 + 2, current_user"])
        .arg(format!(
            "postgres://basic:basic_pw@127.0.0.1:{}/app",
            px.port()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42|basic");
}

#[tokio::test(flavor = "multi_thread")]
async fn authentication_methods_and_failures() {
    let px = pgtier();
    // SCRAM (default) works, a wrong password or an unknown user gets 28P01.
    let err = connect(px, "basic", "nope").await.unwrap_err();
    let err = err.downcast::<tokio_postgres::Error>().unwrap();
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));
    let err = connect(px, "ghost", "x").await.unwrap_err();
    let err = err.downcast::<tokio_postgres::Error>().unwrap();
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));

    // md5 client auth; the server role also has an md5 password, so pgtier logs in with md5.
    let c = connect(px, "md5user", "md5_pw").await.unwrap();
    let who: String = c
        .query_typed_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "md5user");
    let err = connect(px, "md5user", "bad").await.unwrap_err();
    let err = err.downcast::<tokio_postgres::Error>().unwrap();
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));

    // trust on both sides.
    let c = connect(px, "pgtier_trust", "").await.unwrap();
    let who: String = c
        .query_typed_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "pgtier_trust");

    // Unknown database: 3D000 from pgtier.
    let dsn = format!(
        "host=127.0.0.1 port={} user=basic password=basic_pw dbname=nowhere",
        px.port()
    );
    let Err(err) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await else {
        panic!("connected to a database that does not exist");
    };
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME));

    // A wrong server password in the config: the server's own 28P01 reaches the client.
    let err = connect(px, "badserver", "client_pw").await.unwrap_err();
    let err = err.downcast::<tokio_postgres::Error>().unwrap();
    let db = err.as_db_error().expect("server error relayed");
    assert_eq!(db.code(), &SqlState::INVALID_PASSWORD);
    assert!(db.message().contains("\"basic\""), "{}", db.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn new_client_gets_parameters_key_and_ready() {
    let px = pgtier();
    let (_s, msgs) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    let params: Vec<String> = msgs
        .iter()
        .filter(|m| m.tag == b'S')
        .map(|m| {
            String::from_utf8_lossy(&m.body)
                .split('\0')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    for p in [
        "server_version",
        "client_encoding",
        "DateStyle",
        "TimeZone",
        "integer_datetimes",
        "standard_conforming_strings",
    ] {
        assert!(params.iter().any(|x| x == p), "missing {p} in {params:?}");
    }
    let key = msgs.iter().find(|m| m.tag == b'K').expect("BackendKeyData");
    assert_eq!(key.body.len(), 8);
    assert_eq!(msgs.last().unwrap().body, b"I");
}

#[tokio::test(flavor = "multi_thread")]
async fn ssl_and_gss_requests_are_declined_then_login_works() {
    // Client TLS off, whatever PGTIER_TEST_TLS says (tls_client.rs tests the 'S').
    let px = &base()
        .database("pool_size = 4")
        .global("client_tls_sslmode = \"disable\"")
        .start()
        .unwrap();
    for code in [80_877_103u32, 80_877_104] {
        let mut s = tokio::net::TcpStream::connect(px.addr()).await.unwrap();
        let mut req = 8u32.to_be_bytes().to_vec();
        req.extend(code.to_be_bytes());
        s.write_all(&req).await.unwrap();
        let mut answer = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut answer)
            .await
            .unwrap();
        assert_eq!(&answer, b"N");
        s.write_all(&wire::startup_packet(
            0,
            &[("user", "pgtier_trust"), ("database", "app")],
        ))
        .await
        .unwrap();
        let msgs = wire::read_until_ready(&mut s, LIMIT).await.unwrap();
        assert!(msgs.iter().all(|m| m.tag != b'E'), "{msgs:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_minor_version_and_pq_options_are_negotiated() {
    let px = pgtier();
    let mut s = tokio::net::TcpStream::connect(px.addr()).await.unwrap();
    s.write_all(&wire::startup_packet(
        2,
        &[
            ("user", "pgtier_trust"),
            ("database", "app"),
            ("_pq_.future_thing", "on"),
        ],
    ))
    .await
    .unwrap();
    let msgs = wire::read_until_ready(&mut s, LIMIT).await.unwrap();
    let v = msgs
        .iter()
        .find(|m| m.tag == b'v')
        .expect("NegotiateProtocolVersion");
    assert_eq!(
        &v.body[0..4],
        &0i32.to_be_bytes(),
        "newest minor supported is 0"
    );
    assert_eq!(&v.body[4..8], &1i32.to_be_bytes());
    assert_eq!(&v.body[8..], b"_pq_.future_thing\0");
    s.write_all(&wire::query("SELECT 1")).await.unwrap();
    let reply = wire::read_until_ready(&mut s, LIMIT).await.unwrap();
    assert!(reply.iter().any(|m| m.tag == b'D'));
}
