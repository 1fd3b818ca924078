//! SQL text analysis shared by the router and the relay: a lexer that never allocates, the
//! detection of statements that leave session state on a server, and the names of the
//! parameters pgtier keeps in line.

pub mod lexer;
pub mod listen;
pub mod normalize;
pub mod params;
pub mod session_commands;
pub mod session_state;

/// Whether `text` (leading whitespace already cut) starts with the word SELECT followed by
/// whitespace: the cheap first look of the fast paths (comments before it send a text the
/// general way).
pub fn starts_with_select(text: &[u8]) -> bool {
    text.get(..7).is_some_and(|head| {
        head[..6].eq_ignore_ascii_case(b"select") && head[6].is_ascii_whitespace()
    })
}
