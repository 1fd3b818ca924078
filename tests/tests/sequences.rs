//! Sequence state (what currval() and lastval() read) is session state: in transaction pooling
//! a client must never read another client's, nor a stale value of its own from a server it
//! used in an earlier transaction. pgtier clears a server's sequence state (DISCARD SEQUENCES,
//! sent ahead of the next request) after any transaction that may have called nextval, so
//! within a transaction they work as in Postgres, and across transactions they fail with 55000
//! as in a new session. Two clients share one server connection (pool size 1) to show it.

use pgtier_kit::fixture::{scram_role, ConfigBuilder};
use pgtier_kit::{Cluster, Pgtier};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

fn start(replicas: bool) -> Pgtier {
    let c = Cluster::shared();
    scram_role(c, "seqs", "seqs").unwrap();
    c.ddl(
        "app",
        "CREATE SEQUENCE IF NOT EXISTS seq_plain; \
         CREATE TABLE IF NOT EXISTS seq_rows (id serial PRIMARY KEY, v int); \
         GRANT ALL ON SEQUENCE seq_plain, seq_rows_id_seq TO seqs; \
         GRANT ALL ON TABLE seq_rows TO seqs",
    )
    .unwrap();
    let mut b = ConfigBuilder::new(c)
        .user("seqs", "auth = \"trust\"\nserver_password = \"seqs\"")
        .database("pool_size = 1");
    if replicas {
        c.wait_replicas_caught_up().unwrap();
        b = b.with_replicas(c);
    }
    b.start().unwrap()
}

async fn client(px: &Pgtier) -> Client {
    let dsn = format!("host=127.0.0.1 port={} user=seqs dbname=app", px.port());
    // Once seen in CI: the first connect reset at the TCP level; pgtier's log says why.
    let (c, conn) = tokio_postgres::connect(&dsn, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e:?}\npgtier's log:\n{}", px.log()));
    tokio::spawn(conn);
    c
}

/// The first column of the only row of `sql`, or the error's SQLSTATE.
async fn value(c: &Client, sql: &str) -> Result<String, SqlState> {
    match c.simple_query(sql).await {
        Ok(msgs) => Ok(msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
                _ => None,
            })
            .last()
            .expect("a row")),
        Err(e) => Err(e.code().expect("a server error").clone()),
    }
}

const NOT_DEFINED: SqlState = SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE;

async fn no_client_reads_another_clients_sequence_state(px: &Pgtier) {
    let a = client(px).await;
    let b = client(px).await;
    // One server connection on the primary: both clients run on the same backend (a
    // transaction block keeps the pid query on the primary when reads are split).
    const PID: &str = "BEGIN; SELECT pg_backend_pid(); COMMIT";
    let pid_a = value(&a, PID).await.unwrap();
    assert_eq!(value(&b, PID).await.unwrap(), pid_a);

    // Explicit nextval by A, then currval/lastval by B on the same backend.
    let v: i64 = value(&a, "SELECT nextval('seq_plain')")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(value(&b, PID).await.unwrap(), pid_a);
    assert_eq!(
        value(&b, "SELECT currval('seq_plain')").await,
        Err(NOT_DEFINED)
    );
    assert_eq!(value(&b, "SELECT lastval()").await, Err(NOT_DEFINED));

    // Implicit nextval (a serial column's default) by A, then lastval by B.
    value(&a, "INSERT INTO seq_rows (v) VALUES (1) RETURNING id")
        .await
        .unwrap();
    assert_eq!(value(&b, "SELECT lastval()").await, Err(NOT_DEFINED));

    // A's own value from an earlier transaction is not read either (it would be stale as soon
    // as A's next nextval ran on another server): as in a new session.
    value(&a, "SELECT nextval('seq_plain')").await.unwrap();
    assert_eq!(
        value(&a, "SELECT currval('seq_plain')").await,
        Err(NOT_DEFINED)
    );

    // Within one transaction they work as in Postgres, also after another client's nextval.
    value(&b, "SELECT nextval('seq_plain')").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    let w: i64 = value(&a, "SELECT nextval('seq_plain')")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(w > v);
    assert_eq!(
        value(&a, "SELECT currval('seq_plain')").await.unwrap(),
        w.to_string()
    );
    let id = value(&a, "INSERT INTO seq_rows (v) VALUES (2) RETURNING id")
        .await
        .unwrap();
    assert_eq!(value(&a, "SELECT lastval()").await.unwrap(), id);
    a.batch_execute("COMMIT").await.unwrap();
    // And in one autocommit string (PHP's lastInsertId pattern, done in one round trip).
    let both = value(
        &a,
        "INSERT INTO seq_rows (v) VALUES (3); SELECT lastval() = max(id) FROM seq_rows",
    )
    .await
    .unwrap();
    assert_eq!(both, "t");
    assert_eq!(
        value(&b, "SELECT currval('seq_rows_id_seq')").await,
        Err(NOT_DEFINED)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sequence_state_never_crosses_clients_without_replicas() {
    let px = start(false);
    no_client_reads_another_clients_sequence_state(&px).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sequence_state_never_crosses_clients_with_read_write_splitting() {
    let px = start(true);
    no_client_reads_another_clients_sequence_state(&px).await;
}
