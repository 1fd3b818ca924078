//! Pooling against a real cluster: pgbench through small pools, 500 clients on 10 server
//! connections, FIFO fairness, pool maintenance, and dirty or dead server connections.

use std::process::Command;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgtier_kit::fixture::{admin_console, cl_waiting, connect, scram_role, ConfigBuilder};
use pgtier_kit::{wire, Cluster, Pgtier};
use tokio::io::AsyncWriteExt;

fn cluster() -> &'static Cluster {
    let c = Cluster::shared();
    pgtier_kit::fixture::ensure_app_db(c).unwrap();
    c
}

/// Samples Postgres' own count of pgtier's server connections for `user` until stopped;
/// returns the maximum seen.
fn sample_max_connections(user: &'static str) -> (Arc<AtomicI64>, tokio::task::JoinHandle<()>) {
    let max = Arc::new(AtomicI64::new(0));
    let m = max.clone();
    let handle = tokio::spawn(async move {
        let admin = cluster().primary().connect("postgres").await.unwrap();
        loop {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND backend_type = 'client backend'",
                    &[&user],
                )
                .await
                .unwrap()
                .get(0);
            m.fetch_max(n, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (max, handle)
}

async fn count_connections(user: &str) -> i64 {
    let admin = cluster().primary().connect("postgres").await.unwrap();
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND backend_type = 'client backend'",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

fn pgbench(px: &Pgtier, user: &str, pw: &str, args: &[&str]) -> String {
    let out = Command::new(pgtier_kit::bin_path("pgbench").unwrap())
        .args(args)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &px.port().to_string(),
            "-U",
            user,
            "app",
        ])
        .env("PGPASSWORD", pw)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "pgbench {args:?} failed:\n{text}\n--- pgtier log ---\n{}",
        px.log()
    );
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_50_clients_on_a_pool_of_5() {
    scram_role(cluster(), "bench5", "bench5").unwrap();
    let px = ConfigBuilder::new(cluster())
        .user("bench5", "password = \"bench5\"")
        .database("pool_size = 5")
        .start()
        .unwrap();
    // -i uses DDL, COPY FROM STDIN and VACUUM through the proxy.
    pgbench(
        &px,
        "bench5",
        "bench5",
        &["-i", "-q", "-s", "1", "--foreign-keys"],
    );
    let (max, sampler) = sample_max_connections("bench5");
    for mode in ["simple", "extended"] {
        let out = pgbench(
            &px,
            "bench5",
            "bench5",
            &["-n", "-c", "50", "-j", "2", "-T", "4", "-M", mode],
        );
        assert!(
            out.contains("number of failed transactions: 0 (0.000%)"),
            "{out}"
        );
        let processed: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split('/').next()?.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            processed > 100,
            "too few transactions in {mode} mode: {out}"
        );
    }
    sampler.abort();
    let seen = max.load(Ordering::Relaxed);
    assert!(
        (1..=5).contains(&seen),
        "server connections seen: {seen}, pool_size 5"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_clients_share_ten_server_connections() {
    scram_role(cluster(), "many", "many").unwrap();
    // trust towards pgtier keeps 500 client-side SCRAM computations out of the test's time.
    let px = ConfigBuilder::new(cluster())
        .user("many", "auth = \"trust\"\nserver_password = \"many\"")
        .database("pool_size = 10")
        .start()
        .unwrap();
    let (max, sampler) = sample_max_connections("many");
    let mut tasks = Vec::new();
    for i in 0..500 {
        let addr = px.addr();
        tasks.push(tokio::spawn(async move {
            let (mut s, _) = wire::login_trust(&addr, "many", "app").await?;
            for j in 0..3 {
                s.write_all(&wire::query(&format!(
                    "SELECT {i} * 10 + {j}, pg_sleep(0.005)"
                )))
                .await?;
                let msgs = wire::read_until_ready(&mut s, Duration::from_secs(60)).await?;
                let row = msgs
                    .iter()
                    .find(|m| m.tag == b'D')
                    .ok_or_else(|| anyhow::anyhow!("no row: {msgs:?}"))?;
                // DataRow: i16 count, i32 len, value.
                let len = i32::from_be_bytes(row.body[2..6].try_into()?) as usize;
                let v: i64 = std::str::from_utf8(&row.body[6..6 + len])?.parse()?;
                anyhow::ensure!(v == i * 10 + j, "client {i} got {v}");
            }
            anyhow::Ok(())
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            failures.push(e.to_string());
        }
    }
    sampler.abort();
    assert!(
        failures.is_empty(),
        "{} clients failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    let seen = max.load(Ordering::Relaxed);
    assert!(
        (1..=10).contains(&seen),
        "server connections seen: {seen}, pool_size 10"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_clients_are_served_first_come_first_served() {
    scram_role(cluster(), "fair", "fair").unwrap();
    let px = ConfigBuilder::new(cluster())
        .global("admin_users = [\"fair_admin\"]")
        .user("fair", "password = \"fair\"")
        .user("fair_admin", "auth = \"trust\"")
        .database("pool_size = 1")
        .start()
        .unwrap();
    let admin = admin_console(&px, "fair_admin", "unused").await;
    let holder = connect(&px, "fair", "fair").await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    // Three clients queue up, in order, behind the holder's transaction.
    let mut waiters = Vec::new();
    for name in ["b", "c", "d"] {
        let c = connect(&px, "fair", "fair").await.unwrap();
        waiters.push(tokio::spawn(async move {
            let row = c
                .query_typed_one("SELECT clock_timestamp()::text", &[])
                .await;
            drop(c);
            (name, row.map(|r| r.get::<_, String>(0)))
        }));
        // The next one queues only after this one is in the queue (SHOW POOLS counts it).
        let queued = waiters.len() as u32;
        let deadline = Instant::now() + Duration::from_secs(10);
        while cl_waiting(&admin).await < queued {
            assert!(Instant::now() < deadline, "client {name} never queued");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The holder commits and immediately asks again: it must queue behind b, c and d.
    holder.batch_execute("COMMIT").await.unwrap();
    let again: String = holder
        .query_typed_one("SELECT clock_timestamp()::text", &[])
        .await
        .unwrap()
        .get(0);
    let mut order = Vec::new();
    for w in waiters {
        let (name, ts) = w.await.unwrap();
        order.push((ts.unwrap(), name));
    }
    order.push((again, "holder again"));
    order.sort();
    let names: Vec<_> = order.iter().map(|(_, n)| *n).collect();
    assert_eq!(names, ["b", "c", "d", "holder again"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn min_pool_size_is_kept_and_idle_connections_expire() {
    scram_role(cluster(), "minpool", "minpool").unwrap();
    scram_role(cluster(), "idlepool", "idlepool").unwrap();
    let px = ConfigBuilder::new(cluster())
        .global("server_idle_timeout = \"1s\"")
        .user("minpool", "password = \"minpool\"")
        .user("idlepool", "password = \"idlepool\"")
        .database("pool_size = 5\nmin_pool_size = 3")
        .start()
        .unwrap();
    // The pool exists after the first login; the reaper then opens min_pool_size connections
    // and keeps them past server_idle_timeout.
    let c = connect(&px, "minpool", "minpool").await.unwrap();
    c.batch_execute("SELECT 1").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count_connections("minpool").await < 3 {
        assert!(Instant::now() < deadline, "min_pool_size not reached");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(c);

    // min_pool_size belongs to the database section, so idlepool's pool keeps 3 as well: open 5
    // at once and watch the 2 above min_pool_size expire after server_idle_timeout.
    let mut clients = Vec::new();
    for _ in 0..5 {
        let c = connect(&px, "idlepool", "idlepool").await.unwrap();
        c.batch_execute("BEGIN; SELECT pg_sleep(0.3)")
            .await
            .unwrap();
        clients.push(c);
    }
    for c in &clients {
        c.batch_execute("COMMIT").await.unwrap();
    }
    assert_eq!(count_connections("idlepool").await, 5);
    let deadline = Instant::now() + Duration::from_secs(10);
    while count_connections("idlepool").await > 3 {
        assert!(Instant::now() < deadline, "idle connections never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // By now server_idle_timeout has expired connections idle for less time than minpool's,
    // which min_pool_size kept.
    assert_eq!(count_connections("minpool").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_lifetime_replaces_old_connections() {
    scram_role(cluster(), "lifetime", "lifetime").unwrap();
    let px = ConfigBuilder::new(cluster())
        .global("server_lifetime = \"1s\"")
        .user("lifetime", "password = \"lifetime\"")
        .database("pool_size = 1")
        .start()
        .unwrap();
    // The server connection is opened after this (at login or by the first transaction).
    let born = Instant::now();
    let c = connect(&px, "lifetime", "lifetime").await.unwrap();
    let pid = |r: tokio_postgres::Row| r.get::<_, i32>(0);
    let first = pid(c
        .query_typed_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap());
    let again = pid(c
        .query_typed_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap());
    assert_eq!(first, again, "a young connection is reused");
    // Transactions keep coming; the first release after server_lifetime closes the connection,
    // so a later transaction gets a new one: not before 1 s, and not much after.
    let t0 = Instant::now();
    loop {
        let later = pid(c
            .query_typed_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap());
        if later != first {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the connection was never replaced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        born.elapsed() >= Duration::from_secs(1),
        "replaced after {:?}, before server_lifetime",
        born.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_killed_mid_transaction_leaves_no_dirty_server() {
    scram_role(cluster(), "killed", "killed").unwrap();
    let px = ConfigBuilder::new(cluster())
        .user("killed", "password = \"killed\"")
        .database("pool_size = 1")
        .start()
        .unwrap();
    let c = connect(&px, "killed", "killed").await.unwrap();
    c.batch_execute("CREATE TABLE IF NOT EXISTS killed_t (v int); TRUNCATE killed_t")
        .await
        .unwrap();
    c.batch_execute("BEGIN; INSERT INTO killed_t VALUES (1)")
        .await
        .unwrap();
    let victim: i32 = c
        .query_typed_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    drop(c); // closes the socket with the transaction open

    let c = connect(&px, "killed", "killed").await.unwrap();
    let row = c
        .query_typed_one(
            "SELECT pg_backend_pid(), (SELECT count(*) FROM killed_t), pg_current_xact_id_if_assigned() IS NULL",
            &[],
        )
        .await
        .unwrap();
    assert_ne!(
        row.get::<_, i32>(0),
        victim,
        "the dirty connection must not be reused"
    );
    assert_eq!(
        row.get::<_, i64>(1),
        0,
        "the open transaction must not commit"
    );
    assert!(
        row.get::<_, bool>(2),
        "the new client must not be inside the old transaction"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_connection_terminated_while_idle_is_not_handed_out() {
    scram_role(cluster(), "terminated", "terminated").unwrap();
    let px = ConfigBuilder::new(cluster())
        .user("terminated", "password = \"terminated\"")
        .database("pool_size = 1")
        .start()
        .unwrap();
    let c = connect(&px, "terminated", "terminated").await.unwrap();
    let pid: i32 = c
        .query_typed_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let admin = cluster().primary().connect("postgres").await.unwrap();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    // Once the backend has exited (gone from pg_stat_activity), its socket is closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "backend {pid} never exited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let row = c
        .query_typed_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap();
    assert_ne!(row.get::<_, i32>(0), pid);
}

#[test]
fn pools_are_created_once() {
    // Guard against accidental per-client pools: two logins, one server connection.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        scram_role(cluster(), "onepool", "onepool").unwrap();
        let px = ConfigBuilder::new(cluster())
            .user("onepool", "password = \"onepool\"")
            .database("pool_size = 3")
            .start()
            .unwrap();
        for _ in 0..5 {
            let c = connect(&px, "onepool", "onepool").await.unwrap();
            c.batch_execute("SELECT 1").await.unwrap();
        }
        assert_eq!(count_connections("onepool").await, 1);
    });
}
