//! More network faults between pgtier and its nodes (issue 16), injected by the kit's
//! [`FaultProxy`]: a replica and the primary slowed down by added latency, and a replica and the
//! primary refusing new connections. Each test follows a running loop of clients and the admin
//! console's SHOW REPLICAS, with deadlines; nothing waits a fixed time to synchronise.

mod fault_loops;

use std::time::{Duration, Instant};

use anyhow::Result;
use fault_loops::{fault_config, ids_on, node_row, sqlstate, wait_state, ReadLoop};
use pgtier_kit::fixture::{admin_console, connect, read_node, scram_role, ConfigBuilder};
use pgtier_kit::{Cluster, FaultProxy};

const USER: &str = "fault_more";
const PW: &str = "fault-more-pw";
const ADMIN: &str = "admin";
const ADMIN_PW: &str = "admin-pw";

/// Latency the proxy adds to every chunk, each way.
const LATENCY: Duration = Duration::from_millis(100);
/// Latency added to the slow replica's link: a check's round trip (2 x 60 ms), and the
/// confirming check on a fresh connection after a slow one (a login and a check: about 8
/// crossings, 0.5 s), fit the check timeout (1 s) with room for a loaded 2-core machine
/// (with 100 ms the confirmation needed 0.8 s, and a CI run under load banned the node).
const REPLICA_LATENCY: Duration = Duration::from_millis(60);
/// How long a phase may take to show (a ban, a rejoin, a routing change).
const PHASE: Duration = Duration::from_secs(10);

/// A config on `cluster` with the admin console, 50 ms lag checks and `connect_timeout`.
fn builder(cluster: &Cluster, connect_timeout: &str) -> ConfigBuilder {
    fault_config(cluster, USER, PW, connect_timeout)
}

/// Creates `table (id int)` through pgtier (no key: a duplicate write would show).
async fn create_table(px: &pgtier_kit::Pgtier, table: &str) -> Result<()> {
    connect(px, USER, PW)
        .await?
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int)"
        ))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_keeps_serving_reads_each_within_its_latency() -> Result<()> {
    // A read on a pooled connection crosses the proxy twice (query, reply): 2 x REPLICA_LATENCY; a new
    // server connection first logs in (SCRAM: 3 round trips). Allowed: a login and a read, all
    // delayed, plus 2 s for a loaded 2-core machine.
    let bound = REPLICA_LATENCY * 2 * 4 + Duration::from_secs(2);
    let cluster = Cluster::shared();
    scram_role(cluster, USER, PW)?;
    let slow = FaultProxy::start(&cluster.replica(0).addr()).await?;
    let (slow_port, fast_port) = (cluster.replica(0).port(), cluster.replica(1).port());
    // A check round trip (2 x REPLICA_LATENCY) stays well inside the check timeout (1 s).
    let px = builder(cluster, "2s")
        .database(&format!(
            "replicas = [\"{}\", \"{}\"]",
            slow.addr(),
            cluster.replica(1).addr()
        ))
        .start()?;
    let adm = admin_console(&px, ADMIN, ADMIN_PW).await;
    let mut reads = ReadLoop::start(&px, USER, PW, 4, bound).await?;
    let t0 = Instant::now();
    for port in [slow_port, fast_port] {
        reads
            .until(t0, PHASE, "a replica serving reads", |r| r.port == port)
            .await?;
    }

    slow.latency(REPLICA_LATENCY);
    let slowed = Instant::now();
    // Chunks already in the proxy may pass undelayed: count reads started a moment later.
    let settle = Duration::from_millis(50);
    let (mut on_slow, mut on_fast, mut on_primary) = (0u32, 0u32, 0u32);
    let (mut slow_min, mut slow_max) = (Duration::MAX, Duration::ZERO);
    let mut states = Vec::new();
    let mut polled = Instant::now();
    // 4 s of the loop, and at least 5 reads answered by the slow replica.
    while slowed.elapsed() < Duration::from_secs(4) || on_slow < 5 {
        anyhow::ensure!(
            slowed.elapsed() < Duration::from_secs(30),
            "the slow replica answered {on_slow} reads in 30 s\n{}",
            px.log()
        );
        let r = reads.next().await?;
        if polled.elapsed() > Duration::from_millis(200) {
            polled = Instant::now();
            let (_, state, lag, _) = node_row(&adm, &slow.addr()).await?;
            states.push((state, lag));
        }
        if r.started < slowed + settle {
            continue;
        }
        if r.port == slow_port {
            on_slow += 1;
            slow_min = slow_min.min(r.took);
            slow_max = slow_max.max(r.took);
        } else if r.port == fast_port {
            on_fast += 1;
        } else {
            on_primary += 1;
        }
    }
    let total = on_slow + on_fast + on_primary;
    println!(
        "slow replica (+{REPLICA_LATENCY:?} per chunk each way): {on_slow} of {total} reads \
         ({:.2} %), each {slow_min:?}..{slow_max:?}; fast replica {on_fast}, primary {on_primary}; \
         longest read {:?}; SHOW REPLICAS of the slow node: {:?}",
        f64::from(on_slow) * 100.0 / f64::from(total),
        reads.longest,
        &states[..states.len().min(5)]
    );
    // Latency is no failure: no read failed, none went to the primary, the slow node stayed in
    // the rotation (healthy at every look), and its reads took the added latency and no more
    // than the bound.
    assert!(reads.failed.is_empty(), "failed reads: {:?}", reads.failed);
    assert_eq!(on_primary, 0, "reads fell back to the primary");
    assert!(
        states.iter().all(|(s, _)| s == "healthy"),
        "the slow replica left the rotation: {states:?}\n{}",
        px.log()
    );
    assert!(!states.is_empty());
    assert!(
        slow_min >= REPLICA_LATENCY * 2,
        "a read on the slow replica took {slow_min:?}, under its added latency"
    );
    assert!(
        reads.longest < bound,
        "a read took {:?} (bound {bound:?})",
        reads.longest
    );
    // The balancer prefers the replica with fewer reads outstanding: the slow one gets a small
    // share, not half.
    assert!(
        on_slow * 4 < total,
        "the slow replica answered {on_slow} of {total} reads"
    );

    slow.pass();
    let back = Instant::now();
    reads
        .until(back, PHASE, "the slow replica fast again", |r| {
            r.port == slow_port && r.took < REPLICA_LATENCY
        })
        .await?;
    let reads = reads.finish().await?;
    assert!(reads.failed.is_empty(), "failed reads: {:?}", reads.failed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_primary_completes_each_write_once_within_its_latency() -> Result<()> {
    const TABLE: &str = "fault_slow_writes";
    const WRITERS: i32 = 3;
    const EACH: i32 = 10;
    // A write crosses the proxy twice per round trip; a new server connection logs in first
    // (3 round trips); a transaction is one more. Plus 2 s for a loaded 2-core machine.
    let bound = LATENCY * 2 * 5 + Duration::from_secs(2);
    let cluster = Cluster::shared();
    scram_role(cluster, USER, PW)?;
    let primary = FaultProxy::start(&cluster.primary().addr()).await?;
    let px = builder(cluster, "2s")
        .primary(&primary.addr())
        .with_replicas(cluster)
        .start()?;
    create_table(&px, TABLE).await?;
    let adm = admin_console(&px, ADMIN, ADMIN_PW).await;
    wait_state(&adm, &primary.addr(), &["healthy"], PHASE).await?;

    primary.latency(LATENCY);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let c = connect(&px, USER, PW).await?;
        writers.spawn(async move {
            let mut took = Vec::new();
            for i in 0..EACH {
                let id = w * 100 + i;
                let started = Instant::now();
                // Alternately an autocommit INSERT and a transaction of two statements sent
                // one after the other (two round trips inside the transaction).
                if i % 2 == 0 {
                    c.simple_query(&format!("INSERT INTO {TABLE} VALUES ({id})"))
                        .await?;
                } else {
                    c.simple_query("BEGIN").await?;
                    c.simple_query(&format!("INSERT INTO {TABLE} VALUES ({id})"))
                        .await?;
                    c.simple_query("COMMIT").await?;
                }
                took.push(started.elapsed());
            }
            Ok::<_, anyhow::Error>(took)
        });
    }
    let mut all = Vec::new();
    while let Some(done) = writers.join_next().await {
        all.extend(done??);
    }
    let (min, max) = (
        all.iter().min().copied().unwrap_or_default(),
        all.iter().max().copied().unwrap_or_default(),
    );
    let (_, state, _, _) = node_row(&adm, &primary.addr()).await?;
    println!(
        "{} writes through a slow primary (+{LATENCY:?} per chunk each way): each {min:?}..{max:?}; \
         SHOW REPLICAS: primary {state}",
        all.len()
    );
    assert!(
        min >= LATENCY * 2,
        "a write took {min:?}, under the latency"
    );
    assert!(max < bound, "a write took {max:?} (bound {bound:?})");
    assert_eq!(state, "healthy", "{}", px.log());
    // Every write landed exactly once.
    let mut want: Vec<i32> = (0..WRITERS)
        .flat_map(|w| (0..EACH).map(move |i| w * 100 + i))
        .collect();
    want.sort_unstable();
    primary.pass();
    assert_eq!(
        ids_on(cluster.primary(), TABLE)?,
        want,
        "writes lost or duplicated"
    );
    Ok(())
}

/// Clients of the refusing-replica test's read loop.
const READERS: usize = 4;

/// Server connections SHOW POOLS counts open to `node` (active, idle, used, tested, logging
/// in).
async fn open_connections(adm: &tokio_postgres::Client, node: &str) -> usize {
    pgtier_kit::fixture::simple_rows(adm, "SHOW POOLS")
        .await
        .iter()
        .filter(|r| r.get("node") == Some(node))
        .flat_map(|r| {
            ["sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"]
                .map(|c| r.get(c).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0))
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refusing_connections_costs_reads_nothing_and_rejoins() -> Result<()> {
    // Reads fall back at once (a refused connect fails at once): the bound is a loaded 2-core
    // machine's scheduling.
    let bound = Duration::from_secs(3);
    let cluster = Cluster::shared();
    scram_role(cluster, USER, PW)?;
    let refusing = FaultProxy::start(&cluster.replica(0).addr()).await?;
    let (port, other) = (cluster.replica(0).port(), cluster.replica(1).port());
    // As many server connections kept open per node as there are readers: once they are
    // open, no read needs a new connection until RECONNECT closes them.
    let px = builder(cluster, "500ms")
        .global(&format!("min_pool_size = {READERS}"))
        .database(&format!(
            "replicas = [\"{}\", \"{}\"]",
            refusing.addr(),
            cluster.replica(1).addr()
        ))
        .start()?;
    let adm = admin_console(&px, ADMIN, ADMIN_PW).await;
    let mut reads = ReadLoop::start(&px, USER, PW, READERS, bound).await?;
    let t0 = Instant::now();
    for p in [port, other] {
        reads
            .until(t0, PHASE, "a replica serving reads", |r| r.port == p)
            .await?;
    }

    let opened = Instant::now();
    while open_connections(&adm, &refusing.addr()).await < READERS {
        anyhow::ensure!(
            opened.elapsed() < PHASE,
            "min_pool_size connections to the replica never opened\n{}",
            px.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 1. New connections are refused, existing ones work: the pooled connections and the
    // monitor's keep the node in the rotation until a new connection is needed.
    refusing.refuse();
    let refused = Instant::now();
    reads
        .until(refused, PHASE, "pooled connections still serving", |r| {
            r.port == port
        })
        .await?;
    assert_eq!(node_row(&adm, &refusing.addr()).await?.1, "healthy");
    // The pools' idle connections close: the next read sent to the node needs a new one, which
    // is refused. That bans the node and the read goes elsewhere.
    adm.simple_query("RECONNECT app").await?;
    let needed = Instant::now();
    let banned_after = wait_state(&adm, &refusing.addr(), &["banned", "down"], PHASE).await?;
    let (_, state, _, error) = node_row(&adm, &refusing.addr()).await?;
    println!("refused connect -> {state} after {banned_after:?}: {error}");
    // From then on reads stay away from it, with no error.
    reads.stay_off(port, "the banned replica").await?;
    anyhow::ensure!(
        node_row(&adm, &refusing.addr()).await?.1 != "healthy",
        "the refusing replica came back into the rotation\n{}",
        px.log()
    );

    // 2. It accepts connections again: it rejoins.
    refusing.pass();
    let back = Instant::now();
    let rejoined = wait_state(&adm, &refusing.addr(), &["healthy"], PHASE).await?;
    reads
        .until(back, PHASE, "the replica rejoining", |r| r.port == port)
        .await?;
    println!(
        "refusal to a banned state: {banned_after:?} after RECONNECT \
         ({:?} after the refusal began); rejoined {rejoined:?} after it accepted again",
        needed - refused + banned_after
    );
    let l = reads.finish().await?;
    println!("loop: {} reads, longest {:?}", l.answered, l.longest);
    assert!(l.failed.is_empty(), "failed reads: {:?}", l.failed);
    assert!(l.longest < bound, "a read took {:?}", l.longest);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_refusing_connections_fails_new_writes_with_08001_at_once() -> Result<()> {
    const TABLE: &str = "fault_refused_writes";
    let cluster = Cluster::shared();
    scram_role(cluster, USER, PW)?;
    let primary = FaultProxy::start(&cluster.primary().addr()).await?;
    let px = builder(cluster, "500ms")
        .global("pool_size = 4")
        .primary(&primary.addr())
        .with_replicas(cluster)
        .start()?;
    create_table(&px, TABLE).await?;
    let reader = connect(&px, USER, PW).await?;
    let holder = connect(&px, USER, PW).await?;
    let writer = connect(&px, USER, PW).await?;
    cluster.wait_replicas_caught_up()?;
    // A transaction holds a server connection to the primary across the refusal.
    holder
        .batch_execute(&format!("BEGIN; INSERT INTO {TABLE} VALUES (1)"))
        .await?;
    let deadline = Instant::now() + PHASE;
    while !read_node(&reader).await?.1 {
        anyhow::ensure!(Instant::now() < deadline, "no read reached a replica");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The pool's idle connections close (the held one when released).
    admin_console(&px, ADMIN, ADMIN_PW)
        .await
        .simple_query("RECONNECT app")
        .await?;
    primary.refuse();
    // The held connection is the pool's only one: another write needs a new connection, which
    // is refused. It fails at once with 08001 and is not retried.
    let started = Instant::now();
    let e = writer
        .batch_execute(&format!("INSERT INTO {TABLE} VALUES (2)"))
        .await
        .map_err(anyhow::Error::from)
        .expect_err("a write succeeded through a refused connection");
    let waited = started.elapsed();
    let (code, message) = sqlstate(&e);
    println!(
        "write needing a new connection to a refusing primary: {code} after {waited:?}: {message}"
    );
    assert_eq!(code, "08001", "{message}");
    assert!(message.contains("cannot connect to server"), "{message}");
    // server_connect_timeout (500 ms) bounds it; a refused connect takes far less.
    assert!(
        waited < Duration::from_secs(2),
        "the write waited {waited:?}"
    );
    // Reads go on, on the replicas; the open transaction commits on its own connection.
    for i in 0..50 {
        let (port, in_recovery) = read_node(&reader)
            .await
            .map_err(|e| anyhow::anyhow!("read {i} with the primary refusing: {e:#}"))?;
        assert!(in_recovery, "read {i} served by {port}, not a replica");
    }
    holder.batch_execute("COMMIT").await?;

    primary.pass();
    let deadline = Instant::now() + PHASE;
    loop {
        let r = match connect(&px, USER, PW).await {
            Ok(c) => c
                .batch_execute(&format!("INSERT INTO {TABLE} VALUES (3)"))
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => break,
            Err(e) => anyhow::ensure!(Instant::now() < deadline, "no write after: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        ids_on(cluster.primary(), TABLE)?,
        [1, 3],
        "the refused write was retried"
    );
    Ok(())
}
