//! Configuration: the TOML schema (`schema`), loading and validation with line/column errors
//! (`load`), and the resolved settings the rest of pgtier reads (`settings`).

pub mod duration;
pub mod load;
mod nodes;
pub mod rules;
pub mod schema;
pub mod settings;

pub use crate::router::rules::{LagLimit, RuleAction, RuleSet};
pub use load::{load_file, parse_str, ConfigError, Problem};
pub use schema::{AuthMethod, NodeRole, PoolMode, PrimaryReads, SessionStatePolicy};
pub use settings::{ClientAuth, Database, NodeAddr, PoolSettings, RoutingSettings, Settings, User};
