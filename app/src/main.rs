//! `pgtier-app`: serve the API (default) or run the load generator (`loadgen`).

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// The tutoring-marketplace API that reaches Postgres through pgtier.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (DATABASE_URL, APP_LISTEN, APP_POOL_SIZE, APP_DB_TIMEOUT_MS).
    Serve,
    /// Drive a realistic mix of requests against a running app and report latency.
    Loadgen(pgtier_app::loadgen::Options),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgtier-app: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => {
                let config = pgtier_app::Config::from_env()?;
                let handle = pgtier_app::serve_until(config, shutdown_signal()).await?;
                handle.wait().await?;
                tracing::info!("stopped");
                Ok(std::process::ExitCode::SUCCESS)
            }
            Command::Loadgen(opts) => {
                let summary = pgtier_app::loadgen::run(&opts).await?;
                println!("{summary}");
                // Errors make the run fail, for scripts and CI.
                Ok(if summary.errors > 0 {
                    std::process::ExitCode::FAILURE
                } else {
                    std::process::ExitCode::SUCCESS
                })
            }
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
