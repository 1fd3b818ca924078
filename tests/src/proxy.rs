//! Running the pgtier binary for a test: config in a temp file, log captured, stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bins::pgtier_bin;
use crate::reaper::{spawn_process_watchdog, Reaper};
use crate::tmp::make_temp_dir;

/// A pgtier process; dropping it kills it (SIGKILL) and removes its directory (kept when the
/// thread is panicking, for the log).
#[derive(Debug)]
pub struct Pgtier {
    child: Child,
    port: u16,
    dir: PathBuf,
    watchdog: Reaper,
}

impl Pgtier {
    /// Writes `config` (which must listen on 127.0.0.1:`port`, see [`crate::free_port`]) to a
    /// fresh file, runs `pgtier --config FILE` and waits (20 s) until it accepts connections.
    pub fn start(port: u16, config: &str) -> Result<Pgtier> {
        Pgtier::start_bin(pgtier_bin()?, port, config)
    }

    /// [`Pgtier::start`] for a process that shares `port` with others (`so_reuseport`): as
    /// another process may already answer there, waits (20 s) for this one's own "pgtier
    /// listening" log line instead.
    pub fn start_sharing(port: u16, config: &str) -> Result<Pgtier> {
        let px = Pgtier::start(port, config)?;
        let log = px.wait_for_log("pgtier listening", Duration::from_secs(20));
        if !log.contains("pgtier listening") {
            bail!("pgtier did not listen on {port} within 20 s:\n{log}");
        }
        Ok(px)
    }

    /// [`Pgtier::start`] with extra environment variables (test-only switches of debug builds,
    /// such as `PGTIER_TEST_PANIC`).
    pub fn start_with_env(port: u16, config: &str, env: &[(&str, &str)]) -> Result<Pgtier> {
        Pgtier::start_bin_env(pgtier_bin()?, port, config, env)
    }

    /// [`Pgtier::start`] with another pgtier binary (A/B benchmarks of two builds).
    pub fn start_bin(bin: std::path::PathBuf, port: u16, config: &str) -> Result<Pgtier> {
        Pgtier::start_bin_env(bin, port, config, &[])
    }

    fn start_bin_env(
        bin: std::path::PathBuf,
        port: u16,
        config: &str,
        env: &[(&str, &str)],
    ) -> Result<Pgtier> {
        let bin = std::fs::canonicalize(&bin).unwrap_or(bin);
        let dir = make_temp_dir("pgtier-run")?;
        let config_path = dir.join("pgtier.toml");
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log = std::fs::File::create(dir.join("pgtier.log"))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--config").arg(&config_path);
        cmd.envs(env.iter().copied());
        // A config with its own log_level decides (RUST_LOG would override it); else the
        // caller's RUST_LOG, or info.
        if config
            .lines()
            .any(|l| l.trim_start().starts_with("log_level"))
        {
            cmd.env_remove("RUST_LOG");
        } else {
            cmd.env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        // Kills pgtier if this process dies without dropping it (e.g. a pgtier in a static).
        let watchdog = spawn_process_watchdog(child.id(), &bin, &dir)?;
        let mut px = Pgtier {
            child,
            port,
            dir,
            watchdog,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(listening(port) && listens_itself(px.child.id(), port)) {
            if let Ok(Some(status)) = px.child.try_wait() {
                bail!("pgtier exited ({status}) before listening:\n{}", px.log());
            }
            if Instant::now() > deadline {
                bail!("pgtier did not listen on {port} within 20 s:\n{}", px.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(px)
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Listen port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path of the config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("pgtier.toml")
    }

    /// Path of the log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("pgtier.log")
    }

    /// Everything pgtier logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits up to `limit` for a log line containing `needle` and returns the log (pgtier writes
    /// some lines, like the slow-query log, after the reply reached the client).
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pgtier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // PGTIER_TEST_KEEP=1 keeps every pgtier's directory (config, log) for a look after.
        if std::thread::panicking() || std::env::var("PGTIER_TEST_KEEP").is_ok_and(|v| v == "1") {
            eprintln!("pgtier-kit: keeping {} for the log", self.dir.display());
            self.watchdog.keep_dir();
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Whether something listens on 127.0.0.1:`port`. A connection to itself does not count: the
/// port comes from the kernel's ephemeral range, so before pgtier binds it a probe may be
/// given it as its own source port and connect to itself (TCP simultaneous open).
fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port))
        .is_ok_and(|s| s.local_addr().ok() != s.peer_addr().ok())
}

/// Whether process `pid` itself holds a listening socket on `port` (Linux `/proc`): another
/// test's `free_port` probe may listen on the same port for a moment before pgtier binds it
/// (seen once in CI: the probe answered the readiness check, and pgbench then met a refused
/// connection). Where `/proc` cannot tell, true.
fn listens_itself(pid: u32, port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return true;
    };
    let sockets: std::collections::HashSet<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_str()?;
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return true;
    };
    let local = format!(":{port:04X}");
    // Columns: sl, local address, remote address, state (0A: LISTEN), ..., inode (10th).
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.len() > 9 && cols[1].ends_with(&local) && cols[3] == "0A" && sockets.contains(cols[9])
    })
}
