//! A primary and N streaming replicas on free 127.0.0.1 ports in a temp directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bins::{chown, server_command};
use crate::node::{Node, SUPERUSER, SUPERUSER_PASSWORD};
use crate::ports::free_port;
use crate::reaper::{self, Reaper};
use crate::tls::{set_mode, TestCa};
use crate::tmp::make_temp_dir;

/// How long the kit waits for nodes to start, stream or catch up.
const WAIT: Duration = Duration::from_secs(60);

const HBA: &str = "local all all trust
host all pgtier_trust 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
host all all 127.0.0.1/32 md5
";

/// Serialises DDL helpers: tests in one binary run them concurrently.
static DDL: Mutex<()> = Mutex::new(());

/// A running cluster; dropping it stops every node and removes its directory.
#[derive(Debug)]
pub struct Cluster {
    root: PathBuf,
    primary: Node,
    replicas: Vec<Node>,
    _reaper: Reaper,
}

/// The kit nodes' `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 400;

impl Cluster {
    /// Starts a primary and `n_replicas` streaming replicas; returns once all stream.
    pub fn start(n_replicas: usize) -> Result<Cluster> {
        Cluster::start_with(n_replicas, None, DEFAULT_MAX_CONNECTIONS)
    }

    /// [`Cluster::start`] with `max_connections` other than the kit's 400 (a benchmark that
    /// opens more sessions than that straight to Postgres).
    pub fn start_with_max_connections(n_replicas: usize, max_connections: u32) -> Result<Cluster> {
        Cluster::start_with(n_replicas, None, max_connections)
    }

    /// [`Cluster::start`] with `ssl = on` on every node: each serves a certificate signed by
    /// `ca` for `localhost` and `127.0.0.1`, and trusts `ca` for client certificates.
    /// Plain-text connections are still accepted (pg_hba's `host` lines).
    pub fn start_tls(n_replicas: usize, ca: &TestCa) -> Result<Cluster> {
        Cluster::start_with(n_replicas, Some(ca), DEFAULT_MAX_CONNECTIONS)
    }

    fn start_with(n_replicas: usize, ca: Option<&TestCa>, max_connections: u32) -> Result<Cluster> {
        let t0 = Instant::now();
        let root = make_temp_dir("pgtier-kit")?;
        let reaper = reaper::spawn_cluster_reaper(&root)?;
        let primary = Node::new("primary", free_port()?, &root);
        let replicas = (1..=n_replicas)
            .map(|i| Ok(Node::new(&format!("replica{i}"), free_port()?, &root)))
            .collect::<Result<Vec<_>>>()?;
        let cluster = Cluster {
            root,
            primary,
            replicas,
            _reaper: reaper,
        };
        cluster.init_primary(max_connections)?;
        if let Some(ca) = ca {
            cluster.enable_ssl(ca)?;
        }
        cluster.primary.start()?;
        for r in &cluster.replicas {
            cluster.clone_replica(r)?;
            r.start()?;
        }
        cluster.wait_streaming()?;
        eprintln!(
            "pgtier-kit: primary + {n_replicas} replicas up in {:.1} s ({})",
            t0.elapsed().as_secs_f64(),
            cluster.root.display()
        );
        Ok(cluster)
    }

    /// One primary + 2 replicas shared by every test of this process.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| Cluster::start(2).expect("starting the shared kit cluster"))
    }

    /// The primary.
    pub fn primary(&self) -> &Node {
        &self.primary
    }

    /// The replicas.
    pub fn replicas(&self) -> &[Node] {
        &self.replicas
    }

    /// Replica `i` (0-based).
    pub fn replica(&self, i: usize) -> &Node {
        &self.replicas[i]
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    fn init_primary(&self, max_connections: u32) -> Result<()> {
        let pwfile = self.root.join("pwfile");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD)?;
        chown(&pwfile)?;
        let out = server_command("initdb")?
            .arg("-D")
            .arg(self.primary.data_dir())
            .args([
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=md5",
                "-E",
                "UTF8",
            ])
            .args(["--no-sync", "--locale=C", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdin(Stdio::null())
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let dir = self.primary.data_dir();
        std::fs::write(dir.join("pg_hba.conf"), HBA)?;
        let conf = format!(
            "\n# pgtier test kit\nlisten_addresses = '127.0.0.1'\nport = {}\n\
             unix_socket_directories = '{}'\nmax_connections = {max_connections}\nshared_buffers = 32MB\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nwal_level = replica\n\
             max_wal_senders = 10\nwal_keep_size = '256MB'\nhot_standby = on\n\
             hot_standby_feedback = on\nlogging_collector = off\nlog_min_messages = warning\n\
             password_encryption = 'scram-sha-256'\n\
             wal_receiver_status_interval = 1s\nwal_writer_delay = 10ms\n",
            self.primary.port(),
            self.root.display()
        );
        append(&dir.join("postgresql.conf"), &conf)
    }

    /// Puts a server certificate, its key and the CA into the primary's data directory and
    /// turns ssl on; pg_basebackup copies all of it to the replicas.
    fn enable_ssl(&self, ca: &TestCa) -> Result<()> {
        let files = ca.server("node", &["localhost", "127.0.0.1"])?;
        let dir = self.primary.data_dir();
        for (from, to) in [
            (&files.cert, "server.crt"),
            (&files.key, "server.key"),
            (&ca.ca_file(), "root.crt"),
        ] {
            let dest = dir.join(to);
            std::fs::copy(from, &dest)
                .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
            set_mode(&dest, 0o600)?;
            chown(&dest)?;
        }
        append(
            &dir.join("postgresql.conf"),
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             ssl_ca_file = 'root.crt'\n",
        )
    }

    fn clone_replica(&self, r: &Node) -> Result<()> {
        let out = server_command("pg_basebackup")?
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.primary.port().to_string(),
                "-U",
                SUPERUSER,
            ])
            .arg("-D")
            .arg(r.data_dir())
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .context("running pg_basebackup")?;
        if !out.status.success() {
            bail!(
                "pg_basebackup for {} failed: {}",
                r.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        append(
            &r.data_dir().join("postgresql.conf"),
            &format!("\nport = {}\n", r.port()),
        )
    }

    fn wait_streaming(&self) -> Result<()> {
        let n = self.replicas.len();
        let deadline = Instant::now() + WAIT;
        loop {
            let streaming: usize = self
                .primary
                .psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")?
                .parse()?;
            if streaming == n {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "only {streaming} of {n} replicas streaming after {WAIT:?}\n{}",
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for r in &self.replicas {
            let in_recovery = r.psql("SELECT pg_is_in_recovery()")?;
            if in_recovery != "t" {
                bail!(
                    "{} streams but pg_is_in_recovery() = {in_recovery}\n{}",
                    r.name(),
                    self.log_tails()
                );
            }
        }
        Ok(())
    }

    /// The last lines of every node's server log, for error messages.
    pub fn log_tails(&self) -> String {
        std::iter::once(&self.primary)
            .chain(&self.replicas)
            .map(|n| format!("--- {} ---\n{}\n", n.log_path().display(), n.log_tail()))
            .collect()
    }

    /// Waits until every running replica whose replay is not paused has replayed the primary's
    /// current WAL position.
    pub fn wait_replicas_caught_up(&self) -> Result<()> {
        // The insert position: with synchronous_commit = off a commit can be ahead of the write
        // position.
        let lsn = self.primary.psql("SELECT pg_current_wal_insert_lsn()")?;
        let check = format!(
            "SELECT pg_is_wal_replay_paused() OR pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"
        );
        let deadline = Instant::now() + WAIT;
        for r in self.replicas.iter().filter(|r| r.is_running()) {
            while r.psql(&check)? != "t" {
                if Instant::now() > deadline {
                    let at = r.psql("SELECT pg_last_wal_replay_lsn()")?;
                    bail!(
                        "{} replayed only up to {at}, not {lsn}, after {WAIT:?}\n--- {} ---\n{}",
                        r.name(),
                        r.log_path().display(),
                        r.log_tail()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Creates a login role with a SCRAM password and a database it owns (idempotent).
    pub fn create_role_and_db(&self, user: &str, password: &str, db: &str) -> Result<()> {
        let _g = DDL.lock().unwrap_or_else(|p| p.into_inner());
        self.primary.psql(&create_role(user, Some(password)))?;
        let exists = self
            .primary
            .psql(&format!("SELECT 1 FROM pg_database WHERE datname = '{db}'"))?;
        if exists.is_empty() {
            self.primary
                .psql(&format!("CREATE DATABASE {db} OWNER {user}"))?;
        }
        self.wait_replicas_caught_up()
    }

    /// Creates a login role with a SCRAM password (idempotent).
    pub fn create_role(&self, user: &str, password: &str) -> Result<()> {
        let _g = DDL.lock().unwrap_or_else(|p| p.into_inner());
        self.primary.psql(&create_role(user, Some(password)))?;
        self.wait_replicas_caught_up()
    }

    /// Creates a login role whose password is stored as MD5 (idempotent).
    pub fn create_md5_role(&self, user: &str, password: &str) -> Result<()> {
        let _g = DDL.lock().unwrap_or_else(|p| p.into_inner());
        self.primary.psql(&format!(
            "SET password_encryption = 'md5'; {}",
            create_role(user, Some(password))
        ))?;
        self.wait_replicas_caught_up()
    }

    /// Creates a login role without a password; pg_hba trusts `pgtier_trust` (idempotent).
    pub fn create_trust_role(&self, user: &str) -> Result<()> {
        let _g = DDL.lock().unwrap_or_else(|p| p.into_inner());
        self.primary.psql(&create_role(user, None))?;
        self.wait_replicas_caught_up()
    }

    /// Runs DDL on the primary under the kit's DDL lock (tests in a binary run concurrently).
    pub fn ddl(&self, db: &str, sql: &str) -> Result<String> {
        let _g = DDL.lock().unwrap_or_else(|p| p.into_inner());
        self.primary.psql_db(db, sql)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for r in self.replicas.iter().rev() {
            let _ = r.stop_immediate();
        }
        let _ = self.primary.stop_immediate();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn create_role(user: &str, password: Option<&str>) -> String {
    let pw = password.map_or(String::new(), |p| format!(" PASSWORD '{p}'"));
    format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN \
         CREATE ROLE {user} LOGIN{pw}; END IF; END $$"
    )
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
