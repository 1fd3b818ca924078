//! Running pgbench against a port as the `bench` user, and reading numbers out of its report.

use std::process::Command;

use anyhow::{bail, Result};

/// Runs pgbench with `args` against `127.0.0.1:port`, database and user `bench`; returns its
/// stdout and stderr, or fails with them.
pub fn pgbench(port: u16, args: &[&str]) -> Result<String> {
    pgbench_ssl(port, None, args)
}

// Used by compare, not by routing.
#[allow(dead_code)]
/// [`pgbench`] with libpq's `PGSSLMODE` set to `sslmode` (e.g. `require`), when given.
pub fn pgbench_ssl(port: u16, sslmode: Option<&str>, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(pgtier_kit::bin_path("pgbench")?);
    if let Some(mode) = sslmode {
        cmd.env("PGSSLMODE", mode);
    }
    let out = cmd
        .args(args)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "bench",
            "bench",
        ])
        .env("PGPASSWORD", "bench")
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("pgbench {args:?} on port {port} failed:\n{text}");
    }
    Ok(text)
}

/// The number after `prefix` on a report line (`tps = 123.4`, `latency average = 1.2 ms`).
pub fn field(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|v| v.split_whitespace().next()?.split('/').next()?.parse().ok())
}
