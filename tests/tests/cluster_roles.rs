//! The cluster topology against real Postgres: roles (configured, auto, failover) and
//! administrator bans. Each test runs its own kit cluster and tokio runtime.

mod topology_support;

use topology_support::*;

#[test]
fn auto_roles_follow_a_failover() {
    let f = Fixture::new(2);
    let topo = f.start(f.settings(
        &[Auto, Auto, Auto],
        Some(Duration::from_secs(1)),
        Some(1 << 20),
    ));
    let (v, took) = f.wait(&topo, Duration::from_secs(2), "all healthy", all_healthy);
    eprintln!("cluster: auto roles detected in {took:?}");
    assert_eq!(v.primary, Some(0));
    assert_eq!(
        v.nodes.iter().map(|n| n.role).collect::<Vec<_>>(),
        [Role::Primary, Role::Replica, Role::Replica]
    );

    // Every published primary, in order; the primary must never be a node in recovery.
    let promoting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(vec![Some(0)]));
    let watcher = {
        let (topo, promoting, stop, seen) =
            (topo.clone(), promoting.clone(), stop.clone(), seen.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let v = topo.view();
                if let Some(p) = v.primary {
                    assert_eq!(v.nodes[p].role, Role::Primary, "{v:#?}");
                    assert_ne!(p, 2, "replica 2 was never promoted");
                    assert!(p == 0 || promoting.load(Ordering::Relaxed), "{v:#?}");
                }
                let mut s = seen.lock().unwrap();
                if s.last() != Some(&v.primary) {
                    s.push(v.primary);
                }
                drop(s);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    f.cluster.primary().stop_immediate().unwrap();
    let (_, took) = f.wait(&topo, Duration::from_secs(2), "no primary", |v| {
        v.primary.is_none()
    });
    eprintln!("cluster: primary stopped -> no primary in {took:?}");
    assert_eq!(
        f.rt.block_on(topo.wait_for_primary(Duration::from_millis(200))),
        None
    );
    promoting.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    f.cluster.replica(0).promote().unwrap();
    let promoted = t0.elapsed();
    let waiter = {
        let topo = topo.clone();
        f.rt.spawn(async move { topo.wait_for_primary(Duration::from_secs(5)).await })
    };
    assert_eq!(f.rt.block_on(waiter).unwrap(), Some(1));
    eprintln!(
        "cluster: promote took {promoted:?}; View.primary = replica 1 {:?} after it returned",
        t0.elapsed() - promoted
    );
    assert!(t0.elapsed() - promoted < 5 * INTERVAL);
    let v = topo.view();
    assert_eq!(v.nodes[1].role, Role::Primary);
    assert_eq!(v.nodes[1].timeline, Some(2));
    assert!(matches!(
        v.nodes[0].state,
        NodeState::Down | NodeState::Banned
    ));

    // Replica 2 still follows the dead primary: it falls behind the new one and leaves the
    // rotation once over the 1 s time limit.
    let (v, took) = f.wait(
        &topo,
        Duration::from_secs(3),
        "orphaned replica 2 lagging",
        |v| v.nodes[2].state == NodeState::Lagging,
    );
    eprintln!(
        "cluster: orphaned replica 2 Lagging {took:?} later (bytes {:?}, time {:?})",
        v.nodes[2].byte_lag, v.nodes[2].time_lag
    );
    assert_eq!(topo.pick_replica(Lsn::ZERO), Pick::None);

    // The old primary comes back on its old timeline: the promoted one keeps the writes.
    f.cluster.primary().start().unwrap();
    let (v, took) = f.wait(&topo, Duration::from_secs(8), "old primary excluded", |v| {
        v.nodes[0].state == NodeState::Excluded
    });
    eprintln!(
        "cluster: old primary back on timeline {:?} -> Excluded in {took:?}",
        v.nodes[0].timeline
    );
    assert_eq!(v.primary, Some(1));
    assert_eq!(v.nodes[0].role, Role::Primary);
    assert_eq!(v.nodes[0].timeline, Some(1));
    f.after_checks(&topo, &[0, 1], 3);
    assert_eq!(topo.view().primary, Some(1));

    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, [Some(0), None, Some(1)]);
}

#[test]
fn configured_roles_are_verified() {
    let f = Fixture::new(1);
    // Swapped on purpose: the "primary" is in recovery, the "replica" takes writes.
    let topo = f.start(f.settings(&[Replica, Primary], None, None));
    let (v, _) = f.wait(&topo, Duration::from_secs(2), "both excluded", |v| {
        states(v) == [NodeState::Excluded, NodeState::Excluded]
    });
    assert_eq!(v.primary, None);
    assert_eq!(
        (v.nodes[0].role, v.nodes[1].role),
        (Role::Primary, Role::Replica)
    );
    assert_eq!(topo.pick_replica(Lsn::ZERO), Pick::None);
    assert_eq!(
        f.rt.block_on(topo.wait_for_primary(Duration::from_millis(300))),
        None
    );
}

/// An administrator's ban holds across live checks (reads and, for the primary, writes stay
/// away from the node) and the unban re-admits it at the next check.
#[test]
fn admin_bans_hold_until_unban() {
    let f = Fixture::new(1);
    let topo = f.start(f.settings(&[Primary, Replica], None, Some(1 << 20)));
    f.wait(&topo, Duration::from_secs(2), "all healthy", all_healthy);
    let replica = topo.node_index(&f.cluster.replica(0).addr()).unwrap();
    assert_eq!(replica, 1);
    assert_eq!(topo.node_index(&f.cluster.primary().addr()), Some(0));

    topo.admin_ban(replica);
    assert_eq!(topo.view().nodes[1].state, NodeState::Banned);
    // Several monitor checks later it is still out.
    f.after_checks(&topo, &[0, 1], 5);
    let v = topo.view();
    assert_eq!(states(&v), [NodeState::Healthy, NodeState::Banned]);
    assert_eq!(
        v.nodes[1].last_error.as_deref(),
        Some(pgtier::cluster::ADMIN_BAN_ERROR)
    );
    assert_eq!(topo.pick_replica(Lsn::ZERO), Pick::None);

    topo.admin_ban(0);
    f.after_checks(&topo, &[0], 3);
    assert_eq!(
        topo.view().primary,
        None,
        "writes stop while the primary is banned"
    );
    assert_eq!(topo.bans_total(), 2);

    topo.admin_unban(0);
    topo.admin_unban(replica);
    let (_, took) = f.wait(&topo, Duration::from_secs(2), "re-admitted", all_healthy);
    eprintln!("cluster: unbanned nodes re-admitted in {took:?}");
    assert_eq!(topo.view().primary, Some(0));
    assert_eq!(topo.pick_replica(Lsn::ZERO), Pick::Ready(1));
    assert_eq!(topo.bans_total(), 2);
}
