//! The bundled app's load generator through two pgtier processes on one port (`so_reuseport`)
//! while each is restarted in turn (issue 21): the goal is no failed HTTP request and no stale
//! read, with p99 during the restarts next to the steady state.
//!
//! What makes it 0: a draining pgtier closes idle clients with FATAL 57P01, and a close still
//! on its way when the app sends a request's first statement fails that statement unrun (4-7
//! HTTP 503 per run before). The app's pool runs such work again on another connection when it
//! cannot have written (`db_run!`: reads, or a write transaction whose BEGIN failed) and counts
//! it in `app_db_retries_total`, printed here. Numbers: `cargo nextest run -p pgtier-kit --test
//! rolling_restart_app --no-capture`.

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
    let retries = retries(&app).await;
    eprintln!(
        "rolling restart (app): p99 steady {:?}, p99 with restarts {:?}; requests {}, errors {}, \
         stale {}, database work repeated {retries}",
        steady.p99, during.p99, during.requests, during.errors, during.stale_reads
    );
    assert_eq!(during.stale_reads, 0, "{during}");
    assert_eq!(during.errors, 0, "{during}");
    app.shutdown().await.unwrap();
    drop(procs);
}

/// The app's `app_db_retries_total`.
async fn retries(app: &pgtier_app::AppHandle) -> u64 {
    let r = Http::new(&app.url()).get("/metrics").await.unwrap();
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix("app_db_retries_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no app_db_retries_total in {}", r.text()))
}
