//! A watchdog process that stops a cluster's postmasters and removes its directory when the
//! process that started it exits for any reason (panic, abort, SIGKILL, statics never dropped).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::{Context, Result};

/// Holds the write end of the reaper's stdin; the reaper fires when it closes.
#[derive(Debug)]
pub struct Reaper {
    _stdin: ChildStdin,
    _child: Child,
}

/// Spawns the reaper for the cluster rooted at `root`.
pub fn spawn(root: &Path) -> Result<Reaper> {
    let root = root.display().to_string();
    // read returns at EOF, i.e. when every copy of the pipe's write end is closed: that is when
    // this process is gone (the fd is close-on-exec, so Postgres children never hold it).
    let script = format!(
        r#"trap '' INT TERM HUP
read _ignored
for f in '{root}'/*/postmaster.pid; do
  [ -f "$f" ] && kill -QUIT "$(head -n 1 "$f")" 2>/dev/null
done
for i in 1 2 3 4 5 6 7 8 9 10; do
  alive=0
  for f in '{root}'/*/postmaster.pid; do
    [ -f "$f" ] && kill -0 "$(head -n 1 "$f")" 2>/dev/null && alive=1
  done
  [ $alive = 0 ] && break
  sleep 0.5
done
for f in '{root}'/*/postmaster.pid; do
  [ -f "$f" ] && kill -KILL "$(head -n 1 "$f")" 2>/dev/null
done
rm -rf '{root}'
"#
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("spawning the cluster reaper")?;
    let stdin = child.stdin.take().context("reaper stdin")?;
    Ok(Reaper {
        _stdin: stdin,
        _child: child,
    })
}
