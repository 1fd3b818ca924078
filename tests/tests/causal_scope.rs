//! Causal scopes (issue 18): read-your-writes across pooled connections with no token carried by
//! the application. A cluster of its own with its replica's replay paused (and lag limits off,
//! so that the replica stays in the read rotation): a read that reaches it after a write is
//! stale, which the `connection` scope shows and the shared scopes never allow.

mod app_support;

use app_support::*;
use pgtier_kit::fixture::simple_rows;

/// The test's own cluster (its replica gets paused) with the app's role and database.
fn own_cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        let c = Cluster::start(1).unwrap();
        scram_role(&c, USER, USER).unwrap();
        c
    })
}

/// pgtier with `scope` over the test's cluster; the paused replica stays in rotation.
fn pgtier_with(c: &Cluster, scope: &str) -> Pgtier {
    ConfigBuilder::new(c)
        .global(&format!("causal_scope = \"{scope}\""))
        .global("lag_check_interval = \"50ms\"")
        .global("max_replica_lag = 0")
        .global("max_replica_lag_bytes = 0")
        .global("admin_users = [\"scope_admin\"]")
        .user("scope_admin", "password = \"admin-pw\"")
        .user(USER, &format!("password = \"{USER}\""))
        .with_replicas(c)
        .database("pool_size = 10")
        .start()
        .unwrap()
}

/// The tests pause the same replica: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Resumes the replica's replay when the test ends, even on panic.
struct Resume<'a>(&'a pgtier_kit::Node);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let _ = self.0.resume_replay();
    }
}

/// Two app servers (one writes, the other reads, as behind a load balancer) with their
/// causal-token plumbing off: pgtier alone decides what the reads see.
async fn writer_and_reader(px: &Pgtier) -> ((AppHandle, Http), (AppHandle, Http)) {
    let mut apps = Vec::new();
    for _ in 0..2 {
        let mut cfg = app_config(px, USER);
        cfg.causal_tokens = false;
        let app = pgtier_app::serve(cfg).await.unwrap();
        let http = Http::new(&app.url());
        apps.push((app, http));
    }
    let reader = apps.pop().unwrap();
    (apps.pop().unwrap(), reader)
}

/// Creates a student through `w` and reads it back through `r` `n` times; returns how many
/// reads did not find it (stale) and whether any write response carried a token.
async fn create_then_read(w: &Http, r: &Http, n: usize) -> (usize, bool) {
    let mut stale = 0;
    let mut token = false;
    for i in 0..n {
        let body =
            json!({ "name": format!("S{i}"), "email": format!("{}@example.com", unique("scope")) });
        let create = w.post("/students", &body).await.unwrap();
        let id = expect(&create, 201, "create")["id"].as_i64().unwrap();
        token |= create.header("x-causal-lsn").is_some();
        let read = r
            .send(Method::GET, &format!("/students/{id}"), None, None)
            .await
            .unwrap();
        match read.status {
            200 => assert_eq!(read.json()["id"], id),
            404 => stale += 1,
            s => panic!("read {i}: status {s}: {}", read.text()),
        }
    }
    (stale, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_keep_reads_on_other_connections_fresh_and_connection_scope_does_not() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = tokio::task::block_in_place(own_cluster);
    let user_px = tokio::task::block_in_place(|| pgtier_with(c, "user"));
    let conn_px = tokio::task::block_in_place(|| pgtier_with(c, "connection"));
    // Migrate and warm both pgtiers before the replica pauses (the app creates its schema).
    let (w, r) = writer_and_reader(&user_px).await;
    let (cw, cr) = writer_and_reader(&conn_px).await;
    tokio::task::block_in_place(|| c.wait_replicas_caught_up()).unwrap();
    pgtier_kit::fixture::replica_in_rotation(&user_px, USER, USER)
        .await
        .unwrap();
    pgtier_kit::fixture::replica_in_rotation(&conn_px, USER, USER)
        .await
        .unwrap();
    tokio::task::block_in_place(|| c.replica(0).pause_replay()).unwrap();
    let _resume = Resume(c.replica(0));

    // connection scope: the reader's connections saw none of the writes, and read stale.
    let (stale, token) = create_then_read(&cw.1, &cr.1, 20).await;
    assert!(!token, "the app carried a token with its plumbing off");
    assert!(
        stale > 0,
        "connection scope read no stale row: the test cannot tell"
    );

    // user scope: 1,000 create-then-read pairs on different pooled connections, none stale.
    let (stale, _) = create_then_read(&w.1, &r.1, 1000).await;
    assert_eq!(stale, 0, "stale reads under causal_scope = \"user\"");

    let c1 = pgtier_kit::fixture::connect(&user_px, USER, USER)
        .await
        .unwrap();
    let rows = simple_rows(&c1, "SELECT pg_is_in_recovery()").await;
    // The user's token is past the paused replica: this read goes to the primary.
    assert_eq!(rows[0].get(0), Some("f"));
    let admin = pgtier_kit::fixture::admin_console(&user_px, "scope_admin", "admin-pw").await;
    let causal = simple_rows(&admin, "SHOW CAUSAL").await;
    let row = causal
        .iter()
        .find(|r| r.get(1) == Some("user") && r.get(2) == Some(USER))
        .expect("the user's token in SHOW CAUSAL");
    assert!(lsn_ok(row.get(3).unwrap()));
    drop((w, r, cw, cr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_writes_do_not_hold_back_reads_and_the_database_scope_does() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let c = tokio::task::block_in_place(own_cluster);
    scram_role(c, "scope_other", "other-pw").unwrap();
    for (scope, want_primary) in [("user", false), ("database", true)] {
        let px = tokio::task::block_in_place(|| {
            ConfigBuilder::new(c)
                .global(&format!("causal_scope = \"{scope}\""))
                .global("lag_check_interval = \"50ms\"")
                .global("max_replica_lag = 0")
                .global("max_replica_lag_bytes = 0")
                .user(USER, &format!("password = \"{USER}\""))
                .user("scope_other", "password = \"other-pw\"")
                .with_replicas(c)
                .start()
                .unwrap()
        });
        let writer = pgtier_kit::fixture::connect(&px, USER, USER).await.unwrap();
        writer
            .batch_execute("CREATE TABLE IF NOT EXISTS scope_t (v int); GRANT SELECT ON scope_t TO scope_other")
            .await
            .unwrap();
        let reader = pgtier_kit::fixture::connect(&px, "scope_other", "other-pw")
            .await
            .unwrap();
        tokio::task::block_in_place(|| c.wait_replicas_caught_up()).unwrap();
        pgtier_kit::fixture::replica_in_rotation(&px, "scope_other", "other-pw")
            .await
            .unwrap();
        tokio::task::block_in_place(|| c.replica(0).pause_replay()).unwrap();
        let resume = Resume(c.replica(0));
        writer
            .batch_execute("INSERT INTO scope_t VALUES (1)")
            .await
            .unwrap();
        let rows = simple_rows(&reader, "SELECT pg_is_in_recovery()").await;
        assert_eq!(
            rows[0].get(0) == Some("f"),
            want_primary,
            "{scope} scope: another user's read after a write"
        );
        drop(resume);
    }
}

/// Runs tests/python/causal_scope.py against `px`; returns the stale counts (psycopg, asyncpg).
fn python_stale(px: &Pgtier, table: &str, n: usize) -> (usize, usize) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/causal_scope.py");
    let out = std::process::Command::new("timeout")
        .args(["-s", "KILL", "120", "python3"])
        .arg(&script)
        .args([
            "127.0.0.1",
            &px.port().to_string(),
            USER,
            USER,
            "app",
            table,
        ])
        .arg(n.to_string())
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "causal_scope.py failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count = |driver: &str| -> usize {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(driver))
            .unwrap_or_else(|| panic!("no {driver} line in {stdout}"));
        line.rsplit('=').next().unwrap().parse().unwrap()
    };
    (count("psycopg"), count("asyncpg"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_and_asyncpg_pools_read_their_writes_on_other_connections_under_the_user_scope() {
    let _turn = ONE_AT_A_TIME.lock().await;
    const TABLE: &str = "scope_py";
    let c = tokio::task::block_in_place(own_cluster);
    let user_px = tokio::task::block_in_place(|| pgtier_with(c, "user"));
    let conn_px = tokio::task::block_in_place(|| pgtier_with(c, "connection"));
    let setup = pgtier_kit::fixture::connect(&user_px, USER, USER)
        .await
        .unwrap();
    setup
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id serial PRIMARY KEY, v int)"
        ))
        .await
        .unwrap();
    tokio::task::block_in_place(|| c.wait_replicas_caught_up()).unwrap();
    for px in [&user_px, &conn_px] {
        pgtier_kit::fixture::replica_in_rotation(px, USER, USER)
            .await
            .unwrap();
    }
    tokio::task::block_in_place(|| c.replica(0).pause_replay()).unwrap();
    let _resume = Resume(c.replica(0));
    let (p, a) = tokio::task::block_in_place(|| python_stale(&conn_px, TABLE, 10));
    assert!(p > 0 && a > 0, "connection scope: no stale read ({p}, {a})");
    let (p, a) = tokio::task::block_in_place(|| python_stale(&user_px, TABLE, 200));
    assert_eq!((p, a), (0, 0), "user scope: stale reads (psycopg, asyncpg)");
}
