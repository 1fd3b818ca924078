//! Settings resolved from a validated config: parsed addresses, derived password secrets and
//! per-pool limits, ready for the data path.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::auth::{Md5Secret, ScramSecret};

use super::rule_set::RuleSet;
use super::schema::{CausalScope, Config, PoolMode, PrimaryReads, SessionStatePolicy};
use super::topology::{ClusterSettings, NodeConfig};

/// A server address, `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl NodeAddr {
    /// Parses `host:port` (IPv6 as `[::1]:5432`).
    pub fn parse(s: &str) -> Option<NodeAddr> {
        let (host, port) = s.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return None;
        }
        Some(NodeAddr {
            host: host.to_owned(),
            port: port.parse().ok().filter(|&p| p != 0)?,
        })
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How pgtier checks a client's password.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// SCRAM-SHA-256 against this verifier.
    Scram(ScramSecret),
    /// MD5 against this hash.
    Md5(Md5Secret),
    /// No check.
    Trust,
    /// A verified TLS client certificate whose common name is the user name.
    Cert,
}

/// A configured user.
#[derive(Debug, Clone)]
pub struct User {
    /// Name clients log in with.
    pub name: String,
    /// Client authentication.
    pub auth: ClientAuth,
    /// Name used towards the servers.
    pub server_user: String,
    /// Password used towards the servers, if any.
    pub server_password: Option<String>,
    /// Its overrides of the database's pool settings and of the global limits.
    pub limits: UserLimits,
}

/// A user's own settings (None: the database's or the global value applies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserLimits {
    /// Server connections per pool of this user.
    pub pool_size: Option<u32>,
    /// Pool mode of this user's clients.
    pub pool_mode: Option<PoolMode>,
    /// Server connections of this user per node, across databases (Some(0): no limit).
    pub max_connections: Option<u32>,
    /// Clients logged in as this user at once (Some(0): no limit).
    pub max_client_connections: Option<u32>,
    /// `query_timeout` of this user's queries (Some(ZERO): never).
    pub query_timeout: Option<Duration>,
    /// `transaction_timeout` of this user's transactions (Some(ZERO): never).
    pub transaction_timeout: Option<Duration>,
    /// Which of this user's clients share a causal token.
    pub causal_scope: Option<CausalScope>,
}

/// Limits and timeouts of one (database, user) pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Session or transaction pooling.
    pub mode: PoolMode,
    /// Most server connections.
    pub size: u32,
    /// Server connections kept open while idle.
    pub min_size: u32,
    /// Longest wait for a server connection.
    pub query_wait_timeout: Duration,
    /// Longest connect + login to a server.
    pub server_connect_timeout: Duration,
    /// Idle server connections above `min_size` close after this (None: never).
    pub server_idle_timeout: Option<Duration>,
    /// Server connections older than this close on release (None: never).
    pub server_lifetime: Option<Duration>,
    /// A client idle inside a transaction this long is disconnected (None: never).
    pub idle_transaction_timeout: Option<Duration>,
    /// Most prepared statements kept per server connection (least recently used evicted).
    pub max_prepared_statements: usize,
    /// Pin or reject statements that leave session state (transaction mode).
    pub session_state: SessionStatePolicy,
    /// A query unanswered this long is canceled (None: never).
    pub query_timeout: Option<Duration>,
    /// A transaction open this long ends its client's connection (None: never).
    pub transaction_timeout: Option<Duration>,
    /// Most server connections of the database per node, across its users (None: no limit).
    pub max_db_connections: Option<u32>,
    /// Most server connections of the user per node, across databases (None: no limit).
    pub max_user_connections: Option<u32>,
}

/// A configured database.
#[derive(Debug, Clone)]
pub struct Database {
    /// Name clients connect to.
    pub name: String,
    /// Name on the servers.
    pub dbname: String,
    /// The nodes, monitor login and lag limits.
    pub cluster: ClusterSettings,
    /// Pool limits for this database (every node's pool).
    pub pool: PoolSettings,
    /// How reads are spread.
    pub routing: RoutingSettings,
    /// TLS towards this database's servers.
    pub server_tls: super::tls::ServerTlsSettings,
    /// Most clients logged in to it at once (None: no limit).
    pub max_client_connections: Option<u32>,
    /// How client users pgtier has no entry for are looked up (None: no `auth_user`).
    pub auth_query: Option<AuthQuerySettings>,
}

impl Database {
    /// The configured nodes, by node id.
    pub fn nodes(&self) -> &[NodeConfig] {
        &self.cluster.nodes
    }

    /// Which of `user`'s clients of this database share a causal token.
    pub fn causal_scope_for(&self, user: &User) -> CausalScope {
        user.limits
            .causal_scope
            .unwrap_or(self.routing.causal_scope)
    }

    /// The settings of `user`'s pools of this database: the database's, with the user's
    /// overrides (a user's setting wins over its database's).
    pub fn pool_for(&self, user: &User) -> PoolSettings {
        let u = &user.limits;
        let mut s = self.pool.clone();
        if let Some(size) = u.pool_size {
            s.size = size;
            s.min_size = s.min_size.min(size);
        }
        if let Some(mode) = u.pool_mode {
            s.mode = mode;
        }
        if let Some(max) = u.max_connections {
            s.max_user_connections = (max > 0).then_some(max);
        }
        if let Some(t) = u.query_timeout {
            s.query_timeout = nonzero(t);
        }
        if let Some(t) = u.transaction_timeout {
            s.transaction_timeout = nonzero(t);
        }
        s
    }
}

/// How reads and writes of one database are routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingSettings {
    /// Whether the primary serves reads only as a fallback.
    pub primary_reads: PrimaryReads,
    /// Ties between replicas rotate with every read (else a client's last replica wins them).
    pub replica_round_robin: bool,
    /// Longest wait for a primary to be known before a write fails.
    pub primary_wait_timeout: Duration,
    /// Longest wait for a replica to replay a client's write before reading from the primary.
    pub causal_read_wait: Duration,
    /// Send ParameterStatus `pgtier.causal_lsn` after write transactions.
    pub report_causal_lsn: bool,
    /// Which clients share a causal token (a user may override it).
    pub causal_scope: CausalScope,
    /// The DBA's routing rules, in order (empty: the classifier decides alone).
    pub rules: Arc<RuleSet>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file as written (defaults filled in).
    pub raw: Config,
    /// Listener address.
    pub listen: SocketAddr,
    /// Users by client-facing name.
    pub users: HashMap<String, User>,
    /// Databases by client-facing name.
    pub databases: HashMap<String, Database>,
    /// Client idle timeout (None: never).
    pub client_idle_timeout: Option<Duration>,
    /// Address of the Prometheus endpoint (None: disabled).
    pub metrics_listen: Option<SocketAddr>,
    /// Queries slower than this are logged at warn (None: off).
    pub slow_query_threshold: Option<Duration>,
    /// TLS towards clients.
    pub client_tls: super::tls::ClientTlsSettings,
    /// Cancel peering with other pgtier processes.
    pub peering: super::peers::Peering,
}

impl Settings {
    /// Most clients logged in as `user` at once (None: no limit).
    pub fn max_user_client_connections(&self, user: &User) -> Option<u32> {
        let max = user
            .limits
            .max_client_connections
            .unwrap_or(self.raw.max_user_client_connections);
        (max > 0).then_some(max)
    }
}

/// How client users that are not configured are looked up in the database.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthQuerySettings {
    /// Server role the query runs as.
    pub user: String,
    /// Its password (None: the server trusts it).
    pub password: Option<String>,
    /// The query (`$1`: the user name).
    pub query: String,
    /// Server database it runs in (None: the client's database's).
    pub dbname: Option<String>,
    /// Lifetime of a found secret.
    pub ttl: Duration,
    /// Lifetime of "no such user".
    pub negative_ttl: Duration,
    /// Most names cached per database.
    pub cache_size: usize,
    /// How users found this way authenticate.
    pub method: super::schema::AuthMethod,
}

impl std::fmt::Debug for AuthQuerySettings {
    // Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthQuerySettings")
            .field("user", &self.user)
            .field("query", &self.query)
            .field("dbname", &self.dbname)
            .finish_non_exhaustive()
    }
}

/// Zero means "disabled" for optional timeouts.
pub(crate) fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addr_parses() {
        let a = NodeAddr::parse("db.example:5433").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("db.example", 5433));
        assert_eq!(
            NodeAddr::parse("[::1]:5432").unwrap().to_string(),
            "[::1]:5432"
        );
        assert!(NodeAddr::parse("nohost").is_none());
        assert!(NodeAddr::parse(":5432").is_none());
        assert!(NodeAddr::parse("h:0").is_none());
        assert!(NodeAddr::parse("h:99999").is_none());
    }
}
