//! TLS on both sides, built from the plain `config` data: PEM files (`files`), the client-side
//! acceptor (`acceptor`) and the server-side connector (`connector`, with the relaxed
//! certificate checks of the weaker sslmodes in `verify`). rustls with the ring provider: no
//! OpenSSL, and a clean build in half the time of aws-lc-rs on this machine.

pub mod acceptor;
pub mod connector;
pub mod files;
pub mod verify;

pub use acceptor::ClientTls;
pub use connector::ServerTls;
pub use files::TlsError;

/// What a TLS connection negotiated (the `tls` column of SHOW CLIENTS and SHOW SERVERS, as
/// PgBouncer fills it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. `TLSv1.3`.
    pub version: &'static str,
    /// rustls' (IANA) suite name, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: &'static str,
}

impl TlsInfo {
    /// The version and suite of a connection (None: the handshake has not finished).
    pub fn of(conn: &rustls::CommonState) -> Option<TlsInfo> {
        let version = match conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS",
        };
        let cipher = conn.negotiated_cipher_suite()?.suite().as_str()?;
        Some(TlsInfo { version, cipher })
    }
}

impl std::fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.version, self.cipher)
    }
}
