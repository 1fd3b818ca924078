//! Fresh temporary directories (a small `tempfile` replacement) that the postgres user can reach.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

use crate::bins::{chown, pg_account};

/// Creates a new directory `<temp dir>/<prefix>-<pid>-<n>-<suffix>` with mode 0755, owned by
/// the postgres user when we are root.
pub fn make_temp_dir(prefix: &str) -> Result<PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir();
    check_reachable(&base)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let dir = base.join(format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    if dir.to_string_lossy().contains(['\'', '\n']) {
        bail!("temp dir {dir:?} contains a quote or newline; set TMPDIR to a plain path");
    }
    std::fs::create_dir(&dir)
        .with_context(|| format!("creating {} (is TMPDIR writable?)", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 0755 {}", dir.display()))?;
    chown(&dir)?;
    Ok(dir)
}

/// When root: checks that the postgres user can traverse every directory down to `base`.
fn check_reachable(base: &Path) -> Result<()> {
    let Some(user) = pg_account()? else {
        return Ok(());
    };
    let base = std::fs::canonicalize(base)
        .with_context(|| format!("temp dir {} does not exist (TMPDIR?)", base.display()))?;
    for dir in base.ancestors() {
        let m = std::fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?;
        let mode = m.mode();
        let ok = mode & 0o001 != 0
            || (m.uid() == user.uid && mode & 0o100 != 0)
            || (m.gid() == user.gid && mode & 0o010 != 0);
        if !ok {
            bail!(
                "the temp dir {} is not reachable by the postgres user (uid {}): {} has mode {:o}; \
                 set TMPDIR to a world-traversable directory such as /tmp",
                base.display(),
                user.uid,
                dir.display(),
                mode & 0o7777
            );
        }
    }
    Ok(())
}
