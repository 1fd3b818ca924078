//! Replica health through pgtier: a lagging replica leaves the read rotation and comes back; a
//! replica stopped under read load costs no errors; after a failover with `role = "auto"`,
//! writes follow the promoted node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use pgtier_kit::fixture::{connect, scram_role, start_routing};
use pgtier_kit::proxy::Pgtier;
use pgtier_kit::Cluster;
use tokio_postgres::{Client, SimpleQueryMessage};

const USER: &str = "health";
const PW: &str = "health-pw";

async fn start(cluster: &Cluster, extra: &[&str]) -> Result<Pgtier> {
    start_routing(cluster, USER, PW, extra).await
}

/// The port of the node that ran a plain read.
async fn read_port(c: &Client) -> Result<u16> {
    for m in c.simple_query("SELECT inet_server_port()").await? {
        if let SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).unwrap_or("0").parse()?);
        }
    }
    anyhow::bail!("no row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_leaves_the_rotation_and_comes_back() -> Result<()> {
    let cluster = Cluster::start(2)?;
    let px = start(
        &cluster,
        &["max_replica_lag_bytes = 65536", "max_replica_lag = 0"],
    )
    .await?;
    let writer = connect(&px, USER, PW).await?;
    writer
        .batch_execute("CREATE TABLE filler (a int, b text)")
        .await?;
    cluster.wait_replicas_caught_up()?;
    let lagging = cluster.replica(0).port();
    cluster.replica(0).pause_replay()?;
    // About 1 MB of WAL the paused replica cannot replay.
    writer
        .batch_execute(
            "INSERT INTO filler SELECT g, repeat('x', 100) FROM generate_series(1, 8000) g",
        )
        .await?;
    // A reader with no causal token of its own: only lag keeps it off replica 0. The monitor
    // sees the lag within two check intervals (longer on a loaded machine): wait for a first
    // read elsewhere, then no read may reach the lagging replica.
    let reader = connect(&px, USER, PW).await?;
    let written = Instant::now();
    while read_port(&reader).await? == lagging {
        assert!(
            written.elapsed() < Duration::from_secs(3),
            "reads still reach the lagging replica 3 s after the write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..30 {
        assert_ne!(
            read_port(&reader).await?,
            lagging,
            "read served by a lagging replica"
        );
    }
    cluster.replica(0).resume_replay()?;
    let resumed = Instant::now();
    let mut back = false;
    while resumed.elapsed() < Duration::from_secs(3) {
        if read_port(&reader).await? == lagging {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        back,
        "the replica did not return to the rotation within 3 s"
    );
    println!(
        "replica back in rotation {:?} after resume",
        resumed.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_under_read_load_costs_no_errors() -> Result<()> {
    let cluster = Cluster::start(2)?;
    let px = start(&cluster, &[]).await?;
    let stopped = cluster.replica(0).port();
    let (reads, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let end = Instant::now() + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = connect(&px, USER, PW).await?;
        let (reads, errors) = (reads.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut first_error = None;
            while Instant::now() < end {
                match read_port(&c).await {
                    Ok(_) => reads.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        first_error.get_or_insert_with(|| format!("{e:?}"));
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            first_error
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.replica(0).stop_immediate()?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.replica(0).start()?;
    let mut last = None;
    for t in tasks {
        last = last.or(t.await?);
    }
    let (reads, errors) = (
        reads.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
    );
    println!("{reads} reads, {errors} errors while a replica was stopped and restarted");
    assert_eq!(errors, 0, "reads failed: {last:?}\n{}", tail(&px.log(), 30));
    // Back in rotation after the restart (monitor backoff is at most 5 s).
    let c = connect(&px, USER, PW).await?;
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut back = false;
    while Instant::now() < deadline {
        if read_port(&c).await? == stopped {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "the restarted replica never served a read again");
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_promoted_replica_with_auto_roles() -> Result<()> {
    let cluster = Cluster::start(2)?;
    scram_role(&cluster, USER, PW)?;
    let nodes: Vec<String> = std::iter::once(cluster.primary())
        .chain(cluster.replicas())
        .map(|n| format!("{{ addr = \"{}\" }}", n.addr()))
        .collect();
    // ConfigBuilder always writes `primary = ...`; this test needs `nodes` only.
    let port = pgtier_kit::free_port()?;
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nlag_check_interval = \"50ms\"\nprimary_wait_timeout = \"20s\"\n\
         [users.{USER}]\npassword = \"{PW}\"\n[databases.app]\nnodes = [{}]\n",
        nodes.join(", ")
    );
    let px = Pgtier::start(port, &config)?;
    let c = connect(&px, USER, PW).await?;
    c.batch_execute("CREATE TABLE moves (at int)").await?;
    let row = c
        .query_one(
            "INSERT INTO moves VALUES (1) RETURNING inet_server_port()",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, i32>(0) as u16, cluster.primary().port());
    cluster.wait_replicas_caught_up()?;

    cluster.primary().stop_immediate()?;
    // Once pgtier has seen the primary gone (its monitor logs the state change; before that a
    // write still goes to the stopped node and gets 08001, as a CI run saw), a write waits for
    // a primary (up to primary_wait_timeout).
    let gone = format!("node={} role=Unknown state=", cluster.primary().addr());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !px.log().lines().any(|l| l.contains(&gone)) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the stopped primary was never seen gone"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waiting = connect(&px, USER, PW).await?;
    let pending = tokio::spawn(async move {
        waiting
            .query_one(
                "INSERT INTO moves VALUES (2) RETURNING inet_server_port()",
                &[],
            )
            .await
            .map(|r| r.get::<_, i32>(0) as u16)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let promoted = cluster.replica(0);
    promoted.promote()?;
    let landed = tokio::time::timeout(Duration::from_secs(20), pending).await???;
    assert_eq!(landed, promoted.port(), "the waiting write went elsewhere");
    // New writes land there too; reads never reach the stopped node.
    let c2 = connect(&px, USER, PW).await?;
    let row = c2
        .query_one(
            "INSERT INTO moves VALUES (3) RETURNING inet_server_port()",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, i32>(0) as u16, promoted.port());
    let count: i64 = c2
        .query_one("SELECT count(*) FROM moves", &[])
        .await?
        .get(0);
    assert_eq!(count, 3);
    Ok(())
}
