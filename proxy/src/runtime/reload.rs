//! Building what each database runs with from a config, reusing what a reload did not change:
//! a router whose settings are the same (its monitors, learned functions and cache stay), a
//! topology whose nodes are the same, and pools whose node, login and limits are the same
//! (their server connections stay). Pools no longer used are retired: idle connections close
//! at once, busy ones when their transaction ends.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::info;

use crate::backend::{CapScope, Caps, Pool, PoolId, Pools, ServerLogin, Upstream};
use crate::cluster::{ConfiguredRole, Topology};
pub(super) use crate::config::diff::restart_required;
use crate::config::{
    ClientAuth, ConfigError, Database, NodeAddr, PoolSettings, ServerTlsSettings, Settings, User,
};
use crate::control::Control;
use crate::metrics::Metrics;
use crate::router::classify::FunctionTable;
use crate::router::route::Router;
use crate::router::scopes::ScopeRegistry;
use crate::runtime::auth_lookup::AuthLookup;
use crate::tls::{ClientTls, ServerTls};

use super::{DbRuntime, Limits, Snapshot};

/// How pgtier logs in to `db`'s servers for `user`, with `tls`.
pub(super) fn server_login(db: &Database, user: &User, tls: &ServerTls) -> ServerLogin {
    ServerLogin {
        user: user.server_user.clone(),
        password: user.server_password.clone(),
        // md5 pass-through: the hash is md5(password || role name), so only for the same role.
        md5: match &user.auth {
            ClientAuth::Md5(secret) if user.server_user == user.name => {
                Some(secret.hash().to_owned())
            }
            _ => None,
        },
        dbname: db.dbname.clone(),
        max_prepared_statements: db.pool.max_prepared_statements,
        tls: tls.clone(),
    }
}

/// A pool of `id` on `node`, under the shared limits its settings name.
pub(super) fn new_pool(
    caps: &Caps,
    id: &PoolId,
    node: &NodeAddr,
    login: &ServerLogin,
    settings: &PoolSettings,
) -> Arc<Pool> {
    let mut shared = Vec::new();
    // Database first, then user: every pool takes slots in the same order.
    if let Some(max) = settings.max_db_connections {
        shared.push(caps.get(CapScope::Database, &id.database, node, max));
    }
    if let Some(max) = settings.max_user_connections {
        shared.push(caps.get(CapScope::User, &id.user, node, max));
    }
    Pool::new(
        id.clone(),
        node.clone(),
        login.clone(),
        settings.clone(),
        shared,
    )
}

/// The server-side TLS of every database, its files read now (databases with the same
/// settings share one). Err: the database and the reason, as a problem of `file`.
pub(super) fn server_tls(
    settings: &Settings,
    file: &str,
) -> Result<HashMap<String, ServerTls>, ConfigError> {
    let mut built: Vec<(&ServerTlsSettings, ServerTls)> = Vec::new();
    let mut out = HashMap::with_capacity(settings.databases.len());
    let mut names: Vec<&String> = settings.databases.keys().collect();
    names.sort();
    for name in names {
        let s = &settings.databases[name].server_tls;
        let tls = match built.iter().find(|(b, _)| *b == s) {
            Some((_, t)) => t.clone(),
            None => {
                let t = ServerTls::new(s).map_err(|e| ConfigError::Files {
                    file: file.to_owned(),
                    reason: format!("database \"{name}\": {e}"),
                })?;
                built.push((s, t.clone()));
                t
            }
        };
        out.insert(name.clone(), tls);
    }
    Ok(out)
}

/// The client-side TLS of `settings` (None: disabled), its files read now.
pub(super) fn client_tls(
    settings: &Settings,
    file: &str,
) -> Result<Option<Arc<ClientTls>>, ConfigError> {
    ClientTls::build(&settings.client_tls).map_err(|e| ConfigError::Files {
        file: file.to_owned(),
        reason: e.to_string(),
    })
}

/// `db`'s entry of a [`server_tls`] map (built from the same settings, so always there; if
/// not, TLS fails rather than fall back to plain text).
pub(super) fn tls_of(tls: &HashMap<String, ServerTls>, db: &Database) -> ServerTls {
    tls.get(&db.name).cloned().unwrap_or_else(|| {
        ServerTls::failed(
            db.server_tls.mode,
            "server TLS settings were not loaded".into(),
        )
    })
}

/// What every snapshot's databases share (counters, admin state, causal tokens).
pub(super) struct Kept<'a> {
    /// Wakes every session when a node fails (see `Topology::wake_on_failure`).
    pub shutdown: &'a crate::shutdown::Shutdown,
    pub metrics: &'a Metrics,
    pub control: &'a Control,
    pub scopes: &'a ScopeRegistry,
}

/// The runtime of every database of `settings`, reusing `old`'s routers where nothing they
/// depend on changed.
pub(super) fn build_databases(
    settings: &Settings,
    tls: &HashMap<String, ServerTls>,
    old: Option<&Snapshot>,
    kept: &Kept<'_>,
) -> HashMap<String, Arc<DbRuntime>> {
    // Process-wide, like the statement names it bounds; applies to the next Parse.
    crate::prepared::names::StatementNames::global().set_limit(
        usize::try_from(settings.raw.max_prepared_statement_bytes_total).unwrap_or(usize::MAX),
    );
    settings
        .databases
        .values()
        .map(|db| {
            let previous = old.and_then(|o| Some((&o.settings, o.databases.get(&db.name)?)));
            let server_tls = tls_of(tls, db);
            let router = match previous {
                Some((old_settings, rt)) => {
                    reuse_router(settings, db, &server_tls, old_settings, &rt.router)
                }
                None => new_router(settings, db, &server_tls, None),
            };
            router.topology().wake_on_failure(kept.shutdown.poker());
            // A new lookup (an empty cache) per snapshot: a reload may change its settings.
            let auth_lookup = db
                .auth_query
                .as_ref()
                .map(|a| Arc::new(AuthLookup::new(a, db, router.clone(), server_tls.clone())));
            let runtime = DbRuntime {
                auth_lookup,
                server_tls,
                router,
                limits: Arc::new(Limits::of(settings, db)),
                metrics: kept.metrics.database(&db.name),
                control: kept.control.database(&db.name),
                scopes: kept.scopes.database(&db.name),
            };
            (db.name.clone(), Arc::new(runtime))
        })
        .collect()
}

/// Function knowledge and classifier cache size are global settings every router uses.
fn same_classifier_settings(a: &Settings, b: &Settings) -> bool {
    a.raw.write_functions == b.raw.write_functions
        && a.raw.read_only_functions == b.raw.read_only_functions
        && a.raw.classify_cache_size == b.raw.classify_cache_size
}

fn reuse_router(
    settings: &Settings,
    db: &Database,
    tls: &ServerTls,
    old_settings: &Settings,
    old: &Arc<Router>,
) -> Arc<Router> {
    let same_cluster = old.topology().settings() == &db.cluster && old.topology().tls() == tls;
    if same_cluster
        && old.settings() == &db.routing
        && same_classifier_settings(settings, old_settings)
    {
        return old.clone();
    }
    info!(database = %db.name, nodes_changed = !same_cluster, "routing settings changed: new router");
    let topology = if same_cluster {
        old.topology().clone()
    } else if db.nodes().iter().any(|n| n.role != ConfiguredRole::Primary) {
        // Nodes it keeps start from what the old topology knew (rotation, lag, bans).
        Topology::start_after(db.cluster.clone(), tls.clone(), old.topology())
    } else {
        Topology::unmonitored(db.cluster.clone())
    };
    new_router(settings, db, tls, Some(topology))
}

/// A router for `db`; on `topology` if given, else on a new one whose monitors start now (a new
/// replica joins the rotation after its first lag check).
fn new_router(
    settings: &Settings,
    db: &Database,
    tls: &ServerTls,
    topology: Option<Arc<Topology>>,
) -> Arc<Router> {
    // A lone configured primary needs no monitor (nothing to route between): no extra server
    // connection, as with PgBouncer.
    let watch = db.nodes().iter().any(|n| n.role != ConfiguredRole::Primary);
    let topology = topology.unwrap_or_else(|| {
        if watch {
            Topology::start(db.cluster.clone(), tls.clone())
        } else {
            Topology::unmonitored(db.cluster.clone())
        }
    });
    let functions = FunctionTable::builtin().with_overrides(
        &settings.raw.write_functions,
        &settings.raw.read_only_functions,
    );
    let router = Arc::new(Router::new(
        topology,
        db.routing.clone(),
        functions,
        settings.raw.classify_cache_size as usize,
        watch,
    ));
    router.learn_functions();
    router
}

/// Brings the pools in line with `settings`: per (database, user) in use, every node's pool is
/// kept if its node, login and limits are unchanged, else replaced; pools of removed
/// databases or users, and replaced pools, are retired.
pub(super) fn reconcile_pools(
    pools: &Pools,
    caps: &Caps,
    settings: &Settings,
    tls: &HashMap<String, ServerTls>,
) {
    for upstream in pools.upstreams() {
        let id = upstream.id().clone();
        let (Some(db), Some(user)) = (
            settings.databases.get(&id.database),
            settings.users.get(&id.user),
        ) else {
            info!(pool = %id, "database or user removed: its pools drain");
            pools.set(id, None);
            upstream.pools().iter().for_each(|p| p.retire());
            continue;
        };
        let login = server_login(db, user, &tls_of(tls, db));
        let wanted_settings = db.pool_for(user);
        let mut reused = 0;
        let wanted: Vec<Arc<Pool>> = db
            .nodes()
            .iter()
            .map(|n| {
                let same = upstream.pools().iter().find(|p| {
                    p.node() == &n.addr && p.login() == &login && p.settings() == &wanted_settings
                });
                match same {
                    Some(p) => {
                        reused += 1;
                        p.clone()
                    }
                    None => new_pool(caps, &id, &n.addr, &login, &wanted_settings),
                }
            })
            .collect();
        let unchanged = reused == wanted.len()
            && wanted.len() == upstream.pools().len()
            && wanted
                .iter()
                .zip(upstream.pools())
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if unchanged {
            continue;
        }
        for old in upstream.pools() {
            if !wanted.iter().any(|p| Arc::ptr_eq(p, old)) {
                info!(pool = %id, node = %old.node(), "pool changed or removed: it drains");
                old.retire();
            }
        }
        pools.set(id, Some(Arc::new(Upstream::new(wanted))));
    }
}
