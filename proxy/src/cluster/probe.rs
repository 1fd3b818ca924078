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
