//! Prometheus `/metrics` on `metrics_listen`: the text parses, values move when queries run,
//! replicas report lag and state; and the slow-query log names the node and hides parameters.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use pgtier_kit::fixture::{connect, replica_in_rotation, scram_role, ConfigBuilder};
use pgtier_kit::{free_port, Cluster};

/// GETs `path` from 127.0.0.1:`port`; returns (status line, body).
fn get(port: u16, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// Samples by full series name (`name{labels}`), checking every line parses.
fn parse(body: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in body.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        out.insert(series.to_owned(), v);
    }
    out
}

/// Sum of the samples of `name` whose labels contain every `labels` pair.
fn sum(m: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            let (n, rest) = k.split_once('{').unwrap_or((k, ""));
            n == name
                && labels
                    .iter()
                    .all(|(l, v)| rest.contains(&format!("{l}=\"{v}\"")))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_queries_and_report_replicas() {
    let cluster = Cluster::start(2).unwrap();
    scram_role(&cluster, "appuser", "app-pw").unwrap();
    let mport = free_port().unwrap();
    let px = ConfigBuilder::new(&cluster)
        .global("lag_check_interval = \"50ms\"")
        .global(&format!("metrics_listen = \"127.0.0.1:{mport}\""))
        .global("slow_query_threshold = \"50ms\"")
        .with_replicas(&cluster)
        .user("appuser", "password = \"app-pw\"")
        .start()
        .unwrap();
    replica_in_rotation(&px, "appuser", "app-pw").await.unwrap();
    let app = connect(&px, "appuser", "app-pw").await.unwrap();

    let (status, body) = get(mport, "/metrics");
    assert!(status.contains("200"), "{status}");
    let before = parse(&body);
    let tx = |m: &HashMap<String, f64>, role: &str| {
        sum(
            m,
            "pgtier_transactions_total",
            &[("database", "app"), ("role", role)],
        )
    };

    app.batch_execute("CREATE TABLE IF NOT EXISTS m (a int)")
        .await
        .unwrap();
    for i in 0..10 {
        app.execute("INSERT INTO m VALUES ($1)", &[&i])
            .await
            .unwrap();
    }
    cluster.wait_replicas_caught_up().unwrap();
    for _ in 0..20 {
        app.simple_query("SELECT count(*) FROM m").await.unwrap();
    }
    let err = app.simple_query("SELECT * FROM no_such_table").await;
    assert!(err.is_err());
    // Slow: logged with the node, and never with parameter values.
    app.query("SELECT pg_sleep(0.1), $1::text", &[&"secret-param"])
        .await
        .unwrap();

    let after = parse(&get(mport, "/metrics").1);
    assert!(tx(&after, "primary") >= tx(&before, "primary") + 10.0);
    assert!(
        tx(&after, "replica") >= tx(&before, "replica") + 1.0,
        "no replica transactions counted"
    );
    assert!(
        sum(&after, "pgtier_queries_total", &[("database", "app")])
            > sum(&before, "pgtier_queries_total", &[("database", "app")])
    );
    assert!(
        sum(
            &after,
            "pgtier_transactions_total",
            &[("reason", "write"), ("role", "primary")]
        ) >= 10.0
    );
    assert!(
        sum(
            &after,
            "pgtier_query_duration_seconds_count",
            &[("database", "app")]
        ) >= 30.0
    );
    assert!(
        sum(
            &after,
            "pgtier_pool_wait_seconds_count",
            &[("database", "app")]
        ) >= 30.0
    );
    assert!(sum(&after, "pgtier_client_received_bytes_total", &[]) > 0.0);
    assert_eq!(
        sum(
            &after,
            "pgtier_errors_total",
            &[("database", "app"), ("class", "42")]
        ),
        1.0
    );
    assert_eq!(
        sum(&after, "pgtier_client_connections", &[("user", "appuser")]),
        1.0,
        "one client (idle, or closing its last statement)"
    );
    assert!(
        sum(
            &after,
            "pgtier_server_connections",
            &[("database", "app"), ("state", "idle")]
        ) >= 1.0
    );
    for r in cluster.replicas() {
        let node = r.addr();
        assert_eq!(
            sum(
                &after,
                "pgtier_node_state",
                &[("node", &node), ("state", "healthy")]
            ),
            1.0,
            "replica {node} not healthy in metrics"
        );
        assert!(
            after
                .keys()
                .any(|k| k.starts_with("pgtier_replica_lag_bytes") && k.contains(&node)),
            "no lag for {node}"
        );
    }
    assert_eq!(sum(&after, "pgtier_info", &[]), 1.0);

    let log = px.wait_for_log("slow query", Duration::from_secs(5));
    let slow = log
        .lines()
        .find(|l| l.contains("slow query"))
        .unwrap_or_else(|| panic!("no slow-query line:\n{log}"));
    assert!(slow.contains("pg_sleep"), "{slow}");
    assert!(slow.contains("node="), "{slow}");
    assert!(
        !log.contains("secret-param"),
        "a parameter value reached the log"
    );

    let (status, _) = get(mport, "/nope");
    assert!(status.contains("404"), "{status}");
}

/// In session mode the server is held from login: a query's time starts when the client sends
/// it, not at login (a client that waited before its first query is not a slow query).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_times_queries_from_when_they_are_sent() {
    let cluster = Cluster::start(0).unwrap();
    scram_role(&cluster, "appuser", "app-pw").unwrap();
    let px = ConfigBuilder::new(&cluster)
        .global("pool_mode = \"session\"")
        .global("slow_query_threshold = \"300ms\"")
        .user("appuser", "password = \"app-pw\"")
        .start()
        .unwrap();
    let app = connect(&px, "appuser", "app-pw").await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    app.simple_query("SELECT 'quick'").await.unwrap();
    only_the_slow_query_is_logged(&px, &app).await;
}

/// Runs a 0.4 s query and checks that the slow-query log (threshold 300 ms) names it alone: a
/// quick query before it, had it been logged, would have been logged first.
async fn only_the_slow_query_is_logged(px: &pgtier_kit::Pgtier, app: &tokio_postgres::Client) {
    app.simple_query("SELECT pg_sleep(0.4), 'slow'")
        .await
        .unwrap();
    let log = px.wait_for_log("'slow'", Duration::from_secs(5));
    let slow: Vec<&str> = log.lines().filter(|l| l.contains("slow query")).collect();
    assert_eq!(slow.len(), 1, "{log}");
    assert!(slow[0].contains("'slow'"), "{}", slow[0]);
}

/// A query held by an admin PAUSE counts the pause as pool wait, not as query time: its
/// timing starts when the checkout is asked for after RESUME (not a slow query), and the pool
/// wait histogram holds the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_query_waits_in_the_pool_not_in_its_query_time() {
    let cluster = Cluster::start(0).unwrap();
    scram_role(&cluster, "appuser", "app-pw").unwrap();
    let mport = free_port().unwrap();
    let px = ConfigBuilder::new(&cluster)
        .global(&format!("metrics_listen = \"127.0.0.1:{mport}\""))
        .global("admin_users = [\"admin\"]")
        .global("slow_query_threshold = \"300ms\"")
        .user("admin", "password = \"admin-pw\"")
        .user("appuser", "password = \"app-pw\"")
        .start()
        .unwrap();
    let adm = pgtier_kit::fixture::admin_console(&px, "admin", "admin-pw").await;
    let app = connect(&px, "appuser", "app-pw").await.unwrap();
    app.simple_query("SELECT 1").await.unwrap();
    pgtier_kit::fixture::simple_rows(&adm, "PAUSE app").await;
    let held = tokio::spawn(async move {
        let r = app.simple_query("SELECT 'paused'").await.map(|_| ());
        (app, r)
    });
    let t0 = std::time::Instant::now();
    while pgtier_kit::fixture::cl_waiting(&adm).await != 1 {
        assert!(t0.elapsed() < Duration::from_secs(5), "no waiting client");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The pause itself is what is measured: it lasts well over the slow-query threshold.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!held.is_finished(), "a query ran during PAUSE");
    pgtier_kit::fixture::simple_rows(&adm, "RESUME app").await;
    let (app, r) = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("RESUME lets the query run")
        .unwrap();
    r.unwrap();
    only_the_slow_query_is_logged(&px, &app).await;
    let (_, body) = get(mport, "/metrics");
    let m = parse(&body);
    let waited = sum(&m, "pgtier_pool_wait_seconds_sum", &[("database", "app")]);
    assert!(
        waited >= 0.5,
        "pool wait {waited} s does not hold the pause"
    );
}
