//! The admin console's lists (SHOW STATS, SERVERS, CLIENTS, CONFIG, POOLS' cl_* columns) and
//! its commands (PAUSE, RESUME, RECONNECT, KILL, BAN, UNBAN, RELOAD, SHUTDOWN) against a primary
//! and 2 replicas.

use std::time::Duration;

use pgtier_kit::fixture::{connect, replica_in_rotation, scram_role, ConfigBuilder};
use pgtier_kit::{Cluster, Pgtier};
use tokio_postgres::{SimpleQueryMessage, SimpleQueryRow};

use pgtier_kit::fixture::simple_rows as rows;

async fn admin(px: &Pgtier) -> tokio_postgres::Client {
    pgtier_kit::fixture::admin_console(px, "admin", "admin-pw").await
}

fn builder(cluster: &Cluster) -> ConfigBuilder {
    ConfigBuilder::new(cluster)
        .global("admin_users = [\"admin\"]")
        .global("lag_check_interval = \"50ms\"")
        .global("query_wait_timeout = \"20s\"")
        .with_replicas(cluster)
        .user("admin", "password = \"admin-pw\"")
        .user("appuser", "password = \"app-pw\"")
}

fn col<'a>(r: &'a SimpleQueryRow, name: &str) -> &'a str {
    r.get(name)
        .unwrap_or_else(|| panic!("column {name} missing or NULL"))
}

/// The primary backend serving the next transaction (simple protocol: no statement left to
/// close afterwards).
/// Waits (5 s at most) until SHOW POOLS counts `n` waiting clients of database app.
async fn waiting_clients(adm: &tokio_postgres::Client, n: u32) {
    let t0 = std::time::Instant::now();
    while pgtier_kit::fixture::cl_waiting(adm).await != n {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "SHOW POOLS: not {n} waiting clients within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn primary_pid(c: &tokio_postgres::Client) -> i32 {
    let rows = rows(c, "/* pgtier:primary */ SELECT pg_backend_pid()").await;
    rows[0].get(0).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_and_commands() {
    let cluster = Cluster::start(2).unwrap();
    scram_role(&cluster, "appuser", "app-pw").unwrap();
    let px = builder(&cluster).start().unwrap();
    replica_in_rotation(&px, "appuser", "app-pw").await.unwrap();
    let adm = admin(&px).await;
    let app = connect(&px, "appuser", "app-pw").await.unwrap();
    for _ in 0..5 {
        app.simple_query("SELECT 1").await.unwrap();
    }
    let pid = primary_pid(&app).await;

    // SHOW STATS counts what ran, with PgBouncer's columns.
    let stats = rows(&adm, "SHOW STATS").await;
    let app_stats = stats.iter().find(|r| col(r, "database") == "app").unwrap();
    let n = |k: &str| col(app_stats, k).parse::<u64>().unwrap();
    assert!(n("total_xact_count") >= 6, "{}", n("total_xact_count"));
    assert!(n("total_query_count") >= 6);
    assert!(n("total_received") > 0 && n("total_sent") > 0);
    assert!(n("total_xact_time") > 0 && n("total_query_time") > 0);
    assert!(n("total_replica_xact_count") >= 1);
    for c in ["avg_xact_count", "avg_query_time", "total_wait_time"] {
        col(app_stats, c);
    }

    // SHOW SERVERS lists the primary backend that just served us, idle now.
    let servers = rows(&adm, "SHOW SERVERS").await;
    let ours = servers
        .iter()
        .find(|r| col(r, "remote_pid") == pid.to_string())
        .unwrap_or_else(|| panic!("backend {pid} not in SHOW SERVERS"));
    assert_eq!(col(ours, "type"), "S");
    assert_eq!(col(ours, "state"), "idle");
    assert_eq!(col(ours, "user"), "appuser");
    assert_eq!(col(ours, "port"), cluster.primary().port().to_string());

    // SHOW CLIENTS lists the app client (idle, with the statement it prepared) and the admin
    // is not a pooled client.
    let _statement = app.prepare("SELECT 1").await.unwrap();
    let clients = rows(&adm, "SHOW CLIENTS").await;
    let c = clients
        .iter()
        .find(|r| col(r, "user") == "appuser")
        .unwrap();
    assert_eq!(col(c, "database"), "app");
    assert_eq!(col(c, "state"), "active");
    assert_eq!(col(c, "activity"), "idle");
    assert_eq!(col(c, "pinned"), "0");
    assert_eq!(col(c, "prepared_statements"), "1");

    // SHOW POOLS has the client on the primary's row.
    let pools = rows(&adm, "SHOW POOLS").await;
    let cl: u32 = pools
        .iter()
        .filter(|r| col(r, "user") == "appuser")
        .map(|r| col(r, "cl_active").parse::<u32>().unwrap())
        .sum();
    assert_eq!(cl, 1);
    for r in &pools {
        col(r, "maxwait_us");
        col(r, "sv_idle");
    }

    // SHOW CONFIG: keys with values and defaults, never passwords.
    let config = rows(&adm, "SHOW CONFIG").await;
    let pool_size = config
        .iter()
        .find(|r| col(r, "key") == "pool_size")
        .unwrap();
    assert_eq!(col(pool_size, "default"), "20");
    assert_eq!(col(pool_size, "changeable"), "yes");
    let listen = config.iter().find(|r| col(r, "key") == "listen").unwrap();
    assert_eq!(col(listen, "changeable"), "no");
    assert!(config
        .iter()
        .all(|r| !format!("{:?}", r.get(1)).contains("app-pw")));

    // SHOW LISTS counts (pgbouncer_exporter reads it).
    let lists = rows(&adm, "SHOW LISTS").await;
    let item = |k: &str| {
        let r = lists.iter().find(|r| col(r, "list") == k).unwrap();
        col(r, "items").parse::<u64>().unwrap()
    };
    assert_eq!(item("databases"), 1);
    assert_eq!(item("users"), 2);
    assert!(item("free_servers") >= 1);

    // RECONNECT: the next transaction gets a new server connection.
    rows(&adm, "RECONNECT app").await;
    let pid2 = primary_pid(&app).await;
    assert_ne!(pid, pid2, "RECONNECT must close the pooled connection");

    // PAUSE holds new transactions; RESUME lets them run.
    rows(&adm, "PAUSE app").await;
    let dbs = rows(&adm, "SHOW DATABASES").await;
    assert_eq!(col(&dbs[0], "paused"), "1");
    let waiting = tokio::spawn(async move {
        let r = app.simple_query("SELECT 1").await.map(|_| ());
        (app, r)
    });
    // Held, not lost: SHOW POOLS counts it as a waiting client (observed, not slept on).
    waiting_clients(&adm, 1).await;
    if waiting.is_finished() {
        let (_, r) = waiting.await.unwrap();
        panic!("a query ran during PAUSE: {r:?}");
    }
    rows(&adm, "RESUME app").await;
    let (app, r) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("RESUME lets the query run")
        .unwrap();
    r.unwrap();

    // BAN both replicas: reads go to the primary; UNBAN: back on a replica.
    for r in cluster.replicas() {
        rows(&adm, &format!("BAN {}", r.addr())).await;
    }
    let reps = rows(&adm, "SHOW REPLICAS").await;
    for r in cluster.replicas() {
        let row = reps.iter().find(|x| col(x, "node") == r.addr()).unwrap();
        assert_eq!(col(row, "state"), "banned");
        assert!(col(row, "last_error").contains("BAN"));
    }
    for _ in 0..20 {
        let row = app
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap();
        assert!(!row.get::<_, bool>(0), "a read went to a banned replica");
    }
    for r in cluster.replicas() {
        rows(&adm, &format!("UNBAN {}", r.addr())).await;
    }
    replica_in_rotation(&px, "appuser", "app-pw").await.unwrap();
    let err = adm.simple_query("BAN 127.0.0.1:1").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42704"));

    // KILL closes the database's clients and pauses it until RESUME.
    rows(&adm, "KILL app").await;
    let err = app.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        err.code().map(|c| c.code()) == Some("57P01") || err.is_closed(),
        "{err}"
    );
    let late = connect(&px, "appuser", "app-pw").await.unwrap();
    let held = tokio::spawn(async move { late.simple_query("SELECT 1").await.map(|_| ()) });
    waiting_clients(&adm, 1).await;
    assert!(!held.is_finished(), "KILL must pause the database");
    rows(&adm, "RESUME app").await;
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // A reload that removes a replica keeps what is known of the other nodes, a BAN too.
    let (r0, r1) = (cluster.replica(0).addr(), cluster.replica(1).addr());
    rows(&adm, &format!("BAN {r0}")).await;
    let text = std::fs::read_to_string(px.config_path())
        .unwrap()
        .replace(&format!(", \"{r1}\""), "");
    std::fs::write(px.config_path(), text).unwrap();
    rows(&adm, "RELOAD").await;
    let reps = rows(&adm, "SHOW REPLICAS").await;
    assert_eq!(
        reps.len(),
        2,
        "the primary and one replica after the reload"
    );
    let r0_row = reps.iter().find(|x| col(x, "node") == r0).unwrap();
    assert_eq!(col(r0_row, "state"), "banned");
    let primary_row = reps
        .iter()
        .find(|x| col(x, "node") == cluster.primary().addr())
        .unwrap();
    assert_eq!(col(primary_row, "state"), "healthy");
    rows(&adm, &format!("UNBAN {r0}")).await;

    // Unknown commands and databases get clear errors.
    let err = adm.simple_query("PAUSE nosuchdb").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("3D000"));
    let err = adm.simple_query("FROBNICATE").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_changes_rejects_bad_files_and_shutdown_stops() {
    let cluster = Cluster::start(1).unwrap();
    scram_role(&cluster, "appuser", "app-pw").unwrap();
    // The config's log_level decides (the kit then starts pgtier without RUST_LOG).
    let b = builder(&cluster).global("log_level = \"warn\"");
    let mut px = b.start().unwrap();
    let adm = admin(&px).await;
    let app = connect(&px, "appuser", "app-pw").await.unwrap();
    app.simple_query("SELECT 1").await.unwrap();
    assert!(
        !px.log().contains("client connected"),
        "info lines at log_level warn:\n{}",
        px.log()
    );
    let config = std::fs::read_to_string(px.config_path()).unwrap();

    // An invalid file: F0000 with line and column; the running config stays.
    std::fs::write(px.config_path(), format!("{config}\npool_sise = 3\n")).unwrap();
    let err = adm.simple_query("RELOAD").await.unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "F0000");
    assert!(db.message().contains("pool_sise"), "{}", db.message());
    assert!(db.message().contains("did you mean"), "{}", db.message());
    app.simple_query("SELECT 1").await.unwrap();

    // A valid change applies to SHOW DATABASES and to the log level; a changed listen is
    // reported, not applied.
    let changed = config
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", px.port()),
            "listen = \"127.0.0.1:1\"",
        )
        .replace("log_level = \"warn\"", "log_level = \"info\"")
        .replacen("[users.", "pool_size = 7\n[users.", 1);
    std::fs::write(px.config_path(), changed).unwrap();
    let reply = adm.simple_query("RELOAD").await.unwrap();
    let restart: Vec<String> = reply
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get("key").map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(restart, vec!["listen".to_owned()]);
    let dbs = rows(&adm, "SHOW DATABASES").await;
    assert_eq!(col(&dbs[0], "pool_size"), "7");
    let later = connect(&px, "appuser", "app-pw").await.unwrap();
    later.simple_query("SELECT 1").await.unwrap();
    assert!(
        px.log().contains("client connected"),
        "no info line after RELOAD set log_level = info:\n{}",
        px.log()
    );
    let log_level = rows(&adm, "SHOW CONFIG")
        .await
        .into_iter()
        .find(|r| col(r, "key") == "log_level")
        .expect("log_level in SHOW CONFIG");
    assert_eq!(col(&log_level, "value"), "info");
    assert_eq!(col(&log_level, "changeable"), "yes");
    // The existing client moves to the new pools at its next transaction.
    app.simple_query("SELECT 1").await.unwrap();
    let pools = rows(&adm, "SHOW POOLS").await;
    assert!(pools
        .iter()
        .filter(|r| col(r, "user") == "appuser")
        .all(|r| col(r, "pool_size") == "7"));

    // SHUTDOWN stops the process.
    rows(&adm, "SHUTDOWN").await;
    assert!(
        px.wait_exit(Duration::from_secs(10)).is_some(),
        "pgtier still running after SHUTDOWN:\n{}",
        px.log()
    );
}

/// SHOW CLIENTS counts a session-mode client's prepared statements too (its one relay run lasts
/// the whole session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_clients_counts_statements_of_session_mode_clients() {
    let cluster = Cluster::start(0).unwrap();
    scram_role(&cluster, "appuser", "app-pw").unwrap();
    let px = builder(&cluster)
        .global("pool_mode = \"session\"")
        .start()
        .unwrap();
    let adm = admin(&px).await;
    let app = connect(&px, "appuser", "app-pw").await.unwrap();
    let _a = app.prepare("SELECT 1").await.unwrap();
    let _b = app.prepare("SELECT 2").await.unwrap();
    let clients = rows(&adm, "SHOW CLIENTS").await;
    let c = clients
        .iter()
        .find(|r| col(r, "user") == "appuser")
        .expect("the app client in SHOW CLIENTS");
    assert_eq!(col(c, "prepared_statements"), "2");
}
