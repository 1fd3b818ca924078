//! Client side: the listener, startup negotiation and authentication, and the per-client
//! session loop with its relay.

pub mod admin;
pub mod auth;
mod batch;
mod buffers;
mod causal;
mod extra_sets;
pub(crate) mod farewell;
mod gate;
pub mod listener;
mod local;
pub mod login;
mod observe;
mod prepared;
mod relay;
mod responses;
mod rewrite;
pub mod session;
pub mod startup;
pub mod stream;
mod target;
mod units;

#[cfg(test)]
#[path = "fuzz_tests.rs"]
mod fuzz_tests;
