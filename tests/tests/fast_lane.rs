//! The relay's fast lane (issue 17): a lone plain SELECT goes to the server as is (a named
//! statement's Bind renamed to its server name) and its replies are only walked to
//! ReadyForQuery. Everything the general relay must see hands the
//! run over at that message: an error, a row larger than the read buffer, more client bytes
//! while the reply is awaited. Each is checked with and without replicas (without, the lane is
//! chosen without the router's analysis), on results and SQLSTATEs, and on the node that served.

use std::time::Duration;

use pgtier_kit::fixture::{connect, read_node, simple_rows, ConfigBuilder};
use pgtier_kit::wire::{
    bind, describe_portal, execute, first_value, login_trust, parse, query, read_until_ready, sync,
    tags, Msg,
};
use pgtier_kit::{Cluster, Pgtier};
use tokio::io::AsyncWriteExt;

const BIG: usize = 100_000;

/// The shared cluster with a table holding one row of `BIG` bytes (caught up on the replicas).
fn cluster() -> &'static Cluster {
    let cluster = Cluster::shared();
    pgtier_kit::fixture::ensure_app_db(cluster).unwrap();
    cluster
        .ddl(
            "app",
            &format!(
                "CREATE TABLE IF NOT EXISTS fast_lane_big (v text); \
                 GRANT SELECT ON fast_lane_big TO PUBLIC; \
                 INSERT INTO fast_lane_big SELECT repeat('x', {BIG}) \
                 WHERE NOT EXISTS (SELECT FROM fast_lane_big);"
            ),
        )
        .unwrap();
    cluster.create_trust_role("pgtier_trust").unwrap();
    cluster.wait_replicas_caught_up().unwrap();
    cluster
}

/// pgtier on the cluster, reads split over the replicas or the primary only, with the lane
/// loop on (the default) or off (each client in a task of its own).
async fn start_with(cluster: &Cluster, replicas: bool, lane_loop: bool) -> Pgtier {
    let mut b = ConfigBuilder::new(cluster)
        .global("lag_check_interval = \"50ms\"")
        .global(&format!("lane_loop = {lane_loop}"))
        .user("pgtier_trust", "auth = \"trust\"");
    if replicas {
        b = b.with_replicas(cluster);
    }
    let px = b.start().unwrap();
    if replicas {
        pgtier_kit::fixture::replica_in_rotation(&px, "pgtier_trust", "")
            .await
            .unwrap();
    }
    px
}

async fn errors_and_large_rows(replicas: bool, lane_loop: bool) {
    let cluster = cluster();
    let px = start_with(cluster, replicas, lane_loop).await;
    assert_eq!(
        px.log().contains("lane loop running"),
        lane_loop,
        "{}",
        px.log()
    );
    let c = connect(&px, "pgtier_trust", "").await.unwrap();
    for _ in 0..3 {
        // An error hands the run to the general relay: the client has the server's SQLSTATE,
        // and the server connection goes back clean.
        let e = c.simple_query("SELECT 1/0").await.unwrap_err();
        assert_eq!(e.code().map(|s| s.code()), Some("22012"), "{e}");
        // A row larger than the read buffer streams through the general relay, intact.
        let rows = simple_rows(&c, "SELECT v FROM fast_lane_big").await;
        assert_eq!(rows.len(), 1);
        let v = rows[0].get(0).unwrap();
        assert_eq!(v.len(), BIG);
        assert!(v.bytes().all(|b| b == b'x'));
        let plain = simple_rows(&c, "SELECT 1 AS one").await;
        assert_eq!(plain[0].get("one"), Some("1"));
        let (_, in_recovery) = read_node(&c).await.unwrap();
        assert_eq!(
            in_recovery, replicas,
            "reads go to a replica only with replicas"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_large_rows_leave_the_fast_lane_intact_with_replicas() {
    errors_and_large_rows(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_large_rows_leave_the_fast_lane_intact_on_the_primary() {
    errors_and_large_rows(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_large_rows_leave_the_fast_lane_intact_without_the_lane_loop() {
    errors_and_large_rows(true, false).await;
}

/// pgtier (with replicas or on the primary only) and a raw client logged in to it; the pgtier
/// handle keeps it running.
async fn logged_in(replicas: bool) -> (Pgtier, tokio::net::TcpStream) {
    logged_in_with(replicas, true).await
}

async fn logged_in_with(replicas: bool, lane_loop: bool) -> (Pgtier, tokio::net::TcpStream) {
    let px = start_with(cluster(), replicas, lane_loop).await;
    let addr = format!("127.0.0.1:{}", px.port());
    let (s, _) = login_trust(&addr, "pgtier_trust", "app").await.unwrap();
    (px, s)
}

/// Reads messages until `n` ReadyForQuery have arrived.
async fn replies(s: &mut tokio::net::TcpStream, n: usize) -> Vec<Msg> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.extend(read_until_ready(s, Duration::from_secs(20)).await.unwrap());
    }
    out
}

async fn pipelined(replicas: bool, lane_loop: bool) {
    let (_px, mut s) = logged_in_with(replicas, lane_loop).await;
    for _ in 0..3 {
        // The second query is sent while the first one's reply is awaited (the first runs for
        // a while): the run leaves the fast lane with the first reply still owed.
        let slow = "SELECT count(*) FROM generate_series(1, 3000000)";
        let slow = if replicas {
            slow
        } else {
            "SELECT v FROM fast_lane_big"
        };
        s.write_all(&query(slow)).await.unwrap();
        s.write_all(&query("SELECT 1/0")).await.unwrap();
        s.write_all(&query("SELECT v FROM fast_lane_big"))
            .await
            .unwrap();
        let got = replies(&mut s, 3).await;
        assert_eq!(tags(&got), "TDCZEZTDCZ", "{got:?}");
        if replicas {
            assert_eq!(first_value(&got), "3000000");
        } else {
            assert_eq!(first_value(&got).len(), BIG);
        }
        assert_eq!(got[4].field(b'C').as_deref(), Some("22012"));
        assert_eq!(first_value(&got[6..]).len(), BIG);
        assert!(got.iter().filter(|m| m.tag == b'Z').all(|m| m.body == b"I"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_follow_a_fast_lane_read_in_order_with_replicas() {
    pipelined(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_follow_a_fast_lane_read_in_order_on_the_primary() {
    pipelined(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_follow_a_fast_lane_read_in_order_without_the_lane_loop() {
    pipelined(true, false).await;
}

/// An unnamed Parse, Bind, Execute, Sync of `sql`.
fn unnamed(sql: &str) -> Vec<u8> {
    [parse("", sql), bind(""), execute(), sync()].concat()
}

async fn extended(replicas: bool) {
    let (_px, mut s) = logged_in(replicas).await;
    for _ in 0..3 {
        s.write_all(&unnamed("SELECT 7")).await.unwrap();
        let got = replies(&mut s, 1).await;
        assert_eq!(tags(&got), "12DCZ", "{got:?}");
        assert_eq!(first_value(&got), "7");
        // An error: the general relay takes the reply (ParseComplete, then the error, raised
        // when the Bind plans the statement); the connection goes on.
        s.write_all(&unnamed("SELECT 1/0")).await.unwrap();
        let got = replies(&mut s, 1).await;
        assert_eq!(tags(&got), "1EZ", "{got:?}");
        assert_eq!(got[1].field(b'C').as_deref(), Some("22012"));
        // A row larger than the read buffer streams through the general relay.
        s.write_all(&unnamed("SELECT v FROM fast_lane_big"))
            .await
            .unwrap();
        let got = replies(&mut s, 1).await;
        assert_eq!(tags(&got), "12DCZ", "{got:?}");
        assert_eq!(first_value(&got).len(), BIG);
        // Two units sent together, and a Bind of the unnamed statement the last one left.
        let mut two = unnamed("SELECT 8");
        two.extend(unnamed("SELECT 9"));
        two.extend([bind(""), execute(), sync()].concat());
        s.write_all(&two).await.unwrap();
        let got = replies(&mut s, 3).await;
        assert_eq!(tags(&got), "12DCZ12DCZ2DCZ", "{got:?}");
        let values: Vec<String> = got
            .iter()
            .filter(|m| m.tag == b'D')
            .map(|m| first_value(std::slice::from_ref(m)))
            .collect();
        assert_eq!(values, ["8", "9", "9"]);
        assert!(got.iter().filter(|m| m.tag == b'Z').all(|m| m.body == b"I"));
    }
    // The unnamed statement of the last unit is the client's, wherever its next Bind runs.
    for _ in 0..10 {
        s.write_all(&unnamed("SELECT 10")).await.unwrap();
        replies(&mut s, 1).await;
        s.write_all(&[bind(""), execute(), sync()].concat())
            .await
            .unwrap();
        let got = replies(&mut s, 1).await;
        assert_eq!(first_value(&got), "10", "{got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_extended_units_take_the_fast_lane_and_leave_it_intact_with_replicas() {
    extended(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_extended_units_take_the_fast_lane_and_leave_it_intact_on_the_primary() {
    extended(false).await;
}

/// A Bind of the named `statement`, a Describe of the portal, an Execute and a Sync (libpq's
/// and pgbench's `-M prepared` unit).
fn bound(statement: &str) -> Vec<u8> {
    [bind(statement), describe_portal(""), execute(), sync()].concat()
}

async fn named(replicas: bool) {
    let (_px, mut s) = logged_in(replicas).await;
    let prepared = [
        parse("seven", "SELECT 7"),
        parse("zero", "SELECT 1/0"),
        parse("big", "SELECT v FROM fast_lane_big"),
        sync(),
    ]
    .concat();
    s.write_all(&prepared).await.unwrap();
    assert_eq!(tags(&replies(&mut s, 1).await), "111Z");
    // The first Bind on a server connection prepares the statement there (the general relay);
    // the later ones find it and take the lane.
    for _ in 0..5 {
        s.write_all(&bound("seven")).await.unwrap();
        let got = replies(&mut s, 1).await;
        assert_eq!(tags(&got), "2TDCZ", "{got:?}");
        assert_eq!(first_value(&got), "7");
        // An error (raised when the Bind plans the statement): the general relay takes it,
        // and the connection goes on.
        s.write_all(&bound("zero")).await.unwrap();
        let got = replies(&mut s, 1).await;
        assert_eq!(tags(&got), "EZ", "{got:?}");
        assert_eq!(got[0].field(b'C').as_deref(), Some("22012"));
        // A row larger than the read buffer streams through the general relay.
        s.write_all(&bound("big")).await.unwrap();
        let got = replies(&mut s, 1).await;
        assert_eq!(tags(&got), "2TDCZ", "{got:?}");
        assert_eq!(first_value(&got).len(), BIG);
        // A named Bind leaves the client's unnamed statement as it was.
        s.write_all(&[parse("", "SELECT 10"), sync()].concat())
            .await
            .unwrap();
        assert_eq!(tags(&replies(&mut s, 1).await), "1Z");
        s.write_all(&bound("seven")).await.unwrap();
        assert_eq!(first_value(&replies(&mut s, 1).await), "7");
        s.write_all(&bound("")).await.unwrap();
        let got = replies(&mut s, 1).await;
        assert_eq!(first_value(&got), "10", "{got:?}");
        assert!(got.iter().filter(|m| m.tag == b'Z').all(|m| m.body == b"I"));
    }
    // Units sent together: the first takes the lane, the rest follow through the general
    // relay, in order.
    let three = [bound("seven"), bound("zero"), bound("seven")].concat();
    s.write_all(&three).await.unwrap();
    let got = replies(&mut s, 3).await;
    assert_eq!(tags(&got), "2TDCZEZ2TDCZ", "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_take_the_fast_lane_and_leave_it_intact_with_replicas() {
    named(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_take_the_fast_lane_and_leave_it_intact_on_the_primary() {
    named(false).await;
}

/// A statement whose plan went stale on its server connection (its table changed shape) fails
/// once with the server's 0A000, through the lane as through the general relay; pgtier then
/// prepares it again, and the next Bind sees the new shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_named_statement_fails_once_then_is_prepared_again() {
    let cluster = cluster();
    cluster
        .ddl(
            "app",
            "DROP TABLE IF EXISTS fast_lane_shape; \
             CREATE TABLE fast_lane_shape (a int); INSERT INTO fast_lane_shape VALUES (1); \
             GRANT ALL ON fast_lane_shape TO PUBLIC;",
        )
        .unwrap();
    // One server connection: every Bind runs where the statement was prepared.
    let px = ConfigBuilder::new(cluster)
        .global("pool_size = 1")
        .user("pgtier_trust", "auth = \"trust\"")
        .start()
        .unwrap();
    let addr = format!("127.0.0.1:{}", px.port());
    let (mut s, _) = login_trust(&addr, "pgtier_trust", "app").await.unwrap();
    s.write_all(&[parse("all", "SELECT * FROM fast_lane_shape"), sync()].concat())
        .await
        .unwrap();
    assert_eq!(tags(&replies(&mut s, 1).await), "1Z");
    for _ in 0..3 {
        s.write_all(&bound("all")).await.unwrap();
        assert_eq!(tags(&replies(&mut s, 1).await), "2TDCZ");
    }
    // By the table's owner, on a connection of its own.
    cluster
        .ddl(
            "app",
            "ALTER TABLE fast_lane_shape ADD COLUMN b int DEFAULT 2",
        )
        .unwrap();
    s.write_all(&bound("all")).await.unwrap();
    let got = replies(&mut s, 1).await;
    assert_eq!(tags(&got), "EZ", "{got:?}");
    assert_eq!(got[0].field(b'C').as_deref(), Some("0A000"), "{got:?}");
    for _ in 0..3 {
        s.write_all(&bound("all")).await.unwrap();
        let got = replies(&mut s, 1).await;
        assert_eq!(tags(&got), "2TDCZ", "{got:?}");
        let row = got.iter().find(|m| m.tag == b'D').unwrap();
        assert_eq!(&row.body[..2], &2u16.to_be_bytes(), "two columns: {got:?}");
    }
}
