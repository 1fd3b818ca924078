//! TLS on both sides, built from the plain `config` data: PEM files (`files`), the client-side
//! acceptor (`acceptor`) and the server-side connector (`connector`). rustls with the ring
//! provider: no OpenSSL, and a clean build in half the time of aws-lc-rs on this machine.

pub mod acceptor;
pub mod files;

pub use acceptor::ClientTls;
pub use files::TlsError;
