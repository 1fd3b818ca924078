//! Runs Debian's PgBouncer (installed with apt-get if missing) with a transaction-mode config
//! equivalent to pgtier's, as the unprivileged `postgres` user when we are root.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Client-side TLS for PgBouncer: `client_tls_sslmode` and the certificate it serves.
pub struct ClientTls<'a> {
    pub sslmode: &'a str,
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// A running PgBouncer.
pub struct PgBouncer {
    child: Child,
    /// Listen port.
    pub port: u16,
    dir: PathBuf,
}

fn find_binary() -> Option<PathBuf> {
    [
        "/usr/sbin/pgbouncer",
        "/usr/bin/pgbouncer",
        "/usr/local/bin/pgbouncer",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Finds pgbouncer, installing Debian's package if it is missing.
pub fn ensure_installed() -> Result<PathBuf> {
    if let Some(p) = find_binary() {
        return Ok(p);
    }
    eprintln!("pgbouncer not found: installing Debian's package");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq", "pgbouncer"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "pgbouncer"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
    }
    find_binary().context("pgbouncer is still missing after apt-get install pgbouncer")
}

fn postgres_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres")).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

impl PgBouncer {
    /// Starts PgBouncer in front of `backend_port` for database `db`, user `user` with
    /// `password` (plaintext or a SCRAM verifier as in pg_authid, which PgBouncer then also uses
    /// to log in to the server);
    /// with `tls`, clients may (or must, per its sslmode) use TLS. The server side stays plain
    /// text (PgBouncer's default `server_tls_sslmode = disable`).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        dir: &Path,
        port: u16,
        backend_port: u16,
        db: &str,
        user: &str,
        password: &str,
        pool_size: u32,
        tls: Option<ClientTls>,
    ) -> Result<PgBouncer> {
        let bin = ensure_installed()?;
        std::fs::create_dir_all(dir)?;
        let ini = dir.join("pgbouncer.ini");
        let mut files = vec!["", "pgbouncer.ini", "userlist.txt"];
        let tls_conf = match tls {
            None => String::new(),
            Some(t) => {
                // Copies PgBouncer (running as postgres) can read; OpenSSL wants the key private.
                let (cert, key) = (dir.join("client_tls.crt"), dir.join("client_tls.key"));
                std::fs::copy(t.cert, &cert).context("copying the TLS certificate")?;
                std::fs::copy(t.key, &key).context("copying the TLS key")?;
                pgtier_kit::tls::set_mode(&key, 0o600)?;
                files.extend(["client_tls.crt", "client_tls.key"]);
                format!(
                    "client_tls_sslmode = {}\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
                    t.sslmode,
                    cert.display(),
                    key.display()
                )
            }
        };
        std::fs::write(
            &ini,
            format!(
                "[databases]\n{db} = host=127.0.0.1 port={backend_port} dbname={db}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = scram-sha-256\nauth_file = {users}\npool_mode = transaction\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 5000\n\
                 ignore_startup_parameters = extra_float_digits\n\
                 logfile = {log}\nlog_connections = 0\nlog_disconnections = 0\n{tls_conf}",
                users = dir.join("userlist.txt").display(),
                log = dir.join("pgbouncer.log").display(),
            ),
        )?;
        std::fs::write(
            dir.join("userlist.txt"),
            format!("\"{user}\" \"{password}\"\n"),
        )?;
        let mut cmd = Command::new(bin);
        cmd.arg(&ini).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let (uid, gid) =
                postgres_ids().context("PgBouncer refuses root and there is no postgres user")?;
            for f in files {
                let p = std::ffi::CString::new(dir.join(f).as_os_str().as_encoded_bytes())?;
                // SAFETY: p is a valid NUL-terminated path.
                unsafe { libc::chown(p.as_ptr(), uid, gid) };
            }
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().context("starting pgbouncer")?;
        let pgb = PgBouncer {
            child,
            port,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default();
                bail!("pgbouncer did not start listening on {port}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pgb)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
