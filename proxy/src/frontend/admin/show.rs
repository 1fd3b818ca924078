//! The admin console's commands and their result sets.

use std::sync::Arc;

use bytes::BytesMut;

use crate::protocol::SqlState;
use crate::router::route::{Choice, ClientRouting, Router};
use crate::runtime::{ClientState, Proxy, Snapshot};

use super::table::{split, table, unsupported, Failure};

/// Runs one SHOW command (`rest`: what follows SHOW); returns its reply.
pub fn run(proxy: &Proxy, command: &str, rest: &str) -> Result<BytesMut, Failure> {
    let (what, rest) = split(rest);
    match what.to_ascii_lowercase().as_str() {
        "help" => Ok(table(
            &["command"],
            [
                "SHOW HELP",
                "SHOW VERSION",
                "SHOW DATABASES",
                "SHOW USERS",
                "SHOW POOLS",
                "SHOW STATS",
                "SHOW SERVERS",
                "SHOW CLIENTS",
                "SHOW CONFIG",
                "SHOW LISTS",
                "SHOW REPLICAS",
                "SHOW CAUSAL",
                "SHOW LISTENERS",
                "SHOW ROUTE [database] <sql>",
                "PAUSE [database]",
                "RESUME [database]",
                "RELOAD",
                "RECONNECT [database]",
                "KILL <database>",
                "SHUTDOWN",
                "BAN <host:port>",
                "UNBAN <host:port>",
            ]
            .iter()
            .map(|c| vec![c.to_string()]),
            "SHOW",
        )),
        "version" => Ok(table(
            &["version"],
            [vec![format!("pgtier {}", env!("CARGO_PKG_VERSION"))]],
            "SHOW",
        )),
        "databases" => Ok(databases(proxy)),
        "users" => Ok(users(proxy)),
        "pools" => Ok(pools(proxy)),
        "replicas" => Ok(replicas(proxy)),
        "causal" => Ok(causal(proxy)),
        "route" => route(proxy, rest),
        "stats" => Ok(super::lists::stats(proxy)),
        "servers" => Ok(super::lists::servers(proxy)),
        "clients" => Ok(super::lists::clients(proxy)),
        "config" => Ok(super::lists::config(proxy)),
        "lists" => Ok(super::lists::lists(proxy)),
        "listeners" => Ok(listeners(proxy)),
        _ => Err(unsupported(command)),
    }
}

/// Channels pgtier listens on for transaction-mode clients, with their listening clients.
fn listeners(proxy: &Proxy) -> BytesMut {
    table(
        &["database", "channel", "listeners"],
        proxy
            .listeners()
            .rows()
            .into_iter()
            .map(|(db, ch, n)| vec![db, ch, n.to_string()]),
        "SHOW",
    )
}

/// Databases in name order, each with its router.
fn sorted_databases(snapshot: &Snapshot) -> Vec<(&crate::config::Database, &Arc<Router>)> {
    let mut dbs: Vec<_> = snapshot
        .settings
        .databases
        .values()
        .filter_map(|db| Some((db, &snapshot.databases.get(&db.name)?.router)))
        .collect();
    dbs.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    dbs
}

fn databases(proxy: &Proxy) -> BytesMut {
    let snapshot = proxy.snapshot();
    let pools = proxy.pools();
    let registry = proxy.client_registry();
    let rows = sorted_databases(&snapshot).into_iter().map(|(db, router)| {
        let view = router.topology().view();
        let (host, port) = view
            .primary
            .map(|p| {
                let a = &db.nodes()[p].addr;
                (a.host.clone(), a.port.to_string())
            })
            .unwrap_or_default();
        let current: u32 = pools
            .iter()
            .filter(|p| p.id().database == db.name)
            .map(|p| p.open_connections())
            .sum();
        vec![
            db.name.clone(),
            host,
            port,
            db.dbname.clone(),
            db.pool.size.to_string(),
            db.pool.min_size.to_string(),
            format!("{:?}", db.pool.mode).to_lowercase(),
            current.to_string(),
            db.nodes().len().to_string(),
            i32::from(snapshot.databases[&db.name].control.is_paused()).to_string(),
            String::new(),
            "0".into(),
            db.pool.max_db_connections.unwrap_or(0).to_string(),
            "0".into(),
            db.max_client_connections.unwrap_or(0).to_string(),
            registry.database_clients(&db.name).to_string(),
        ]
    });
    // force_user, reserve_pool and disabled: PgBouncer's columns, which pgtier has no setting
    // for (pgbouncer_exporter reads them by name). max_connections is max_db_connections
    // (per node; 0: no limit).
    table(
        &[
            "name",
            "host",
            "port",
            "database",
            "pool_size",
            "min_pool_size",
            "pool_mode",
            "current_connections",
            "nodes",
            "paused",
            "force_user",
            "reserve_pool",
            "max_connections",
            "disabled",
            "max_client_connections",
            "current_client_connections",
        ],
        rows,
        "SHOW",
    )
}

/// One row per user: configured ones, and those `auth_query` found that have pools. PgBouncer's
/// columns; a limit of 0 is no limit, an empty pool_size or pool_mode is the database's.
fn users(proxy: &Proxy) -> BytesMut {
    let snapshot = proxy.snapshot();
    let settings = &snapshot.settings;
    let registry = proxy.client_registry();
    let pools = proxy.pools();
    let mut names: Vec<&str> = settings.users.keys().map(String::as_str).collect();
    names.extend(pools.iter().map(|p| p.id().user.as_str()));
    names.sort_unstable();
    names.dedup();
    let rows = names.into_iter().map(|name| {
        let user = settings.users.get(name);
        let limits = user.map(|u| u.limits.clone()).unwrap_or_default();
        let current: u32 = pools
            .iter()
            .filter(|p| p.id().user == name)
            .map(|p| p.open_connections())
            .sum();
        let max_clients = match user {
            Some(u) => settings.max_user_client_connections(u).unwrap_or(0),
            None => settings.raw.max_user_client_connections,
        };
        vec![
            name.to_owned(),
            limits.pool_size.map(|n| n.to_string()).unwrap_or_default(),
            "0".into(),
            limits
                .pool_mode
                .map(|m| format!("{m:?}").to_lowercase())
                .unwrap_or_default(),
            limits
                .max_connections
                .unwrap_or(settings.raw.max_user_connections)
                .to_string(),
            current.to_string(),
            max_clients.to_string(),
            registry.user_clients(name).to_string(),
        ]
    });
    table(
        &[
            "name",
            "pool_size",
            "reserve_pool_size",
            "pool_mode",
            "max_user_connections",
            "current_connections",
            "max_user_client_connections",
            "current_client_connections",
        ],
        rows,
        "SHOW",
    )
}

/// The shared causal tokens (causal_scope): one row per database, user or application name
/// whose clients share one, with the latest commit position it holds.
fn causal(proxy: &Proxy) -> BytesMut {
    let snapshot = proxy.snapshot();
    let mut rows = Vec::new();
    for (db, _) in sorted_databases(&snapshot) {
        let Some(rt) = snapshot.databases.get(&db.name) else {
            continue;
        };
        for r in rt.scopes.rows() {
            rows.push(vec![
                db.name.clone(),
                r.scope.as_str().to_owned(),
                r.key,
                r.token.to_string(),
            ]);
        }
    }
    table(&["database", "scope", "key", "token"], rows, "SHOW")
}

/// One row per (database, user, node), PgBouncer's columns plus `node` and `pool_size`.
/// Clients count on the row of the node serving them; idle and waiting clients on the row of
/// the primary (where a client that runs nothing belongs), so the rows add up to the total.
fn pools(proxy: &Proxy) -> BytesMut {
    let snapshot = proxy.snapshot();
    let clients = proxy.client_registry().all();
    // Request times are on the anchored timeline: waits are computed on it too.
    let now = crate::clock::anchored_now();
    let mut upstreams = proxy.upstreams();
    upstreams
        .sort_by(|a, b| (&a.id().database, &a.id().user).cmp(&(&b.id().database, &b.id().user)));
    let mut rows = Vec::new();
    for u in &upstreams {
        let id = u.id();
        let home = snapshot
            .databases
            .get(&id.database)
            .and_then(|rt| rt.router.topology().view().primary)
            .unwrap_or(0);
        for (i, p) in u.pools().iter().enumerate() {
            let (mut cl_active, mut cl_waiting, mut maxwait_us) = (0u32, 0u32, 0u64);
            for (_, c) in &clients {
                if *c.database != id.database || *c.user != id.user {
                    continue;
                }
                let (state, since) = c.state();
                if c.node().unwrap_or(home) != i {
                    continue;
                }
                if state == ClientState::Waiting {
                    cl_waiting += 1;
                    maxwait_us = maxwait_us.max(now.saturating_sub(since));
                } else {
                    cl_active += 1;
                }
            }
            let active = p.active_connections();
            let idle = p.idle_connections();
            rows.push(vec![
                id.database.clone(),
                id.user.clone(),
                p.node().to_string(),
                cl_active.to_string(),
                cl_waiting.to_string(),
                "0".into(),
                "0".into(),
                active.to_string(),
                "0".into(),
                "0".into(),
                idle.to_string(),
                "0".into(),
                "0".into(),
                "0".into(),
                (maxwait_us / 1_000_000).to_string(),
                (maxwait_us % 1_000_000).to_string(),
                format!("{:?}", p.settings().mode).to_lowercase(),
                p.settings().size.to_string(),
            ]);
        }
    }
    table(
        &[
            "database",
            "user",
            "node",
            "cl_active",
            "cl_waiting",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req",
            "sv_active",
            "sv_active_cancel",
            "sv_being_canceled",
            "sv_idle",
            "sv_used",
            "sv_tested",
            "sv_login",
            "maxwait",
            "maxwait_us",
            "pool_mode",
            "pool_size",
        ],
        rows,
        "SHOW",
    )
}

fn replicas(proxy: &Proxy) -> BytesMut {
    let snapshot = proxy.snapshot();
    let mut rows = Vec::new();
    for (db, router) in sorted_databases(&snapshot) {
        let topology = router.topology();
        let view = topology.view();
        for (i, n) in view.nodes.iter().enumerate() {
            rows.push(vec![
                db.name.clone(),
                n.addr.to_string(),
                format!("{:?}", n.role).to_lowercase(),
                format!("{:?}", n.state).to_lowercase(),
                n.byte_lag.map(|b| b.to_string()).unwrap_or_default(),
                n.time_lag
                    .map(|t| format!("{:.3}", t.as_secs_f64() * 1000.0))
                    .unwrap_or_default(),
                n.replay_lsn.to_string(),
                topology.outstanding(i).to_string(),
                n.weight.to_string(),
                topology.settings().nodes[i]
                    .zone
                    .clone()
                    .unwrap_or_default(),
                n.last_error.clone().unwrap_or_default(),
            ]);
        }
    }
    table(
        &[
            "database",
            "node",
            "role",
            "state",
            "byte_lag",
            "time_lag_ms",
            "replay_lsn",
            "outstanding",
            "weight",
            "zone",
            "last_error",
        ],
        rows,
        "SHOW",
    )
}

fn route(proxy: &Proxy, rest: &str) -> Result<BytesMut, Failure> {
    let snapshot = proxy.snapshot();
    let dbs = sorted_databases(&snapshot);
    let (first, after) = split(rest);
    let (db, sql) = match dbs.iter().find(|d| d.0.name == first) {
        Some(d) => (*d, after),
        None if dbs.len() == 1 => (dbs[0], rest),
        None => {
            return Err((
                SqlState::FEATURE_NOT_SUPPORTED,
                "pgtier admin console: several databases: write SHOW ROUTE <database> <sql>".into(),
            ))
        }
    };
    if sql.is_empty() {
        return Err((
            SqlState::SYNTAX_ERROR,
            "pgtier admin console: SHOW ROUTE needs a statement".into(),
        ));
    }
    let (db, router) = db;
    let client = ClientRouting::default();
    let explanation = router.explain(sql.as_bytes(), &client);
    // Where it would run now (for a client with no causal token).
    let node = if !router.splits() || explanation.destination == "primary" {
        router.topology().view().primary
    } else {
        match router.choose(client.floor(), explanation.lag.as_ref(), None) {
            Choice::Node(i) | Choice::Check(i) => Some(i),
            Choice::Primary => router.topology().view().primary,
        }
    };
    let node = node
        .map(|i| db.nodes()[i].addr.to_string())
        .unwrap_or_default();
    Ok(table(
        &[
            "database",
            "destination",
            "node",
            "class",
            "reason",
            "explanation",
        ],
        [vec![
            db.name.clone(),
            explanation.destination.to_owned(),
            node,
            format!("{:?}", explanation.class).to_lowercase(),
            explanation.reason.to_string(),
            explanation.to_string(),
        ]],
        "SHOW",
    ))
}
