//! The server side (pgtier → Postgres): one rustls client config per database and config load,
//! used by the pools (`backend::server`), the lag monitors and `pgtier check --connect`
//! (tokio-postgres through tokio-postgres-rustls).
//!
//! Modes (libpq's, as PgBouncer's `server_tls_sslmode`): `disable` never asks for TLS;
//! `allow` logs in in plain text and retries once with TLS if the server refuses plain text;
//! `prefer` asks for TLS and falls back to plain text if the server has none; `require` insists
//! on TLS but accepts any certificate; `verify-ca` checks the chain to `server_tls_ca_file`;
//! `verify-full` also checks that the certificate names the host (or IP address) of the node.
//! Every mode checks the handshake signature (see `verify`).

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use sha2::{Digest, Sha256, Sha384, Sha512};
use tokio::net::TcpStream;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::files::{self, TlsError};
use super::verify::{AnyCertificate, CaOnly};
use crate::config::{ServerTlsSettings, SslMode};

/// What the server side of one database runs with: the sslmode and, unless it is `disable`,
/// the rustls config built from the files as they were at the last (re)load.
#[derive(Clone)]
pub struct ServerTls {
    mode: SslMode,
    /// None: `disable`.
    config: Option<Arc<ClientConfig>>,
    /// The same config for tokio-postgres (monitors, `check --connect`).
    postgres: Option<MakeRustlsConnect>,
    /// SHA-256 over the settings and the bytes of every file read: two loads are equal when
    /// nothing about them changed (pools and monitors are then kept across a reload).
    digest: [u8; 32],
    /// Why there is no config although the mode wants one (see [`ServerTls::failed`]).
    failure: Option<Arc<str>>,
}

impl PartialEq for ServerTls {
    fn eq(&self, other: &ServerTls) -> bool {
        self.mode == other.mode && self.digest == other.digest
    }
}

impl Eq for ServerTls {}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Plain text only (`disable`), reading no file.
    pub fn disabled() -> ServerTls {
        ServerTls {
            mode: SslMode::Disable,
            config: None,
            postgres: None,
            digest: [0; 32],
            failure: None,
        }
    }

    /// A stand-in for settings whose files could not be read where no error can be returned:
    /// every TLS handshake fails with `reason`.
    pub fn failed(mode: SslMode, reason: String) -> ServerTls {
        let digest = Sha256::digest(reason.as_bytes()).into();
        ServerTls {
            mode,
            config: None,
            postgres: None,
            digest,
            failure: Some(reason.into()),
        }
    }

    /// Reads the CA, certificate and key files of `s` and builds the rustls config. Errors
    /// name the key and the file, never the key material.
    pub fn new(s: &ServerTlsSettings) -> Result<ServerTls, TlsError> {
        if s.mode == SslMode::Disable {
            return Ok(ServerTls::disabled());
        }
        let provider = files::p256_first(files::provider("server_tls_ciphers", &s.ciphers)?);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&files::versions(s.versions))
            .map_err(|source| TlsError::Rustls {
                context: "server_tls_protocols / server_tls_ciphers",
                source,
            })?;
        let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = if s.mode.verifies() {
            let Some(ca) = &s.ca_file else {
                return Err(TlsError::Verifier {
                    context: "server_tls_sslmode",
                    reason: format!("{} needs server_tls_ca_file", s.mode),
                });
            };
            let roots = files::roots("server_tls_ca_file", ca)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Verifier {
                    context: "server_tls_ca_file",
                    reason: e.to_string(),
                })?;
            if s.mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(CaOnly::new(webpki))
            }
        } else {
            Arc::new(AnyCertificate::new(provider))
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&s.cert_file, &s.key_file) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    files::certs("server_tls_cert_file", cert)?,
                    files::key("server_tls_key_file", key)?,
                )
                .map_err(|source| TlsError::Rustls {
                    context: "server_tls_cert_file / server_tls_key_file",
                    source,
                })?,
            _ => builder.with_no_client_auth(),
        };
        let mut hash = Sha256::new();
        hash.update(format!("{s:?}").as_bytes());
        for (what, path) in [
            ("server_tls_ca_file", &s.ca_file),
            ("server_tls_cert_file", &s.cert_file),
            ("server_tls_key_file", &s.key_file),
        ] {
            if let Some(p) = path {
                hash.update(read(what, p)?);
            }
        }
        Ok(ServerTls {
            mode: s.mode,
            postgres: Some(MakeRustlsConnect::new(config.clone())),
            config: Some(Arc::new(config)),
            digest: hash.finalize().into(),
            failure: None,
        })
    }

    /// The sslmode.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Whether TLS may be used at all (any mode but `disable`).
    pub fn enabled(&self) -> bool {
        self.config.is_some()
    }

    /// Runs the TLS handshake on `tcp` (after the server answered `S` to SSLRequest); `host`
    /// is the node's host name or IP address (checked under `verify-full`). Err: why, in
    /// words for the client and SHOW REPLICAS.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> Result<TlsStream<TcpStream>, String> {
        let Some(config) = &self.config else {
            return Err(match &self.failure {
                Some(why) => why.to_string(),
                None => "server_tls_sslmode = disable".into(),
            });
        };
        let name = match ServerName::try_from(host.to_owned()) {
            Ok(n) => n,
            Err(_) if self.mode == SslMode::VerifyFull => {
                return Err(format!(
                    "\"{host}\" is not a DNS name or IP address a certificate can name"
                ))
            }
            // The name is not checked: any valid placeholder will do.
            Err(_) => ServerName::try_from("pgtier.invalid").map_err(|e| e.to_string())?,
        };
        TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| describe_io(&e))
    }

    /// tokio-postgres' sslmode for the monitors (`allow` becomes `prefer`: tokio-postgres has
    /// no plain-text-first mode; `verify-*` checks happen in the rustls config).
    pub fn postgres_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self.mode {
            SslMode::Disable => Pg::Disable,
            SslMode::Allow | SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        }
    }

    /// The tokio-postgres connector (None under `disable`).
    pub fn postgres_connector(&self) -> Option<MakeRustlsConnect> {
        self.postgres.clone()
    }
}

/// Connects and logs in with tokio-postgres (its connection task spawned), over TLS when
/// `tls` is given: the lag monitors' and auth_query's connections.
pub async fn connect_postgres(
    pg: &tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    match tls {
        Some(tls) => {
            let (client, connection) = pg.connect(tls).await?;
            tokio::spawn(connection);
            Ok(client)
        }
        None => {
            let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            Ok(client)
        }
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        what,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// A handshake failure in words: `certificate verify failed: UnknownIssuer`, or rustls' or
/// the socket's own text.
pub fn describe(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => format!("certificate verify failed: {c}"),
        other => other.to_string(),
    }
}

/// [`describe`] for the `io::Error` tokio-rustls reports.
pub fn describe_io(e: &io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(r) => describe(r),
        None => format!("handshake failed: {e}"),
    }
}

/// The `tls-server-end-point` channel binding data of RFC 5929: a hash of the server's
/// certificate with the hash of its signature algorithm (SHA-1 and MD5 become SHA-256). None
/// for algorithms without one (Ed25519): SCRAM then goes without channel binding.
pub fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use x509_cert::der::oid::db::rfc5912::{
        ECDSA_WITH_SHA_256, ECDSA_WITH_SHA_384, ECDSA_WITH_SHA_512, ID_SHA_1, ID_SHA_256,
        ID_SHA_384, ID_SHA_512, MD_5_WITH_RSA_ENCRYPTION, SHA_1_WITH_RSA_ENCRYPTION,
        SHA_256_WITH_RSA_ENCRYPTION, SHA_384_WITH_RSA_ENCRYPTION, SHA_512_WITH_RSA_ENCRYPTION,
    };
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(cert).ok()?;
    match parsed.signature_algorithm.oid {
        ID_SHA_1
        | ID_SHA_256
        | MD_5_WITH_RSA_ENCRYPTION
        | SHA_1_WITH_RSA_ENCRYPTION
        | SHA_256_WITH_RSA_ENCRYPTION
        | ECDSA_WITH_SHA_256 => Some(Sha256::digest(cert).to_vec()),
        ID_SHA_384 | SHA_384_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_384 => {
            Some(Sha384::digest(cert).to_vec())
        }
        ID_SHA_512 | SHA_512_WITH_RSA_ENCRYPTION | ECDSA_WITH_SHA_512 => {
            Some(Sha512::digest(cert).to_vec())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsVersions;
    use std::path::PathBuf;

    fn settings(mode: SslMode, ca: Option<&str>) -> ServerTlsSettings {
        ServerTlsSettings {
            mode,
            ca_file: ca.map(PathBuf::from),
            cert_file: None,
            key_file: None,
            versions: TlsVersions {
                tls12: true,
                tls13: true,
            },
            ciphers: "default".into(),
        }
    }

    #[test]
    fn disable_reads_nothing_and_require_needs_no_file() {
        let d = ServerTls::new(&settings(SslMode::Disable, Some("/nonexistent"))).unwrap();
        assert!(!d.enabled());
        assert_eq!(d, ServerTls::disabled());
        let r = ServerTls::new(&settings(SslMode::Require, None)).unwrap();
        assert!(r.enabled());
        assert_eq!(r.postgres_mode(), tokio_postgres::config::SslMode::Require);
        // Same settings, same files: equal (pools and monitors survive the reload).
        assert_eq!(
            r,
            ServerTls::new(&settings(SslMode::Require, None)).unwrap()
        );
        assert_ne!(r, ServerTls::new(&settings(SslMode::Prefer, None)).unwrap());
    }

    #[test]
    fn an_unreadable_ca_file_names_the_key_and_the_path() {
        let e = ServerTls::new(&settings(SslMode::VerifyFull, Some("/nonexistent/ca.pem")))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("server_tls_ca_file /nonexistent/ca.pem:"),
            "{e}"
        );
    }

    #[test]
    fn certificate_errors_read_like_openssl() {
        let e = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert_eq!(describe(&e), "certificate verify failed: UnknownIssuer");
        let io = io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(describe_io(&io), "certificate verify failed: UnknownIssuer");
        assert!(server_end_point(b"not a certificate").is_none());
    }
}
