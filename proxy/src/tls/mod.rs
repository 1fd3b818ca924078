//! TLS on both sides, built from the plain `config` data: PEM files (`files`), the client-side
//! acceptor (`acceptor`) and the server-side connector (`connector`, with the relaxed
//! certificate checks of the weaker sslmodes in `verify`). rustls with the ring provider: no
//! OpenSSL, and a clean build in half the time of aws-lc-rs on this machine.

pub mod connector;
pub mod files;
pub mod verify;

pub use connector::ServerTls;
pub use files::TlsError;
