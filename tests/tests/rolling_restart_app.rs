//! The bundled app's load generator through two pgtier processes on one port (`so_reuseport`)
//! while each is restarted in turn (issue 21): the goal is no failed HTTP request and no stale
//! read, with p99 during the restarts next to the steady state.
//!
//! Ignored (not yet green): 0 stale reads, but 3-5 requests in ~1,800 still get HTTP 503. Each
//! is a FATAL 57P01 on a pooled connection that pgtier closed at the instant draining began,
//! while the app was already sending its first statement on it (the statement never ran, so a
//! retry would be safe; the app retries no request). Without the app's checkout checks
//! (`Db::conn`) it was 11. Run: `cargo nextest run -p pgtier-kit --test rolling_restart_app
//! --run-ignored all --no-capture`.

mod app_support;

use app_support::*;

/// pgtier for the app's role, sharing `port`, its HTTP endpoint on `mport`.
fn config(c: &Cluster, port: u16, mport: u16) -> String {
    let replicas: Vec<String> = c
        .replicas()
        .iter()
        .map(|r| format!("\"{}\"", r.addr()))
        .collect();
    ConfigBuilder::new(c)
        .global("so_reuseport = true")
        .global("shutdown_timeout = \"20s\"")
        .global(&format!("metrics_listen = \"127.0.0.1:{mport}\""))
        .user(USER, &format!("password = \"{USER}\""))
        .database(&format!("replicas = [{}]", replicas.join(", ")))
        .database("pool_size = 10")
        .render(port)
}

fn run_load(url: &str, c: &Cluster, secs: u64) -> pgtier_app::loadgen::Options {
    let mut opts = pgtier_app::loadgen::Options::new(url);
    opts.users = 8;
    opts.duration = Duration::from_secs(secs);
    opts.tutors = 10;
    opts.students = 20;
    opts.quiet = true;
    opts.node_dsn = node_dsns(c);
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "3-5 HTTP 503 per run remain (57P01 race at the start of draining): see the module doc"]
async fn app_load_through_a_rolling_restart_has_no_errors() {
    let c = cluster();
    let port = pgtier_kit::free_port().unwrap();
    let mports = [
        pgtier_kit::free_port().unwrap(),
        pgtier_kit::free_port().unwrap(),
    ];
    let mut procs: Vec<Pgtier> = mports
        .iter()
        .map(|m| Pgtier::start_sharing(port, &config(c, port, *m)).unwrap())
        .collect();
    let app = pgtier_app::serve(app_config(&procs[0], USER))
        .await
        .unwrap();

    // Steady state.
    let steady = pgtier_app::loadgen::run(&run_load(&app.url(), c, 3))
        .await
        .unwrap();
    eprintln!("steady: {steady}");
    assert_eq!(steady.errors, 0, "{steady}");

    // The same load while each process is restarted in turn.
    let load = tokio::spawn({
        let opts = run_load(&app.url(), c, 6);
        async move { pgtier_app::loadgen::run(&opts).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let procs = tokio::task::spawn_blocking(move || {
        for (i, m) in mports.iter().enumerate() {
            let cfg = std::fs::read_to_string(procs[i].config_path()).unwrap();
            procs[i].signal(libc::SIGTERM);
            let status = procs[i]
                .wait_exit(Duration::from_secs(30))
                .expect("still running");
            assert!(status.success(), "{status}");
            procs[i] = Pgtier::start_sharing(port, &cfg).unwrap();
            let (status, body) =
                pgtier_kit::http::wait_status(*m, "/ready", 200, Duration::from_secs(30)).unwrap();
            assert_eq!(status, 200, "{body}");
        }
        procs
    })
    .await
    .unwrap();
    let during = load.await.unwrap();
    eprintln!("during the restarts: {during}");
    eprintln!(
        "rolling restart (app): p99 steady {:?}, p99 with restarts {:?}; errors {}; stale {}",
        steady.p99, during.p99, during.errors, during.stale_reads
    );
    assert_eq!(during.stale_reads, 0, "{during}");
    assert_eq!(during.errors, 0, "{during}");
    app.shutdown().await.unwrap();
    drop(procs);
}
