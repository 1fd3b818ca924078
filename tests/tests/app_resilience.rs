//! The bundled app through trouble and load: read-your-writes with a paused replica, concurrent
//! starts migrating once, /health through a database outage, a causal token lost with its
//! connection, and load-generator runs.

mod app_support;

use app_support::*;

/// Resumes a replica's replay when the test ends, even on panic.
struct Resume<'a>(&'a pgtier_kit::Node);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let _ = self.0.resume_replay();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_read_200_times_with_a_paused_replica() {
    // Writes go through one app server and reads through another, as behind a load balancer:
    // the reader's pgtier connections saw none of the writes, so only the X-Causal-Lsn token
    // the client carries keeps its reads off a replica that has not replayed them.
    let (_app, h) = start_app().await;
    let (_reader, reader) = start_app().await;
    let c = cluster();
    tokio::task::block_in_place(|| c.replica(0).pause_replay()).unwrap();
    let _resume = Resume(c.replica(0));
    let subj = new_subject(&h).await;
    let mut tokens = 0;
    for i in 0..200 {
        // Alternate resources so both single-statement and multi-statement writes are read back.
        let (create, read) = if i % 2 == 0 {
            let body = json!({ "name": format!("S{i}"), "email": format!("{}@example.com", unique("ryw")) });
            (h.post("/students", &body).await.unwrap(), "/students")
        } else {
            let body =
                json!({ "name": format!("T{i}"), "hourly_rate_cents": i, "subject_ids": [subj] });
            (h.post("/tutors", &body).await.unwrap(), "/tutors")
        };
        let id = expect(&create, 201, "create")["id"].as_i64().unwrap();
        let lsn = create.header("x-causal-lsn").map(str::to_owned);
        if let Some(l) = &lsn {
            assert!(lsn_ok(l), "{l}");
            tokens += 1;
        }
        let r = reader
            .send(Method::GET, &format!("{read}/{id}"), None, lsn.as_deref())
            .await
            .unwrap();
        assert_eq!(
            r.status,
            200,
            "read {i} of {read}/{id} after creating it: {}",
            r.text()
        );
        assert_eq!(r.json()["id"], id);
    }
    // Either pgtier gave a token on every write or (before it supports tokens) on none.
    assert!(
        tokens == 0 || tokens == 200,
        "{tokens} of 200 writes had a causal token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_migrate_once() {
    let px = tokio::task::block_in_place(shared_pgtier);
    let starts: Vec<_> = (0..4)
        .map(|_| tokio::spawn(pgtier_app::serve(app_config(px, USER))))
        .collect();
    let mut apps = Vec::new();
    for s in starts {
        apps.push(s.await.unwrap().unwrap());
    }
    let rows = tokio::task::block_in_place(|| {
        cluster().primary().psql_db(
            "app",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations",
        )
    })
    .unwrap();
    assert_eq!(rows, "1");
    for a in apps {
        let r = Http::new(&a.url()).get("/health").await.unwrap();
        assert_eq!(r.status, 200);
        a.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_while_the_database_is_down_and_recovers() {
    let c = tokio::task::block_in_place(|| {
        let c = Cluster::start(1).unwrap();
        c.create_role_and_db("app", "app", "app").unwrap();
        c
    });
    let px = tokio::task::block_in_place(|| pgtier_for(&c, "app"));
    let app = pgtier_app::serve(app_config(&px, "app")).await.unwrap();
    let h = Http::new(&app.url());
    expect(&h.get("/health").await.unwrap(), 200, "health up");
    let sid = new_subject(&h).await;

    tokio::task::block_in_place(|| {
        // The kit runs Postgres with synchronous_commit = off: without a checkpoint an
        // immediate stop may lose the migrations and the subject committed just before.
        c.primary().psql("CHECKPOINT").unwrap();
        c.replica(0).stop_immediate().unwrap();
        c.primary().stop_immediate().unwrap();
    });
    let until = |want: u16, limit: Duration| {
        let h = h.clone();
        async move {
            let deadline = Instant::now() + limit;
            loop {
                let r = h.get("/health").await.unwrap();
                if r.status == want {
                    return r;
                }
                assert!(
                    Instant::now() < deadline,
                    "/health still {} after {limit:?}: {}",
                    r.status,
                    r.text()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let r = until(503, Duration::from_secs(15)).await;
    assert_eq!(r.json()["status"], "unavailable");
    // An API call fails as a JSON 5xx with the request id in body and header.
    let t = Instant::now();
    let r = h.get(&format!("/subjects/{sid}")).await.unwrap();
    let body = r.json();
    assert!(
        r.status == 503 || r.status == 500,
        "{} {}",
        r.status,
        r.text()
    );
    assert!(body["error"].is_string(), "{body}");
    assert_eq!(
        body["request_id"].as_str(),
        r.header("x-request-id"),
        "{body}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );

    tokio::task::block_in_place(|| {
        c.primary().start().unwrap();
        c.replica(0).start().unwrap();
    });
    until(200, Duration::from_secs(30)).await;
    // A pooled connection whose pgtier session broke during the outage fails once (a JSON
    // 5xx) and is then replaced; no more failures than pooled connections.
    let mut failures = Vec::new();
    loop {
        let r = h.get(&format!("/subjects/{sid}")).await.unwrap();
        if r.status == 200 {
            break;
        }
        assert!(
            r.status >= 500 && r.json()["error"].is_string(),
            "{}",
            r.text()
        );
        failures.push(r.text());
        assert!(
            failures.len() <= 8,
            "reads keep failing after recovery: {failures:?}"
        );
    }
    app.shutdown().await.unwrap();
    drop(px);
}

/// `X/Y` (hex) as a number.
fn lsn(s: &str) -> u64 {
    let (hi, lo) = s
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("LSN {s:?}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// A connection closed between a write's COMMIT and `SHOW pgtier.causal_lsn` (as a draining
/// pgtier closes a client right after its transaction) takes the token with it: the app asks
/// the primary's WAL position instead, at or past the commit, on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_lost_with_its_connection_comes_from_the_primary() {
    let c = cluster();
    let px = ConfigBuilder::new(c)
        .global("admin_users = [\"admin\"]")
        .user("admin", "password = \"admin-pw\"")
        .user(USER, &format!("password = \"{USER}\""))
        .start()
        .unwrap();
    let db = pgtier_app::db::Db::new(&app_config(&px, USER)).unwrap();
    db.migrate(Duration::from_secs(30)).await.unwrap();
    let mut conn = db.conn().await.unwrap();
    let (tx, _) = conn.begin(Duration::from_secs(5)).await.unwrap();
    tx.execute(
        "INSERT INTO subjects (name) VALUES ($1)",
        &[&unique("lost-token")],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let committed = c.primary().psql("SELECT pg_current_wal_lsn()").unwrap();
    // pgtier closes the client (57P01) before the app asks for its token.
    let adm = pgtier_kit::fixture::admin_console(&px, "admin", "admin-pw").await;
    pgtier_kit::fixture::simple_rows(&adm, "KILL app").await;
    pgtier_kit::fixture::simple_rows(&adm, "RESUME app").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !conn.client.is_closed() {
        assert!(Instant::now() < deadline, "the connection was not closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let token = db.causal_token(&mut conn).await.expect("a token");
    assert!(
        lsn(&token) >= lsn(&committed),
        "token {token} before the commit at {committed}"
    );
    // The pooled connection was replaced by the live one.
    conn.client.simple_query("SELECT 1").await.unwrap();
}

/// A connection attempt that fails (here reset at once, as by a listener closing for a
/// restart) is made again by the pool while the request waits: the request is served once
/// pgtier listens, instead of failing when the database timeout runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_made_again_while_the_request_waits() {
    let c = cluster();
    let port = pgtier_kit::free_port().unwrap();
    // Stands in for a closing listener: takes the app's first connection and closes it.
    let stand_in = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let (conn, _) = stand_in.accept().unwrap();
        drop(conn);
    });
    let mut cfg = Config::new(format!(
        "postgres://{USER}:{USER}@127.0.0.1:{port}/app?connect_timeout=5"
    ));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.pool_size = 1;
    cfg.db_timeout = Duration::from_secs(10);
    cfg.health_timeout = Duration::from_secs(10);
    cfg.migrate = false;
    let app = pgtier_app::serve(cfg).await.unwrap();
    let h = Http::new(&app.url());
    let request = tokio::spawn(async move { h.get("/health").await.unwrap() });
    tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the app tried to connect")
        .unwrap();
    let config = ConfigBuilder::new(c)
        .user(USER, &format!("password = \"{USER}\""))
        .render(port);
    let px = Pgtier::start(port, &config).unwrap();
    let r = request.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    app.shutdown().await.unwrap();
    drop(px);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_short_run_has_no_errors() {
    let (app, _h) = start_app().await;
    let c = cluster();
    let mut opts = pgtier_app::loadgen::Options::new(&app.url());
    opts.users = 8;
    opts.duration = Duration::from_secs(3);
    opts.tutors = 10;
    opts.students = 20;
    opts.quiet = true;
    opts.node_dsn = node_dsns(c);
    let s = pgtier_app::loadgen::run(&opts).await.unwrap();
    eprintln!("{s}");
    assert_eq!(s.errors, 0, "{s}");
    assert_eq!(s.stale_reads, 0, "{s}");
    assert!(s.requests > 100, "{s}");
    assert!(s.replica_share.is_some(), "{s}");
    for op in &s.ops {
        assert!(op.count > 0, "{} never ran: {s}", op.name);
    }
}

/// The numbers for the README: `cargo test -p pgtier-kit --release --test app_resilience -- --ignored
/// --nocapture loadgen_report` (LOADGEN_USERS, LOADGEN_RATE, LOADGEN_SECS).
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn loadgen_report() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let (app, _h) = start_app().await;
    let c = cluster();
    let mut opts = pgtier_app::loadgen::Options::new(&app.url());
    opts.users = env("LOADGEN_USERS", "50").parse().unwrap();
    opts.rate = Some(env("LOADGEN_RATE", "500").parse().unwrap());
    opts.duration = Duration::from_secs(env("LOADGEN_SECS", "30").parse().unwrap());
    opts.node_dsn = node_dsns(c);
    let s = pgtier_app::loadgen::run(&opts).await.unwrap();
    println!("{s}");
}
