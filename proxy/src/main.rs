//! The `pgtier` binary: `pgtier --config FILE` runs the proxy, `pgtier check FILE` validates a
//! config file, `pgtier verifier` turns a password into a SCRAM verifier.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pgtier::config::LogFormat;
use pgtier::runtime::LogLevelHook;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter};

#[derive(Parser)]
#[command(name = "pgtier", version, about = "PostgreSQL database-tier proxy")]
struct Cli {
    /// Config file to run with.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file and report problems with line and column.
    Check {
        /// The file to check.
        file: PathBuf,
        /// Also log in to every node and report its role, state and lag (exit 1 if a node
        /// does not answer or no primary is found).
        #[arg(long)]
        connect: bool,
        /// Also print, per node, the server connections N pgtier processes with this config
        /// may open at full load (with --connect: against the node's max_connections; a
        /// warning above 80%, exit 1 above 100%).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
        instances: Option<u32>,
    },
    /// Read a password from stdin and print the SCRAM-SHA-256 verifier (or, with --md5 USER,
    /// the md5 hash) to put in `password` instead of the plain text.
    Verifier {
        /// Print an md5 hash for this user name instead of a SCRAM verifier.
        #[arg(long, value_name = "USER")]
        md5: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check {
            file,
            connect,
            instances,
        }) => check(&file, connect, instances),
        Some(Command::Verifier { md5 }) => verifier(md5.as_deref()),
        None => {
            match cli.config {
                Some(file) => match run(&file) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("pgtier: {e:#}");
                        ExitCode::FAILURE
                    }
                },
                None => {
                    eprintln!("pgtier: no config given; run `pgtier --config FILE` (see config/pgtier.toml)");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// Prints a verifier for the password on stdin (one line; its line break is not part of it).
fn verifier(md5_user: Option<&str>) -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("pgtier: cannot read the password from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        eprintln!("pgtier: empty password on stdin");
        return ExitCode::FAILURE;
    }
    let out = match md5_user {
        Some(user) => postgres_protocol::password::md5(password.as_bytes(), user),
        None => postgres_protocol::password::scram_sha_256(password.as_bytes()),
    };
    println!("{out}");
    ExitCode::SUCCESS
}

fn check(file: &std::path::Path, connect: bool, instances: Option<u32>) -> ExitCode {
    match pgtier::config::load_file(file) {
        Ok(s) => {
            // The certificate files are read as pgtier would at start (or at a RELOAD).
            if let Err(e) = pgtier::tls::ClientTls::build(&s.client_tls) {
                eprintln!("{}: {e}", file.display());
                return ExitCode::FAILURE;
            }
            println!(
                "{}: OK ({} databases, {} users, listen {})",
                file.display(),
                s.databases.len(),
                s.users.len(),
                s.listen
            );
            let mut ok = !connect || check_nodes(&s);
            if let Some(n) = instances {
                ok &= check_budget(&s, n, connect);
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs in to every node of every database (as the lag monitors do) and prints what it found.
fn check_nodes(settings: &pgtier::config::Settings) -> bool {
    use pgtier::cluster::probe::probe;
    let Some(runtime) = connect_runtime() else {
        return false;
    };
    let mut ok = true;
    let mut names: Vec<&String> = settings.databases.keys().collect();
    names.sort();
    for name in names {
        let db = &settings.databases[name];
        let limit = db
            .cluster
            .connect_timeout
            .min(std::time::Duration::from_secs(10));
        println!(
            "database {name} (monitor user {}, server_tls_sslmode {}):",
            db.cluster.login.user, db.server_tls.mode
        );
        let tls = match pgtier::tls::ServerTls::new(&db.server_tls) {
            Ok(t) => t,
            Err(e) => {
                println!("  server TLS unusable: {e}");
                ok = false;
                continue;
            }
        };
        let report = runtime.block_on(probe(db.cluster.clone(), tls, limit));
        for (i, n) in report.nodes.iter().enumerate() {
            let lag = match (n.byte_lag, n.time_lag) {
                (Some(b), Some(t)) => format!(", lag {b} bytes / {t:?}"),
                (Some(b), None) => format!(", lag {b} bytes"),
                _ => String::new(),
            };
            let primary = if report.primary == Some(i) {
                " (takes writes)"
            } else {
                ""
            };
            let error = n
                .last_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            println!(
                "  {}: {:?} {:?}{primary}{lag}{error}",
                n.addr, n.role, n.state
            );
        }
        if report.primary.is_none() {
            println!("  no primary found: writes would wait (primary_wait_timeout), then fail");
        }
        ok &= report.healthy();
    }
    ok
}

/// Prints the connection budget of `instances` processes per node (with `connect`: against
/// each node's max_connections); false if a node would be over its limit or unreadable.
fn check_budget(settings: &pgtier::config::Settings, instances: u32, connect: bool) -> bool {
    use pgtier::config::budget::{node_budgets, render};
    let budgets = node_budgets(settings);
    let mut limits = std::collections::BTreeMap::new();
    let mut read_all = true;
    if connect {
        let Some(runtime) = connect_runtime() else {
            return false;
        };
        let mut names: Vec<&String> = settings.databases.keys().collect();
        names.sort();
        for b in &budgets {
            // Logged in to as the monitors of the first database that lists the node do.
            let Some(db) = names
                .iter()
                .map(|n| &settings.databases[*n])
                .find(|d| d.nodes().iter().any(|n| n.addr == b.addr))
            else {
                continue;
            };
            let limit = db
                .cluster
                .connect_timeout
                .min(std::time::Duration::from_secs(10));
            let read = match pgtier::tls::ServerTls::new(&db.server_tls) {
                Ok(tls) => runtime.block_on(pgtier::cluster::probe::server_limit(
                    &b.addr,
                    &db.cluster.login,
                    &tls,
                    limit,
                )),
                Err(e) => Err(format!("server TLS unusable: {e}")),
            };
            read_all &= read.is_ok();
            limits.insert(b.addr.to_string(), read);
        }
    }
    let (text, fits) = render(&budgets, instances, &limits);
    print!("{text}");
    fits && read_all
}

fn run(file: &std::path::Path) -> anyhow::Result<()> {
    let settings = pgtier::config::load_file(file)?;
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok());
    let env_wins = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(&settings.raw.log_level));
    // The filter sits behind a reload handle so that a RELOAD or SIGHUP can change log_level.
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer().with_ansi(false);
    match settings.raw.log_format {
        // One object per line, event fields at the top level, for log shippers.
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).init(),
        LogFormat::Text => registry.with(fmt).init(),
    }
    // Message and location to the log, no backtrace (see pgtier::panics).
    if !pgtier::fault::keep_default_hook() {
        pgtier::panics::install_hook();
    }
    let log_level = LogLevelHook(Box::new(move |level: &str| {
        if env_wins {
            return Err("RUST_LOG is set and overrides log_level".into());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }));
    // No time driver: pgtier::timers keeps the timers behind a timerfd, so that a park of the
    // runtime costs only the poll of its sockets.
    let runtime = match settings.raw.workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_io()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n as usize)
            .enable_io()
            .build(),
    }
    .context("starting the tokio runtime")?;
    runtime.block_on(async {
        pgtier::timers::start().context("starting the timers")?;
        pgtier::serve::run(settings, Some(file.to_path_buf()), Some(log_level))
            .await
            .with_context(|| format!("serving with {}", file.display()))
    })
}

/// A runtime for `pgtier check --connect` (None, with the error printed, if it cannot start).
fn connect_runtime() -> Option<tokio::runtime::Runtime> {
    let built = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    if built.is_err() {
        eprintln!("pgtier: cannot start a runtime to connect");
    }
    built.ok()
}
