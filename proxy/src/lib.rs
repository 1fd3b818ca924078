//! pgtier: a PostgreSQL database-tier proxy. Clients speak the Postgres wire protocol to it;
//! it pools server connections per (database, user) and relays each transaction.
//!
//! Data flows one way: `frontend` (client socket, startup, auth, session loop) asks `backend`
//! (pools, server connections) for a server and relays frames; `protocol` holds the wire
//! format; `config` the settings; `metrics` and `admin` observe and steer the running proxy
//! (`control` holds what admin commands change for sessions to obey).

pub mod admin;
pub mod backend;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod frontend;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod router;
pub mod shutdown;
pub mod write;
