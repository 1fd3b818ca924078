//! Tests of `topology`.
use crate::config::NodeAddr;

use super::*;

fn settings(roles: &[ConfiguredRole]) -> ClusterSettings {
    ClusterSettings {
        nodes: roles
            .iter()
            .enumerate()
            .map(|(i, &role)| NodeConfig {
                addr: NodeAddr {
                    host: "127.0.0.1".into(),
                    port: 1 + i as u16,
                },
                role,
                weight: 1,
                zone: None,
            })
            .collect(),
        lag_check_interval: Duration::from_millis(100),
        max_replica_lag: Some(Duration::from_secs(1)),
        max_replica_lag_bytes: Some(1000),
        login: MonitorLogin {
            user: "u".into(),
            password: None,
            dbname: "d".into(),
        },
        connect_timeout: Duration::from_secs(1),
        zone: None,
        zone_mode: Default::default(),
    }
}

fn primary(lsn: u64, timeline: u32) -> Outcome {
    Outcome::Checked {
        check: Check {
            in_recovery: false,
            lsn: Lsn(lsn),
            receive: None,
            since_last_replayed_xact: None,
            timeline: Some(timeline),
        },
        sent_at: Instant::now(),
        connected: Instant::now(),
    }
}

fn replica(lsn: u64) -> Outcome {
    Outcome::Checked {
        check: Check {
            in_recovery: true,
            lsn: Lsn(lsn),
            receive: Some(Lsn(lsn)),
            since_last_replayed_xact: Some(Duration::from_secs(3600)),
            timeline: None,
        },
        sent_at: Instant::now(),
        connected: Instant::now(),
    }
}

fn states(t: &Topology) -> Vec<NodeState> {
    t.view().nodes.iter().map(|n| n.state).collect()
}

use ConfiguredRole::{Auto, Primary, Replica};
use NodeState as S;

#[test]
fn replicas_wait_for_a_primary_measurement() {
    let t = Topology::new(settings(&[Primary, Replica]));
    t.record(1, replica(100));
    assert_eq!(states(&t), [S::Unknown, S::Unknown]);
    // A configured primary is trusted until a check shows it in recovery.
    assert_eq!(t.view().primary, Some(0));
    t.record(0, primary(100, 1));
    assert_eq!(t.view().primary, Some(0));
    assert_eq!(
        states(&t),
        [S::Healthy, S::Unknown],
        "verdict at the replica's next check"
    );
    t.record(1, replica(100));
    assert_eq!(states(&t), [S::Healthy, S::Healthy]);
    let v = t.view();
    assert_eq!(
        (v.nodes[1].byte_lag, v.nodes[1].time_lag),
        (Some(0), Some(Duration::ZERO))
    );
    assert_eq!(t.pick_replica(Lsn(100)), Pick::Ready(1));
    assert_eq!(t.pick_replica(Lsn(101)), Pick::Check(1));
}

#[test]
fn configured_roles_are_verified() {
    let t = Topology::new(settings(&[Primary, Replica]));
    t.record(0, replica(100));
    t.record(1, primary(100, 2));
    assert_eq!(t.view().primary, None, "neither may take writes");
    assert_eq!(states(&t), [S::Excluded, S::Excluded]);
    assert_eq!(t.pick_replica(Lsn(0)), Pick::None);
}

#[test]
fn auto_follows_the_highest_timeline_and_refuses_ties() {
    let t = Topology::new(settings(&[Auto, Auto, Auto]));
    t.record(0, primary(100, 1));
    t.record(1, replica(100));
    t.record(2, replica(100));
    assert_eq!(t.view().primary, Some(0));
    // Promoted node 1 on timeline 2 while node 0 still answers on timeline 1.
    t.record(1, primary(120, 2));
    assert_eq!(t.view().primary, Some(1));
    assert_eq!(states(&t)[..2], [S::Excluded, S::Healthy]);
    // Same timeline: no primary.
    t.record(0, primary(130, 2));
    assert_eq!(t.view().primary, None);
    t.record(0, Outcome::Refused("refused".into()));
    assert_eq!(t.view().primary, Some(1));
    assert_eq!(states(&t)[0], S::Down);
}

#[test]
fn failures_ban_and_the_next_check_readmits() {
    let t = Topology::new(settings(&[Primary, Replica]));
    t.record(0, primary(100, 1));
    t.record(1, replica(100));
    let g = t.view().generation;
    t.record(1, replica(100));
    assert_eq!(t.view().generation, g, "nothing changed: nothing published");
    t.report_failure(1);
    assert_eq!(states(&t), [S::Healthy, S::Banned]);
    assert!(t.take_reconnect(1));
    assert!(!t.take_reconnect(1));
    assert_eq!(t.pick_replica(Lsn(0)), Pick::None);
    t.record(1, replica(100));
    assert_eq!(states(&t), [S::Healthy, S::Healthy]);
    t.record(1, Outcome::Failed("timeout".into()));
    assert_eq!(states(&t), [S::Healthy, S::Banned]);
    assert_eq!(t.view().nodes[1].last_error.as_deref(), Some("timeout"));
    // A failing configured primary keeps the writes (they fail with the server's error).
    t.report_failure(0);
    assert_eq!(t.view().primary, Some(0));
    assert_eq!(states(&t)[0], S::Banned);
}

#[test]
fn a_check_on_a_connection_begun_before_a_reported_failure_does_not_lift_its_ban() {
    let t = Topology::new(settings(&[Primary, Replica]));
    t.record(0, primary(100, 1));
    t.record(1, replica(100));
    let begun = Instant::now();
    t.report_failure(1);
    // Sent after the failure, on a connection begun before it (the fault may not have
    // reached that connection yet): the node stays out.
    let Outcome::Checked { check, .. } = replica(100) else {
        unreachable!()
    };
    let late = Outcome::Checked {
        check,
        sent_at: Instant::now(),
        connected: begun,
    };
    t.record(1, late);
    assert_eq!(states(&t), [S::Healthy, S::Banned]);
    assert_eq!(t.pick_replica(Lsn(0)), Pick::None);
    // A check on a connection begun after the failure decides.
    t.record(1, replica(100));
    assert_eq!(states(&t), [S::Healthy, S::Healthy]);
}

#[tokio::test]
async fn wait_for_primary_wakes_on_publication() {
    let t = Arc::new(Topology::new(settings(&[Auto])));
    assert_eq!(t.wait_for_primary(Duration::from_millis(30)).await, None);
    let t2 = t.clone();
    let waiter = tokio::spawn(async move { t2.wait_for_primary(Duration::from_secs(5)).await });
    crate::timers::sleep(Duration::from_millis(20)).await;
    t.record(0, primary(1, 1));
    assert_eq!(waiter.await.unwrap(), Some(0));
}

#[test]
fn in_flight_counts() {
    let t = Arc::new(Topology::new(settings(&[Primary, Replica])));
    let a = t.begin(1);
    let b = t.begin(1);
    assert_eq!(t.outstanding(1), 2);
    drop(a);
    assert_eq!((t.outstanding(1), b.node()), (1, 1));
    drop(b);
    assert_eq!(t.outstanding(1), 0);
}

#[test]
fn unmonitored_takes_configured_roles() {
    let t = Topology::unmonitored(settings(&[Primary, Replica, Auto]));
    let v = t.view();
    assert_eq!(v.primary, Some(0));
    assert_eq!(v.nodes[2].role, Role::Replica);
    assert_eq!(v.nodes[2].addr.port, 3);
    assert!(v.nodes.iter().all(|n| n.state == S::Healthy));
}

fn _send_sync<T: Send + Sync>() {}
#[test]
fn topology_is_send_and_sync() {
    _send_sync::<Topology>();
}

#[test]
fn admin_ban_holds_whatever_the_monitor_reports() {
    let t = Topology::new(settings(&[Primary, Replica, Replica]));
    t.record(0, primary(100, 1));
    t.record(1, replica(100));
    t.record(2, replica(100));
    assert_eq!(t.bans_total(), 0);
    t.admin_ban(1);
    assert_eq!(states(&t), [S::Healthy, S::Banned, S::Healthy]);
    assert_eq!(
        t.view().nodes[1].last_error.as_deref(),
        Some(ADMIN_BAN_ERROR)
    );
    assert_eq!(t.view().nodes[1].role, Role::Replica, "role stays visible");
    assert_eq!(t.bans_total(), 1);
    for _ in 0..5 {
        t.record(1, replica(100));
        assert_eq!(
            t.pick_replica(Lsn(0)),
            Pick::Ready(2),
            "never chosen for reads"
        );
    }
    assert_eq!(states(&t)[1], S::Banned);
    // A failure while banned is no new ban; banning twice counts once.
    t.record(1, Outcome::Failed("timeout".into()));
    t.admin_ban(1);
    assert_eq!(t.bans_total(), 1);
    assert_eq!(
        t.view().nodes[1].last_error.as_deref(),
        Some(ADMIN_BAN_ERROR)
    );
    t.record(1, replica(100));
    t.admin_unban(1);
    // Not re-admitted on what it saw during the ban: at the next successful check.
    assert_eq!(states(&t)[1], S::Banned);
    assert_eq!(t.pick_replica(Lsn(0)), Pick::Ready(2));
    t.record(1, replica(100));
    assert_eq!(states(&t), [S::Healthy, S::Healthy, S::Healthy]);
    assert_eq!(t.bans_total(), 1);
    // Unbanning a node that is not banned changes nothing.
    let g = t.view().generation;
    t.admin_unban(1);
    t.admin_unban(7);
    t.admin_ban(7);
    assert_eq!(t.view().generation, g);
}

#[test]
fn banning_the_primary_stops_writes_until_unban() {
    let t = Topology::new(settings(&[Primary, Replica]));
    t.record(0, primary(100, 1));
    t.record(1, replica(100));
    t.admin_ban(0);
    assert_eq!(
        t.view().primary,
        None,
        "writes must not go to a banned primary"
    );
    assert_eq!(states(&t), [S::Banned, S::Healthy]);
    // Its monitor keeps reporting; replica lag is still measured against it.
    t.record(0, primary(5000, 1));
    t.record(1, replica(100));
    assert_eq!(t.view().primary, None);
    assert_eq!(t.view().nodes[1].byte_lag, Some(4900));
    t.admin_unban(0);
    assert_eq!(
        t.view().primary,
        Some(0),
        "a configured primary is trusted until disproven"
    );
    assert_eq!(states(&t)[0], S::Banned, "state back at its next check");
    t.record(0, primary(5000, 1));
    assert_eq!(states(&t)[0], S::Healthy);
    assert_eq!(
        t.bans_total(),
        1,
        "banned from the ban until the next check: once"
    );
}

#[test]
fn banning_an_auto_primary_stops_writes() {
    let t = Topology::new(settings(&[Auto, Auto]));
    t.record(0, primary(100, 1));
    t.record(1, replica(100));
    assert_eq!(t.view().primary, Some(0));
    t.admin_ban(0);
    assert_eq!(t.view().primary, None);
    t.record(0, primary(100, 1));
    assert_eq!(t.view().primary, None);
    t.admin_unban(0);
    t.record(0, primary(100, 1));
    assert_eq!(t.view().primary, Some(0));
}

#[test]
fn automatic_bans_are_counted() {
    let t = Topology::new(settings(&[Primary, Replica]));
    t.record(0, primary(100, 1));
    t.record(1, Outcome::Failed("boom".into()));
    t.record(1, Outcome::Failed("boom".into()));
    assert_eq!(t.bans_total(), 1, "still banned: one ban");
    t.record(1, replica(100));
    t.report_failure(1);
    assert_eq!(t.bans_total(), 2);
    t.record(1, Outcome::Refused("refused".into()));
    assert_eq!(states(&t)[1], S::Down);
    assert_eq!(t.bans_total(), 2, "Down is not Banned");
}

#[test]
fn unmonitored_bans_and_unbans_at_once() {
    let t = Topology::unmonitored(settings(&[Primary, Replica]));
    let before = t.view().nodes.to_vec();
    t.admin_ban(0);
    assert_eq!(t.view().primary, None);
    assert_eq!(states(&t), [S::Banned, S::Healthy]);
    t.admin_unban(0);
    assert_eq!(t.view().primary, Some(0));
    assert_eq!(&t.view().nodes[..], &before[..], "back to what it was");
}

#[test]
fn node_index_by_address() {
    let mut s = settings(&[Primary, Replica]);
    s.nodes[1].addr = NodeAddr {
        host: "::1".into(),
        port: 5433,
    };
    let t = Topology::new(s);
    assert_eq!(t.node_index("127.0.0.1:1"), Some(0));
    assert_eq!(t.node_index("[::1]:5433"), Some(1));
    assert_eq!(t.node_index("127.0.0.1:2"), None);
    assert_eq!(t.node_index("nonsense"), None);
}

/// A read waiting for a replica's replay position wakes when another read's check or the
/// monitor raises it, and not for a raise that falls short.
#[tokio::test]
async fn a_waiting_read_wakes_when_the_replay_position_is_raised() {
    let t = Arc::new(Topology::new(settings(&[Primary, Replica])));
    t.observe_replay(1, Lsn(100));
    // A wake-up that never came would show as None after this (not as a hang).
    let long = Duration::from_secs(10);
    assert_eq!(t.wait_replay(1, Lsn(100), long).await, Some(Lsn(100)));
    // Nothing raises it: None at the deadline.
    let started = tokio::time::Instant::now();
    assert_eq!(
        t.wait_replay(1, Lsn(200), Duration::from_millis(1)).await,
        None
    );
    assert!(started.elapsed() >= Duration::from_millis(1));
    // Another read's check: short of the token (still waiting), then past it.
    let waiter = tokio::spawn({
        let t = t.clone();
        async move { t.wait_replay(1, Lsn(200), long).await }
    });
    tokio::task::yield_now().await;
    t.observe_replay(1, Lsn(150));
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    t.observe_replay(1, Lsn(250));
    assert_eq!(waiter.await.unwrap(), Some(Lsn(250)));
    // The monitor's check raises it too.
    let waiter = tokio::spawn({
        let t = t.clone();
        async move { t.wait_replay(1, Lsn(300), long).await }
    });
    tokio::task::yield_now().await;
    t.record(1, replica(300));
    assert_eq!(waiter.await.unwrap(), Some(Lsn(300)));
    assert!(started.elapsed() < long, "woken, not timed out");
}
