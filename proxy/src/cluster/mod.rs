//! Topology: the primary and replicas of each database, their health and replication lag,
//! watched by monitors and published for the routing hot path.

pub mod lsn;
pub mod topology;

pub use lsn::Lsn;
pub use topology::{
    ClusterSettings, ConfiguredRole, InFlight, MonitorLogin, NodeConfig, NodeState, NodeStatus,
    Pick, Role, Topology, View,
};
