//! PostgreSQL wire protocol: framing, startup packets, the few messages pgtier builds or reads,
//! and server-side password authentication.

pub mod auth;
pub mod extended;
pub mod frame;
pub mod messages;
pub mod scram_client;
pub mod sqlstate;
pub mod startup;
pub mod validate;

pub use frame::{Header, HEADER_LEN};
pub use sqlstate::SqlState;
