//! The local demo, nothing to configure: a primary + 2 streaming replicas (the test kit),
//! pgtier in front of them (transaction mode, reads routed to the replicas, Prometheus metrics
//! on a free port, an admin console user), the bundled app (`pgtier_app::serve`, in-process,
//! through pgtier) and a short load run against it. Prints where everything listens and the
//! load summary (with the share of reads pgtier served from replicas, from its metrics), then
//! runs until Ctrl-C or --duration.
//!
//! `cargo run --release -p pgtier-kit --bin pgtier-local -- [--port 6432] [--duration 60s]
//! [--no-load] [--load-secs 10]`

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgtier_app::loadgen;
use pgtier_kit::{free_port, pgtier_bin, Cluster, Pgtier, SUPERUSER, SUPERUSER_PASSWORD};
use tokio::sync::watch;
use tokio::time::Instant;

const USAGE: &str =
    "usage: pgtier-local [--port 6432] [--duration 60s] [--no-load] [--load-secs 10]
  --port N        pgtier's port (default 6432 if free, else a free one)
  --duration D    stop D (e.g. 90, 90s, 2m) after everything is up, load run included
                  (default: Ctrl-C)
  --no-load       skip the load run
  --load-secs N   length of the load run (default 10; 20 users at 300 req/s)";

struct Args {
    port: Option<u16>,
    duration: Option<Duration>,
    no_load: bool,
    load_secs: u64,
}

fn parse_args() -> Result<Args> {
    let mut out = Args {
        port: None,
        duration: None,
        no_load: false,
        load_secs: 10,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--no-load" => {
                out.no_load = true;
                continue;
            }
            _ => {}
        }
        let value = args.next();
        match (a.as_str(), value) {
            ("--port", Some(v)) => out.port = Some(v.parse().context("--port takes a number")?),
            ("--duration", Some(v)) => {
                out.duration = Some(
                    loadgen::parse_duration(&v).map_err(|e| anyhow::anyhow!("--duration: {e}"))?,
                )
            }
            ("--load-secs", Some(v)) => {
                out.load_secs = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .context("--load-secs takes a positive number of seconds")?
            }
            _ => bail!("{USAGE}"),
        }
    }
    Ok(out)
}

/// `cargo run -p pgtier-kit` builds only pgtier's library: build its binary on first use.
fn ensure_pgtier_built() -> Result<()> {
    if pgtier_bin().is_ok() {
        return Ok(());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        "pgtier",
        "--bin",
        "pgtier",
        "--manifest-path",
    ])
    .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"));
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    eprintln!("the pgtier binary is not built yet; running {cmd:?}");
    let status = cmd.status().context("running cargo to build pgtier")?;
    if !status.success() {
        bail!("building pgtier failed ({status})");
    }
    pgtier_bin().map(drop)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    ensure_pgtier_built()?;
    let port = match args.port {
        Some(p) => p,
        None if std::net::TcpListener::bind("127.0.0.1:6432").is_ok() => 6432,
        None => free_port()?,
    };
    let metrics_port = free_port()?;
    eprintln!("starting a primary and 2 streaming replicas...");
    let cluster = Cluster::start(2)?;
    cluster.create_role_and_db("app", "app", "app")?;
    let replicas: Vec<String> = cluster
        .replicas()
        .iter()
        .map(|r| format!("\"{}\"", r.addr()))
        .collect();
    // "admin" is a console-only user (no database role): the lag monitors log in as app.
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\npool_mode = \"transaction\"\n\
         metrics_listen = \"127.0.0.1:{metrics_port}\"\n\
         admin_users = [\"admin\"]\nmonitor_user = \"app\"\n\
         [users.app]\npassword = \"app\"\n\
         [users.admin]\npassword = \"admin\"\n\
         [databases.app]\nprimary = \"{}\"\nreplicas = [{}]\npool_size = 20\n",
        cluster.primary().addr(),
        replicas.join(", ")
    );
    eprintln!("starting pgtier on 127.0.0.1:{port}...");
    let mut pgtier = Pgtier::start(port, &config)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let result = rt.block_on(demo(&args, &cluster, &pgtier, &metrics_url));
    // Anything still running on the runtime (there should be nothing) is cancelled here.
    rt.shutdown_timeout(Duration::from_secs(5));

    eprintln!("stopping pgtier and the cluster...");
    pgtier.signal(libc::SIGTERM);
    if pgtier.wait_exit(Duration::from_secs(10)).is_none() {
        eprintln!("pgtier did not exit in 10 s; killing it");
    }
    drop(pgtier);
    drop(cluster);
    eprintln!("done.");
    result
}

/// Starts the app, prints the addresses, runs the load and waits for the stop; always stops
/// the app before returning.
async fn demo(args: &Args, cluster: &Cluster, pgtier: &Pgtier, metrics_url: &str) -> Result<()> {
    let mut stop = watch_signals()?;
    let database_url = format!("postgres://app:app@{}/app", pgtier.addr());
    eprintln!("starting the app (migrations run through pgtier)...");
    let app = tokio::select! {
        app = start_app(&database_url) => app?,
        _ = stop.wait_for(|s| *s) => return Ok(()),
    };
    let url = app.url();
    let deadline = args.duration.map(|d| Instant::now() + d);
    print_addresses(cluster, pgtier, &database_url, &url, metrics_url);

    let mut stopped = false;
    if !args.no_load {
        println!(
            "\nload run: {} s, 20 users, 300 req/s target, through the app and pgtier...",
            args.load_secs
        );
        let opts = load_options(&url, cluster, metrics_url, args.load_secs);
        tokio::select! {
            r = loadgen::run(&opts) => match r {
                Ok(s) => println!("\nload summary:\n{s}"),
                Err(e) => eprintln!("the load run failed: {e:#}"),
            },
            _ = until(&mut stop, deadline) => stopped = true,
        }
    }
    if !stopped {
        println!("app: {url}   pgtier: psql \"{database_url}\"   pgtier metrics: {metrics_url}");
        match deadline {
            Some(d) => println!(
                "stopping in {} s (or Ctrl-C).",
                d.saturating_duration_since(Instant::now()).as_secs()
            ),
            None => println!("Ctrl-C stops everything."),
        }
        until(&mut stop, deadline).await;
    }
    eprintln!("stopping the app...");
    match tokio::time::timeout(Duration::from_secs(10), app.shutdown()).await {
        Ok(r) => r.context("stopping the app"),
        Err(_) => {
            eprintln!("the app did not stop in 10 s; cancelling it");
            Ok(())
        }
    }
}

/// Becomes true on SIGINT (Ctrl-C) or SIGTERM; registered once, so no signal is missed
/// between stages.
fn watch_signals() -> Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// Waits for a signal or the deadline.
async fn until(stop: &mut watch::Receiver<bool>, deadline: Option<Instant>) {
    let timer = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = timer => {}
    }
}

/// The app on 127.0.0.1:8080 if that is free, else on a free port.
async fn start_app(database_url: &str) -> Result<pgtier_app::AppHandle> {
    let mut config = pgtier_app::Config::new(format!("{database_url}?connect_timeout=5"));
    if std::net::TcpListener::bind(config.listen).is_err() {
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    }
    match pgtier_app::serve(config.clone()).await {
        Ok(app) => Ok(app),
        // 8080 was taken between the check and the bind.
        Err(_) if config.listen.port() != 0 => {
            config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            pgtier_app::serve(config).await.context("starting the app")
        }
        Err(e) => Err(e.context("starting the app")),
    }
}

/// 20 users at 300 req/s for `secs`; pgtier's metrics give the replica share of reads, every
/// node's DSN the secondary share of all transactions.
fn load_options(url: &str, cluster: &Cluster, metrics_url: &str, secs: u64) -> loadgen::Options {
    let mut opts = loadgen::Options::new(url);
    opts.users = 20;
    opts.rate = Some(300.0);
    opts.duration = Duration::from_secs(secs);
    opts.tutors = 40;
    opts.students = 80;
    opts.pgtier_metrics = Some(metrics_url.to_owned());
    opts.pgtier_database = Some("app".to_owned());
    opts.node_dsn = std::iter::once(cluster.primary())
        .chain(cluster.replicas())
        .map(|n| {
            format!(
                "host=127.0.0.1 port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} \
                 dbname=app connect_timeout=5",
                n.port()
            )
        })
        .collect();
    opts
}

fn print_addresses(
    cluster: &Cluster,
    pgtier: &Pgtier,
    database_url: &str,
    url: &str,
    metrics_url: &str,
) {
    let n = cluster.replicas().len();
    println!();
    println!("pgtier-local is up.");
    println!("  pgtier:     psql \"{database_url}\"   (transaction mode, reads on {n} replicas)");
    println!("  pgtier metrics: {metrics_url}   (Prometheus: routing, pools, replica lag)");
    println!(
        "  admin:      psql \"postgres://admin:admin@{}/pgtier\" -c 'SHOW POOLS'",
        pgtier.addr()
    );
    println!("  app:        {url}   (pgtier-app in-process, DATABASE_URL={database_url})");
    println!("                curl -s {url}/health");
    println!("                curl -s '{url}/tutors?limit=3'");
    println!(
        "                curl -s -X POST {url}/subjects -H 'content-type: application/json' \
         -d '{{\"name\":\"Chess\"}}'"
    );
    println!("  app metrics: {url}/metrics");
    println!(
        "  primary:    {}   (direct, superuser {SUPERUSER}/{SUPERUSER_PASSWORD})",
        cluster.primary().addr()
    );
    for r in cluster.replicas() {
        println!(
            "  {:<10}  {}   (streaming replica, direct)",
            format!("{}:", r.name()),
            r.addr()
        );
    }
    println!("  config:     {}", pgtier.config_path().display());
    println!("  pgtier log: {}", pgtier.log_path().display());
    println!(
        "  data:       {}   (node logs: {})",
        cluster.dir().display(),
        cluster.primary().log_path().display()
    );
}
