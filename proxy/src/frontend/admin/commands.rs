//! The admin console's commands that change things: PAUSE, RESUME, RELOAD, RECONNECT, KILL,
//! SHUTDOWN, BAN and UNBAN, with PgBouncer's meanings where they exist.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tracing::{info, warn};

use crate::protocol::messages::command_complete;
use crate::protocol::SqlState;
use crate::runtime::{DbRuntime, Proxy, ReloadError, Snapshot};

use super::table::{split, table, Failure};

/// How often PAUSE looks whether the database's transactions have ended.
const PAUSE_POLL: Duration = Duration::from_millis(10);

/// Runs a control command (`verb` already lower-case); None if `verb` is not one.
pub(super) async fn run(
    proxy: &Proxy,
    verb: &str,
    rest: &str,
) -> Option<Result<BytesMut, Failure>> {
    let (arg, extra) = split(rest);
    if !extra.is_empty() {
        return Some(Err((
            SqlState::SYNTAX_ERROR,
            format!("pgtier admin console: {verb} takes at most one argument"),
        )));
    }
    let arg = (!arg.is_empty()).then_some(arg);
    Some(match verb {
        "pause" => pause(proxy, arg).await,
        "resume" => resume(proxy, arg),
        "reload" => reload(proxy),
        "reconnect" => reconnect(proxy, arg),
        "kill" => kill(proxy, arg),
        "shutdown" => {
            info!("admin SHUTDOWN");
            proxy.control().request_shutdown();
            Ok(done("SHUTDOWN"))
        }
        "ban" => ban(proxy, arg, true),
        "unban" => ban(proxy, arg, false),
        _ => return None,
    })
}

fn done(tag: &str) -> BytesMut {
    let mut out = BytesMut::new();
    command_complete(&mut out, tag);
    out
}

/// The databases a command with optional `arg` applies to (all when None), with their
/// runtimes, all from `snapshot`: names checked against one snapshot must not index another
/// (a RELOAD in between may have removed them).
fn databases(
    snapshot: &Snapshot,
    arg: Option<&str>,
) -> Result<Vec<(String, Arc<DbRuntime>)>, Failure> {
    match arg {
        Some(db) => match snapshot.databases.get(db) {
            Some(rt) => Ok(vec![(db.to_owned(), rt.clone())]),
            None => Err((
                SqlState::INVALID_CATALOG_NAME,
                format!("pgtier admin console: no database \"{db}\""),
            )),
        },
        None => {
            let mut all: Vec<_> = snapshot
                .databases
                .iter()
                .map(|(name, rt)| (name.clone(), rt.clone()))
                .collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(all)
        }
    }
}

/// The names of `dbs` (for logs and pool filters).
fn names(dbs: &[(String, Arc<DbRuntime>)]) -> Vec<&str> {
    dbs.iter().map(|(name, _)| name.as_str()).collect()
}

/// Server connections of `database` in use now (checked out, or being opened for a client).
fn busy_servers(proxy: &Proxy, database: &str) -> u32 {
    proxy
        .pools()
        .iter()
        .filter(|p| p.id().database == database)
        .map(|p| p.open_connections().saturating_sub(p.idle_connections()))
        .sum()
}

/// New transactions wait; returns once running ones ended (up to `shutdown_timeout`).
async fn pause(proxy: &Proxy, arg: Option<&str>) -> Result<BytesMut, Failure> {
    let snapshot = proxy.snapshot();
    let dbs = databases(&snapshot, arg)?;
    for (_, rt) in &dbs {
        rt.control.pause();
    }
    let dbs = names(&dbs);
    info!(databases = ?dbs, "admin PAUSE");
    let limit = snapshot.settings.raw.shutdown_timeout;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let busy: u32 = dbs.iter().map(|db| busy_servers(proxy, db)).sum();
        if busy == 0 {
            return Ok(done("PAUSE"));
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(
                busy,
                "PAUSE: transactions still running after shutdown_timeout"
            );
            return Err((
                SqlState::QUERY_CANCELED,
                format!(
                    "pgtier admin console: paused, but {busy} server connections are still in use after {limit:?} (shutdown_timeout); clients holding a server (session mode, pinned) keep it"
                ),
            ));
        }
        crate::timers::sleep(PAUSE_POLL).await;
    }
}

fn resume(proxy: &Proxy, arg: Option<&str>) -> Result<BytesMut, Failure> {
    let dbs = databases(&proxy.snapshot(), arg)?;
    for (_, rt) in &dbs {
        rt.control.resume();
    }
    info!(databases = ?names(&dbs), "admin RESUME");
    Ok(done("RESUME"))
}

/// Re-reads the config file; the reply lists keys that need a restart.
fn reload(proxy: &Proxy) -> Result<BytesMut, Failure> {
    match proxy.reload() {
        Ok(restart) => {
            let rows = restart.iter().map(|k| {
                vec![
                    (*k).to_owned(),
                    "changed in the file; takes effect after a restart".to_owned(),
                ]
            });
            let mut out = BytesMut::new();
            if !restart.is_empty() {
                out = table(&["key", "note"], rows, "SHOW");
            }
            out.extend_from_slice(&done("RELOAD"));
            Ok(out)
        }
        Err(e @ ReloadError::NoFile) => Err((SqlState::FEATURE_NOT_SUPPORTED, e.to_string())),
        Err(ReloadError::Invalid(e)) => Err((
            SqlState::CONFIG_FILE_ERROR,
            format!("pgtier: reload rejected, the running config stays: {e}"),
        )),
    }
}

/// Closes the database's server connections: idle ones now, busy ones when released.
fn reconnect(proxy: &Proxy, arg: Option<&str>) -> Result<BytesMut, Failure> {
    let dbs = databases(&proxy.snapshot(), arg)?;
    let dbs = names(&dbs);
    for pool in proxy.pools() {
        if dbs.contains(&pool.id().database.as_str()) {
            pool.reconnect();
        }
    }
    info!(databases = ?dbs, "admin RECONNECT");
    Ok(done("RECONNECT"))
}

/// Closes every client of the database (57P01) and its server connections, and pauses it:
/// new transactions wait until RESUME (as PgBouncer's KILL).
fn kill(proxy: &Proxy, arg: Option<&str>) -> Result<BytesMut, Failure> {
    let Some(db) = arg else {
        return Err((
            SqlState::SYNTAX_ERROR,
            "pgtier admin console: KILL needs a database name".into(),
        ));
    };
    // The runtime comes from the snapshot the name was checked in.
    let dbs = databases(&proxy.snapshot(), Some(db))?;
    crate::fault::reload_point(proxy);
    for (_, rt) in dbs {
        rt.control.pause();
        rt.control.kill();
    }
    proxy.poke_clients();
    for pool in proxy.pools() {
        if pool.id().database == db {
            pool.reconnect();
        }
    }
    warn!(
        database = db,
        "admin KILL: clients closed, database paused until RESUME"
    );
    Ok(done("KILL"))
}

/// Takes a node (`host:port`) out of rotation in every database that has it, or puts it back.
fn ban(proxy: &Proxy, arg: Option<&str>, ban: bool) -> Result<BytesMut, Failure> {
    let verb = if ban { "BAN" } else { "UNBAN" };
    let Some(addr) = arg else {
        return Err((
            SqlState::SYNTAX_ERROR,
            format!("pgtier admin console: {verb} needs a node (host:port, as in SHOW REPLICAS)"),
        ));
    };
    let snapshot = proxy.snapshot();
    let mut found = 0;
    for rt in snapshot.databases.values() {
        let topology = rt.router.topology();
        if let Some(i) = topology.node_index(addr) {
            if ban {
                topology.admin_ban(i);
            } else {
                topology.admin_unban(i);
            }
            found += 1;
        }
    }
    if found == 0 {
        return Err((
            SqlState::UNDEFINED_OBJECT,
            format!("pgtier admin console: no configured node \"{addr}\" (see SHOW REPLICAS)"),
        ));
    }
    warn!(node = addr, "admin {verb}");
    Ok(done(verb))
}
