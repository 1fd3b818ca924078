//! Cancel, graceful shutdown and the timeouts that end sessions, against a real cluster.

use std::time::{Duration, Instant};

use pgtier_kit::fixture::{connect, scram_role, ConfigBuilder};
use pgtier_kit::{wire, Cluster};
use tokio::io::AsyncWriteExt;
use tokio_postgres::error::SqlState;

fn cluster() -> &'static Cluster {
    let c = Cluster::shared();
    pgtier_kit::fixture::ensure_app_db(c).unwrap();
    c.create_trust_role("pgtier_trust").unwrap();
    c
}

fn base() -> ConfigBuilder {
    ConfigBuilder::new(cluster()).user("pgtier_trust", "auth = \"trust\"")
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_reaches_the_running_query_within_a_second() {
    scram_role(cluster(), "canceler", "canceler").unwrap();
    let px = base()
        .user("canceler", "password = \"canceler\"")
        .database("pool_size = 2")
        .start()
        .unwrap();
    let c = connect(&px, "canceler", "canceler").await.unwrap();
    let token = c.cancel_token();
    let query = tokio::spawn(async move {
        let r = c.simple_query("SELECT pg_sleep(10)").await;
        (Instant::now(), r.map(|_| ()))
    });
    // Cancel once the query runs on its server (seen in pg_stat_activity).
    let pg = cluster().primary().connect("app").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let running: i64 = pg
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'canceler' \
                 AND state = 'active' AND query = 'SELECT pg_sleep(10)'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if running == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the query never started on a server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = Instant::now();
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (ended, result) = query.await.unwrap();
    let err = result.expect_err("the query must be cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
    let took = ended.duration_since(sent);
    assert!(took < Duration::from_secs(1), "cancel took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_with_an_unknown_key_does_nothing_harmful() {
    let px = base().start().unwrap();
    let mut s = tokio::net::TcpStream::connect(px.addr()).await.unwrap();
    let mut p = 16u32.to_be_bytes().to_vec();
    p.extend(80_877_102u32.to_be_bytes());
    p.extend(1234i32.to_be_bytes());
    p.extend(5678i32.to_be_bytes());
    s.write_all(&p).await.unwrap();
    assert!(wire::closed_within(&mut s, Duration::from_secs(5)).await);
    let (mut s, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    s.write_all(&wire::query("SELECT 1")).await.unwrap();
    wire::read_until_ready(&mut s, Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_running_transactions_finish_then_closes_with_57p01() {
    let mut px = base().global("shutdown_timeout = \"20s\"").start().unwrap();
    let addr = px.addr();
    let (mut idle, _) = wire::login_trust(&addr, "pgtier_trust", "app")
        .await
        .unwrap();
    let (mut busy, _) = wire::login_trust(&addr, "pgtier_trust", "app")
        .await
        .unwrap();
    busy.write_all(&wire::query("BEGIN; SELECT 1"))
        .await
        .unwrap();
    let r = wire::read_until_ready(&mut busy, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.last().unwrap().body, b"T");

    px.signal(libc::SIGTERM);
    // The idle client is told at once.
    let (code, _) = wire::expect_fatal(&mut idle, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code, "57P01");
    // New clients are no longer accepted. Shutdown has begun (the idle client was told), so
    // either the listener is closed or a connection it still took is refused at login.
    assert!(wire::login_trust(&addr, "pgtier_trust", "app")
        .await
        .is_err());
    // The client inside a transaction can finish it.
    busy.write_all(&wire::query("SELECT 2")).await.unwrap();
    let r = wire::read_until_ready(&mut busy, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(r.iter().any(|m| m.tag == b'D'), "{r:?}");
    busy.write_all(&wire::query("COMMIT")).await.unwrap();
    let r = wire::read_until_ready(&mut busy, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.last().unwrap().body, b"I");
    // ... and is then closed with 57P01, after which pgtier exits.
    let (code, _) = wire::expect_fatal(&mut busy, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code, "57P01");
    let status = px.wait_exit(Duration::from_secs(10)).expect("pgtier exits");
    assert!(status.success(), "{status:?}");
}

/// A request the client had already (partly) sent when draining began is served, then the
/// client is closed: closing it unrun would fail work the client cannot tell from work that ran
/// (a pool would not know whether to repeat it).
#[tokio::test(flavor = "multi_thread")]
async fn draining_serves_a_request_already_sent_then_closes() {
    let mut px = base()
        .global("shutdown_grace = \"0s\"")
        .global("shutdown_timeout = \"20s\"")
        .start()
        .unwrap();
    let addr = px.addr();
    let (mut idle, _) = wire::login_trust(&addr, "pgtier_trust", "app")
        .await
        .unwrap();
    let (mut sending, _) = wire::login_trust(&addr, "pgtier_trust", "app")
        .await
        .unwrap();
    // The header and the first bytes of the statement, the rest still to come.
    let q = wire::query("SELECT 42");
    let (head, rest) = q.split_at(8);
    sending.write_all(head).await.unwrap();
    px.signal(libc::SIGTERM);
    // Draining has begun (no grace): the idle client is told.
    let (code, _) = wire::expect_fatal(&mut idle, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code, "57P01");
    // The request on its way is served...
    sending.write_all(rest).await.unwrap();
    let r = wire::read_until_ready(&mut sending, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(wire::first_value(&r), "42", "{r:?}");
    // ... and the client then closed, before pgtier exits.
    let (code, _) = wire::expect_fatal(&mut sending, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code, "57P01");
    let status = px.wait_exit(Duration::from_secs(10)).expect("pgtier exits");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_timeout_closes_transactions_that_do_not_finish() {
    let mut px = base().global("shutdown_timeout = \"1s\"").start().unwrap();
    let (mut busy, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    busy.write_all(&wire::query("BEGIN")).await.unwrap();
    wire::read_until_ready(&mut busy, Duration::from_secs(5))
        .await
        .unwrap();
    let t0 = Instant::now();
    px.signal(libc::SIGTERM);
    let (code, _) = wire::expect_fatal(&mut busy, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code, "57P01");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(px.wait_exit(Duration::from_secs(10)).is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn client_idle_timeout_and_idle_transaction_timeout() {
    let px = base()
        .global("client_idle_timeout = \"1s\"\nidle_transaction_timeout = \"1s\"")
        .start()
        .unwrap();
    let (mut idle, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    let (code, _) = wire::expect_fatal(&mut idle, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code, "57P05");

    let (mut in_tx, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    in_tx.write_all(&wire::query("BEGIN")).await.unwrap();
    wire::read_until_ready(&mut in_tx, Duration::from_secs(5))
        .await
        .unwrap();
    let (code, _) = wire::expect_fatal(&mut in_tx, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code, "25P03");

    // A busy client is not affected.
    let (mut busy, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    for _ in 0..6 {
        busy.write_all(&wire::query("SELECT pg_sleep(0.3)"))
            .await
            .unwrap();
        let r = wire::read_until_ready(&mut busy, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(r.iter().all(|m| m.tag != b'E'), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_wait_timeout_names_the_pool() {
    let px = base()
        .global("query_wait_timeout = \"1s\"")
        .database("pool_size = 1")
        .start()
        .unwrap();
    let (mut holder, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    holder.write_all(&wire::query("BEGIN")).await.unwrap();
    wire::read_until_ready(&mut holder, Duration::from_secs(5))
        .await
        .unwrap();

    let (mut waiter, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    waiter.write_all(&wire::query("SELECT 1")).await.unwrap();
    let (code, message) = wire::expect_fatal(&mut waiter, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(code, "53300");
    assert!(message.contains("app/pgtier_trust"), "{message}");
    assert!(message.contains("query_wait_timeout"), "{message}");
    // The log names what held the pool: the client in its transaction.
    let holder_peer = format!("holder={}", holder.local_addr().unwrap());
    let log = px.log();
    assert!(
        log.lines()
            .any(|l| l.contains("was held while a client waited")
                && l.contains(&holder_peer)
                && l.contains("state=\"active\"")),
        "{log}"
    );

    holder.write_all(&wire::query("COMMIT")).await.unwrap();
    wire::read_until_ready(&mut holder, Duration::from_secs(5))
        .await
        .unwrap();
    let (mut after, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    after.write_all(&wire::query("SELECT 1")).await.unwrap();
    let r = wire::read_until_ready(&mut after, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(r.iter().any(|m| m.tag == b'D'));
}
