//! Session state that cannot move between servers (SET of unreported parameters, temp tables,
//! LISTEN...) pins its client to its server in transaction mode, never leaks to other clients,
//! and is reset (DISCARD ALL) before the server serves anyone else.

use pgtier_kit::fixture::{scram_role, ConfigBuilder};
use pgtier_kit::{Cluster, Pgtier};
use tokio_postgres::{Client, NoTls};

fn start(extra_global: &str, pool_size: u32) -> Pgtier {
    let c = Cluster::shared();
    scram_role(c, "pins", "pins").unwrap();
    let mut b = ConfigBuilder::new(c)
        .user("pins", "auth = \"trust\"\nserver_password = \"pins\"")
        .database(&format!("pool_size = {pool_size}"));
    if !extra_global.is_empty() {
        b = b.global(extra_global);
    }
    b.start().unwrap()
}

async fn client(px: &Pgtier) -> Client {
    let dsn = format!("host=127.0.0.1 port={} user=pins dbname=app", px.port());
    let (c, conn) = tokio_postgres::connect(&dsn, NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

/// (value of `setting`, backend pid) for one simple query.
async fn probe(c: &Client, setting: &str) -> (String, String) {
    let rows = c
        .simple_query(&format!(
            "SELECT current_setting('{setting}'), pg_backend_pid()::text"
        ))
        .await
        .unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(0).unwrap().to_owned(), r.get(1).unwrap().to_owned()))
            }
            _ => None,
        })
        .expect("a row")
}

#[tokio::test(flavor = "multi_thread")]
async fn unreported_set_pins_the_client_and_is_reset_after_it_leaves() {
    let px = start("", 2);
    let a = client(&px).await;
    let (default_mem, _) = probe(&a, "work_mem").await;
    a.batch_execute("SET work_mem = '7MB'").await.unwrap();
    let (mem, pid) = probe(&a, "work_mem").await;
    assert_eq!(mem, "7MB");
    let b = client(&px).await;
    for _ in 0..5 {
        let (mem_b, pid_b) = probe(&b, "work_mem").await;
        assert_eq!(mem_b, default_mem, "the SET leaked to another client");
        assert_ne!(pid_b, pid, "a pinned server was lent to another client");
        assert_eq!(probe(&a, "work_mem").await, ("7MB".to_owned(), pid.clone()));
    }
    drop(a);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Both servers in use at once: neither carries the old SET.
    let c1 = client(&px).await;
    let c2 = client(&px).await;
    c1.batch_execute("BEGIN").await.unwrap();
    c2.batch_execute("BEGIN").await.unwrap();
    let (m1, p1) = probe(&c1, "work_mem").await;
    let (m2, p2) = probe(&c2, "work_mem").await;
    assert_ne!(p1, p2);
    assert_eq!((m1, m2), (default_mem.clone(), default_mem));
}

#[tokio::test(flavor = "multi_thread")]
async fn temp_tables_stay_with_their_client() {
    let px = start("", 2);
    let a = client(&px).await;
    let b = client(&px).await;
    a.batch_execute("CREATE TEMP TABLE mine (v int); INSERT INTO mine VALUES (1)")
        .await
        .unwrap();
    for _ in 0..3 {
        let n: i64 = a
            .query_one("SELECT count(*) FROM mine", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
        let err = b.batch_execute("SELECT * FROM mine").await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
        );
    }
    drop(a);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let c1 = client(&px).await;
    let c2 = client(&px).await;
    c1.batch_execute("BEGIN").await.unwrap();
    for c in [&c1, &c2] {
        let err = c.batch_execute("SELECT * FROM mine").await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn session_mode_servers_are_reset_between_clients() {
    let px = start("pool_mode = \"session\"", 1);
    let a = client(&px).await;
    let (default_mem, pid) = probe(&a, "work_mem").await;
    a.batch_execute("SET work_mem = '9MB'; CREATE TEMP TABLE t (v int)")
        .await
        .unwrap();
    drop(a);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let b = client(&px).await;
    let (mem, pid_b) = probe(&b, "work_mem").await;
    assert_eq!(pid_b, pid, "the server connection is reused");
    assert_eq!(mem, default_mem, "DISCARD ALL reset it");
    assert!(b.batch_execute("SELECT * FROM t").await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_policy_fails_such_statements_with_0a000() {
    let px = start("session_state = \"reject\"", 2);
    let a = client(&px).await;
    let err = a.batch_execute("SET work_mem = '3MB'").await.unwrap_err();
    let db = err.as_db_error().expect("an error from the server");
    assert_eq!(
        db.code(),
        &tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED
    );
    assert!(db.message().contains("session_state"), "{}", db.message());
    // Synced parameters are still fine, and the session goes on.
    a.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    // Inside a transaction the error aborts it, as any error would.
    a.batch_execute("BEGIN").await.unwrap();
    assert!(a
        .batch_execute("CREATE TEMP TABLE nope (v int)")
        .await
        .is_err());
    let err = a.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION)
    );
    a.batch_execute("ROLLBACK").await.unwrap();
    // Extended protocol: the Parse is refused.
    let err = a.prepare("SELECT pg_advisory_lock(7)").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED)
    );
    // LISTEN outside a transaction is answered by pgtier (no session state on a server): not
    // rejected, in either protocol.
    a.batch_execute("LISTEN chan").await.unwrap();
    a.execute("UNLISTEN chan", &[]).await.unwrap();
    let (mem, _) = probe(&a, "work_mem").await;
    assert_ne!(mem, "3MB");
    assert!(!px.log().contains("pinned"), "nothing was pinned");
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_analyze_of_temp_ddl_pins_like_the_ddl_itself() {
    let px = start("", 2);
    let a = client(&px).await;
    let b = client(&px).await;
    // EXPLAIN ANALYZE runs the CREATE: the temp table exists on a's server from now on.
    a.batch_execute("EXPLAIN (ANALYZE, COSTS off) CREATE TEMP TABLE explained AS SELECT 1 AS v")
        .await
        .unwrap();
    // b holds a server in a transaction: were a not pinned, b could take a's server (the most
    // recently released) and a would land on the other one, without its table.
    b.batch_execute("BEGIN").await.unwrap();
    let n: i64 = a
        .query_one("SELECT count(*) FROM explained", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let err = b
        .batch_execute("SELECT * FROM explained")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backslash_strings_are_read_with_the_clients_standard_conforming_strings() {
    let px = start("", 2);
    let a = client(&px).await;
    let b = client(&px).await;
    // Reported, so synced (not pinned); from now on `\'` escapes a quote in a's strings.
    a.batch_execute("SET standard_conforming_strings = off")
        .await
        .unwrap();
    // Read with scs on this would be one string running to the end; with scs off the LISTEN is
    // a statement of its own, and it must pin a.
    let rows = a
        .simple_query(r"SELECT 'a\'', pg_backend_pid()::text; LISTEN scs_chan; --'")
        .await
        .unwrap();
    let pid = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(1).unwrap().to_owned()),
            _ => None,
        })
        .expect("a row");
    b.batch_execute("BEGIN").await.unwrap();
    let (_, pid_again) = probe(&a, "work_mem").await;
    assert_eq!(pid_again, pid, "a was not pinned after its LISTEN");
    b.batch_execute("COMMIT").await.unwrap();
}

/// A session advisory lock taken through the protocol's FunctionCall (fastpath) pins like one
/// taken in SQL: the next client does not get the server that holds the lock.
#[tokio::test(flavor = "multi_thread")]
async fn a_fastpath_advisory_lock_pins_the_client() {
    use pgtier_kit::wire;
    use std::time::Duration;
    let px = start("", 2);
    let limit = Duration::from_secs(10);
    let (mut s, _) = wire::login_trust(&px.addr(), "pins", "app").await.unwrap();
    // pg_advisory_lock(bigint) is OID 2880: no format codes (text), one argument, text result.
    let mut body = 2880u32.to_be_bytes().to_vec();
    body.extend(0i16.to_be_bytes());
    body.extend(1i16.to_be_bytes());
    body.extend(6i32.to_be_bytes());
    body.extend(b"424242");
    body.extend(0i16.to_be_bytes());
    let reply = wire::send_all(&mut s, &[wire::message(b'F', &body)], limit)
        .await
        .unwrap();
    assert_eq!(wire::tags(&reply), "VZ");
    let pid_of = |reply: &[wire::Msg]| wire::first_value(reply);
    let ask = wire::query("SELECT pg_backend_pid()::text");
    let pid = pid_of(
        &wire::send_all(&mut s, std::slice::from_ref(&ask), limit)
            .await
            .unwrap(),
    );
    // Without the pin, the server holding the lock would go back to the pool and serve the
    // next client first (the pool reuses the most recently released server).
    let b = client(&px).await;
    for _ in 0..3 {
        let rows = b
            .simple_query("SELECT pg_try_advisory_lock(424242)::text, pg_backend_pid()::text")
            .await
            .unwrap();
        let (got, pid_b) = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((r.get(0).unwrap().to_owned(), r.get(1).unwrap().to_owned()))
                }
                _ => None,
            })
            .expect("a row");
        assert_ne!(
            pid_b, pid,
            "the server holding the lock was lent to another client"
        );
        assert_eq!(got, "false", "another client took the pinned client's lock");
        let again = wire::send_all(&mut s, std::slice::from_ref(&ask), limit)
            .await
            .unwrap();
        assert_eq!(pid_of(&again), pid);
    }
}
