//! Gauges that describe state rather than count events (filled by the exporter from the
//! proxy's state at each scrape), and the text encoding of the whole registry.

use std::collections::HashMap;

use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use super::{counter_vec, gauge_vec, Metrics};

/// The state gauges.
#[derive(Debug)]
pub struct Gauges {
    pub(crate) clients: IntGaugeVec,
    pub(crate) pinned: IntGaugeVec,
    pub(crate) servers: IntGaugeVec,
    pub(crate) prepared: IntGaugeVec,
    pub(crate) paused: IntGaugeVec,
    pub(crate) lag_bytes: IntGaugeVec,
    pub(crate) lag_seconds: GaugeVec,
    pub(crate) node_state: IntGaugeVec,
    pub(crate) node_info: IntGaugeVec,
    pub(crate) bans: IntCounterVec,
    /// Ban counts last seen per database: bans are counted by each topology, which a reload
    /// may replace.
    pub(crate) bans_seen: std::sync::Mutex<HashMap<String, u64>>,
    pub(crate) info: IntGaugeVec,
}

impl Gauges {
    pub(super) fn new() -> Gauges {
        Gauges {
            clients: gauge_vec(
                "client_connections",
                "Client connections by database, user and state (idle, waiting, active).",
                &["database", "user", "state"],
            ),
            pinned: gauge_vec(
                "pinned_clients",
                "Clients pinned to a server connection now, by database.",
                &["database"],
            ),
            servers: gauge_vec(
                "server_connections",
                "Server connections by database, user, node and state (active, idle).",
                &["database", "user", "node", "state"],
            ),
            prepared: gauge_vec(
                "prepared_statements",
                "Statements pgtier prepared on idle server connections, by database, user and node.",
                &["database", "user", "node"],
            ),
            paused: gauge_vec(
                "database_paused",
                "1 while an admin PAUSE (or KILL) holds the database's new transactions.",
                &["database"],
            ),
            lag_bytes: gauge_vec(
                "replica_lag_bytes",
                "Replica WAL bytes behind the primary at the last check.",
                &["database", "node"],
            ),
            lag_seconds: GaugeVec::new(
                Opts::new(
                    "replica_lag_seconds",
                    "Replica replay time lag at the last check (0 when fully replayed).",
                ),
                &["database", "node"],
            )
            .expect("valid metric"),
            node_state: gauge_vec(
                "node_state",
                "1 for each node's current state (unknown, healthy, lagging, banned, down, excluded) and role.",
                &["database", "node", "role", "state"],
            ),
            // A separate info gauge (one series per node) rather than a zone label on every
            // per-node series: join with `* on (database, node) group_left (zone)`.
            node_info: gauge_vec(
                "node_info",
                "1 for each node, with its zone from the config ('' when none).",
                &["database", "node", "zone"],
            ),
            bans: counter_vec(
                "node_bans_total",
                "Times a node was taken out of rotation (failed check, failed connection, admin BAN).",
                &["database"],
            ),
            bans_seen: std::sync::Mutex::default(),
            info: gauge_vec(
                "info",
                "pgtier version and the process's own zone ('' when none) (value 1).",
                &["version", "zone"],
            ),
        }
    }

    pub(super) fn register(&self, registry: &Registry) {
        for g in [
            &self.clients,
            &self.pinned,
            &self.servers,
            &self.prepared,
            &self.paused,
            &self.lag_bytes,
            &self.node_state,
            &self.node_info,
            &self.info,
        ] {
            registry.register(Box::new(g.clone())).expect("unique name");
        }
        registry
            .register(Box::new(self.lag_seconds.clone()))
            .expect("unique name");
        registry
            .register(Box::new(self.bans.clone()))
            .expect("unique name");
    }
}

impl Metrics {
    /// The registry in the text exposition format (gauges as last filled).
    pub fn encode(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding our own registry into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
