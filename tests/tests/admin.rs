//! The admin console (database `pgtier` / `pgbouncer`): who may use it, and what its SHOW
//! commands report about a primary + 2 replicas.

use std::time::{Duration, Instant};

use pgtier_kit::fixture::{connect, scram_role, ConfigBuilder};
use pgtier_kit::Cluster;
use tokio_postgres::NoTls;

use pgtier_kit::fixture::simple_rows as rows;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_shows_databases_pools_replicas_and_routes() {
    let cluster = Cluster::start(2).unwrap();
    scram_role(&cluster, "appuser", "app-pw").unwrap();
    let px = ConfigBuilder::new(&cluster)
        .global("admin_users = [\"admin\"]")
        .global("lag_check_interval = \"50ms\"")
        .with_replicas(&cluster)
        .user("admin", "password = \"admin-pw\"")
        .user("appuser", "password = \"app-pw\"")
        .start()
        .unwrap();
    let admin_dsn = |db: &str, user: &str, pw: &str| {
        format!(
            "host=127.0.0.1 port={} user={user} password={pw} dbname={db}",
            px.port()
        )
    };

    // Only admin_users get in.
    let err = tokio_postgres::connect(&admin_dsn("pgtier", "appuser", "app-pw"), NoTls)
        .await
        .err()
        .expect("a non-admin user is refused");
    assert_eq!(err.code().map(|c| c.code()), Some("28000"), "{err}");

    let app = connect(&px, "appuser", "app-pw").await.unwrap();
    app.simple_query("SELECT 1").await.unwrap();
    app.batch_execute("CREATE TABLE IF NOT EXISTS t (a int)")
        .await
        .unwrap();

    for db in ["pgtier", "pgbouncer"] {
        let (admin, conn) = tokio_postgres::connect(&admin_dsn(db, "admin", "admin-pw"), NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let v = rows(&admin, "SHOW VERSION").await;
        assert!(v[0].get(0).unwrap().starts_with("pgtier "));
        assert!(rows(&admin, "SHOW HELP").await.len() >= 6);
    }
    let (admin, conn) = tokio_postgres::connect(&admin_dsn("pgtier", "admin", "admin-pw"), NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);

    let dbs = rows(&admin, "SHOW DATABASES").await;
    assert_eq!(dbs.len(), 1);
    assert_eq!(dbs[0].get("name"), Some("app"));
    assert_eq!(dbs[0].get("nodes"), Some("3"));
    assert_eq!(
        dbs[0].get("port"),
        Some(cluster.primary().port().to_string().as_str())
    );

    // Replicas become healthy within a few check intervals.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reps = rows(&admin, "SHOW REPLICAS").await;
        assert_eq!(reps.len(), 3);
        let healthy = reps
            .iter()
            .filter(|r| r.get("role") == Some("replica") && r.get("state") == Some("healthy"))
            .count();
        if healthy == 2 {
            let primary = reps
                .iter()
                .find(|r| r.get("role") == Some("primary"))
                .unwrap();
            assert_eq!(primary.get("node"), Some(cluster.primary().addr().as_str()));
            break;
        }
        assert!(Instant::now() < deadline, "replicas not healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The app user's write and read opened connections on the primary and a replica.
    app.simple_query("SELECT 1").await.unwrap();
    let pools = rows(&admin, "SHOW POOLS").await;
    let open = |node: String| {
        pools
            .iter()
            .filter(|r| r.get("user") == Some("appuser") && r.get("node") == Some(node.as_str()))
            .map(|r| {
                r.get("sv_idle").unwrap().parse::<u32>().unwrap()
                    + r.get("sv_active").unwrap().parse::<u32>().unwrap()
            })
            .sum::<u32>()
    };
    assert!(open(cluster.primary().addr()) >= 1, "{:?}", pools.len());
    let on_replicas: u32 = cluster.replicas().iter().map(|r| open(r.addr())).sum();
    assert!(on_replicas >= 1);

    let route = |sql: &'static str| {
        let admin = &admin;
        async move { rows(admin, &format!("SHOW ROUTE {sql}")).await.remove(0) }
    };
    let r = route("SELECT a FROM t").await;
    assert_eq!(r.get("destination"), Some("replica"));
    assert_eq!(r.get("class"), Some("read"));
    let replica_addrs: Vec<String> = cluster.replicas().iter().map(|n| n.addr()).collect();
    assert!(replica_addrs
        .iter()
        .any(|a| Some(a.as_str()) == r.get("node")));
    for sql in [
        "INSERT INTO t VALUES (1)",
        "SELECT nextval('s')",
        "SELECT * FROM t FOR NO KEY UPDATE",
    ] {
        let r = route(sql).await;
        assert_eq!(r.get("destination"), Some("primary"), "{sql}");
        assert_eq!(
            r.get("node"),
            Some(cluster.primary().addr().as_str()),
            "{sql}"
        );
    }
    let r = route("app /* pgtier:primary */ SELECT 1").await;
    assert_eq!(r.get("destination"), Some("primary"));
    assert!(r.get("explanation").unwrap().contains("hint"));

    // What does not exist says so.
    let err = admin.simple_query("SHOW FDS").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"));
}
