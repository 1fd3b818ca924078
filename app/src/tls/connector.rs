//! The app's connector: plain text, or rustls set up as the connection string's mode asks.

use std::fmt;
use std::sync::Arc;

use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::error::TlsError;
use super::params::{TlsParams, Verify};
use super::pem::{load_certs, load_key};
use super::verify::verifier;

/// How the app opens a connection: plain, or TLS through rustls.
#[derive(Clone)]
pub enum Connector {
    /// tokio-postgres' `NoTls` (sslmode=disable).
    Plain,
    /// rustls, with the verification the mode asks for.
    Tls(MakeRustlsConnect, Verify),
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Connector::Plain => f.write_str("Plain"),
            Connector::Tls(_, v) => write!(f, "Tls({v:?})"),
        }
    }
}

impl Connector {
    /// The connector for `params`: reads the certificate files now, so a missing or bad file
    /// is an error at start, not at the first request.
    pub fn new(
        params: &TlsParams,
    ) -> Result<(tokio_postgres::config::SslMode, Connector), TlsError> {
        let plan = params.plan()?;
        let Some(verify) = plan.verify else {
            return Ok((plan.pg_mode, Connector::Plain));
        };
        // ring (as pgtier): its build is half aws-lc-rs' here; rustls 0.23.48 deprecates the
        // function only because ring has no post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let verifier = verifier(verify, params.root_cert.as_deref(), provider)?;
        // "dangerous" only in name for verify-full: that verifier is rustls' own WebPKI one.
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (&params.cert, &params.key) {
            (Some(cert), Some(key)) => {
                builder.with_client_auth_cert(load_certs("sslcert", cert)?, load_key(key)?)?
            }
            _ => builder.with_no_client_auth(),
        };
        // As libpq 17: ALPN "postgresql" (required by sslnegotiation=direct, harmless otherwise).
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok((
            plan.pg_mode,
            Connector::Tls(MakeRustlsConnect::new(config), verify),
        ))
    }

    /// Opens a connection and drives it on a tokio task.
    pub async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<Client, tokio_postgres::Error> {
        fn drive<F>(connection: F)
        where
            F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
        {
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "database connection closed");
                }
            });
        }
        match self {
            Connector::Plain => {
                let (client, connection) = config.connect(NoTls).await?;
                drive(connection);
                Ok(client)
            }
            Connector::Tls(tls, _) => {
                let (client, connection) = config.connect(tls.clone()).await?;
                drive(connection);
                Ok(client)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::parse;
    use crate::tls::test_pki::{provider, Pki};
    use rustls::pki_types::PrivateKeyDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_postgres::tls::MakeTlsConnect;

    /// What the fake server answers to the SSLRequest.
    #[derive(Clone, Copy)]
    enum Answer {
        Tls,
        Plain,
    }

    /// A fake server on an in-memory pipe: answers the SSLRequest (if one comes), runs the TLS
    /// handshake, then fails the login with a recognisable error. Returns what the client got:
    /// Ok(whether it used TLS) when it reached the login, else the connect error.
    async fn against_fake_server(conn: &str, pki: &Pki, answer: Answer) -> Result<bool, String> {
        let (config, connector) = parse(conn).map_err(|e| e.to_string())?;
        let (client_io, mut server_io) = tokio::io::duplex(64 * 1024);
        let server_cert = pki.server.clone();
        let server_key = pki.server_key.clone();
        let server = tokio::spawn(async move {
            let mut first = [0u8; 8];
            server_io.read_exact(&mut first).await?;
            let ssl_request = first == [0, 0, 0, 8, 4, 210, 22, 47];
            if ssl_request && matches!(answer, Answer::Tls) {
                server_io.write_all(b"S").await?;
                let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(vec![server_cert], PrivateKeyDer::Pkcs8(server_key.into()))
                    .unwrap();
                cfg.alpn_protocols = vec![b"postgresql".to_vec()];
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
                let mut tls = acceptor.accept(server_io).await?;
                fail_login(&mut tls, None).await?;
                Ok::<_, std::io::Error>(true)
            } else if ssl_request {
                server_io.write_all(b"N").await?;
                fail_login(&mut server_io, None).await?;
                Ok(false)
            } else {
                fail_login(&mut server_io, Some(first)).await?;
                Ok(false)
            }
        });
        let result = match &connector {
            Connector::Plain => config.connect_raw(client_io, NoTls).await.map(drop),
            Connector::Tls(make, _) => {
                let tls = MakeTlsConnect::<tokio::io::DuplexStream>::make_tls_connect(
                    &mut make.clone(),
                    "localhost",
                )
                .unwrap();
                config.connect_raw(client_io, tls).await.map(drop)
            }
        };
        let e = result.expect_err("the fake server never lets a login succeed");
        match e.as_db_error() {
            Some(db) if db.message() == "fake server reached" => Ok(server.await.unwrap().unwrap()),
            _ => {
                server.abort();
                Err(format!("{e:#}: {:?}", std::error::Error::source(&e)))
            }
        }
    }

    /// Reads the startup message (its first 8 bytes may have been read) and answers FATAL.
    async fn fail_login<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        io: &mut S,
        first: Option<[u8; 8]>,
    ) -> std::io::Result<()> {
        let first = match first {
            Some(f) => f,
            None => {
                let mut f = [0u8; 8];
                io.read_exact(&mut f).await?;
                f
            }
        };
        let len = u32::from_be_bytes(first[..4].try_into().unwrap()) as usize;
        let mut rest = vec![0u8; len - 8];
        io.read_exact(&mut rest).await?;
        let mut body = Vec::new();
        for (tag, v) in [
            (b'S', "FATAL"),
            (b'C', "28000"),
            (b'M', "fake server reached"),
        ] {
            body.push(tag);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = vec![b'E'];
        msg.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        msg.extend_from_slice(&body);
        io.write_all(&msg).await?;
        io.flush().await
    }

    #[tokio::test]
    async fn connections_negotiate_as_the_mode_says() {
        let pki = Pki::new("handshake");
        let other = Pki::new("handshake-other");
        let root = pki.ca_file().display().to_string();
        let wrong = other.ca_file().display().to_string();
        let url = |q: &str| format!("postgres://app:pw@localhost:6432/app?{q}");

        // Plain text as before: no SSLRequest with disable; prefer falls back on `N`.
        let r = against_fake_server(&url("sslmode=disable"), &pki, Answer::Tls).await;
        assert_eq!(r, Ok(false));
        let r = against_fake_server(&url("connect_timeout=5"), &pki, Answer::Plain).await;
        assert_eq!(r, Ok(false));
        // prefer (the default) takes TLS when offered, without checking the certificate.
        let r = against_fake_server(&url("connect_timeout=5"), &pki, Answer::Tls).await;
        assert_eq!(r, Ok(true));
        // require: TLS or nothing.
        let r = against_fake_server(&url("sslmode=require"), &pki, Answer::Tls).await;
        assert_eq!(r, Ok(true));
        let r = against_fake_server(&url("sslmode=require"), &pki, Answer::Plain).await;
        assert!(r.is_err(), "{r:?}");
        // verify-full with the right CA and name; the wrong CA fails the handshake.
        let full = url(&format!("sslmode=verify-full&sslrootcert={root}"));
        assert_eq!(
            against_fake_server(&full, &pki, Answer::Tls).await,
            Ok(true)
        );
        let bad = url(&format!("sslmode=verify-full&sslrootcert={wrong}"));
        let e = against_fake_server(&bad, &pki, Answer::Tls)
            .await
            .unwrap_err();
        assert!(e.contains("UnknownIssuer"), "{e}");
        let bad = url(&format!("sslmode=verify-ca&sslrootcert={wrong}"));
        let e = against_fake_server(&bad, &pki, Answer::Tls)
            .await
            .unwrap_err();
        assert!(e.contains("UnknownIssuer"), "{e}");
        let ca = url(&format!("sslmode=verify-ca&sslrootcert={root}"));
        assert_eq!(against_fake_server(&ca, &pki, Answer::Tls).await, Ok(true));
        // verify-full refuses a plain-text server.
        let r = against_fake_server(&full, &pki, Answer::Plain).await;
        assert!(r.is_err(), "{r:?}");
    }
}
