//! The cluster topology against real Postgres: health and lag monitors, automatic bans,
//! replica choice (roles, failover and admin bans: `cluster_roles.rs`). Each test runs its own
//! kit cluster (they stop and pause nodes) and its own tokio runtime, so the test thread can
//! block on psql while the monitors run.

mod topology_support;

use topology_support::*;

#[test]
fn healthy_start_and_no_lag_on_an_idle_cluster() {
    let f = Fixture::new(2);
    let t0 = Instant::now();
    let topo = f.start(f.settings(
        &[Primary, Replica, Replica],
        Some(Duration::from_secs(1)),
        Some(1 << 20),
    ));
    assert_eq!(topo.node_count(), 3);
    assert_eq!(
        states(&topo.view()),
        [NodeState::Unknown; 3],
        "no verdict before a check"
    );
    assert_eq!(topo.pick_replica(Lsn::ZERO), Pick::None);
    let (v, _) = f.wait(&topo, Duration::from_secs(1), "all healthy", all_healthy);
    eprintln!("cluster: all nodes healthy {:?} after start", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(v.primary, Some(0));
    assert_eq!(
        v.nodes.iter().map(|n| n.role).collect::<Vec<_>>(),
        [Role::Primary, Role::Replica, Role::Replica]
    );
    assert_eq!(v.nodes[0].timeline, Some(1));
    assert!(v.primary_lsn > Lsn::ZERO);

    // Idle for 3 s: time lag stays 0 (not "now − last commit"), byte lag stays tiny.
    let (mut samples, mut zero, mut max_time, mut max_bytes) = (0, 0, Duration::ZERO, 0);
    let idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(3) {
        let v = topo.view();
        assert!(all_healthy(&v), "{v:#?}");
        for r in &v.nodes[1..] {
            let time = r.time_lag.expect("time lag measured");
            let bytes = r.byte_lag.expect("byte lag measured");
            samples += 1;
            zero += usize::from(time.is_zero());
            max_time = max_time.max(time);
            max_bytes = max_bytes.max(bytes);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "cluster: idle 3 s: {zero}/{samples} samples with time lag 0, max time lag {max_time:?}, \
         max byte lag {max_bytes}"
    );
    // A lone WAL record without a transaction may put a replica a few bytes behind for one
    // check; its time lag is then bounded by the last caught-up check, not the last commit.
    assert!(
        max_time <= 3 * INTERVAL,
        "time lag grew on an idle cluster: {max_time:?}"
    );
    assert!(
        zero * 10 >= samples * 9,
        "{zero}/{samples} samples with time lag 0"
    );
    assert!(max_bytes <= 8192, "byte lag {max_bytes} on an idle cluster");
    let v = topo.view();
    assert_eq!(v.nodes[1].time_lag, Some(Duration::ZERO));
    assert_eq!(v.nodes[2].time_lag, Some(Duration::ZERO));

    // One monitor connection per node, closed once the topology is dropped.
    let monitors = |n: &Node| {
        n.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgtier-monitor'")
            .unwrap()
    };
    for n in f.nodes() {
        assert_eq!(monitors(n), "1", "{}", n.name());
    }
    drop(v);
    drop(topo);
    let deadline = Instant::now() + Duration::from_secs(2);
    for n in f.nodes() {
        while monitors(n) != "0" {
            assert!(
                Instant::now() < deadline,
                "monitor of {} outlived the topology",
                n.name()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn paused_replay_lags_by_bytes_and_by_time_and_returns() {
    let f = Fixture::new(2);
    let limit: u64 = 256 * 1024;
    let topo = f.start(f.settings(
        &[Primary, Replica, Replica],
        Some(Duration::from_secs(30)),
        Some(limit),
    ));
    f.wait(&topo, Duration::from_secs(2), "all healthy", all_healthy);
    let (r1, _r2) = (f.cluster.replica(0), f.cluster.replica(1));

    // Watch replica 2 the whole time: it must stay healthy.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (topo, stop) = (topo.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let v = topo.view();
                if v.nodes[2].state != NodeState::Healthy {
                    bad.push(v.nodes[2].clone());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            bad
        })
    };

    pause(r1);
    let paused_at: Lsn = r1
        .psql("SELECT pg_last_wal_replay_lsn()")
        .unwrap()
        .parse()
        .unwrap();
    // Small writes until the primary is past the limit.
    // The limit is crossed during the last write: time from its start.
    let (crossed, write_took) = loop {
        let t = Instant::now();
        let lsn = f.write(16);
        if lsn.bytes_after(paused_at) > limit {
            break (t, t.elapsed());
        }
    };
    let (v, _) = f.wait(&topo, Duration::from_secs(5), "replica 1 lagging", |v| {
        v.nodes[1].state == NodeState::Lagging
    });
    let took = crossed.elapsed();
    eprintln!(
        "cluster: byte limit crossed -> Lagging {took:?} after the start of a {write_took:?} write (byte lag {:?})",
        v.nodes[1].byte_lag
    );
    assert!(
        took <= 2 * INTERVAL + Duration::from_millis(150),
        "{took:?}"
    );
    assert!(v.nodes[1].byte_lag.unwrap() > limit);
    assert!(v.nodes[1].time_lag.unwrap() > Duration::ZERO);
    assert_eq!(v.nodes[2].state, NodeState::Healthy);
    for _ in 0..50 {
        assert_eq!(topo.pick_replica(Lsn::ZERO), Pick::Ready(2));
    }

    let resumed = Instant::now();
    r1.resume_replay().unwrap();
    let (v, _) = f.wait(
        &topo,
        Duration::from_secs(5),
        "replica 1 healthy",
        all_healthy,
    );
    let back = resumed.elapsed();
    eprintln!("cluster: resume -> Healthy in {back:?}");
    assert!(back < Duration::from_secs(1), "{back:?}");
    assert!(v.nodes[1].byte_lag.unwrap() <= limit * 8 / 10);

    stop.store(true, Ordering::Relaxed);
    let bad = watcher.join().unwrap();
    assert!(bad.is_empty(), "replica 2 left the rotation: {bad:#?}");
    drop(topo);

    // The time limit alone: one small write while replay is paused.
    let max_lag = Duration::from_millis(400);
    let topo = f.start(f.settings(&[Primary, Replica, Replica], Some(max_lag), None));
    f.wait(&topo, Duration::from_secs(2), "all healthy", all_healthy);
    pause(r1);
    // Staleness counts from the last check that found replica 1 caught up, normally at most
    // about two intervals before the write.
    let written = Instant::now();
    f.write(1);
    let (v, _) = f.wait(
        &topo,
        Duration::from_secs(5),
        "replica 1 lagging by time",
        |v| v.nodes[1].state == NodeState::Lagging,
    );
    let took = written.elapsed();
    eprintln!(
        "cluster: write with replay paused -> Lagging by time in {took:?} (time lag {:?})",
        v.nodes[1].time_lag
    );
    assert!(v.nodes[1].time_lag.unwrap() > max_lag);
    // Staleness is counted from the last check that saw the replica caught up, so under load
    // (delayed checks) it may be overstated by a few intervals, never by the whole limit.
    assert!(
        took >= max_lag / 2,
        "lagging long before the limit: {took:?}"
    );
    assert!(took <= max_lag + 3 * INTERVAL, "{took:?}");
    assert_eq!(v.nodes[2].state, NodeState::Healthy);
    let resumed = Instant::now();
    r1.resume_replay().unwrap();
    f.wait(
        &topo,
        Duration::from_secs(5),
        "replica 1 healthy",
        all_healthy,
    );
    let back = resumed.elapsed();
    eprintln!("cluster: resume -> Healthy in {back:?}");
    assert!(back < Duration::from_secs(1), "{back:?}");
    assert_eq!(topo.view().nodes[1].time_lag, Some(Duration::ZERO));
}

#[test]
fn stopped_replicas_leave_the_rotation_and_come_back() {
    let f = Fixture::new(2);
    let settings = f.settings(&[Primary, Replica, Replica], None, Some(1 << 20));
    let topo = f.start(settings.clone());
    f.wait(&topo, Duration::from_secs(2), "all healthy", all_healthy);
    let (r1, r2) = (f.cluster.replica(0), f.cluster.replica(1));

    // Load replica 2 so that replica 1 would win if it were eligible.
    let held: Vec<_> = (0..5).map(|_| topo.begin(2)).collect();
    assert_eq!(topo.pick_replica(Lsn::ZERO), Pick::Ready(1));

    let stopped = Instant::now();
    r1.stop_immediate().unwrap();
    let (v, took) = f.wait(&topo, Duration::from_secs(2), "replica 1 out", |v| {
        matches!(v.nodes[1].state, NodeState::Down | NodeState::Banned)
    });
    eprintln!(
        "cluster: replica stopped -> {:?} in {took:?} ({:?})",
        v.nodes[1].state, v.nodes[1].last_error
    );
    assert!(
        took <= 3 * INTERVAL + Duration::from_millis(200),
        "{took:?}"
    );
    assert_eq!(v.nodes[1].role, Role::Unknown);
    let (v, _) = f.wait(&topo, Duration::from_secs(2), "replica 1 refusing", |v| {
        v.nodes[1].state == NodeState::Down
    });
    eprintln!(
        "cluster: replica 1 Down {:?} after the stop: {:?}",
        stopped.elapsed(),
        v.nodes[1].last_error
    );
    for _ in 0..100 {
        assert_eq!(topo.pick_replica(Lsn::ZERO), Pick::Ready(2));
    }

    // A pgtier started while replica 2 is also down works with what answers.
    r2.stop_immediate().unwrap();
    let t0 = Instant::now();
    let topo2 = f.start(settings);
    let (v, _) = f.wait(
        &topo2,
        Duration::from_secs(2),
        "primary up, replicas down",
        |v| {
            v.nodes[0].state == NodeState::Healthy
                && v.nodes[1].state == NodeState::Down
                && v.nodes[2].state == NodeState::Down
        },
    );
    eprintln!(
        "cluster: start with both replicas down: {:?} in {:?}",
        states(&v),
        t0.elapsed()
    );
    assert_eq!(v.primary, Some(0));
    assert_eq!(topo2.pick_replica(Lsn::ZERO), Pick::None);
    assert_eq!(
        f.rt.block_on(topo2.wait_for_primary(Duration::from_millis(10))),
        Some(0)
    );

    r1.start().unwrap();
    let started = Instant::now();
    for (name, t) in [("first", &topo), ("second", &topo2)] {
        f.wait(t, Duration::from_secs(8), "replica 1 healthy again", |v| {
            v.nodes[1].state == NodeState::Healthy
        });
        eprintln!(
            "cluster: replica 1 restarted -> Healthy in the {name} topology after {:?}",
            started.elapsed()
        );
    }
    // Backoff is capped at 5 s.
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(topo.pick_replica(Lsn::ZERO), Pick::Ready(1));
    r2.start().unwrap();
    f.wait(&topo2, Duration::from_secs(8), "all healthy", all_healthy);
    drop(held);

    // A failure reported by the proxy bans at once; the next successful check re-admits.
    topo.report_failure(1);
    let v = topo.view();
    assert_eq!(v.nodes[1].state, NodeState::Banned);
    for _ in 0..20 {
        assert_ne!(topo.pick_replica(Lsn::ZERO), Pick::Ready(1));
    }
    let (_, took) = f.wait(&topo, Duration::from_secs(2), "re-admitted", |v| {
        v.nodes[1].state == NodeState::Healthy
    });
    eprintln!("cluster: report_failure -> re-admitted in {took:?}");
    assert!(
        took <= 2 * INTERVAL + Duration::from_millis(300),
        "{took:?}"
    );
}

#[test]
fn pick_replica_honours_min_lsn_and_spreads_load() {
    let f = Fixture::new(2);
    let topo = f.start(f.settings(&[Primary, Replica, Replica], None, None));
    f.wait(&topo, Duration::from_secs(2), "all healthy", all_healthy);

    // Idle replicas share reads; in-flight reads steer new ones away.
    let mut counts = [0usize; 3];
    for _ in 0..100 {
        match topo.pick_replica(Lsn::ZERO) {
            Pick::Ready(i) => counts[i] += 1,
            p => panic!("{p:?}"),
        }
    }
    assert_eq!(counts, [0, 50, 50], "idle replicas alternate");
    let mut held = Vec::new();
    let mut counts = [0usize; 3];
    for _ in 0..40 {
        let Pick::Ready(i) = topo.pick_replica(Lsn::ZERO) else {
            panic!()
        };
        counts[i] += 1;
        held.push(topo.begin(i));
    }
    assert_eq!(
        (counts[1], counts[2]),
        (20, 20),
        "least outstanding alternates"
    );
    assert_eq!((topo.outstanding(1), topo.outstanding(2)), (20, 20));
    drop(held);
    assert_eq!((topo.outstanding(1), topo.outstanding(2)), (0, 0));

    // Replica 1 paused behind a write; replica 2 has it.
    let r1 = f.cluster.replica(0);
    pause(r1);
    let lsn = f.write(1);
    let (v, _) = f.wait(
        &topo,
        Duration::from_secs(2),
        "replica 2 past the write",
        |v| v.nodes[2].replay_lsn >= lsn,
    );
    assert!(
        v.nodes[1].replay_lsn < lsn,
        "paused replica 1 replayed the write"
    );
    assert_eq!(v.nodes[1].state, NodeState::Healthy, "no lag limits");
    assert!(topo.known_replay(1) < lsn && topo.known_replay(2) >= lsn);
    let busy: Vec<_> = (0..5).map(|_| topo.begin(2)).collect();
    // Replica 1 is less loaded but cannot serve the write's reader: replica 2 can.
    for _ in 0..20 {
        assert_eq!(topo.pick_replica(lsn), Pick::Ready(2));
        assert_eq!(topo.pick_replica(Lsn::ZERO), Pick::Ready(1));
    }
    // Nobody has this yet: ask the least loaded.
    let future = Lsn(lsn.0 + (1 << 30));
    assert_eq!(topo.pick_replica(future), Pick::Check(1));
    // An on-demand check that found replica 1 further along counts at once.
    topo.observe_replay(1, future);
    assert_eq!(topo.pick_replica(future), Pick::Ready(1));
    // The monitor's next measurement replaces it (a store: replicas can move backwards).
    let deadline = Instant::now() + Duration::from_secs(2);
    while topo.known_replay(1) >= lsn {
        assert!(
            Instant::now() < deadline,
            "the monitor did not measure replica 1"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(topo.pick_replica(future), Pick::Check(1));

    r1.resume_replay().unwrap();
    f.wait(
        &topo,
        Duration::from_secs(2),
        "replica 1 past the write",
        |v| v.nodes[1].replay_lsn >= lsn,
    );
    assert_eq!(topo.pick_replica(lsn), Pick::Ready(1));
    drop(busy);
}
