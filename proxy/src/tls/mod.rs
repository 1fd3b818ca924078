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
/// PgBouncer fills it). Kept as rustls' codes, 8 bytes: every TLS client's registry entry
/// holds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsInfo {
    version: rustls::ProtocolVersion,
    cipher: rustls::CipherSuite,
}

impl TlsInfo {
    /// The version and suite of a connection (None: the handshake has not finished).
    pub fn of(conn: &rustls::CommonState) -> Option<TlsInfo> {
        Some(TlsInfo {
            version: conn.protocol_version()?,
            cipher: conn.negotiated_cipher_suite()?.suite(),
        })
    }

    /// e.g. `TLSv1.3`.
    pub fn version(&self) -> &'static str {
        match self.version {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS",
        }
    }

    /// rustls' (IANA) suite name, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub fn cipher(&self) -> &'static str {
        self.cipher.as_str().unwrap_or("unknown")
    }
}

impl std::fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.version(), self.cipher())
    }
}
