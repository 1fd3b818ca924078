//! pgtier: a PostgreSQL database-tier proxy. Clients speak the Postgres wire protocol to it;
//! it pools server connections per (database, user) and relays each transaction.
//!
//! Data flows one way: `frontend` (client socket, startup, auth, session loop) asks `backend`
//! (pools, server connections) for a server and relays frames; `protocol` holds the wire
//! format; `config` the settings; `metrics` and `admin` observe and steer the running proxy
//! (`control` holds what admin commands change for sessions to obey).

pub mod backend;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod fault;
pub mod frontend;
pub mod http;
pub mod keyed_hash;
pub mod metrics;
pub mod notify;
pub mod panics;
pub mod prepared;
pub mod protocol;

pub mod router;
pub mod runtime;
pub mod serve;
pub mod shutdown;
pub mod sql;
pub mod timers;
pub mod tls;
pub mod write;

/// The randomized tests' seeded generator.
#[cfg(test)]
mod test_rng;
/// Client SQL text through every analysis that reads it, at random: never a panic.
#[cfg(test)]
mod text_fuzz_tests;

// A panic in one client's task must end that client only (see `panics`): with panic = "abort"
// it would end every client's connection.
#[cfg(panic = "abort")]
compile_error!("pgtier must be built with panic = \"unwind\": a panic in one client's task would abort the whole process");
