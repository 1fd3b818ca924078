//! What a scrape answers: the state gauges filled from the proxy's state (reset first, so
//! pools and nodes a reload removed disappear), then every metric in the text format.

use std::collections::HashMap;

use crate::cluster::{NodeState, Role};
use crate::runtime::Proxy;

fn node_state_name(s: NodeState) -> &'static str {
    match s {
        NodeState::Unknown => "unknown",
        NodeState::Healthy => "healthy",
        NodeState::Lagging => "lagging",
        NodeState::Banned => "banned",
        NodeState::Down => "down",
        NodeState::Excluded => "excluded",
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Primary => "primary",
        Role::Replica => "replica",
        Role::Unknown => "unknown",
    }
}

/// Fills the gauges from `proxy`'s state and encodes every metric.
pub fn render(proxy: &Proxy) -> String {
    let metrics = proxy.metrics();
    let g = metrics.gauges();
    // Reset first: a reload may change the zone.
    g.info.reset();
    g.info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), &proxy.settings().raw.zone])
        .set(1);

    g.clients.reset();
    g.pinned.reset();
    let mut clients: HashMap<(&str, &str, &str), i64> = HashMap::new();
    let mut pinned: HashMap<&str, i64> = HashMap::new();
    let all = proxy.client_registry().all();
    for (_, c) in &all {
        let state = c.state().0;
        *clients
            .entry((&c.database, &c.user, state.as_str()))
            .or_default() += 1;
        if c.pinned() {
            *pinned.entry(&c.database).or_default() += 1;
        }
    }
    for ((db, user, state), n) in clients {
        g.clients.with_label_values(&[db, user, state]).set(n);
    }
    for (db, n) in pinned {
        g.pinned.with_label_values(&[db]).set(n);
    }

    g.servers.reset();
    g.prepared.reset();
    for pool in proxy.pools() {
        let id = pool.id();
        let node = pool.node().to_string();
        let servers = pool.servers();
        let active = servers.iter().filter(|s| s.active).count() as i64;
        let idle = servers.len() as i64 - active;
        let prepared: usize = servers
            .iter()
            .filter(|s| !s.active)
            .map(|s| s.summary.prepared)
            .sum();
        let labels = [id.database.as_str(), id.user.as_str(), node.as_str()];
        g.servers
            .with_label_values(&[labels[0], labels[1], labels[2], "active"])
            .set(active);
        g.servers
            .with_label_values(&[labels[0], labels[1], labels[2], "idle"])
            .set(idle);
        g.prepared.with_label_values(&labels).set(prepared as i64);
    }

    g.lag_bytes.reset();
    g.lag_seconds.reset();
    g.node_state.reset();
    g.node_info.reset();
    g.paused.reset();
    let snapshot = proxy.snapshot();
    let mut names: Vec<&String> = snapshot.databases.keys().collect();
    names.sort();
    let mut seen = g.bans_seen.lock().unwrap_or_else(|p| p.into_inner());
    for name in names {
        let rt = &snapshot.databases[name];
        g.paused
            .with_label_values(&[name])
            .set(i64::from(rt.control.is_paused()));
        let topology = rt.router.topology();
        let view = topology.view();
        let configured = &topology.settings().nodes;
        for (i, n) in view.nodes.iter().enumerate() {
            let node = n.addr.to_string();
            g.node_state
                .with_label_values(&[name, &node, role_name(n.role), node_state_name(n.state)])
                .set(1);
            let zone = configured.get(i).and_then(|c| c.zone.as_deref());
            g.node_info
                .with_label_values(&[name, &node, zone.unwrap_or_default()])
                .set(1);
            if n.role == Role::Replica {
                if let Some(b) = n.byte_lag {
                    g.lag_bytes.with_label_values(&[name, &node]).set(b as i64);
                }
                if let Some(t) = n.time_lag {
                    g.lag_seconds
                        .with_label_values(&[name, &node])
                        .set(t.as_secs_f64());
                }
            }
        }
        // A reload may replace the topology (its count starts again): count only increases.
        let now = topology.bans_total();
        let last = seen.entry(name.clone()).or_default();
        let delta = if now >= *last { now - *last } else { now };
        if delta > 0 {
            g.bans.with_label_values(&[name]).inc_by(delta);
        }
        *last = now;
    }
    drop(seen);
    metrics.encode()
}
