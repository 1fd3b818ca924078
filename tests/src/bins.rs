//! Finding PostgreSQL and pgtier binaries, and running Postgres as an unprivileged user when
//! we are root (Postgres refuses to run as root; CI runs as root).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// The directory holding initdb, pg_ctl, postgres, pg_basebackup, psql and pgbench.
pub fn pg_bindir() -> Result<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(find_bindir)
        .as_deref()
        .context("PostgreSQL server binaries not found: set PGTIER_PG_BINDIR, put initdb on PATH, or `apt-get install postgresql`")
}

fn find_bindir() -> Option<PathBuf> {
    let has_initdb = |d: &Path| d.join("initdb").is_file();
    if let Some(d) = std::env::var_os("PGTIER_PG_BINDIR").map(PathBuf::from) {
        return has_initdb(&d).then_some(d);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("initdb");
            if candidate.is_file() {
                // /usr/local/bin/initdb may be a symlink into the real bindir, which also has
                // pg_basebackup and friends.
                if let Some(real) = std::fs::canonicalize(&candidate)
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_owned))
                {
                    if real.join("pg_ctl").is_file() {
                        return Some(real);
                    }
                }
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&d) {
            return Some(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_initdb(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
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

/// The pgtier binary: `PGTIER_BIN`, else next to the running executable (target/<profile>/).
pub fn pgtier_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PGTIER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    for candidate in [dir.join("pgtier"), dir.join("../pgtier")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "pgtier binary not found next to {} (build it with `cargo build --bins`, or set PGTIER_BIN)",
        exe.display()
    )
}

/// The uid/gid to run Postgres as: None when we are not root.
pub fn pg_user() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "postgres" {
            return Ok(Some((f[2].parse()?, f[3].parse()?)));
        }
    }
    bail!(
        "running as root, but there is no `postgres` user to run PostgreSQL as (useradd postgres)"
    )
}

/// A command for a server program, run as the unprivileged user when we are root.
pub fn server_command(program: &str) -> Result<Command> {
    let mut cmd = Command::new(pg_bindir()?.join(program));
    if let Some((uid, gid)) = pg_user()? {
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    cmd.env_remove("PGDATA").env("LC_ALL", "C");
    Ok(cmd)
}

/// Gives a path to the unprivileged user (no-op when not root).
pub fn chown(path: &Path) -> Result<()> {
    if let Some((uid, gid)) = pg_user()? {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: c is a valid NUL-terminated path.
        if unsafe { libc::chown(c.as_ptr(), uid, gid) } != 0 {
            bail!(
                "chown {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}
