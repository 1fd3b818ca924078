//! The client side: pgtier's certificate, the client-certificate verifier and the handshake.
//! Built from `client_tls_*` at start and at every reload (files re-read each time).

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::files::{self, TlsError};
use crate::config::{ClientTlsSettings, SslMode};

/// The ALPN protocol name of PostgreSQL (required with direct TLS, checked when offered).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// What pgtier accepts from clients, with its rustls configuration.
#[derive(Debug)]
pub struct ClientTls {
    /// The configured mode (never `Disable`: then there is no `ClientTls`).
    pub mode: SslMode,
    /// Whether a client certificate can be checked (a CA file is configured).
    pub verifies_certificates: bool,
    config: Arc<ServerConfig>,
}

impl ClientTls {
    /// Builds the acceptor (None when `client_tls_sslmode` is disable), reading the files.
    pub fn build(s: &ClientTlsSettings) -> Result<Option<Arc<ClientTls>>, TlsError> {
        if !s.enabled() {
            return Ok(None);
        }
        let (Some(cert_file), Some(key_file)) = (&s.cert_file, &s.key_file) else {
            // The config check refuses this; kept as an error, not a panic.
            return Err(TlsError::Verifier {
                context: "client_tls_sslmode",
                reason: "client_tls_cert_file and client_tls_key_file are needed".into(),
            });
        };
        let certs = files::certs("client_tls_cert_file", cert_file)?;
        let key = files::key("client_tls_key_file", key_file)?;
        let provider = files::provider("client_tls_ciphers", &s.ciphers)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&files::versions(s.versions))
            .map_err(|source| TlsError::Rustls {
                context: "client_tls_protocols / client_tls_ciphers",
                source,
            })?;
        let builder = match &s.ca_file {
            Some(ca) => {
                let roots = Arc::new(files::roots("client_tls_ca_file", ca)?);
                let v = WebPkiClientVerifier::builder_with_provider(roots, provider);
                // Below verify-ca a certificate is optional (checked when presented: users
                // with auth = "cert" need one).
                let v = if s.mode.verifies() {
                    v
                } else {
                    v.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(v.build().map_err(|e| TlsError::Verifier {
                    context: "client_tls_ca_file",
                    reason: e.to_string(),
                })?)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder
                .with_single_cert(certs, key)
                .map_err(|source| TlsError::Rustls {
                    context: "client_tls_cert_file / client_tls_key_file",
                    source,
                })?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        // No session tickets: PostgreSQL clients do not resume sessions, and the tickets cost
        // every handshake a write.
        config.send_tls13_tickets = 0;
        Ok(Some(Arc::new(ClientTls {
            mode: s.mode,
            verifies_certificates: s.ca_file.is_some(),
            config: Arc::new(config),
        })))
    }

    /// Runs the server side of the handshake on `tcp` (the caller bounds it in time).
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
            .accept(tcp)
            .await
    }
}

/// The common name (CN) of a certificate's subject (None: unparsable or no CN). The last CN
/// wins when there are several, as in PostgreSQL.
pub fn common_name(cert_der: &[u8]) -> Option<String> {
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
    use x509_cert::der::{oid::ObjectIdentifier, Decode};
    const CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
    let cert = x509_cert::Certificate::from_der(cert_der).ok()?;
    let mut found = None;
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter().filter(|a| a.oid == CN) {
            let v = &atv.value;
            let text = Utf8StringRef::try_from(v)
                .map(|s| s.as_str().to_owned())
                .or_else(|_| PrintableStringRef::try_from(v).map(|s| s.as_str().to_owned()))
                .or_else(|_| Ia5StringRef::try_from(v).map(|s| s.as_str().to_owned()));
            if let Ok(t) = text {
                found = Some(t);
            }
        }
    }
    found
}
