//! Named prepared statements in transaction mode, in one place: a client's statements
//! (`client`: its names mapped to pgtier-owned server-side names), the process-wide table that
//! gives each distinct statement text its server-side name (`names`), and the statements each
//! server connection has prepared (`server`). The relay's `rewrite` renames the messages.

pub mod client;
pub mod names;
pub mod server;
