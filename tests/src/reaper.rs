//! Watchdog processes that clean up after the test process when it exits for any reason (panic,
//! abort, SIGKILL, statics never dropped): one per cluster stops its postmasters and removes its
//! directory, one per pgtier process kills it.
//!
//! Each watchdog is a `sh` blocked reading its stdin, a pipe whose write end only this process
//! holds (close-on-exec, so Postgres and pgtier never inherit it). The read returns when that end
//! closes, i.e. on drop or when this process is gone. Watchdogs run in their own process group
//! and ignore INT/TERM/HUP so a terminal's Ctrl-C reaches them only through the pipe.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A running watchdog; dropping it fires it (and waits for it, bounded).
#[derive(Debug)]
pub struct Reaper {
    stdin: Option<ChildStdin>,
    child: Child,
}

impl Reaper {
    /// Tells the watchdog to leave its directory in place (e.g. logs of a failed test).
    pub fn keep_dir(&mut self) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(b"keep\n");
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(None) = self.child.try_wait() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Quotes a path for sh (the kit's temp paths never contain a single quote).
fn quote(p: &Path) -> String {
    format!("'{}'", p.display())
}

/// Spawns the watchdog for the cluster rooted at `root`: it SIGQUITs every postmaster named by a
/// `root/*/postmaster.pid` at that moment, waits for them (SIGKILL after 5 s), removes `root`.
pub fn spawn_cluster_reaper(root: &Path) -> Result<Reaper> {
    let root = quote(root);
    let script = format!(
        r#"trap '' INT TERM HUP
read _ignored
pids=''
for f in {root}/*/postmaster.pid; do
  [ -f "$f" ] || continue
  p=$(head -n 1 "$f")
  case "$p" in ''|*[!0-9]*) continue;; esac
  # A stale pid file may name an unrelated process now.
  [ "$(cat /proc/$p/comm 2>/dev/null)" = postgres ] || continue
  kill -QUIT "$p" 2>/dev/null && pids="$pids $p"
done
i=0
while [ -n "$pids" ] && [ $i -lt 50 ]; do
  live=''
  for p in $pids; do
    [ -r /proc/$p/status ] && ! grep -q '^State:[[:space:]]*[ZX]' /proc/$p/status 2>/dev/null && live="$live $p"
  done
  pids=$live
  [ -n "$pids" ] && sleep 0.1
  i=$((i+1))
done
for p in $pids; do kill -KILL "$p" 2>/dev/null; done
rm -rf {root}
"#
    );
    spawn(&script).context("spawning the cluster reaper")
}

/// Spawns the watchdog for a process: SIGKILLs `pid` if it still runs `exe`, then removes `dir`
/// unless told to keep it.
pub fn spawn_process_watchdog(pid: u32, exe: &Path, dir: &Path) -> Result<Reaper> {
    let (exe, dir) = (quote(exe), quote(dir));
    let script = format!(
        r#"trap '' INT TERM HUP
read cmd
case "$(readlink /proc/{pid}/exe 2>/dev/null)" in
  {exe}|{exe}' (deleted)') kill -KILL {pid} 2>/dev/null;;
esac
[ "$cmd" = keep ] || rm -rf {dir}
"#
    );
    spawn(&script).context("spawning the pgtier watchdog")
}

fn spawn(script: &str) -> Result<Reaper> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let stdin = child.stdin.take().context("watchdog stdin")?;
    Ok(Reaper {
        stdin: Some(stdin),
        child,
    })
}
