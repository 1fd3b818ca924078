//! One PostgreSQL server of a kit cluster: start/stop, SQL helpers, replay control.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::bins::{bin_path, server_command};
use crate::pids;

/// Superuser name on every kit node.
pub const SUPERUSER: &str = "postgres";
/// Superuser password on every kit node.
pub const SUPERUSER_PASSWORD: &str = "postgres";

/// How long a node may take to stop.
const STOP_WAIT: Duration = Duration::from_secs(30);

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

    /// Starts the server (`pg_ctl -w start`, as the postgres user when root) and waits until
    /// it accepts connections.
    pub fn start(&self) -> Result<()> {
        self.remove_stale_pid_file();
        // While a node is down its port is free for anything on the machine: an outgoing
        // connection's ephemeral port took a killed replica's once (its restart then failed
        // with "Address already in use"). Wait for it, and start again if it was taken between.
        let mut attempt = 0;
        loop {
            attempt += 1;
            pids::wait_port_free(self.port, Duration::from_secs(10));
            match self.pg_ctl_start() {
                Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => {
                    continue
                }
                r => return r,
            }
        }
    }

    /// One `pg_ctl -w start`.
    fn pg_ctl_start(&self) -> Result<()> {
        let out = server_command("pg_ctl")?
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
            .output()
            .context("running pg_ctl start")?;
        if !out.status.success() {
            bail!(
                "{} (port {}) did not start: pg_ctl {}: {}\n--- {} ---\n{}",
                self.name,
                self.port,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                self.log_path.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Removes `postmaster.pid` if the postmaster it names is dead or a zombie. A postmaster
    /// killed with SIGKILL leaves the file; Postgres takes it as stale only when its pid is
    /// gone, and an orphaned postmaster stays a zombie until the machine's init reaps it (a CI
    /// container's did not: the restart then failed with "lock file already exists").
    /// The Unix socket's lock file (`.s.PGSQL.PORT.lock`, in the kit's directory) is checked
    /// the same way by Postgres and left the same way: it goes too.
    fn remove_stale_pid_file(&self) {
        let socket_lock = self
            .data_dir
            .parent()
            .map(|root| root.join(format!(".s.PGSQL.{}.lock", self.port)));
        for path in std::iter::once(self.data_dir.join("postmaster.pid")).chain(socket_lock) {
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok());
            if pid.is_some_and(|p| !pids::alive(p)) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// The postmaster's pid (line 1 of `postmaster.pid`), if it is running.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        pids::alive(pid).then_some(pid)
    }

    /// Whether the postmaster is running.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    /// Immediate shutdown (SIGQUIT, like `pg_ctl stop -m immediate`); waits until the
    /// postmaster is gone and its port is free.
    pub fn stop_immediate(&self) -> Result<()> {
        if let Some(pid) = self.postmaster_pid() {
            // SAFETY: plain kill(2) on the pid from the node's own pid file, checked alive.
            unsafe { libc::kill(pid, libc::SIGQUIT) };
            if !pids::wait_gone(pid, STOP_WAIT) {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                pids::wait_gone(pid, Duration::from_secs(5));
                bail!(
                    "{} (pid {pid}) ignored SIGQUIT for {STOP_WAIT:?}; sent SIGKILL",
                    self.name
                );
            }
            let _ = std::fs::remove_file(self.data_dir.join("postmaster.pid"));
        }
        if !pids::wait_port_free(self.port, STOP_WAIT) {
            bail!(
                "{} stopped, but port {} is still in use after {STOP_WAIT:?}",
                self.name,
                self.port
            );
        }
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
            .output()
            .context("running psql")?;
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

    /// Promotes a replica (`pg_promote()`, waiting up to 60 s) and waits until it is out of
    /// recovery.
    pub fn promote(&self) -> Result<()> {
        let done = self.psql("SELECT pg_promote(true, 60)")?;
        if done != "t" {
            bail!(
                "{}: pg_promote() returned {done:?}\n{}",
                self.name,
                self.log_tail()
            );
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.psql("SELECT pg_is_in_recovery()")? != "f" {
            if std::time::Instant::now() > deadline {
                bail!("{} still in recovery 60 s after pg_promote()", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}
