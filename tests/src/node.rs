//! One PostgreSQL server of a kit cluster: start/stop, SQL helpers, replay control.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bins::{bin_path, server_command};

/// Superuser name on every kit node.
pub const SUPERUSER: &str = "postgres";
/// Superuser password on every kit node.
pub const SUPERUSER_PASSWORD: &str = "postgres";

/// A PostgreSQL server started by the kit.
#[derive(Debug)]
pub struct Node {
    name: String,
    port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
}

impl Node {
    pub(crate) fn new(name: &str, port: u16, root: &Path) -> Node {
        Node {
            name: name.to_owned(),
            port,
            data_dir: root.join(name),
            log_path: root.join(format!("{name}.log")),
        }
    }

    /// "primary", "replica1", ...
    pub fn name(&self) -> &str {
        &self.name
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last lines of the server log (for error messages).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> Result<()> {
        let status = server_command("pg_ctl")?
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_path)
            .args([
                "-w",
                "-t",
                "60",
                "-o",
                &format!("-p {}", self.port),
                "start",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running pg_ctl start")?;
        if !status.success() {
            bail!(
                "{} did not start ({status}):\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The postmaster's pid, if it is running.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        // SAFETY: signal 0 only checks that the process exists.
        (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
    }

    /// Whether the postmaster is running.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    /// Immediate shutdown (SIGQUIT, like `pg_ctl stop -m immediate`); waits until it is gone.
    pub fn stop_immediate(&self) -> Result<()> {
        let Some(pid) = self.postmaster_pid() else {
            return Ok(());
        };
        // SAFETY: plain kill(2) on a pid we read from the node's own pid file.
        unsafe { libc::kill(pid, libc::SIGQUIT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        // SAFETY: signal 0 only checks that the process exists.
        while unsafe { libc::kill(pid, 0) } == 0 {
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                bail!("{} did not stop within 30 s", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(self.data_dir.join("postmaster.pid"));
        Ok(())
    }

    /// Runs SQL with psql as the superuser on database `postgres`; returns trimmed stdout.
    pub fn psql(&self, sql: &str) -> Result<String> {
        self.psql_db("postgres", sql)
    }

    /// Runs SQL with psql as the superuser on database `db`.
    pub fn psql_db(&self, db: &str, sql: &str) -> Result<String> {
        let out = Command::new(bin_path("psql")?)
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .env("PGPASSWORD", SUPERUSER_PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "psql on {} failed for {sql:?}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A tokio-postgres connection as the superuser (its task is spawned on the current runtime).
    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client> {
        let dsn = format!(
            "host=127.0.0.1 port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname={db} connect_timeout=10",
            self.port
        );
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to {}", self.name))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Pauses WAL replay (replicas only).
    pub fn pause_replay(&self) -> Result<()> {
        self.psql("SELECT pg_wal_replay_pause()").map(drop)
    }

    /// Resumes WAL replay (replicas only).
    pub fn resume_replay(&self) -> Result<()> {
        self.psql("SELECT pg_wal_replay_resume()").map(drop)
    }
}
