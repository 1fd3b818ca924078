//! Server side: connections to Postgres (connect, login, parameters), the fair pools they live
//! in, and forwarding of cancel requests.

pub mod auth;
pub mod cancel;
pub mod caps;
pub mod checkout;
pub mod params;
pub mod pool;
pub mod server;
pub mod stream;
pub mod upstreams;

pub use cancel::CancelTarget;
pub use caps::{CapScope, Caps, ConnectionCap};
pub use pool::{Checkout, Pool, PoolError, PoolId};
pub use server::{BackendError, QueryFailed, ServerConn, ServerLogin, ServerSummary};
pub use stream::ServerStream;
pub use upstreams::{Pools, Upstream};
