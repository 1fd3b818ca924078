//! Zones (issue 21): with `zone` set on pgtier and on its replicas, reads go to the replicas in
//! pgtier's zone; without one there, to replicas in other zones (`zone_mode = "prefer"`) or to
//! the primary (`zone_mode = "only"`). SHOW REPLICAS and the metrics (`pgtier_node_info`,
//! `pgtier_info`) show the zones. A read that carries a causal token waits for the own zone's
//! replica, then reads on the primary, never stale and never in the other zone.

use std::time::Duration;

use pgtier_kit::fixture::{admin_console, read_node, simple_rows, ConfigBuilder};
use pgtier_kit::{Cluster, Pgtier};

fn start(cluster: &Cluster, mode: &str, mport: u16, extra: &[&str]) -> Pgtier {
    let (r0, r1) = (cluster.replica(0).addr(), cluster.replica(1).addr());
    let builder = extra
        .iter()
        .fold(ConfigBuilder::new(cluster), |b, g| b.global(g));
    builder
        .global("lag_check_interval = \"50ms\"")
        .global(&format!("metrics_listen = \"127.0.0.1:{mport}\""))
        .global("zone = \"b\"")
        .global(&format!("zone_mode = \"{mode}\""))
        .global("admin_users = [\"admin\"]")
        .user("admin", "password = \"admin-pw\"")
        .user("pgtier_trust", "auth = \"trust\"")
        .database(&format!(
            "replicas = [{{ addr = \"{r0}\", zone = \"a\" }}, {{ addr = \"{r1}\", zone = \"b\" }}]"
        ))
        .start()
        .unwrap()
}

/// The ports that served 20 plain reads (waiting up to 10 s for the first replica read).
async fn read_ports(px: &Pgtier) -> Vec<(u16, bool)> {
    let dsn = format!(
        "host=127.0.0.1 port={} user=pgtier_trust dbname=app connect_timeout=10",
        px.port()
    );
    let c = pgtier_kit::tls::connect(&dsn).await.unwrap();
    let mut out = Vec::new();
    for _ in 0..20 {
        out.push(read_node(&c).await.unwrap());
    }
    out
}

/// Waits until `cond` holds for a batch of reads (the monitors publish state changes).
async fn until(px: &Pgtier, what: &str, cond: impl Fn(&[(u16, bool)]) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reads = read_ports(px).await;
        if cond(&reads) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {reads:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stay_in_pgtiers_zone_then_prefer_or_only() {
    let cluster = Cluster::shared();
    pgtier_kit::fixture::ensure_app_db(cluster).unwrap();
    cluster.create_trust_role("pgtier_trust").unwrap();
    let (local, remote) = (cluster.replica(1).port(), cluster.replica(0).port());
    let primary = cluster.primary().port();

    let mport = pgtier_kit::free_port().unwrap();
    let prefer = start(cluster, "prefer", mport, &[]);
    // Every read on the replica of zone b (none on the idle replica of zone a).
    until(&prefer, "all reads in zone b", |r| {
        r.iter().all(|&(p, _)| p == local)
    })
    .await;
    // The local replica banned: reads go to the other zone's replica, not to the primary.
    let adm = admin_console(&prefer, "admin", "admin-pw").await;
    // SHOW REPLICAS names each node's zone.
    let zones: Vec<(String, String)> = simple_rows(&adm, "SHOW REPLICAS")
        .await
        .iter()
        .map(|r| {
            (
                r.get("node").unwrap().to_owned(),
                r.get("zone").unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        zones.contains(&(format!("127.0.0.1:{local}"), "b".into())),
        "{zones:?}"
    );
    assert!(
        zones.contains(&(format!("127.0.0.1:{remote}"), "a".into())),
        "{zones:?}"
    );
    assert!(
        zones.contains(&(format!("127.0.0.1:{primary}"), String::new())),
        "{zones:?}"
    );
    // The metrics too: one info series per node with its zone, and pgtier's own zone.
    let (status, body) = pgtier_kit::http::get(mport, "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    for (port, zone) in [(local, "b"), (remote, "a"), (primary, "")] {
        let series = format!(
            "pgtier_node_info{{database=\"app\",node=\"127.0.0.1:{port}\",zone=\"{zone}\"}} 1"
        );
        assert!(body.lines().any(|l| l == series), "no {series} in\n{body}");
    }
    assert_eq!(
        body.lines()
            .filter(|l| l.starts_with("pgtier_node_info{"))
            .count(),
        3,
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("pgtier_info{") && l.contains("zone=\"b\"")),
        "{body}"
    );
    simple_rows(&adm, &format!("BAN 127.0.0.1:{local}")).await;
    until(&prefer, "reads in zone a", |r| {
        r.iter().all(|&(p, _)| p == remote)
    })
    .await;
    simple_rows(&adm, &format!("UNBAN 127.0.0.1:{local}")).await;
    until(&prefer, "back in zone b", |r| {
        r.iter().all(|&(p, _)| p == local)
    })
    .await;

    // zone_mode = "only": never the other zone; the primary instead.
    let only = start(cluster, "only", pgtier_kit::free_port().unwrap(), &[]);
    until(&only, "all reads in zone b", |r| {
        r.iter().all(|&(p, _)| p == local)
    })
    .await;
    let adm = admin_console(&only, "admin", "admin-pw").await;
    simple_rows(&adm, &format!("BAN 127.0.0.1:{local}")).await;
    until(&only, "reads on the primary", |r| {
        r.iter()
            .all(|&(p, in_recovery)| p == primary && !in_recovery)
    })
    .await;
}

/// One read of the row `id` of `zone_rows` by a client of the writing user (causal scope
/// "user": it carries the user's token): (port, in recovery, whether the row was there).
async fn read_row(c: &tokio_postgres::Client, id: i32) -> (u16, bool, bool) {
    let rows = simple_rows(
        c,
        &format!(
            "SELECT inet_server_port(), pg_is_in_recovery(), \
             (SELECT count(*) FROM zone_rows WHERE id = {id})"
        ),
    )
    .await;
    let get = |k: &str| rows[0].get(k).unwrap().to_owned();
    (
        get("inet_server_port").parse().unwrap(),
        get("pg_is_in_recovery") == "t",
        get("count") == "1",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_causal_read_waits_for_its_zone_then_reads_on_the_primary_never_stale() {
    // Its own cluster: the own zone's replica is paused (kept in the rotation by a lag limit
    // it cannot reach), the other zone's replica keeps replaying. (With causal_scope =
    // "connection" the reads carry no token and this test fails: they read on the paused
    // replica and miss their rows.)
    let cluster = Cluster::start(2).unwrap();
    pgtier_kit::fixture::ensure_app_db(&cluster).unwrap();
    cluster.create_trust_role("pgtier_trust").unwrap();
    cluster
        .ddl("app", "GRANT ALL ON SCHEMA public TO pgtier_trust")
        .unwrap();
    let (local, remote) = (cluster.replica(1).port(), cluster.replica(0).port());
    let primary = cluster.primary().port();
    let px = start(
        &cluster,
        "prefer",
        pgtier_kit::free_port().unwrap(),
        &["max_replica_lag = \"60s\"", "causal_read_wait = \"50ms\""],
    );
    until(&px, "all reads in zone b", |r| {
        r.iter().all(|&(p, _)| p == local)
    })
    .await;
    let dsn = format!(
        "host=127.0.0.1 port={} user=pgtier_trust dbname=app connect_timeout=10",
        px.port()
    );
    let w = pgtier_kit::tls::connect(&dsn).await.unwrap();
    let r = pgtier_kit::tls::connect(&dsn).await.unwrap();
    w.batch_execute("CREATE TABLE zone_rows (id int)")
        .await
        .unwrap();

    cluster.replica(1).pause_replay().unwrap();
    let (mut on_primary, mut elsewhere) = (0, Vec::new());
    for id in 1..=20 {
        w.batch_execute(&format!("INSERT INTO zone_rows VALUES ({id})"))
            .await
            .unwrap();
        let (port, in_recovery, found) = read_row(&r, id).await;
        assert!(found, "read {id} on {port} did not see its own write");
        if port == primary && !in_recovery {
            on_primary += 1;
        } else {
            elsewhere.push(port);
        }
    }
    // The other zone's replica had the rows, but the rule is: the own zone, else the primary.
    assert!(
        elsewhere.is_empty(),
        "reads left the primary while zone b's replica was paused: {elsewhere:?} \
         (remote is {remote})"
    );
    assert_eq!(on_primary, 20);

    // Replay resumed: reads with the token are served in zone b again, and see their rows.
    cluster.replica(1).resume_replay().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut id = 100;
    loop {
        id += 1;
        w.batch_execute(&format!("INSERT INTO zone_rows VALUES ({id})"))
            .await
            .unwrap();
        let (port, _, found) = read_row(&r, id).await;
        assert!(found, "read {id} on {port} did not see its own write");
        if port == local {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no causal read back on zone b's replica within 10 s (last on {port})"
        );
    }
}
