//! Replica faults under a running read loop: both replicas failing (their connections reset
//! through the kit's [`FaultProxy`]) and a replica's postmaster killed with SIGKILL. Reads keep
//! being answered (by the other replica, then by the primary), each within a bound, and the
//! replicas rejoin once they answer again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use pgtier_kit::fixture::{connect, read_node, scram_role, ConfigBuilder};
use pgtier_kit::proxy::Pgtier;
use pgtier_kit::{pids, Cluster, FaultProxy};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

const USER: &str = "fault_replicas";
const PW: &str = "fault-replicas-pw";

/// pgtier's bound on a connect to a node (set in the configs below). The faults here (resets,
/// a killed postmaster) fail connects at once; the bound only has to let a SCRAM login through
/// on a loaded machine (500 ms did not, once: a read at the loop's start got 08001).
const CONNECT_TIMEOUT: &str = "server_connect_timeout = \"2s\"";
/// The longest any single read may take through a replica fault: the connect bound, one retry
/// elsewhere and a loaded 2-core CI machine's scheduling.
const READ_BOUND: Duration = Duration::from_secs(3);
/// Concurrent clients in the read loop.
const READERS: usize = 4;
/// How long a phase of the test may take to show (a ban, a rejoin).
const PHASE: Duration = Duration::from_secs(10);

/// One answered read of the loop.
#[derive(Debug, Clone, Copy)]
struct Read {
    port: u16,
    in_recovery: bool,
    started: Instant,
    took: Duration,
}

/// `READERS` clients reading `inet_server_port(), pg_is_in_recovery()` in a loop of autocommit
/// reads until `stop`; every answered read is sent on the channel. A loop ends with an error
/// at its first failed read or at one over [`READ_BOUND`].
struct ReadLoop {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<Result<usize>>,
    served: mpsc::UnboundedReceiver<Read>,
}

impl ReadLoop {
    async fn start(px: &Pgtier) -> Result<ReadLoop> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, served) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        for id in 0..READERS {
            let c = connect(px, USER, PW).await?;
            let (stop, tx) = (stop.clone(), tx.clone());
            tasks.spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let (port, in_recovery) = match tokio::time::timeout(READ_BOUND, read_node(&c))
                        .await
                    {
                        Ok(r) => r.map_err(|e| anyhow::anyhow!("reader {id}, read {n}: {e:#}"))?,
                        Err(_) => anyhow::bail!("reader {id}, read {n} waited over {READ_BOUND:?}"),
                    };
                    n += 1;
                    let _ = tx.send(Read {
                        port,
                        in_recovery,
                        started,
                        took: started.elapsed(),
                    });
                }
                Ok(n)
            });
        }
        Ok(ReadLoop {
            stop,
            tasks,
            served,
        })
    }

    /// The next answered read; fails if the loops all ended or none answered for `limit` (a
    /// failed loop's error is returned).
    async fn next(&mut self, limit: Duration) -> Result<Read> {
        tokio::select! {
            r = self.served.recv() => r.ok_or_else(|| anyhow::anyhow!("the read loops ended")),
            Some(done) = self.tasks.join_next() => {
                done??;
                anyhow::bail!("a read loop ended early")
            }
            _ = tokio::time::sleep(limit) => anyhow::bail!("no read answered for {limit:?}"),
        }
    }

    /// Follows the loop until `want` holds for a read that started after `after`; fails after
    /// `limit`.
    async fn until(
        &mut self,
        after: Instant,
        limit: Duration,
        what: &str,
        want: impl Fn(&Read) -> bool,
    ) -> Result<Read> {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.next(READ_BOUND).await?;
            if r.started > after && want(&r) {
                return Ok(r);
            }
            anyhow::ensure!(Instant::now() < deadline, "{what}: not within {limit:?}");
        }
    }

    /// Stops the loops; returns the reads they made and the longest one. Fails if any loop
    /// failed.
    async fn finish(mut self) -> Result<(usize, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut longest = Duration::ZERO;
        while let Ok(r) = self.served.try_recv() {
            longest = longest.max(r.took);
        }
        let mut total = 0;
        while let Some(done) = self.tasks.join_next().await {
            total += done??;
        }
        while let Ok(r) = self.served.try_recv() {
            longest = longest.max(r.took);
        }
        Ok((total, longest))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_replicas_failing_under_a_read_loop_fall_back_to_the_primary_and_rejoin() -> Result<()>
{
    let cluster = Cluster::shared();
    scram_role(cluster, USER, PW)?;
    let fp = [
        FaultProxy::start(&cluster.replica(0).addr()).await?,
        FaultProxy::start(&cluster.replica(1).addr()).await?,
    ];
    let ports = [cluster.replica(0).port(), cluster.replica(1).port()];
    let primary_port = cluster.primary().port();
    let px = ConfigBuilder::new(cluster)
        .global("lag_check_interval = \"50ms\"")
        .global(CONNECT_TIMEOUT)
        .database(&format!(
            "replicas = [\"{}\", \"{}\"]",
            fp[0].addr(),
            fp[1].addr()
        ))
        .user(USER, &format!("password = \"{PW}\""))
        .start()?;
    let mut reads = ReadLoop::start(&px).await?;
    // Every failure of the loop comes with pgtier's log (a read failed on two servers in two
    // loaded CI runs, without it).
    let with_log = |e: anyhow::Error| anyhow::anyhow!("{e:#}\n--- pgtier log\n{}", px.log());
    let t0 = Instant::now();
    for port in ports {
        reads
            .until(t0, PHASE, "a replica serving reads", |r| r.port == port)
            .await
            .map_err(with_log)?;
    }

    // Replica 0 fails (every connection to it reset, new ones too): the loop goes on, on
    // replica 1.
    let logged = px.log().len();
    fp[0].reset();
    let first_down = Instant::now();
    // The reset reaches the forwarding tasks asynchronously: reads started this long after it
    // cannot have been served by the node.
    let settle = Duration::from_millis(100);
    reads
        .until(first_down + settle, PHASE, "replica 1 alone", |r| {
            r.port == ports[1]
        })
        .await
        .map_err(with_log)?;
    // Then replica 1 fails too, once replica 0 is out of the rotation (a read that fails
    // before any reply is retried once, on another node: one still in the rotation that fails
    // it too ends it with 08006, by design).
    let out0 = format!("node={} role=Unknown state=", fp[0].addr());
    while !px.log()[logged..].contains(&out0) {
        anyhow::ensure!(
            first_down.elapsed() < PHASE,
            "replica 0 was never taken out of the rotation\n{}",
            px.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fp[1].reset();
    let both_down = Instant::now();
    // Every read answered from now on comes from the primary, and the loop keeps going: at
    // least 200 reads and 1 s of them, none failed, each within READ_BOUND.
    let mut on_primary = 0;
    while on_primary < 200 || both_down.elapsed() < Duration::from_secs(1) {
        let r = reads.next(READ_BOUND).await.map_err(with_log)?;
        if r.started < both_down + settle {
            continue;
        }
        assert_eq!(
            (r.port, r.in_recovery),
            (primary_port, false),
            "a read while both replicas were down was not served by the primary"
        );
        on_primary += 1;
    }
    // pgtier took both out of the rotation (a failed connection bans a node, the monitor's
    // failed check keeps it out).
    for f in &fp {
        let out = format!("node={} role=Unknown state=", f.addr());
        anyhow::ensure!(
            px.log().lines().any(|l| l.contains(&out)),
            "{} was never taken out of the rotation\n{}",
            f.addr(),
            px.log()
        );
    }

    // They answer again: both rejoin the loop's rotation.
    for f in &fp {
        f.pass();
    }
    let back = Instant::now();
    for port in ports {
        reads
            .until(back, PHASE, "a replica rejoining", |r| {
                r.port == port && r.in_recovery
            })
            .await
            .map_err(with_log)?;
    }
    println!(
        "replica 0 down to both down: {:?}; rejoined after {:?}",
        both_down - first_down,
        back.elapsed()
    );
    let (total, longest) = reads.finish().await.map_err(with_log)?;
    println!(
        "{total} reads, {on_primary} on the primary with both replicas down, longest {longest:?}"
    );
    assert!(longest < READ_BOUND, "a read took {longest:?}");
    Ok(())
}

/// The pids of `parent`'s children (read from /proc: the postmaster's backends and auxiliary
/// processes, which outlive a SIGKILLed postmaster until they notice it is gone).
fn children(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // The fields after the parenthesised name: state, ppid, ...
                    let rest = s.rsplit_once(')')?.1.to_owned();
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_postmaster_killed_under_a_read_loop_costs_no_errors_and_rejoins() -> Result<()> {
    // Its own cluster: this test kills a node.
    let cluster = Cluster::start(2)?;
    scram_role(&cluster, USER, PW)?;
    let victim = cluster.replica(0);
    let (dead, alive) = (victim.port(), cluster.replica(1).port());
    let px = ConfigBuilder::new(&cluster)
        .global("lag_check_interval = \"50ms\"")
        .global(CONNECT_TIMEOUT)
        .with_replicas(&cluster)
        .user(USER, &format!("password = \"{PW}\""))
        .start()?;
    let mut reads = ReadLoop::start(&px).await?;
    let t0 = Instant::now();
    for port in [dead, alive] {
        reads
            .until(t0, PHASE, "a replica serving reads", |r| r.port == port)
            .await?;
    }

    let pid = victim
        .postmaster_pid()
        .ok_or_else(|| anyhow::anyhow!("replica 0 is not running"))?;
    let kids = children(pid);
    anyhow::ensure!(
        !kids.is_empty(),
        "no children of postmaster {pid} found in /proc"
    );
    // SAFETY: kill(2) on the pid from the node's own postmaster.pid, checked alive.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    anyhow::ensure!(
        pids::wait_gone(pid, Duration::from_secs(10)),
        "postmaster {pid} survived SIGKILL"
    );
    // Its backends notice the postmaster is gone and exit (a backend waiting for its client
    // sends FATAL 57P01 "terminating connection due to unexpected postmaster exit"); a read
    // that meets that farewell before any reply is retried elsewhere. From a moment after the
    // kill no read reaches the node, and the loop goes on without an error.
    let settle = Duration::from_millis(500);
    let mut after = 0;
    while after < 200 || killed.elapsed() < Duration::from_secs(2) {
        let r = reads.next(READ_BOUND).await?;
        if r.started < killed + settle {
            continue;
        }
        assert_ne!(
            r.port,
            dead,
            "a read reached the killed replica {:?} after the kill",
            r.started - killed
        );
        assert!(
            r.in_recovery,
            "a read went to the primary with replica 1 healthy"
        );
        after += 1;
    }
    let out = format!("node={} role=Unknown state=", victim.addr());
    anyhow::ensure!(
        px.log().lines().any(|l| l.contains(&out)),
        "the killed replica was never taken out of the rotation\n{}",
        px.log()
    );

    // Restart it once its old processes are gone (they hold its shared memory).
    for kid in kids {
        anyhow::ensure!(
            pids::wait_gone(kid, Duration::from_secs(30)),
            "process {kid} of the killed postmaster still runs after 30 s"
        );
    }
    victim.start()?;
    let back = Instant::now();
    reads
        .until(back, PHASE, "the restarted replica rejoining", |r| {
            r.port == dead && r.in_recovery
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", px.log()))?;
    println!(
        "the killed replica rejoined {:?} after its restart",
        back.elapsed()
    );
    let (total, longest) = reads.finish().await?;
    println!("{total} reads, {after} after the kill on replica 1, longest {longest:?}");
    assert!(longest < READ_BOUND, "a read took {longest:?}");
    Ok(())
}
