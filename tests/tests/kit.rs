//! The kit itself: a real primary + 2 streaming replicas, replay control, restart, cleanup.

use std::time::{Duration, Instant};

use pgtier_kit::Cluster;

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cluster_streams_pauses_restarts_and_cleans_up() {
    let t0 = Instant::now();
    let cluster = Cluster::start(2).unwrap();
    eprintln!("cluster start took {:?}", t0.elapsed());
    let p = cluster.primary();
    assert_eq!(p.psql("SELECT pg_is_in_recovery()").unwrap(), "f");
    for r in cluster.replicas() {
        assert_eq!(r.psql("SELECT pg_is_in_recovery()").unwrap(), "t");
        assert_eq!(
            r.psql("SELECT inet_server_port()").unwrap(),
            r.port().to_string()
        );
    }

    p.psql("CREATE TABLE kit_t (v int)").unwrap();
    p.psql("INSERT INTO kit_t VALUES (1)").unwrap();
    cluster.wait_replicas_caught_up().unwrap();
    for r in cluster.replicas() {
        assert_eq!(r.psql("SELECT count(*) FROM kit_t").unwrap(), "1");
    }

    // Paused replay: replica1 stays behind, replica2 follows.
    let (r1, r2) = (cluster.replica(0), cluster.replica(1));
    r1.pause_replay().unwrap();
    wait_for("replay paused", || {
        r1.psql("SELECT pg_get_wal_replay_pause_state()").unwrap() == "paused"
    });
    p.psql("INSERT INTO kit_t VALUES (2)").unwrap();
    wait_for("replica2 to replay", || {
        r2.psql("SELECT count(*) FROM kit_t").unwrap() == "2"
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(r1.psql("SELECT count(*) FROM kit_t").unwrap(), "1");
    r1.resume_replay().unwrap();
    wait_for("replica1 to catch up", || {
        r1.psql("SELECT count(*) FROM kit_t").unwrap() == "2"
    });

    // Immediate stop and restart of a replica: it streams again.
    r2.stop_immediate().unwrap();
    assert!(!r2.is_running());
    assert!(r2.psql("SELECT 1").is_err());
    r2.start().unwrap();
    p.psql("INSERT INTO kit_t VALUES (3)").unwrap();
    wait_for("restarted replica2 to replay", || {
        r2.psql("SELECT count(*) FROM kit_t").ok().as_deref() == Some("3")
    });

    // Drop stops every postmaster and removes the directory.
    let pids: Vec<i32> = std::iter::once(p)
        .chain(cluster.replicas())
        .map(|n| n.postmaster_pid().unwrap())
        .collect();
    let dir = cluster.dir().to_owned();
    drop(cluster);
    for pid in pids {
        // SAFETY: signal 0 only checks existence.
        assert_ne!(
            unsafe { libc::kill(pid, 0) },
            0,
            "postmaster {pid} survived"
        );
    }
    assert!(!dir.exists());
}
