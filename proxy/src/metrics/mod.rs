//! Prometheus metrics. Counters the data path bumps live in [`DbMetrics`], resolved once per
//! database to plain handles (atomics: no lock and no allocation per query); gauges that
//! describe state (connections, replicas) are filled from the proxy's state at each scrape
//! (by the HTTP exporter that serves `/metrics` on `metrics_listen`).
//!
//! The same counters feed the admin console's `SHOW STATS`.

mod gauges;
mod period;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

pub use gauges::Gauges;
pub use period::{Averages, STATS_PERIOD};

/// Which kind of node served a transaction (a label value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleLabel {
    /// The primary.
    Primary = 0,
    /// A replica.
    Replica = 1,
}

impl RoleLabel {
    const ALL: [RoleLabel; 2] = [RoleLabel::Primary, RoleLabel::Replica];

    fn as_str(self) -> &'static str {
        match self {
            RoleLabel::Primary => "primary",
            RoleLabel::Replica => "replica",
        }
    }
}

/// Why a transaction went where it went (a label value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasonLabel {
    /// The classifier's verdict (reads to replicas, anything else to the primary).
    Classified = 0,
    /// A certain write.
    Write = 1,
    /// A statement that leaves session state.
    SessionState = 2,
    /// A `pgtier:` hint comment.
    Hint = 3,
    /// `SET pgtier.route`.
    RouteMode = 4,
    /// A routing rule.
    Rule = 5,
    /// Meant for a replica, but none was eligible (lag, health, causal token): the primary.
    Fallback = 6,
    /// The client holds its server (session mode, pinned) or the database has no replicas:
    /// nothing was routed.
    Unrouted = 7,
}

impl ReasonLabel {
    const ALL: [ReasonLabel; 8] = [
        ReasonLabel::Classified,
        ReasonLabel::Write,
        ReasonLabel::SessionState,
        ReasonLabel::Hint,
        ReasonLabel::RouteMode,
        ReasonLabel::Rule,
        ReasonLabel::Fallback,
        ReasonLabel::Unrouted,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonLabel::Classified => "classified",
            ReasonLabel::Write => "write",
            ReasonLabel::SessionState => "session_state",
            ReasonLabel::Hint => "hint",
            ReasonLabel::RouteMode => "route_mode",
            ReasonLabel::Rule => "rule",
            ReasonLabel::Fallback => "fallback",
            ReasonLabel::Unrouted => "unrouted",
        }
    }
}

const REASONS: usize = ReasonLabel::ALL.len();

/// Which end of a relay stopped accepting data (a label value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerLabel {
    /// The client (`client_write_timeout`).
    Client = 0,
    /// The server (`server_write_timeout`).
    Server = 1,
}

impl PeerLabel {
    const ALL: [PeerLabel; 2] = [PeerLabel::Client, PeerLabel::Server];

    fn as_str(self) -> &'static str {
        match self {
            PeerLabel::Client => "client",
            PeerLabel::Server => "server",
        }
    }
}

/// What one transaction (or, in session mode, one stretch of a session) did, counted by the
/// relay.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// Queries answered (ReadyForQuery messages the client got).
    pub queries: u64,
    /// Bytes from the client forwarded to the server.
    pub received: u64,
    /// Bytes sent to the client.
    pub sent: u64,
    /// Time spent waiting for query answers.
    pub query_time: Duration,
}

/// Every metric family; one per process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    families: Families,
    /// Per database, created on first use and kept across reloads (counters never go back).
    databases: Mutex<HashMap<String, Arc<DbMetrics>>>,
    /// Config reloads that succeeded.
    pub reloads_ok: IntCounter,
    /// Config reloads that failed (the running config stayed).
    pub reloads_failed: IntCounter,
    /// Clients that became pinned to a server connection.
    pub pins: IntCounterVec,
    /// Notifications written to clients by pgtier's shared LISTEN connections.
    pub notifications_delivered: IntCounterVec,
    /// Clients closed because their queue of undelivered notifications overflowed.
    pub listen_clients_dropped: IntCounterVec,
    /// Open shared LISTEN connections (0 or 1 per database).
    pub listen_connections: IntGaugeVec,
    /// Client TLS handshakes that completed.
    pub tls_handshakes_ok: IntCounter,
    /// Client TLS handshakes that failed (or timed out).
    pub tls_handshakes_failed: IntCounter,
    period: period::Period,
}

#[derive(Debug)]
struct Families {
    transactions: IntCounterVec,
    queries: IntCounterVec,
    query_seconds: HistogramVec,
    pool_wait_seconds: HistogramVec,
    received: IntCounterVec,
    sent: IntCounterVec,
    xact_us: IntCounterVec,
    query_us: IntCounterVec,
    wait_us: IntCounterVec,
    errors: IntCounterVec,
    write_timeouts: IntCounterVec,
    causal_waits: HistogramVec,
    scope_fallbacks: IntCounterVec,
    gauges: gauges::Gauges,
}

/// The hot-path counters of one database.
#[derive(Debug)]
pub struct DbMetrics {
    transactions: [[IntCounter; REASONS]; 2],
    queries: [[IntCounter; REASONS]; 2],
    query_seconds: [Histogram; 2],
    pool_wait_seconds: Histogram,
    received: IntCounter,
    sent: IntCounter,
    xact_us: IntCounter,
    query_us: IntCounter,
    wait_us: IntCounter,
    errors: IntCounterVec,
    write_timeouts: [IntCounter; 2],
    causal_waits: Histogram,
    scope_fallbacks: IntCounter,
    database: String,
}

/// Totals of one database since start, for `SHOW STATS`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DbTotals {
    /// Transactions.
    pub xact_count: u64,
    /// Queries.
    pub query_count: u64,
    /// Bytes received from clients.
    pub received: u64,
    /// Bytes sent to clients.
    pub sent: u64,
    /// Microseconds in transactions.
    pub xact_us: u64,
    /// Microseconds in queries.
    pub query_us: u64,
    /// Microseconds clients waited for a server.
    pub wait_us: u64,
    /// Transactions served by replicas.
    pub replica_xacts: u64,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric")
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

/// Latency buckets from 100 µs to 10 s.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ]
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The state gauges (filled by the exporter at each scrape).
    pub fn gauges(&self) -> &Gauges {
        &self.families.gauges
    }

    /// Creates and registers every family (names prefixed `pgtier_`).
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("pgtier".into()), None).expect("valid registry prefix");
        let db_role_reason = &["database", "role", "reason"];
        let families = Families {
            transactions: counter_vec(
                "transactions_total",
                "Transactions by database, serving node role and routing reason.",
                db_role_reason,
            ),
            queries: counter_vec(
                "queries_total",
                "Queries (ReadyForQuery replies) by database, serving node role and routing reason.",
                db_role_reason,
            ),
            query_seconds: histogram_vec(
                "query_duration_seconds",
                "Time from sending a query to its ReadyForQuery, by database and serving node role.",
                &["database", "role"],
                latency_buckets(),
            ),
            pool_wait_seconds: histogram_vec(
                "pool_wait_seconds",
                "Time clients waited for a server connection, by database.",
                &["database"],
                latency_buckets(),
            ),
            received: counter_vec(
                "client_received_bytes_total",
                "Bytes received from clients and forwarded to servers.",
                &["database"],
            ),
            sent: counter_vec(
                "client_sent_bytes_total",
                "Bytes sent to clients.",
                &["database"],
            ),
            xact_us: counter_vec(
                "transaction_time_microseconds_total",
                "Time spent in transactions (server checked out), in microseconds.",
                &["database"],
            ),
            query_us: counter_vec(
                "query_time_microseconds_total",
                "Time spent waiting for query replies, in microseconds.",
                &["database"],
            ),
            wait_us: counter_vec(
                "pool_wait_time_microseconds_total",
                "Time clients waited for a server connection, in microseconds.",
                &["database"],
            ),
            errors: counter_vec(
                "errors_total",
                "Errors sent to logged-in clients (the servers' and pgtier's own), by database and SQLSTATE class (first two characters).",
                &["database", "class"],
            ),
            write_timeouts: counter_vec(
                "write_timeouts_total",
                "Connections closed because the peer accepted no data for client_write_timeout or server_write_timeout, by database and peer (client, server).",
                &["database", "peer"],
            ),
            causal_waits: histogram_vec(
                "causal_wait_seconds",
                "Reads that asked a replica for its replay position before running (to see the client's or its scope's causal token), by how long they waited.",
                &["database"],
                latency_buckets(),
            ),
            scope_fallbacks: counter_vec(
                "causal_scope_fallbacks_total",
                "Reads that went to the primary because no replica had replayed their causal scope's token (causal_scope).",
                &["database"],
            ),
            gauges: gauges::Gauges::new(),
        };
        let reloads = counter_vec(
            "reloads_total",
            "Config reloads by result (success, failure).",
            &["result"],
        );
        let tls_handshakes = counter_vec(
            "client_tls_handshakes_total",
            "TLS handshakes with clients by result (success, failure).",
            &["result"],
        );
        let pins = counter_vec(
            "pinned_clients_total",
            "Clients pinned to a server connection (session state in transaction mode).",
            &["database"],
        );
        let notifications_delivered = counter_vec(
            "notifications_delivered_total",
            "Notifications (LISTEN/NOTIFY) written to clients that listen through pgtier.",
            &["database"],
        );
        let listen_clients_dropped = counter_vec(
            "listen_clients_dropped_total",
            "Clients closed because they did not read their notifications (max_pending_notifications).",
            &["database"],
        );
        let listen_connections = gauge_vec(
            "listen_connections",
            "Open server connections pgtier listens on for its clients (one per database at most).",
            &["database"],
        );
        registry
            .register(Box::new(listen_connections.clone()))
            .expect("unique name");
        for c in [
            &notifications_delivered,
            &listen_clients_dropped,
            &families.transactions,
            &families.queries,
            &families.received,
            &families.sent,
            &families.xact_us,
            &families.query_us,
            &families.wait_us,
            &families.errors,
            &families.write_timeouts,
            &families.scope_fallbacks,
            &reloads,
            &tls_handshakes,
            &pins,
        ] {
            registry.register(Box::new(c.clone())).expect("unique name");
        }
        for h in [
            &families.query_seconds,
            &families.pool_wait_seconds,
            &families.causal_waits,
        ] {
            registry.register(Box::new(h.clone())).expect("unique name");
        }
        families.gauges.register(&registry);
        Metrics {
            reloads_ok: reloads.with_label_values(&["success"]),
            reloads_failed: reloads.with_label_values(&["failure"]),
            tls_handshakes_ok: tls_handshakes.with_label_values(&["success"]),
            tls_handshakes_failed: tls_handshakes.with_label_values(&["failure"]),
            pins,
            notifications_delivered,
            listen_clients_dropped,
            listen_connections,
            registry,
            families,
            databases: Mutex::default(),
            period: period::Period::default(),
        }
    }

    /// Counts a client TLS handshake that completed (`ok`) or not.
    pub fn tls_handshake(&self, ok: bool) {
        if ok {
            self.tls_handshakes_ok.inc()
        } else {
            self.tls_handshakes_failed.inc()
        }
    }

    /// The counters of `database` (created on first use).
    pub fn database(&self, database: &str) -> Arc<DbMetrics> {
        let mut map = self.databases.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(database.to_owned())
            .or_insert_with(|| Arc::new(DbMetrics::new(&self.families, database)))
            .clone()
    }

    /// Totals per database, in name order.
    pub fn totals(&self) -> Vec<(String, DbTotals)> {
        let map = self.databases.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.totals())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

impl DbMetrics {
    fn new(f: &Families, database: &str) -> DbMetrics {
        let by = |vec: &IntCounterVec| {
            RoleLabel::ALL.map(|role| {
                ReasonLabel::ALL.map(|reason| {
                    vec.with_label_values(&[database, role.as_str(), reason.as_str()])
                })
            })
        };
        DbMetrics {
            transactions: by(&f.transactions),
            queries: by(&f.queries),
            query_seconds: RoleLabel::ALL.map(|role| {
                f.query_seconds
                    .with_label_values(&[database, role.as_str()])
            }),
            pool_wait_seconds: f.pool_wait_seconds.with_label_values(&[database]),
            received: f.received.with_label_values(&[database]),
            sent: f.sent.with_label_values(&[database]),
            xact_us: f.xact_us.with_label_values(&[database]),
            query_us: f.query_us.with_label_values(&[database]),
            wait_us: f.wait_us.with_label_values(&[database]),
            errors: f.errors.clone(),
            write_timeouts: PeerLabel::ALL.map(|peer| {
                f.write_timeouts
                    .with_label_values(&[database, peer.as_str()])
            }),
            causal_waits: f.causal_waits.with_label_values(&[database]),
            scope_fallbacks: f.scope_fallbacks.with_label_values(&[database]),
            database: database.to_owned(),
        }
    }

    /// Counts a finished transaction.
    pub fn transaction(&self, role: RoleLabel, reason: ReasonLabel, tally: &Tally, took: Duration) {
        self.transactions[role as usize][reason as usize].inc();
        self.queries[role as usize][reason as usize].inc_by(tally.queries);
        self.received.inc_by(tally.received);
        self.sent.inc_by(tally.sent);
        self.xact_us.inc_by(took.as_micros() as u64);
        self.query_us.inc_by(tally.query_time.as_micros() as u64);
    }

    /// Records one query's time to ReadyForQuery.
    pub fn query(&self, role: RoleLabel, took: Duration) {
        self.query_seconds[role as usize].observe(took.as_secs_f64());
    }

    /// Records a read routed to a replica: how long it waited for a replica to replay its
    /// causal token (None: no wait), and whether it went to the primary because of its causal
    /// scope's token.
    pub fn causal_read(&self, waited: Option<Duration>, scope_fallback: bool) {
        if let Some(w) = waited {
            self.causal_waits.observe(w.as_secs_f64());
        }
        if scope_fallback {
            self.scope_fallbacks.inc();
        }
    }

    /// Records a client's wait for a server connection.
    pub fn pool_wait(&self, took: Duration) {
        self.pool_wait_seconds.observe(took.as_secs_f64());
        self.wait_us.inc_by(took.as_micros() as u64);
    }

    /// Counts an error sent to a client (`sqlstate`: its code; errors are rare, so a labelled
    /// lookup is fine here).
    pub fn error(&self, sqlstate: &str) {
        let class = sqlstate.get(..2).unwrap_or("??");
        self.errors
            .with_label_values(&[&self.database, class])
            .inc();
    }

    /// Counts a connection closed because `peer` accepted no data in time.
    pub fn write_timeout(&self, peer: PeerLabel) {
        self.write_timeouts[peer as usize].inc();
    }

    /// Totals since start.
    pub fn totals(&self) -> DbTotals {
        let sum = |m: &[[IntCounter; REASONS]; 2]| m.iter().flatten().map(|c| c.get()).sum();
        DbTotals {
            xact_count: sum(&self.transactions),
            query_count: sum(&self.queries),
            received: self.received.get(),
            sent: self.sent.get(),
            xact_us: self.xact_us.get(),
            query_us: self.query_us.get(),
            wait_us: self.wait_us.get(),
            replica_xacts: self.transactions[RoleLabel::Replica as usize]
                .iter()
                .map(|c| c.get())
                .sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_and_render_with_the_prefix() {
        let m = Metrics::new();
        let db = m.database("app");
        let tally = Tally {
            queries: 3,
            received: 100,
            sent: 200,
            query_time: Duration::from_millis(2),
        };
        db.transaction(
            RoleLabel::Replica,
            ReasonLabel::Classified,
            &tally,
            Duration::from_millis(5),
        );
        db.transaction(
            RoleLabel::Primary,
            ReasonLabel::Write,
            &tally,
            Duration::from_millis(5),
        );
        db.error("42P01");
        let t = m.database("app").totals();
        assert_eq!(t.xact_count, 2);
        assert_eq!(t.query_count, 6);
        assert_eq!(t.replica_xacts, 1);
        assert_eq!((t.received, t.sent), (200, 400));
        assert_eq!(t.xact_us, 10_000);
        let text = m.encode();
        assert!(text.contains(
            "pgtier_transactions_total{database=\"app\",reason=\"classified\",role=\"replica\"} 1"
        ));
        assert!(text.contains("pgtier_errors_total{class=\"42\",database=\"app\"} 1"));
    }
}
