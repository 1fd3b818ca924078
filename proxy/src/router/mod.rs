//! Statement classification. For now: a fast SQL lexer and the detection of statements that
//! create session state a server connection cannot hand to another client.

pub mod lexer;
pub mod session_state;
