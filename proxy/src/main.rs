//! The `pgtier` binary: `pgtier --config FILE` runs the proxy, `pgtier check FILE` validates a
//! config file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { file }) => check(&file),
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

fn check(file: &std::path::Path) -> ExitCode {
    match pgtier::config::load_file(file) {
        Ok(s) => {
            println!(
                "{}: OK ({} databases, {} users, listen {})",
                file.display(),
                s.databases.len(),
                s.users.len(),
                s.listen
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(file: &std::path::Path) -> anyhow::Result<()> {
    let settings = pgtier::config::load_file(file)?;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&settings.raw.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .init();
    let runtime = match settings.raw.workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n as usize)
            .enable_all()
            .build(),
    }
    .context("starting the tokio runtime")?;
    runtime
        .block_on(pgtier::proxy::run(settings))
        .with_context(|| format!("serving with {}", file.display()))
}
