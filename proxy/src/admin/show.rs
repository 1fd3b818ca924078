//! The admin console's commands and their result sets.

use bytes::BytesMut;

use crate::protocol::messages::{command_complete, data_row, row_description};
use crate::protocol::SqlState;
use crate::proxy::Proxy;
use crate::router::route::{Choice, ClientRouting};

/// A command's error: SQLSTATE and message.
pub type Failure = (SqlState, String);

/// Runs one admin command; returns its reply (without ReadyForQuery).
pub fn run(proxy: &Proxy, command: &str) -> Result<BytesMut, Failure> {
    let (verb, rest) = split(command);
    if !verb.eq_ignore_ascii_case("show") {
        return Err(unsupported(command));
    }
    let (what, rest) = split(rest);
    match what.to_ascii_lowercase().as_str() {
        "help" => Ok(table(
            &["command"],
            [
                "SHOW HELP",
                "SHOW VERSION",
                "SHOW DATABASES",
                "SHOW POOLS",
                "SHOW REPLICAS",
                "SHOW ROUTE [database] <sql>",
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
        "pools" => Ok(pools(proxy)),
        "replicas" => Ok(replicas(proxy)),
        "route" => route(proxy, rest),
        _ => Err(unsupported(command)),
    }
}

fn unsupported(command: &str) -> Failure {
    (
        SqlState::FEATURE_NOT_SUPPORTED,
        format!(
            "pgtier admin console: \"{}\" is not supported (see SHOW HELP)",
            command.chars().take(60).collect::<String>()
        ),
    )
}

fn split(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    (&s[..end], s[end..].trim_start())
}

/// A result set of text columns.
fn table(columns: &[&str], rows: impl IntoIterator<Item = Vec<String>>, tag: &str) -> BytesMut {
    let mut out = BytesMut::new();
    row_description(&mut out, columns);
    for row in rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        data_row(&mut out, &cells);
    }
    command_complete(&mut out, tag);
    out
}

/// Databases in name order.
fn sorted_databases(proxy: &Proxy) -> Vec<&crate::config::Database> {
    let mut dbs: Vec<_> = proxy.settings_ref().databases.values().collect();
    dbs.sort_by(|a, b| a.name.cmp(&b.name));
    dbs
}

fn databases(proxy: &Proxy) -> BytesMut {
    let rows = sorted_databases(proxy).into_iter().map(|db| {
        let router = proxy.router(&db.name);
        let view = router.topology().view();
        let (host, port) = view
            .primary
            .map(|p| {
                let a = &db.nodes()[p].addr;
                (a.host.clone(), a.port.to_string())
            })
            .unwrap_or_default();
        let current: u32 = proxy
            .pools()
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
        ]
    });
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
        ],
        rows,
        "SHOW",
    )
}

fn pools(proxy: &Proxy) -> BytesMut {
    let mut pools = proxy.pools();
    pools.sort_by(|a, b| {
        (&a.id().database, &a.id().user, a.node().to_string()).cmp(&(
            &b.id().database,
            &b.id().user,
            b.node().to_string(),
        ))
    });
    let rows = pools.iter().map(|p| {
        let open = p.open_connections();
        let idle = p.idle_connections();
        vec![
            p.id().database.clone(),
            p.id().user.clone(),
            p.node().to_string(),
            open.saturating_sub(idle).to_string(),
            idle.to_string(),
            p.settings().size.to_string(),
            format!("{:?}", p.settings().mode).to_lowercase(),
        ]
    });
    table(
        &[
            "database",
            "user",
            "node",
            "sv_active",
            "sv_idle",
            "pool_size",
            "pool_mode",
        ],
        rows,
        "SHOW",
    )
}

fn replicas(proxy: &Proxy) -> BytesMut {
    let mut rows = Vec::new();
    for db in sorted_databases(proxy) {
        let router = proxy.router(&db.name);
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
            "last_error",
        ],
        rows,
        "SHOW",
    )
}

fn route(proxy: &Proxy, rest: &str) -> Result<BytesMut, Failure> {
    let dbs = sorted_databases(proxy);
    let (first, after) = split(rest);
    let (db, sql) = match dbs.iter().find(|d| d.name == first) {
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
            SqlState("42601"),
            "pgtier admin console: SHOW ROUTE needs a statement".into(),
        ));
    }
    let router = proxy.router(&db.name);
    let client = ClientRouting::default();
    let explanation = router.explain(sql.as_bytes(), &client);
    // Where it would run now (for a client with no causal token).
    let node = if !router.splits() || explanation.destination == "primary" {
        router.topology().view().primary
    } else {
        match router.choose(client.floor(), explanation.lag.as_ref()) {
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
