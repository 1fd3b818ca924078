//! A primary partitioned from pgtier during a failover (issue 16): the primary keeps running
//! but the kit's [`FaultProxy`] between it and pgtier goes silent (blackhole), a replica is
//! promoted, then the partition heals and the old primary answers again, still out of recovery
//! on its old timeline: a split brain that pgtier must not write into. A write loop runs
//! throughout; the test follows it and the admin console's SHOW REPLICAS with deadlines.

mod fault_loops;

use std::time::{Duration, Instant};

use anyhow::Result;
use fault_loops::{ids_on, node_row, wait_state, WriteLoop};
use pgtier_kit::fixture::{admin_console, connect, scram_role};
use pgtier_kit::{Cluster, FaultProxy, Pgtier};

const USER: &str = "fault_partition";
const PW: &str = "fault-partition-pw";
/// How long a phase may take to show (a ban, a promotion seen, the old primary fenced).
const PHASE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_primary_is_replaced_and_fenced_when_it_answers_again() -> Result<()> {
    const TABLE: &str = "fault_partition_rows";
    // Its own cluster: a replica is promoted while the old primary still runs.
    let cluster = Cluster::start(2)?;
    scram_role(&cluster, USER, PW)?;
    let wall = FaultProxy::start(&cluster.primary().addr()).await?;
    let (old_port, new_port) = (cluster.primary().port(), cluster.replica(0).port());
    // `nodes` with auto roles; the old primary only through the fault proxy.
    let port = pgtier_kit::free_port()?;
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nadmin_users = [\"admin\"]\nlag_check_interval = \"50ms\"\n\
         server_connect_timeout = \"2s\"\nprimary_wait_timeout = \"20s\"\n\
         [users.admin]\npassword = \"admin-pw\"\n[users.{USER}]\npassword = \"{PW}\"\n\
         [databases.app]\nnodes = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}, {{ addr = \"{}\" }}]\n",
        wall.addr(),
        cluster.replica(0).addr(),
        cluster.replica(1).addr()
    );
    let px = Pgtier::start(port, &config)?;
    connect(&px, USER, PW)
        .await?
        .batch_execute(&format!("CREATE TABLE {TABLE} (id int)"))
        .await?;
    let adm = admin_console(&px, "admin", "admin-pw").await;
    let mut writes = WriteLoop::start(&px, USER, PW, TABLE).await?;
    let t0 = Instant::now();
    writes
        .until(t0, "a write on the primary", |w| w.outcome == Ok(old_port))
        .await?;

    // The partition: the old primary runs on, unreachable. Its monitor's check times out and
    // the fresh connection that confirms it too: banned. A write waiting on it gets 08006.
    wall.blackhole();
    let t_wall = Instant::now();
    let cut = wait_state(&adm, &wall.addr(), &["banned", "down"], PHASE).await?;
    let promoting = Instant::now();
    tokio::task::block_in_place(|| cluster.replica(0).promote())?;
    writes
        .until(promoting, "a write on the promoted node", |w| {
            w.outcome == Ok(new_port)
        })
        .await?;
    let moved = promoting.elapsed();
    writes.next_n(20, "writes on the new primary").await?;

    // The partition heals: the old primary answers, out of recovery, on timeline 1 against the
    // promoted node's 2. pgtier keeps writing to the newer timeline and fences the old one.
    wall.pass();
    let healed = Instant::now();
    let fenced = wait_state(&adm, &wall.addr(), &["excluded"], PHASE).await?;
    writes
        .next_n(30, "writes after the partition healed")
        .await?;
    let (_, state, _, error) = node_row(&adm, &wall.addr()).await?;
    let seen = writes.finish().await?;

    let failed: Vec<(i32, &str)> = seen
        .iter()
        .filter_map(|w| w.outcome.as_ref().err().map(|c| (w.id, c.as_str())))
        .collect();
    let old_rows = ids_on(cluster.primary(), TABLE)?;
    let new_rows = ids_on(cluster.replica(0), TABLE)?;
    let late: Vec<i32> = failed
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| old_rows.contains(id))
        .collect();
    println!(
        "partitioned primary: banned {cut:?} after the wall; first write on the promoted node \
         {moved:?} after the promotion began ({:?} after the wall); fenced ({state}: {error}) \
         {fenced:?} after the partition healed; {} writes, failed: {failed:?}; failed writes \
         found on the old primary (delivered when the partition healed): {late:?}",
        promoting - t_wall + moved,
        seen.len(),
    );
    assert_eq!(state, "excluded", "the old primary after the heal");
    // A write fails only as a lost primary's writes do: 08006 (the connection it was sent on
    // was given up when the node's check failed), 08001 (a new connection through the wall
    // ran out of server_connect_timeout), or a closed connection; never 57P03 (the promotion
    // came well within primary_wait_timeout).
    for (id, code) in &failed {
        assert!(
            ["08006", "08001", "closed"].contains(code),
            "write {id} failed with {code}"
        );
    }
    for w in &seen {
        match w.outcome {
            // Nothing was answered by the old primary once the wall was up and after.
            Ok(p) if p == old_port => assert!(w.at < t_wall, "write {} on the old primary", w.id),
            Ok(p) => {
                assert_eq!(p, new_port, "write {} answered by {p}", w.id);
                assert!(
                    new_rows.contains(&w.id),
                    "write {} acknowledged, not there",
                    w.id
                );
                // The split brain was never written into: no write of the new primary's is on
                // the old one.
                assert!(
                    !old_rows.contains(&w.id),
                    "write {} of the new primary reached the old one",
                    w.id
                );
            }
            Err(_) => {}
        }
    }
    // Writes after the heal all went to the promoted node (checked above), and there were some.
    assert!(
        seen.iter().filter(|w| w.at > healed).count() >= 30,
        "writes after the heal"
    );
    let mut dedup = new_rows.clone();
    dedup.dedup();
    assert_eq!(dedup, new_rows, "a write was applied twice");
    Ok(())
}
