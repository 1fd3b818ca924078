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

/// Where the first NUL of `b` is. Most strings the protocol ends with a NUL are empty or short
/// names (the unnamed statement and portal): a byte loop finds those in a few instructions,
/// where `memchr`'s vector set-up costs about 50 per call (about 20 calls per extended unit).
#[inline]
pub fn find_nul(b: &[u8]) -> Option<usize> {
    if b.len() < 32 {
        b.iter().position(|&c| c == 0)
    } else {
        memchr::memchr(0, b)
    }
}
pub use sqlstate::SqlState;
