//! The relay's fast lane (issue 17): a lone plain SELECT goes to the server as is and its
//! replies are only walked to ReadyForQuery. Everything the general relay must see hands the
//! run over at that message: an error, a row larger than the read buffer, more client bytes
//! while the reply is awaited. Each is checked with and without replicas (without, the lane is
//! chosen without the router's analysis), on results and SQLSTATEs, and on the node that served.

use std::time::Duration;

use pgtier_kit::fixture::{connect, read_node, simple_rows, ConfigBuilder};
use pgtier_kit::wire::{
    bind, execute, first_value, login_trust, parse, query, read_until_ready, sync, tags, Msg,
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

/// pgtier on the cluster, reads split over the replicas or the primary only.
async fn start(cluster: &Cluster, replicas: bool) -> Pgtier {
    let mut b = ConfigBuilder::new(cluster)
        .global("lag_check_interval = \"50ms\"")
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

async fn errors_and_large_rows(replicas: bool) {
    let cluster = cluster();
    let px = start(cluster, replicas).await;
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
    errors_and_large_rows(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_large_rows_leave_the_fast_lane_intact_on_the_primary() {
    errors_and_large_rows(false).await;
}

/// pgtier (with replicas or on the primary only) and a raw client logged in to it; the pgtier
/// handle keeps it running.
async fn logged_in(replicas: bool) -> (Pgtier, tokio::net::TcpStream) {
    let px = start(cluster(), replicas).await;
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

async fn pipelined(replicas: bool) {
    let (_px, mut s) = logged_in(replicas).await;
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
    pipelined(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_follow_a_fast_lane_read_in_order_on_the_primary() {
    pipelined(false).await;
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
