//! SQL text analysis shared by the router and the relay: a lexer that never allocates, the
//! detection of statements that leave session state on a server, and the names of the
//! parameters pgtier keeps in line.

pub mod lexer;
pub mod listen;
pub mod normalize;
pub mod params;
pub mod session_commands;
pub mod session_state;
