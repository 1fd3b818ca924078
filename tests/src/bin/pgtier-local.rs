//! The local demo: a primary + 2 streaming replicas (the test kit), pgtier in front of them,
//! nothing to configure. Prints where everything listens and runs until Ctrl-C or --duration.
//!
//! `cargo run --release -p pgtier-kit --bin pgtier-local -- [--port 6432] [--duration SECS]`

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgtier_kit::{free_port, pgtier_bin, Cluster, Pgtier};

const USAGE: &str = "usage: pgtier-local [--port 6432] [--duration SECS]";

fn parse_args() -> Result<(Option<u16>, Option<u64>)> {
    let (mut port, mut duration) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "-h" || a == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args.next();
        match (a.as_str(), value) {
            ("--port", Some(v)) => port = Some(v.parse().context("--port takes a number")?),
            ("--duration", Some(v)) => {
                duration = Some(v.parse().context("--duration takes seconds")?)
            }
            _ => bail!("{USAGE}"),
        }
    }
    Ok((port, duration))
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
    let (port, duration) = parse_args()?;
    ensure_pgtier_built()?;
    let port = match port {
        Some(p) => p,
        None if std::net::TcpListener::bind("127.0.0.1:6432").is_ok() => 6432,
        None => free_port()?,
    };
    eprintln!("starting a primary and 2 streaming replicas...");
    let cluster = Cluster::start(2)?;
    cluster.create_role_and_db("app", "app", "app")?;
    let replicas: Vec<String> = cluster
        .replicas()
        .iter()
        .map(|r| format!("\"{}\"", r.addr()))
        .collect();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\npool_mode = \"transaction\"\n\
         [users.app]\npassword = \"app\"\n\
         [databases.app]\nprimary = \"{}\"\nreplicas = [{}]\npool_size = 20\n",
        cluster.primary().addr(),
        replicas.join(", ")
    );
    let mut pgtier = Pgtier::start(port, &config)?;

    println!();
    println!("pgtier is running.");
    println!("  connect:   psql \"postgres://app:app@127.0.0.1:{port}/app\"");
    println!(
        "  primary:   {} (direct, superuser postgres/postgres)",
        cluster.primary().addr()
    );
    for r in cluster.replicas() {
        println!("  {}:  {} (streaming replica, direct)", r.name(), r.addr());
    }
    println!("  config:    {}", pgtier.config_path().display());
    println!("  pgtier log: {}", pgtier.log_path().display());
    println!("  data:      {}", cluster.dir().display());
    match duration {
        Some(s) => println!("stopping in {s} s (or Ctrl-C)."),
        None => println!("Ctrl-C stops everything."),
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let stop = async {
            match duration {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = stop => {}
        }
    });
    eprintln!("stopping pgtier and the cluster...");
    pgtier.signal(libc::SIGTERM);
    if pgtier.wait_exit(Duration::from_secs(10)).is_none() {
        eprintln!("pgtier did not exit in 10 s; killing it");
    }
    drop(pgtier);
    drop(cluster);
    eprintln!("done.");
    Ok(())
}
