//! Client side, in the order a connection meets it: the `listener` accepts; `login` runs the
//! startup negotiation and authentication; then either the `admin` console serves it, or its
//! `session` runs: between transactions it holds no server; for each unit of work it checks
//! one out (`crate::backend::checkout`) and the `relay` carries the bytes both ways, with one
//! analysis of each unit (`relay::units`) that routing, the gate and the rewrite all read.
//! `stream` and `farewell` are the client socket every stage writes to.

pub mod admin;
mod connection;
pub(crate) mod farewell;
pub mod listener;
pub mod login;
pub(crate) mod relay;
pub mod session;
pub mod stream;
