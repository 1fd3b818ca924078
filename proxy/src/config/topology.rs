//! What the topology of one database is built from: its nodes as configured and the settings
//! of their monitors (plain data; `crate::cluster` runs them).

use std::time::Duration;

use super::settings::NodeAddr;

/// The role a node is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfiguredRole {
    /// Always the primary.
    Primary,
    /// Always a replica.
    Replica,
    /// Whatever `pg_is_in_recovery()` says (failover without a config change).
    Auto,
}

/// One configured node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Address.
    pub addr: NodeAddr,
    /// Configured role.
    pub role: ConfiguredRole,
    /// Share of reads relative to other replicas (0: no reads unless nothing else is eligible).
    pub weight: u32,
    /// The zone it runs in (None: not said).
    pub zone: Option<String>,
}

/// Credentials the monitors log in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorLogin {
    /// Server user.
    pub user: String,
    /// Server password, if needed.
    pub password: Option<String>,
    /// Database name on the servers.
    pub dbname: String,
}

/// Everything the topology of one database needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Nodes, in configured order (indexes are node ids).
    pub nodes: Vec<NodeConfig>,
    /// How often each node is checked.
    pub lag_check_interval: Duration,
    /// A replica whose time lag exceeds this leaves the rotation (None: no limit).
    pub max_replica_lag: Option<Duration>,
    /// A replica whose byte lag exceeds this leaves the rotation (None: no limit).
    pub max_replica_lag_bytes: Option<u64>,
    /// Monitor credentials.
    pub login: MonitorLogin,
    /// Limit on a monitor's connect + login; each check is limited to the smaller of this and
    /// 1 s.
    pub connect_timeout: Duration,
    /// pgtier's own zone (None: zones are not used).
    pub zone: Option<String>,
    /// Whether reads may go to replicas in other zones.
    pub zone_mode: super::schema::ZoneMode,
}

/// [`ClusterSettings::zone_rank`] of a replica reads never go to (`zone_mode = "only"`).
pub const ZONE_EXCLUDED: u8 = u8::MAX;

impl ClusterSettings {
    /// How far `node` is from pgtier: 0 in its zone (or zones unused), 1 in another zone or
    /// none said, [`ZONE_EXCLUDED`] there under `zone_mode = "only"`.
    pub fn zone_rank(&self, node: &NodeConfig) -> u8 {
        match &self.zone {
            None => 0,
            Some(own) if node.zone.as_ref() == Some(own) => 0,
            Some(_) if self.zone_mode == super::schema::ZoneMode::Only => ZONE_EXCLUDED,
            Some(_) => 1,
        }
    }

    /// Limit on one check round trip (and on the fresh connect + check that confirms one that
    /// timed out).
    pub fn check_timeout(&self) -> Duration {
        self.connect_timeout.min(Duration::from_secs(1))
    }
}
