//! The TOML schema, key by key. `config/pgtier.toml` documents every key with its default.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

pub use super::tls::SslMode;

/// When a server connection goes back to its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// Held by one client until it disconnects.
    Session,
    /// Returned when a transaction ends (ReadyForQuery 'I').
    #[default]
    Transaction,
}

/// What transaction pooling does with statements that leave session state on a server
/// (SET of unreported parameters, SQL PREPARE, LISTEN, temp tables, session advisory locks...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatePolicy {
    /// The client keeps its server connection until it disconnects.
    #[default]
    Pin,
    /// The statement fails with 0A000 and a message naming it.
    Reject,
}

/// Whether the primary serves reads that a replica could serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrimaryReads {
    /// Only when no replica is eligible.
    #[default]
    Fallback,
    /// Always a candidate, alongside the replicas.
    Include,
}

/// Whether reads may leave pgtier's own zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneMode {
    /// Replicas in pgtier's zone first, then replicas in other zones, then the primary.
    #[default]
    Prefer,
    /// Only replicas in pgtier's zone, else the primary.
    Only,
}

/// Which clients share a causal token: a read waits for (or avoids replicas behind) every
/// write committed by a client of its scope, not only its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CausalScope {
    /// Each client connection has its own token.
    Connection,
    /// All clients of the same user (in one database) share one.
    #[default]
    User,
    /// Clients with the same application_name share one.
    ApplicationName,
    /// Every client of the database shares one.
    Database,
}

impl CausalScope {
    /// The config value.
    pub fn as_str(self) -> &'static str {
        match self {
            CausalScope::Connection => "connection",
            CausalScope::User => "user",
            CausalScope::ApplicationName => "application_name",
            CausalScope::Database => "database",
        }
    }
}

/// How log lines are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// A node's configured role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Always the primary.
    Primary,
    /// Always a replica.
    Replica,
    /// Whatever `pg_is_in_recovery()` says (failover needs no config change).
    Auto,
}

/// A node: `"host:port"`, or a table with its role and weight.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum NodeEntry {
    /// `"host:port"`.
    Addr(String),
    /// `{ addr = "host:port", role = "auto", weight = 1 }`.
    Full(NodeTable),
}

/// `{ addr = "host:port", role = "...", weight = N }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeTable {
    /// `host:port`.
    pub addr: String,
    /// Role (default: primary under `primary`, replica under `replicas`, auto under `nodes`).
    pub role: Option<NodeRole>,
    /// Share of reads relative to other replicas (default 1; 0: only when nothing else is).
    pub weight: Option<u32>,
    /// The zone (or region) the node runs in: reads prefer replicas in pgtier's own `zone`.
    pub zone: Option<String>,
}

/// How a client proves who it is to pgtier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum AuthMethod {
    /// SCRAM-SHA-256 (the default, as in Postgres).
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 challenge-response.
    #[serde(rename = "md5")]
    Md5,
    /// No password.
    #[serde(rename = "trust")]
    Trust,
    /// A TLS client certificate whose common name is the user name (no password).
    #[serde(rename = "cert")]
    Cert,
}

/// The whole file. `Serialize` gives the top-level keys (`SHOW CONFIG`); users and databases
/// (with their passwords) are never serialized.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the client listener binds.
    pub listen: String,
    /// Default pool mode.
    pub pool_mode: PoolMode,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` overrides it.
    pub log_level: String,
    /// Log line format: `text` or `json`.
    pub log_format: LogFormat,
    /// Address of the Prometheus `/metrics` endpoint (empty: disabled).
    pub metrics_listen: String,
    /// Queries slower than this are logged at warn with the node that served them (0: off).
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub slow_query_threshold: Duration,
    /// Threads serving clients: 1 runs everything on one thread (like PgBouncer), 0 uses one
    /// per CPU core.
    pub workers: u32,
    /// With `workers = 1`: one loop keeps the clients waiting between transactions and runs
    /// their common reads (the fast lane) as plain calls, instead of a task per client.
    pub lane_loop: bool,
    /// Most client connections at once (beyond: FATAL 53300).
    pub max_client_conn: u32,
    /// Most clients logged in to one database at once (beyond: FATAL 53300; 0: no limit).
    pub max_db_client_connections: u32,
    /// Most clients logged in as one user at once (beyond: FATAL 53300; 0: no limit).
    pub max_user_client_connections: u32,
    /// Most server connections of one database to one node, across its users (a pool that
    /// needs one more waits like a full pool; 0: no limit).
    pub max_db_connections: u32,
    /// Most server connections of one user to one node, across databases (0: no limit).
    pub max_user_connections: u32,
    /// Default server connections per (database, user) pool.
    pub pool_size: u32,
    /// Server connections each pool keeps open even when idle.
    pub min_pool_size: u32,
    /// Transaction mode: pin clients that leave session state, or reject such statements.
    pub session_state: SessionStatePolicy,
    /// Prepared statements kept per server connection in transaction mode; the least recently
    /// used beyond it is closed on the server.
    pub max_prepared_statements: u32,
    /// Bytes (names, query texts, parameter types) of one client's named prepared statements.
    pub max_prepared_statement_bytes_per_client: u64,
    /// Bytes of all clients' named prepared statements together; also bounds the table of
    /// statement texts that gives them their shared server-side names.
    pub max_prepared_statement_bytes_total: u64,
    /// Parameters Postgres does not report that transaction mode still tracks per client
    /// (from a client's `SET` outside a transaction) and sets on each server before the
    /// client's transactions, instead of pinning the client.
    pub track_extra_params: Vec<String>,
    /// Largest client message pgtier buffers, in bytes (COPY data streams through regardless).
    pub max_message_size: u32,
    /// Transaction mode: notifications queued for one listening client that has not read them
    /// yet; one more closes the client (FATAL 53400).
    pub max_pending_notifications: u32,
    /// Transaction mode: distinct channels listened on through pgtier, across all databases
    /// (a LISTEN beyond it fails with 53400).
    pub max_listen_channels: u32,
    /// How long a client waits for a server connection before FATAL 53300.
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub query_wait_timeout: Duration,
    /// Limit on connecting and logging in to a server.
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub server_connect_timeout: Duration,
    /// Idle server connections above `min_pool_size` are closed after this long (0: never).
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub server_idle_timeout: Duration,
    /// Server connections are closed when released after living this long (0: never).
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub server_lifetime: Duration,
    /// Clients idle (outside a transaction) this long are disconnected (0: never).
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub client_idle_timeout: Duration,
    /// Clients idle inside a transaction this long are disconnected (0: never).
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub idle_transaction_timeout: Duration,
    /// A query the server has not answered after this long is canceled (the client gets the
    /// server's 57014); a server that ignores the cancel is closed (0: never).
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub query_timeout: Duration,
    /// A transaction open this long ends its client's connection (FATAL 25P04; the server is
    /// closed, so nothing of it commits) (0: never).
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub transaction_timeout: Duration,
    /// A client that accepts no data for this long while pgtier writes to it is closed (and
    /// the server it held is closed, never returned mid-result).
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub client_write_timeout: Duration,
    /// A server that accepts no data for this long while pgtier writes to it is closed (and
    /// its client gets FATAL 08006).
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub server_write_timeout: Duration,
    /// Admin console sessions that send no command for this long are closed (0: never).
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub admin_idle_timeout: Duration,
    /// Limit on a client's startup and authentication.
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub client_login_timeout: Duration,
    /// On SIGTERM/SIGINT, how long running transactions may finish before clients are closed.
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub shutdown_timeout: Duration,
    /// How often each node's role and replication lag are checked.
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub lag_check_interval: Duration,
    /// A replica whose replay is this far behind in time leaves the read rotation (0: no limit).
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub max_replica_lag: Duration,
    /// A replica this many WAL bytes behind the primary leaves the read rotation (0: no limit).
    pub max_replica_lag_bytes: u64,
    /// Whether the primary serves reads only as a fallback or always alongside replicas.
    pub primary_reads: PrimaryReads,
    /// Equally loaded replicas take reads in turn (true), or a client's reads in quick
    /// succession stay on its last replica (false).
    pub replica_round_robin: bool,
    /// How long a write waits for a primary to be known (after a failover) before failing.
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub primary_wait_timeout: Duration,
    /// How long a read after a write may wait for a replica to replay that write before it
    /// goes to the primary instead (0: do not wait).
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub causal_read_wait: Duration,
    /// Send ParameterStatus `pgtier.causal_lsn` to the client after each write transaction.
    pub report_causal_lsn: bool,
    /// Which clients share a causal token (connection, user, application_name, database).
    pub causal_scope: CausalScope,
    /// Functions whose calls always go to the primary (in addition to the built-in list).
    pub write_functions: Vec<String>,
    /// Volatile functions known not to write (their calls may go to a replica).
    pub read_only_functions: Vec<String>,
    /// Distinct statement texts whose classification is cached.
    pub classify_cache_size: u32,
    /// The `[users]` entry whose server credentials the lag monitors use (default: the first
    /// one not in `admin_users`).
    #[serde(serialize_with = "super::show::serialize_opt_string")]
    pub monitor_user: Option<String>,
    /// TLS towards clients: disable, allow, prefer, require, verify-ca, verify-full (unset:
    /// prefer when `client_tls_cert_file` is set, else disable).
    #[serde(serialize_with = "super::tls::serialize_opt_mode")]
    pub client_tls_sslmode: Option<SslMode>,
    /// pgtier's certificate chain for clients (PEM).
    pub client_tls_cert_file: String,
    /// Its private key (PEM).
    pub client_tls_key_file: String,
    /// CAs whose client certificates pgtier accepts (PEM; empty: none are asked for).
    pub client_tls_ca_file: String,
    /// TLS versions for clients: secure (1.2 and 1.3), all, or a list such as "tlsv1.3".
    pub client_tls_protocols: String,
    /// Cipher suites for clients: default, or a colon-separated list of IANA names.
    pub client_tls_ciphers: String,
    /// TLS towards the servers (same values as client_tls_sslmode).
    pub server_tls_sslmode: SslMode,
    /// CAs that sign the servers' certificates (PEM; needed by verify-ca and verify-full).
    pub server_tls_ca_file: String,
    /// pgtier's client certificate for the servers (PEM; empty: none).
    pub server_tls_cert_file: String,
    /// Its private key (PEM).
    pub server_tls_key_file: String,
    /// TLS versions towards the servers.
    pub server_tls_protocols: String,
    /// Cipher suites towards the servers.
    pub server_tls_ciphers: String,
    /// PgBouncer's userlist.txt (`"user" "secret"` lines): users not in `[users]`, and the
    /// password of `[users]` entries that have none. Relative to the config file's directory.
    pub auth_file: String,
    /// How users that come from `auth_file` authenticate (as a `[users]` entry's `auth`).
    pub auth_type: AuthMethod,
    /// A `[users]` entry whose server credentials run `auth_query` on the primary, for client
    /// users not in `[users]` or `auth_file` (unset: no lookup).
    #[serde(serialize_with = "super::show::serialize_opt_string")]
    pub auth_user: Option<String>,
    /// The lookup: `$1` is the user name; returns (name, secret) where the secret is a SCRAM
    /// verifier or md5 hash (NULL or no row: no such user).
    pub auth_query: String,
    /// Database (on the servers) the query runs in (empty: the client's database).
    pub auth_dbname: String,
    /// How long a looked-up secret is used before it is looked up again.
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub auth_cache_ttl: Duration,
    /// How long "no such user" is remembered (so a flood of bad names cannot flood the primary).
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub auth_cache_negative_ttl: Duration,
    /// Most user names remembered per database (found or not).
    pub auth_cache_size: u32,
    /// `[users]` entries that may use the admin console (database `pgtier` or `pgbouncer`).
    pub admin_users: Vec<String>,
    // Several pgtier processes (issue 21).
    /// Bind the client listener with SO_REUSEPORT, so several pgtier processes share its
    /// address (the kernel spreads new connections between them).
    pub so_reuseport: bool,
    /// On SIGTERM/SIGINT/SHUTDOWN, how long clients go on as usual after the listener closed,
    /// before draining (idle clients closed, the others at their transaction's end).
    #[serde(
        deserialize_with = "super::duration::deserialize",
        serialize_with = "super::show::serialize_duration"
    )]
    pub shutdown_grace: Duration,
    /// The zone (or region) this pgtier runs in (empty: none, replicas are not told apart).
    pub zone: String,
    /// Whether reads prefer replicas in `zone` or use only them.
    pub zone_mode: ZoneMode,
    /// This process's id among its peers, put in the cancel keys it issues (0: peering off).
    pub peer_id: u32,
    /// An extra address to listen on, one per process, where peers forward cancel requests
    /// (empty: none; needed when processes share `listen` with so_reuseport).
    pub peer_listen: String,
    /// `[peers]`: each peer's id and the address it can be reached at (`listen` or
    /// `peer_listen`); a cancel whose key names one of them is forwarded there.
    pub peers: BTreeMap<String, String>,
    /// Client users, by name.
    #[serde(skip_serializing)]
    pub users: BTreeMap<String, UserConfig>,
    /// Databases clients may connect to, by the name clients use.
    #[serde(skip_serializing)]
    pub databases: BTreeMap<String, DatabaseConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:6432".into(),
            pool_mode: PoolMode::Transaction,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            metrics_listen: String::new(),
            slow_query_threshold: Duration::ZERO,
            workers: 1,
            lane_loop: true,
            max_client_conn: 1000,
            max_db_client_connections: 0,
            max_user_client_connections: 0,
            max_db_connections: 0,
            max_user_connections: 0,
            pool_size: 20,
            min_pool_size: 0,
            session_state: SessionStatePolicy::Pin,
            max_prepared_statements: 500,
            max_prepared_statement_bytes_per_client: 16 * 1024 * 1024,
            max_prepared_statement_bytes_total: 256 * 1024 * 1024,
            track_extra_params: Vec::new(),
            max_message_size: 64 * 1024 * 1024,
            max_pending_notifications: 1000,
            max_listen_channels: 10_000,
            query_wait_timeout: Duration::from_secs(120),
            server_connect_timeout: Duration::from_secs(15),
            server_idle_timeout: Duration::from_secs(600),
            server_lifetime: Duration::from_secs(3600),
            client_idle_timeout: Duration::ZERO,
            idle_transaction_timeout: Duration::ZERO,
            query_timeout: Duration::ZERO,
            transaction_timeout: Duration::ZERO,
            client_write_timeout: Duration::from_secs(60),
            server_write_timeout: Duration::from_secs(120),
            admin_idle_timeout: Duration::from_secs(600),
            client_login_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            lag_check_interval: Duration::from_millis(100),
            max_replica_lag: Duration::from_secs(1),
            max_replica_lag_bytes: 16 * 1024 * 1024,
            primary_reads: PrimaryReads::Fallback,
            replica_round_robin: false,
            primary_wait_timeout: Duration::from_secs(10),
            causal_read_wait: Duration::from_millis(2),
            report_causal_lsn: true,
            causal_scope: CausalScope::User,
            write_functions: Vec::new(),
            read_only_functions: Vec::new(),
            classify_cache_size: 10_000,
            client_tls_sslmode: None,
            client_tls_cert_file: String::new(),
            client_tls_key_file: String::new(),
            client_tls_ca_file: String::new(),
            client_tls_protocols: "secure".into(),
            client_tls_ciphers: "default".into(),
            server_tls_sslmode: SslMode::Prefer,
            server_tls_ca_file: String::new(),
            server_tls_cert_file: String::new(),
            server_tls_key_file: String::new(),
            server_tls_protocols: "secure".into(),
            server_tls_ciphers: "default".into(),
            auth_file: String::new(),
            auth_user: None,
            auth_query: "SELECT usename, passwd FROM pg_shadow WHERE usename = $1".into(),
            auth_dbname: String::new(),
            auth_cache_ttl: Duration::from_secs(60),
            auth_cache_negative_ttl: Duration::from_secs(5),
            auth_cache_size: 10_000,
            auth_type: AuthMethod::ScramSha256,
            monitor_user: None,
            admin_users: Vec::new(),
            so_reuseport: false,
            shutdown_grace: Duration::from_secs(1),
            zone: String::new(),
            zone_mode: ZoneMode::Prefer,
            peer_id: 0,
            peer_listen: String::new(),
            peers: BTreeMap::new(),
            users: BTreeMap::new(),
            databases: BTreeMap::new(),
        }
    }
}

/// `[users.NAME]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserConfig {
    /// Plaintext password, a SCRAM verifier (`SCRAM-SHA-256$...`) or an MD5 hash (`md5...`).
    pub password: Option<String>,
    /// Client authentication method.
    pub auth: AuthMethod,
    /// User name pgtier logs in to the servers as (default: the same name).
    pub server_user: Option<String>,
    /// Password pgtier logs in to the servers with (default: `password` when plaintext).
    pub server_password: Option<String>,
    /// Overrides the database's `pool_size` for this user's pools.
    pub pool_size: Option<u32>,
    /// Overrides the database's `pool_mode` for this user's clients.
    pub pool_mode: Option<PoolMode>,
    /// Overrides the global `max_user_connections` for this user.
    pub max_user_connections: Option<u32>,
    /// Overrides the global `max_user_client_connections` for this user.
    pub max_user_client_connections: Option<u32>,
    /// Overrides the database's `query_timeout` for this user (0: never).
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    pub query_timeout: Option<Duration>,
    /// Overrides the database's `transaction_timeout` for this user (0: never).
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    pub transaction_timeout: Option<Duration>,
    /// Overrides the database's `causal_scope` for this user's clients.
    pub causal_scope: Option<CausalScope>,
}

/// `[databases.NAME]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The primary: `"host:port"` or `{ addr, role, weight }`.
    pub primary: Option<NodeEntry>,
    /// Streaming replicas, each `"host:port"` or `{ addr, role, weight }`.
    pub replicas: Vec<NodeEntry>,
    /// Nodes whose roles pgtier discovers (`role = "auto"` by default), for failover.
    pub nodes: Vec<NodeEntry>,
    /// Overrides the global `max_replica_lag`.
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    pub max_replica_lag: Option<Duration>,
    /// Overrides the global `max_replica_lag_bytes`.
    pub max_replica_lag_bytes: Option<u64>,
    /// Overrides the global `primary_reads`.
    pub primary_reads: Option<PrimaryReads>,
    /// Overrides the global `replica_round_robin`.
    pub replica_round_robin: Option<bool>,
    /// Overrides the global `monitor_user`.
    pub monitor_user: Option<String>,
    /// Database name on the servers (default: the section name).
    pub dbname: Option<String>,
    /// Overrides the global `pool_size`.
    pub pool_size: Option<u32>,
    /// Overrides the global `min_pool_size`.
    pub min_pool_size: Option<u32>,
    /// Overrides the global `pool_mode`.
    pub pool_mode: Option<PoolMode>,
    /// Overrides the global `causal_scope`.
    pub causal_scope: Option<CausalScope>,
    /// Overrides the global `max_db_connections`.
    pub max_db_connections: Option<u32>,
    /// Overrides the global `max_db_client_connections`.
    pub max_db_client_connections: Option<u32>,
    /// Overrides the global `query_timeout`.
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    pub query_timeout: Option<Duration>,
    /// Overrides the global `transaction_timeout`.
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    pub transaction_timeout: Option<Duration>,
    /// Overrides the global `auth_user` for this database's lookups.
    pub auth_user: Option<String>,
    /// Overrides the global `auth_query`.
    pub auth_query: Option<String>,
    /// Overrides the global `auth_dbname`.
    pub auth_dbname: Option<String>,
    /// Overrides the global `server_tls_sslmode`.
    pub server_tls_sslmode: Option<SslMode>,
    /// Overrides the global `server_tls_ca_file`.
    pub server_tls_ca_file: Option<String>,
    /// Overrides the global `server_tls_cert_file`.
    pub server_tls_cert_file: Option<String>,
    /// Overrides the global `server_tls_key_file`.
    pub server_tls_key_file: Option<String>,
    /// Routing rules (`[[databases.NAME.rules]]`), checked in order before the classifier.
    pub rules: Vec<super::rules::RuleConfig>,
}
