//! The protocol fuzzer (see `pgtier_kit::fuzz`): starts a primary and a replica (the test
//! kit), pgtier in front of them, and fuzzes it for `--seconds`, checking after each batch that
//! it is alive, under its RSS bound, free of caught panics, and serving normal clients.
//! Exits 1 with the failing batch's seeds and pgtier's log tail on the first failure.
//!
//! `cargo run -p pgtier-kit --bin pgtier-fuzz -- [--seconds 60] [--seed S] [--batch 200]
//! [--concurrency 64] [--rss-limit-mib 256] [--conn-seed S]` (scripts/fuzz.sh runs it for hours)

use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgtier_kit::fuzz::{self, Options};
use pgtier_kit::{pgtier_bin, Cluster};

const USAGE: &str = "usage: pgtier-fuzz [--seconds N] [--seed S] [--batch N] [--concurrency N]
                   [--rss-limit-mib N] [--conn-seed S]
  --seconds N        fuzz this long (default 60)
  --seed S           the run's seed (default: from the clock; printed)
  --batch N          connections between health checks (default 200)
  --concurrency N    connections open at once (default 64)
  --rss-limit-mib N  pgtier's RSS bound (default 256)
  --conn-seed S      replay the one connection with this seed (printed on failure)";

fn parse_args() -> Result<Options> {
    let mut o = Options {
        duration: Duration::from_secs(60),
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
        progress: Some(Duration::from_secs(30)),
        ..Options::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "-h" || a == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = args
            .next()
            .with_context(|| format!("{a} takes a value\n{USAGE}"))?;
        let n = || {
            v.parse::<u64>()
                .with_context(|| format!("{a} takes a number"))
        };
        match a.as_str() {
            "--seconds" => o.duration = Duration::from_secs(n()?),
            "--seed" => o.seed = n()?,
            "--batch" => o.batch = n()?.max(1) as usize,
            "--concurrency" => o.concurrency = n()?.max(1) as usize,
            "--rss-limit-mib" => o.rss_limit_kib = n()? * 1024,
            "--conn-seed" => o.only = Some(n()?),
            _ => bail!("unknown argument {a}\n{USAGE}"),
        }
    }
    Ok(o)
}

fn main() -> Result<()> {
    let opts = parse_args()?;
    pgtier_bin().context("pgtier-fuzz needs pgtier built (cargo build --workspace --bins)")?;
    let cluster = Cluster::start(1)?;
    let px = fuzz::start_pgtier(&cluster)?;
    eprintln!(
        "pgtier-fuzz: seed {} for {:?} against pgtier pid {} on {} (log {})",
        opts.seed,
        opts.duration,
        px.pid(),
        px.addr(),
        px.log_path().display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match rt.block_on(fuzz::run(&px, &opts)) {
        Ok(report) => {
            println!("pgtier-fuzz: seed {}: OK, no crash: {report}", opts.seed);
            Ok(())
        }
        Err(e) => {
            println!("pgtier-fuzz: FAILED: {e:#}");
            // pgtier's directory goes with it: keep the whole log.
            let keep = std::env::temp_dir().join(format!("pgtier-fuzz-{}.log", opts.seed));
            if std::fs::copy(px.log_path(), &keep).is_ok() {
                println!("pgtier-fuzz: pgtier's log kept in {}", keep.display());
            }
            std::process::exit(1);
        }
    }
}
