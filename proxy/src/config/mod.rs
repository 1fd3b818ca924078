//! Configuration: the TOML schema (`schema`), loading and validation with line/column errors
//! (`load`), the resolved settings the rest of pgtier reads (`settings`), `SHOW CONFIG` rows
//! (`show`) and what a reload cannot apply (`diff`).

pub mod auth_file;
pub mod budget;
mod credentials;
pub mod diff;
pub mod duration;
pub mod load;
mod nodes;
pub mod peers;
pub mod rule_set;
pub mod rules;
pub mod schema;
pub mod settings;
pub mod show;
pub mod tls;
pub mod topology;

pub use credentials::looked_up_user;
pub use diff::restart_required;
pub use load::{load_file, parse_str, ConfigError, Problem};
pub use rule_set::{LagLimit, Rule, RuleAction, RuleSet, MAX_RULES};
pub use schema::{
    AuthMethod, CausalScope, LogFormat, NodeRole, PoolMode, PrimaryReads, SessionStatePolicy,
};
pub use settings::{
    AuthQuerySettings, ClientAuth, Database, NodeAddr, PoolSettings, RoutingSettings, Settings,
    User,
};
pub use show::ConfigEntry;
pub use tls::{ClientTlsSettings, ServerTlsSettings, SslMode, TlsVersions};
pub use topology::{ClusterSettings, ConfiguredRole, MonitorLogin, NodeConfig};
