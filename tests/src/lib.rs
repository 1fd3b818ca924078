//! pgtier's test kit: real PostgreSQL clusters (a primary and streaming replicas on free
//! 127.0.0.1 ports, run as the `postgres` user when we are root), the pgtier process under
//! test, a raw wire-protocol client, and shared fixtures. Every integration test, benchmark and
//! the local demo stand on it.

pub mod bins;
pub mod cluster;
pub mod faults;
pub mod fixture;
pub mod fuzz;
pub mod http;
pub mod node;
pub mod pids;
pub mod ports;
pub mod programs;
pub mod proxy;
mod reaper;
pub mod tls;
mod tmp;
pub mod wire;

pub use bins::{bin_path, pg_bindir, pgtier_bin};
pub use cluster::Cluster;
pub use faults::{FaultProxy, Mode};
pub use node::{Node, SUPERUSER, SUPERUSER_PASSWORD};
pub use ports::free_port;
pub use proxy::Pgtier;
pub use tls::{CertFiles, TestCa};
pub use tmp::make_temp_dir;
