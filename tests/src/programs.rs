//! Running a driver program (Python, Java, Ruby, PHP, Node, Rust) against a pgtier: killed
//! after a deadline, its output printed, and a failure reported with pgtier's log tail.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::proxy::Pgtier;

/// Runs `timeout -s KILL SECS program... args...` in `dir` (None: the current one) and returns
/// its stdout; panics (with its output and the last 200 lines of pgtier's log) unless it exited
/// 0, and if pgtier's log shows a panic.
pub fn run_against(
    px: &Pgtier,
    secs: u32,
    program: &[&std::ffi::OsStr],
    args: &[&str],
    dir: Option<&Path>,
) -> String {
    let name = program
        .iter()
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let t0 = Instant::now();
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", &secs.to_string()])
        .args(program)
        .args(args)
        .env("PYTHONUNBUFFERED", "1");
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "{name}: {} in {:.1} s\n{stdout}{stderr}",
        out.status,
        t0.elapsed().as_secs_f64()
    );
    let log = px.log();
    // Enough to see what held the pool when a driver waited for a server (a rare stall of
    // asyncpg's pool phase showed only its last routing lines in 40).
    let tail: Vec<&str> = log.lines().rev().take(200).collect();
    assert!(
        out.status.success(),
        "{name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- pgtier log (last 200 lines, newest first)\n{}",
        out.status,
        tail.join("\n")
    );
    assert!(!log.contains("panicked"), "pgtier panicked:\n{log}");
    stdout
}
