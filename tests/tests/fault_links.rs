//! A replica's link misbehaving in ways other than silence (issue 16), injected by the kit's
//! [`FaultProxy`]: the node closing its side of every connection, a bandwidth limit, and latency
//! above the health check's limit. Each test follows a running loop of clients and the admin
//! console's SHOW REPLICAS, with deadlines; nothing waits a fixed time to synchronise.

mod fault_loops;

use std::time::{Duration, Instant};

use anyhow::Result;
use fault_loops::{fault_config, node_row, wait_state, ReadLoop};
use pgtier_kit::fixture::{admin_console, connect, read_node, scram_role};
use pgtier_kit::{Cluster, FaultProxy};

const USER: &str = "fault_links";
const PW: &str = "fault-links-pw";
/// How long a phase may take to show (a ban, a rejoin, a routing change).
const PHASE: Duration = Duration::from_secs(10);
/// Clients in the read loop.
const READERS: usize = 4;

/// What a replica whose link turned bad cost a read loop: the ban, the node's last error, the
/// rejoin once the link is good again, and the loop's record.
struct Excursion {
    banned: Duration,
    error: String,
    rejoined: Duration,
    reads: ReadLoop,
}

impl Excursion {
    /// Prints what the excursion cost and asserts that no read failed and none took `bound`.
    fn report(&self, what: &str, bound: Duration) -> Result<()> {
        let l = &self.reads;
        println!(
            "{what}: banned after {:?} ({}), rejoined {:?} after the link was good again; \
             loop: {} reads, longest {:?}",
            self.banned, self.error, self.rejoined, l.answered, l.longest
        );
        anyhow::ensure!(l.failed.is_empty(), "failed reads: {:?}", l.failed);
        anyhow::ensure!(l.longest < bound, "a read took {:?}", l.longest);
        Ok(())
    }
}

/// Replica 0 behind a fault proxy, replica 1 direct, `READERS` clients reading; `fault` is
/// applied once both replicas serve reads. Asserts that the node is banned, that no read started
/// after the ban reaches it (200 reads and at least 1 s), and that it rejoins and serves reads
/// again after the proxy passes traffic again.
async fn leaves_and_rejoins(
    what: &str,
    connect_timeout: &str,
    bound: Duration,
    fault: impl FnOnce(&FaultProxy),
) -> Result<Excursion> {
    let cluster = Cluster::shared();
    scram_role(cluster, USER, PW)?;
    let proxy = FaultProxy::start(&cluster.replica(0).addr()).await?;
    let (port, other) = (cluster.replica(0).port(), cluster.replica(1).port());
    let px = fault_config(cluster, USER, PW, connect_timeout)
        .database(&format!(
            "replicas = [\"{}\", \"{}\"]",
            proxy.addr(),
            cluster.replica(1).addr()
        ))
        .start()?;
    let adm = admin_console(&px, "admin", "admin-pw").await;
    let mut reads = ReadLoop::start(&px, USER, PW, READERS, bound).await?;
    let t0 = Instant::now();
    for p in [port, other] {
        reads
            .until(t0, PHASE, "a replica serving reads", |r| r.port == p)
            .await?;
    }

    fault(&proxy);
    let banned = wait_state(&adm, &proxy.addr(), &["banned", "down"], PHASE).await?;
    let (_, _, _, error) = node_row(&adm, &proxy.addr()).await?;
    reads
        .stay_off(port, &format!("the banned replica ({what})"))
        .await?;

    proxy.pass();
    let back = Instant::now();
    let rejoined = wait_state(&adm, &proxy.addr(), &["healthy"], PHASE).await?;
    reads
        .until(back, PHASE, "the replica rejoining", |r| r.port == port)
        .await?;
    Ok(Excursion {
        banned,
        error,
        rejoined,
        reads: reads.finish().await?,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_closes_its_side_costs_reads_nothing_and_rejoins() -> Result<()> {
    // A read in flight sees the end of its server's stream before any reply: it runs again
    // elsewhere, once. New connections end at login: the node is banned.
    let bound = Duration::from_secs(3);
    let e = leaves_and_rejoins("half-closed", "500ms", bound, FaultProxy::half_close).await?;
    e.report("half-closed replica", bound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_slower_than_the_check_limit_leaves_the_rotation_and_rejoins() -> Result<()> {
    // 700 ms per chunk each way: a check's round trip (1.4 s) exceeds its limit
    // (server_connect_timeout, 500 ms), and so does the fresh connection that confirms it:
    // the node is banned. Reads waiting on it then run again elsewhere (nothing of theirs
    // reached the client); later reads stay away until the link is fast again.
    let bound = Duration::from_secs(4);
    let e = leaves_and_rejoins("700 ms per chunk", "500ms", bound, |p| {
        p.latency(Duration::from_millis(700))
    })
    .await?;
    e.report("replica 700 ms slower per chunk", bound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_replica_serves_a_large_result_intact_and_stays_healthy() -> Result<()> {
    // The only replica behind a 256 KiB/s link: a 0.5 MB result takes seconds and arrives
    // intact; the node's checks (small) keep passing, so it is never banned.
    const ROWS: i64 = 500;
    const WIDTH: usize = 1000;
    let cluster = Cluster::shared();
    scram_role(cluster, USER, PW)?;
    let slow = FaultProxy::start(&cluster.replica(0).addr()).await?;
    let px = fault_config(cluster, USER, PW, "500ms")
        .database(&format!("replicas = [\"{}\"]", slow.addr()))
        .start()?;
    let adm = admin_console(&px, "admin", "admin-pw").await;
    let c = connect(&px, USER, PW).await?;
    let deadline = Instant::now() + PHASE;
    while !read_node(&c).await?.1 {
        anyhow::ensure!(Instant::now() < deadline, "no read reached the replica");
    }
    slow.bandwidth(256 * 1024);
    let t = Instant::now();
    let rows = c
        .query(
            &format!(
                "SELECT inet_server_port(), repeat('x', {WIDTH}) FROM generate_series(1, {ROWS})"
            ),
            &[],
        )
        .await?;
    let took = t.elapsed();
    assert_eq!(rows.len() as i64, ROWS);
    for r in &rows {
        let node: i32 = r.get(0);
        let text: String = r.get(1);
        assert_eq!(
            node,
            i32::from(cluster.replica(0).port()),
            "not read on the replica"
        );
        assert_eq!(text.len(), WIDTH);
        assert!(text.bytes().all(|b| b == b'x'), "a row changed on the way");
    }
    // A lower bound only (the link's rate): 0.5 MB at 256 KiB/s is about 2 s.
    assert!(
        took >= Duration::from_millis(1500),
        "the throttle did not apply: {took:?}"
    );
    let (_, state, _, error) = node_row(&adm, &slow.addr()).await?;
    println!("{ROWS} rows of {WIDTH} bytes through 256 KiB/s in {took:?}; replica {state}");
    assert_eq!(
        state,
        "healthy",
        "the throttled replica: {error}\n{}",
        px.log()
    );
    slow.pass();
    Ok(())
}
