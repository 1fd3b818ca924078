//! Rolling restart (issue 21): two pgtier processes share a port (`so_reuseport`); while 16
//! clients run write transactions through it, each process in turn gets SIGTERM, drains, exits
//! and is started again. Clients behave like a pool that checks its connection: a connection
//! pgtier closed between transactions (57P01), a login refused while draining (57P03) or a
//! connect that fails is retried on a new connection, and so is a failed `BEGIN` (it cannot
//! have written anything). Anything that fails after `BEGIN` succeeded is a failed
//! transaction: there must be none, and every committed row must be there.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgtier_kit::fixture::ConfigBuilder;
use pgtier_kit::http::wait_status;
use pgtier_kit::{free_port, Cluster, Pgtier};

const WORKERS: usize = 16;
const LIMIT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Stats {
    committed: AtomicU64,
    failed: AtomicU64,
    /// New connections made after the first (closed by a draining pgtier, or refused).
    reconnects: AtomicU64,
    /// BEGINs that failed and were retried on a new connection.
    begin_retries: AtomicU64,
    /// (when it ended, how long it took) per committed transaction.
    latencies: Mutex<Vec<(Instant, Duration)>>,
    errors: Mutex<Vec<String>>,
}

async fn connect_retrying(dsn: &str, stats: &Stats) -> tokio_postgres::Client {
    let deadline = Instant::now() + LIMIT;
    loop {
        match pgtier_kit::tls::connect(dsn).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "no connection for 30 s: {e}");
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn worker(id: i32, dsn: String, stop: Arc<AtomicBool>, stats: Arc<Stats>) {
    let mut client = connect_retrying(&dsn, &stats).await;
    let mut n = 0i32;
    while !stop.load(Ordering::Relaxed) {
        if client.is_closed() {
            stats.reconnects.fetch_add(1, Ordering::Relaxed);
            client = connect_retrying(&dsn, &stats).await;
        }
        let start = Instant::now();
        if client.batch_execute("BEGIN").await.is_err() {
            // Nothing was written: a pool retries this on a new connection.
            stats.begin_retries.fetch_add(1, Ordering::Relaxed);
            client = connect_retrying(&dsn, &stats).await;
            continue;
        }
        n += 1;
        let body = async {
            client
                .execute(
                    "INSERT INTO rolling (worker, n) VALUES ($1, $2)",
                    &[&id, &n],
                )
                .await?;
            client
                .query_one("SELECT count(*) FROM rolling WHERE worker = $1", &[&id])
                .await?;
            client.batch_execute("COMMIT").await
        };
        match body.await {
            Ok(()) => {
                stats.committed.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                stats.latencies.lock().unwrap().push((now, now - start));
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                stats
                    .errors
                    .lock()
                    .unwrap()
                    .push(format!("worker {id}: {e:?}"));
                client = connect_retrying(&dsn, &stats).await;
            }
        }
    }
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default()
}

/// SIGTERM, wait for a clean exit, start again on the same port, wait for /ready.
fn restart(px: &mut Pgtier, port: u16, mport: u16) -> Pgtier {
    let config = std::fs::read_to_string(px.config_path()).unwrap();
    px.signal(libc::SIGTERM);
    let status = px
        .wait_exit(LIMIT)
        .expect("still running 30 s after SIGTERM");
    assert!(status.success(), "{status}:\n{}", px.log());
    let fresh = Pgtier::start_sharing(port, &config).unwrap();
    let (status, body) = wait_status(mport, "/ready", 200, LIMIT).unwrap();
    assert_eq!(status, 200, "{body}");
    fresh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_each_process_in_turn_fails_no_transaction() {
    let cluster = Cluster::shared();
    pgtier_kit::fixture::ensure_app_db(cluster).unwrap();
    cluster.create_trust_role("pgtier_trust").unwrap();
    cluster
        .ddl(
            "app",
            "CREATE TABLE rolling (worker int, n int); GRANT ALL ON rolling TO pgtier_trust",
        )
        .unwrap();
    let port = free_port().unwrap();
    let mports = [free_port().unwrap(), free_port().unwrap()];
    let configs: Vec<String> = mports
        .iter()
        .map(|m| {
            ConfigBuilder::new(cluster)
                .global("so_reuseport = true")
                .global("shutdown_timeout = \"20s\"")
                .global(&format!("metrics_listen = \"127.0.0.1:{m}\""))
                .user("pgtier_trust", "auth = \"trust\"")
                .database("pool_size = 8")
                .render(port)
        })
        .collect();
    let mut procs: Vec<Pgtier> = configs
        .iter()
        .map(|c| Pgtier::start_sharing(port, c).unwrap())
        .collect();

    let dsn = format!("host=127.0.0.1 port={port} user=pgtier_trust dbname=app connect_timeout=10");
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());
    let tasks: Vec<_> = (0..WORKERS)
        .map(|i| tokio::spawn(worker(i as i32, dsn.clone(), stop.clone(), stats.clone())))
        .collect();

    // Steady state first, then each process restarted in turn (blocking: its own thread).
    let steady = Duration::from_secs(2);
    tokio::time::sleep(steady).await;
    let restart_began = Instant::now();
    let procs = tokio::task::spawn_blocking(move || {
        for (i, m) in mports.iter().enumerate() {
            let fresh = restart(&mut procs[i], port, *m);
            procs[i] = fresh;
        }
        procs
    })
    .await
    .unwrap();
    let restart_ended = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(LIMIT, t).await.unwrap().unwrap();
    }

    let committed = stats.committed.load(Ordering::Relaxed);
    let failed = stats.failed.load(Ordering::Relaxed);
    let errors = stats.errors.lock().unwrap().clone();
    let lat = stats.latencies.lock().unwrap().clone();
    let during: Vec<Duration> = lat
        .iter()
        .filter(|(t, _)| *t >= restart_began && *t <= restart_ended)
        .map(|(_, d)| *d)
        .collect();
    let before: Vec<Duration> = lat
        .iter()
        .filter(|(t, _)| *t < restart_began)
        .map(|(_, d)| *d)
        .collect();
    eprintln!(
        "rolling restart: {committed} committed, {failed} failed, {} reconnects, {} BEGIN retries; \
         restarts took {:?}; p99 steady {:?} ({} tx), p99 during restarts {:?} ({} tx)",
        stats.reconnects.load(Ordering::Relaxed),
        stats.begin_retries.load(Ordering::Relaxed),
        restart_ended - restart_began,
        p99(before.clone()),
        before.len(),
        p99(during.clone()),
        during.len(),
    );
    assert_eq!(failed, 0, "{errors:#?}");
    assert!(
        !during.is_empty(),
        "no transaction committed during the restarts"
    );
    // Every committed transaction's row is there (and nothing else committed).
    let rows: i64 = cluster
        .primary()
        .psql_db("app", "SELECT count(*) FROM rolling")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(rows as u64, committed);
    drop(procs);
}

/// `pgbench -C` (a new connection per transaction) through two processes on one port while
/// each is restarted in turn: no failed transaction, and no aborted client except (with
/// net.ipv4.tcp_migrate_req off) one whose connection the kernel reset as a listener closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_reconnecting_per_transaction_sees_no_failure() {
    let cluster = Cluster::shared();
    pgtier_kit::fixture::ensure_app_db(cluster).unwrap();
    cluster.create_trust_role("pgtier_trust").unwrap();
    cluster
        .ddl("app", "GRANT ALL ON SCHEMA public TO pgtier_trust")
        .unwrap();
    let port = free_port().unwrap();
    let mports = [free_port().unwrap(), free_port().unwrap()];
    let mut procs: Vec<Pgtier> = mports
        .iter()
        .map(|m| {
            let config = ConfigBuilder::new(cluster)
                .global("so_reuseport = true")
                .global("shutdown_timeout = \"20s\"")
                .global(&format!("metrics_listen = \"127.0.0.1:{m}\""))
                .user("pgtier_trust", "auth = \"trust\"")
                .database("pool_size = 8")
                .render(port);
            Pgtier::start_sharing(port, &config).unwrap()
        })
        .collect();
    let pgbench = |args: &[&str]| {
        let mut cmd = std::process::Command::new(pgtier_kit::bin_path("pgbench").unwrap());
        cmd.args(args).args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "pgtier_trust",
            "app",
        ]);
        cmd
    };
    let out = pgbench(&["-i", "-q", "-s", "1"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let run = pgbench(&["-n", "-C", "-c", "4", "-j", "2", "-T", "6"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let procs = tokio::task::spawn_blocking(move || {
        for (i, m) in mports.iter().enumerate() {
            let fresh = restart(&mut procs[i], port, *m);
            procs[i] = fresh;
        }
        procs
    })
    .await
    .unwrap();
    let out = tokio::task::spawn_blocking(move || run.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        text.contains("number of failed transactions: 0 (0.000%)"),
        "{text}"
    );
    // A connection the kernel is still handshaking (or queued after pgtier took the queue)
    // when a listener closes is reset, unless net.ipv4.tcp_migrate_req moves it to another
    // process of the port: with it off, such a reset may abort a pgbench client at connect.
    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .is_ok_and(|v| v.trim() == "1");
    let aborted_at_connect = text.lines().filter(|l| l.contains("aborted")).all(|l| {
        l.contains("aborted while establishing connection") || l.contains("Run was aborted")
    });
    assert!(
        out.status.success() || (!migrate && aborted_at_connect),
        "{text}"
    );
    drop(procs);
}
