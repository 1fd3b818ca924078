//! Finding PostgreSQL and pgtier binaries, and running Postgres as an unprivileged user when
//! we are root (Postgres refuses to run as root; CI runs as root).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};

/// The Unix account Postgres runs as when the kit runs as root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory (from /etc/passwd).
    pub home: PathBuf,
}

/// The directory holding initdb, pg_ctl, postgres, pg_basebackup, psql and pgbench.
pub fn pg_bindir() -> Result<&'static Path> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DIR.get_or_init(find_bindir) {
        Ok(d) => Ok(d),
        Err(e) => Err(anyhow!("{e}")),
    }
}

fn find_bindir() -> Result<PathBuf, String> {
    let has_initdb = |d: &Path| d.join("initdb").is_file();
    if let Some(d) = std::env::var_os("PGTIER_PG_BINDIR").map(PathBuf::from) {
        return if has_initdb(&d) {
            Ok(d)
        } else {
            Err(format!("PGTIER_PG_BINDIR={} has no initdb", d.display()))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("initdb");
            if !candidate.is_file() {
                continue;
            }
            // /usr/local/bin/initdb may be a symlink into the real bindir, which also has
            // pg_basebackup and friends.
            if let Some(real) = std::fs::canonicalize(&candidate)
                .ok()
                .and_then(|p| p.parent().map(Path::to_owned))
            {
                if real.join("pg_ctl").is_file() {
                    return Ok(real);
                }
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_initdb(&d) {
            return Ok(d);
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let v = name
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            let bin = e.path().join("bin");
            has_initdb(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d).ok_or_else(|| {
        "PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_basebackup) not found: set \
         PGTIER_PG_BINDIR, put initdb on PATH, or install them (`apt-get install postgresql`)"
            .to_owned()
    })
}

/// Path of a PostgreSQL program (client programs like psql and pgbench included).
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let p = pg_bindir()?.join(name);
    if p.is_file() {
        return Ok(p);
    }
    // Client programs may live elsewhere on PATH (e.g. /usr/bin/psql).
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join(name).is_file() {
                return Ok(dir.join(name));
            }
        }
    }
    bail!("{name} not found in {} or on PATH", pg_bindir()?.display())
}

/// The pgtier binary: `PGTIER_BIN`, else target/<profile>/pgtier next to the running executable.
pub fn pgtier_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PGTIER_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("PGTIER_BIN={} does not exist", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    // Test binaries live in target/<profile>/deps/, other binaries in target/<profile>/.
    for candidate in [dir.join("../pgtier"), dir.join("pgtier")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "pgtier binary not found next to {} (build it with `cargo build --bins`, or set PGTIER_BIN)",
        exe.display()
    )
}

/// The account to run Postgres as: None when we are not root.
pub fn pg_account() -> Result<Option<&'static PgUser>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    static USER: OnceLock<Result<PgUser, String>> = OnceLock::new();
    match USER.get_or_init(|| lookup_user("postgres")) {
        Ok(u) => Ok(Some(u)),
        Err(e) => Err(anyhow!("{e}")),
    }
}

/// The uid/gid to run Postgres as: None when we are not root.
pub fn pg_user() -> Result<Option<(u32, u32)>> {
    Ok(pg_account()?.map(|u| (u.uid, u.gid)))
}

fn lookup_user(name: &str) -> Result<PgUser, String> {
    let passwd =
        std::fs::read_to_string("/etc/passwd").map_err(|e| format!("reading /etc/passwd: {e}"))?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 6 && f[0] == name {
            let bad = |what| format!("/etc/passwd: bad {what} for user {name}: {line}");
            return Ok(PgUser {
                uid: f[2].parse().map_err(|_| bad("uid"))?,
                gid: f[3].parse().map_err(|_| bad("gid"))?,
                home: PathBuf::from(f[5]),
            });
        }
    }
    Err(format!(
        "running as root, but PostgreSQL refuses to run as root and there is no `{name}` user \
         in /etc/passwd to run it as (create one: `useradd --system {name}`)"
    ))
}

/// A command for a server program, run as the unprivileged user when we are root.
pub fn server_command(program: &str) -> Result<Command> {
    let mut cmd = Command::new(pg_bindir()?.join(program));
    if let Some(u) = pg_account()? {
        let home = if u.home.is_dir() {
            u.home.clone()
        } else {
            std::env::temp_dir()
        };
        cmd.uid(u.uid)
            .gid(u.gid)
            .env("HOME", home)
            .env("USER", "postgres");
    }
    cmd.env_remove("PGDATA")
        .env_remove("PGPORT")
        .env_remove("PGHOST")
        .env("LC_ALL", "C");
    Ok(cmd)
}

/// Gives a path to the unprivileged user (no-op when not root).
pub fn chown(path: &Path) -> Result<()> {
    if let Some(u) = pg_account()? {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: c is a valid NUL-terminated path.
        if unsafe { libc::chown(c.as_ptr(), u.uid, u.gid) } != 0 {
            bail!(
                "chown {} to the postgres user: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}
