//! Statement classification and routing: a fast SQL lexer, the read/write classifier, and the
//! detection of statements that create session state a server connection cannot hand to
//! another client.

pub mod classify;
pub mod commands;
pub mod lexer;
pub mod route;
pub mod rules;
pub mod scopes;
pub mod session_state;
