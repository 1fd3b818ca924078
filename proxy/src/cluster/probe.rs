//! A one-off look at every configured node, for `pgtier check --connect`: each node is checked
//! by the same monitors the proxy runs, and their first verdicts are reported.

use std::sync::Arc;
use std::time::Duration;

use crate::tls::ServerTls;

use super::topology::{ClusterSettings, NodeState, NodeStatus, Topology, View};

/// What the monitors saw of one database's nodes.
#[derive(Debug, Clone)]
pub struct Report {
    /// The node that takes writes, if one was found.
    pub primary: Option<usize>,
    /// Every node, by id.
    pub nodes: Vec<NodeStatus>,
}

impl Report {
    /// Whether every node answered and a primary was found.
    pub fn healthy(&self) -> bool {
        self.primary.is_some()
            && self
                .nodes
                .iter()
                .all(|n| matches!(n.state, NodeState::Healthy | NodeState::Lagging))
    }
}

/// Starts monitors for `settings` (connecting with `tls`) and waits (up to `limit`) until
/// every node has a verdict. Must run inside a tokio runtime.
pub async fn probe(settings: ClusterSettings, tls: ServerTls, limit: Duration) -> Report {
    let topology = Topology::start(settings, tls);
    let decided = |v: &View| v.nodes.iter().all(|n| n.state != NodeState::Unknown);
    let view: Arc<View> = match topology.wait_until(limit, decided).await {
        Some(v) => v,
        None => topology.view().clone(),
    };
    Report {
        primary: view.primary,
        nodes: view.nodes.to_vec(),
    }
}

/// Reads a node's connection limit (`pgtier check --instances N --connect`), logging in as
/// the monitors do; Err: why it could not be read.
pub async fn server_limit(
    addr: &crate::config::NodeAddr,
    login: &crate::config::MonitorLogin,
    tls: &ServerTls,
    limit: Duration,
) -> Result<crate::config::budget::ServerLimit, String> {
    // reserved_connections exists from Postgres 16 (missing: NULL, so 0).
    const SQL: &str = "SELECT current_setting('max_connections')::int, \
        current_setting('superuser_reserved_connections')::int \
        + coalesce(current_setting('reserved_connections', true), '0')::int";
    let mut pg = tokio_postgres::Config::new();
    pg.host(&addr.host)
        .port(addr.port)
        .user(&login.user)
        .dbname(&login.dbname)
        .application_name("pgtier-check")
        .ssl_mode(tls.postgres_mode());
    if let Some(pw) = &login.password {
        pg.password(pw.as_bytes());
    }
    let work = async {
        let client = crate::tls::connector::connect_postgres(&pg, tls.postgres_connector()).await?;
        let row = client.query_one(SQL, &[]).await?;
        Ok::<_, tokio_postgres::Error>((row.try_get::<_, i32>(0)?, row.try_get::<_, i32>(1)?))
    };
    match crate::timers::timeout(limit, work).await {
        Err(_) => Err(format!("no answer within {limit:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok((max, reserved))) => Ok(crate::config::budget::ServerLimit {
            max_connections: u32::try_from(max).unwrap_or(0),
            reserved: u32::try_from(reserved).unwrap_or(0),
        }),
    }
}
