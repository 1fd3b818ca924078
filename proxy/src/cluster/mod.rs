//! Topology: the primary and replicas of each database, their health and replication lag,
//! watched by monitors and published for the routing hot path.
//!
//! - `topology`: node states and roles, the public API.
//! - `reports`: what monitors and pools report about a node (checks, failed connections).
//! - `bans`: administrator bans (BAN / UNBAN).
//! - `view`: the published [`View`]: node states, primary choice, publication.
//! - `monitor`: one task per node checking it on its own tokio-postgres connection.
//! - `lag`: lag measurement and the Healthy/Lagging hysteresis (pure).
//! - `balancer`: replica choice for a read (pure, lock- and allocation-free).
//! - `catalog`: reading `pg_proc` on the primary for the classifier.

pub mod balancer;
mod bans;
pub mod catalog;
pub mod lag;
pub mod lsn;
mod monitor;
pub mod probe;
mod reports;
pub mod topology;
mod view;

pub use lag::{Lag, LagLimits, Verdict};
pub use lsn::Lsn;
pub use monitor::{BACKOFF_MAX, BACKOFF_START};
pub use topology::{
    ClusterSettings, ConfiguredRole, InFlight, MonitorLogin, NodeConfig, NodeState, NodeStatus,
    Pick, Role, Topology, View, ADMIN_BAN_ERROR,
};
