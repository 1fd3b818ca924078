//! Statement classification and routing: the read/write classifier, DBA rules, pgtier's own
//! statements, causal scopes, and the route decision (the SQL lexer lives in `crate::sql`).

pub mod classify;
pub mod commands;
pub mod route;
pub mod rules;
pub mod scopes;
