//! SHOW STATS, SHOW SERVERS, SHOW CLIENTS, SHOW CONFIG and SHOW LISTS, with PgBouncer's columns and units
//! where the concept matches (times in microseconds, `wait` in seconds plus `wait_us`).

use bytes::BytesMut;

use crate::clock::{anchored_now, format_utc};
use crate::runtime::{ClientState, Proxy};

use super::table::table;

/// Per database: totals since start and averages over the last stats period.
pub(super) fn stats(proxy: &Proxy) -> BytesMut {
    let metrics = proxy.metrics();
    let rows = metrics.totals().into_iter().map(|(db, t)| {
        let a = metrics.averages(&db);
        vec![
            db,
            t.xact_count.to_string(),
            t.query_count.to_string(),
            t.received.to_string(),
            t.sent.to_string(),
            t.xact_us.to_string(),
            t.query_us.to_string(),
            t.wait_us.to_string(),
            a.xact_count.to_string(),
            a.query_count.to_string(),
            a.recv.to_string(),
            a.sent.to_string(),
            a.xact_time.to_string(),
            a.query_time.to_string(),
            a.wait_time.to_string(),
            t.replica_xacts.to_string(),
        ]
    });
    table(
        &[
            "database",
            "total_xact_count",
            "total_query_count",
            "total_received",
            "total_sent",
            "total_xact_time",
            "total_query_time",
            "total_wait_time",
            "avg_xact_count",
            "avg_query_count",
            "avg_recv",
            "avg_sent",
            "avg_xact_time",
            "avg_query_time",
            "avg_wait_time",
            "total_replica_xact_count",
        ],
        rows,
        "SHOW",
    )
}

fn host_port(a: Option<std::net::SocketAddr>) -> (String, String) {
    a.map(|a| (a.ip().to_string(), a.port().to_string()))
        .unwrap_or_default()
}

/// Every server connection of every current pool.
pub(super) fn servers(proxy: &Proxy) -> BytesMut {
    let mut rows = Vec::new();
    for pool in proxy.pools() {
        let id = pool.id();
        for s in pool.servers() {
            let (addr, port) = host_port(Some(s.summary.peer));
            let (local_addr, local_port) = host_port(s.summary.local);
            let connected = format_utc(s.summary.connected_at);
            rows.push(vec![
                "S".into(),
                id.user.clone(),
                id.database.clone(),
                if s.active { "active" } else { "idle" }.into(),
                addr,
                port,
                local_addr,
                local_port,
                connected.clone(),
                connected,
                "0".into(),
                "0".into(),
                i32::from(pool.is_retired()).to_string(),
                format!("{:x}", s.summary.pid),
                String::new(),
                s.summary.pid.to_string(),
                s.summary.tls.map_or_else(String::new, |t| t.to_string()),
                "pgtier".into(),
                s.summary.prepared.to_string(),
                pool.node().to_string(),
            ]);
        }
    }
    rows.sort();
    let columns: Vec<&str> = CONNECTION_COLUMNS.iter().copied().chain(["node"]).collect();
    table(&columns, rows, "SHOW")
}

/// PgBouncer's columns of SHOW SERVERS and SHOW CLIENTS.
const CONNECTION_COLUMNS: [&str; 19] = [
    "type",
    "user",
    "database",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
];

/// Every logged-in client. `state` has PgBouncer's meaning (`active`: logged in and not
/// waiting; `waiting`: waiting for a server); `activity` tells idle from running.
pub(super) fn clients(proxy: &Proxy) -> BytesMut {
    // Request times are on the anchored timeline: waits are computed on it too.
    let now = anchored_now();
    let listen = proxy.settings().listen;
    let mut all = proxy.client_registry().all();
    all.sort_by_key(|(_, c)| c.connected_at);
    let rows = all.into_iter().map(|(ptr, c)| {
        let (state, since) = c.state();
        let waited = if state == ClientState::Waiting {
            now.saturating_sub(since)
        } else {
            0
        };
        let (addr, port) = host_port(Some(c.peer));
        vec![
            "C".into(),
            c.user.to_string(),
            c.database.to_string(),
            if state == ClientState::Waiting {
                "waiting"
            } else {
                "active"
            }
            .into(),
            addr,
            port,
            listen.ip().to_string(),
            listen.port().to_string(),
            format_utc(c.connected_at),
            format_utc(since),
            (waited / 1_000_000).to_string(),
            (waited % 1_000_000).to_string(),
            "0".into(),
            format!("{ptr:x}"),
            String::new(),
            ptr.to_string(),
            c.tls.map_or_else(String::new, |t| t.to_string()),
            c.application_name.to_string(),
            c.prepared().to_string(),
            state.as_str().into(),
            i32::from(c.pinned()).to_string(),
            c.listening().to_string(),
        ]
    });
    let columns: Vec<&str> = CONNECTION_COLUMNS
        .iter()
        .copied()
        .chain(["activity", "pinned", "listening"])
        .collect();
    table(&columns, rows, "SHOW")
}

/// Every top-level setting: key, value, default, changeable (yes/no).
pub(super) fn config(proxy: &Proxy) -> BytesMut {
    let settings = proxy.settings();
    let rows = crate::config::show::entries(&settings)
        .into_iter()
        .map(|e| {
            vec![
                e.key,
                e.value,
                e.default,
                if e.changeable { "yes" } else { "no" }.into(),
            ]
        });
    table(&["key", "value", "default", "changeable"], rows, "SHOW")
}

/// Counts of what pgtier holds, as PgBouncer's SHOW LISTS (dns_* are always 0: pgtier resolves
/// node names when it connects).
pub(super) fn lists(proxy: &Proxy) -> BytesMut {
    let snapshot = proxy.snapshot();
    let clients = proxy.client_registry().all();
    let used_clients = clients
        .iter()
        .filter(|(_, c)| c.state().0 != ClientState::Idle)
        .count();
    let pools = proxy.pools();
    let (mut free_servers, mut used_servers) = (0u32, 0u32);
    for p in &pools {
        let idle = p.idle_connections();
        free_servers += idle;
        used_servers += p.open_connections().saturating_sub(idle);
    }
    let items = [
        ("databases", snapshot.databases.len()),
        ("users", snapshot.settings.users.len()),
        ("pools", pools.len()),
        ("free_clients", 0),
        ("used_clients", used_clients),
        ("login_clients", 0),
        ("free_servers", free_servers as usize),
        ("used_servers", used_servers as usize),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    table(
        &["list", "items"],
        items
            .iter()
            .map(|(k, v)| vec![(*k).to_owned(), v.to_string()]),
        "SHOW",
    )
}
