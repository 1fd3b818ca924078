//! TLS towards pgtier, driven by libpq's connection parameters in `DATABASE_URL`:
//! `sslmode` (disable | prefer | require | verify-ca | verify-full), `sslrootcert`, and
//! `sslcert` / `sslkey` (a client certificate). tokio-postgres itself knows only
//! disable/prefer/require and no file parameters, so these are taken out of the connection
//! string here and turned into a rustls connector (ring provider, tokio-postgres-rustls).
//!
//! What each mode checks (as libpq):
//! - `disable`: plain text, no SSLRequest.
//! - `prefer` (the default, as libpq's): TLS when pgtier answers the SSLRequest with `S`, plain
//!   text when it answers `N` (tokio-postgres does not retry in plain text when a handshake
//!   fails). The certificate is not checked, unless `sslrootcert` is given: then its chain is.
//! - `require`: TLS or no connection; certificate checked as under `prefer`.
//! - `verify-ca`: TLS, and the certificate must chain to `sslrootcert` (host name not checked).
//! - `verify-full`: as verify-ca, and the certificate must be valid for the host name (or IP
//!   address) the app connects to.
//!
//! `sslmode=allow` (plain text first, TLS on failure) is refused: tokio-postgres cannot do it.
//! `sslrootcert=system` is refused too (no system roots are bundled; give a PEM file).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, WebPkiServerVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, as far as the app supports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS when the server offers it.
    Prefer,
    /// TLS only, certificate not checked (unless `sslrootcert` is given).
    Require,
    /// TLS only, certificate chain checked against `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, plus the host name.
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Result<SslMode, TlsError> {
        Ok(match v {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => return Err(TlsError::Allow),
            other => return Err(TlsError::BadMode(other.to_owned())),
        })
    }

    /// Its name in a connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS parameters of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    /// `sslmode` (default `prefer`, as libpq).
    pub mode: SslMode,
    /// `sslrootcert`: PEM file of the CA certificates that sign pgtier's certificate.
    pub root_cert: Option<PathBuf>,
    /// `sslcert`: the app's client certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// `sslkey`: its private key (PEM).
    pub key: Option<PathBuf>,
}

impl Default for TlsParams {
    fn default() -> Self {
        TlsParams {
            mode: SslMode::Prefer,
            root_cert: None,
            cert: None,
            key: None,
        }
    }
}

/// How pgtier's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Not at all (the handshake signature still is): encryption without authentication.
    Nothing,
    /// Chain to `sslrootcert`, any host name.
    Chain,
    /// Chain to `sslrootcert` and the host name.
    ChainAndHost,
}

/// What a connection string asks for: the tokio-postgres mode and, unless plain text, how
/// the certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The mode tokio-postgres runs the SSLRequest with.
    pub pg_mode: tokio_postgres::config::SslMode,
    /// `None`: plain text (no SSLRequest at all).
    pub verify: Option<Verify>,
}

impl TlsParams {
    /// The plan for these parameters, or why they do not make sense.
    pub fn plan(&self) -> Result<Plan, TlsError> {
        use tokio_postgres::config::SslMode as Pg;
        if self.root_cert.as_deref() == Some(Path::new("system")) {
            return Err(TlsError::SystemRoots);
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(TlsError::HalfClientCert);
        }
        let checked = if self.root_cert.is_some() {
            Verify::Chain
        } else {
            Verify::Nothing
        };
        let (pg_mode, verify) = match self.mode {
            SslMode::Disable => (Pg::Disable, None),
            SslMode::Prefer => (Pg::Prefer, Some(checked)),
            SslMode::Require => (Pg::Require, Some(checked)),
            SslMode::VerifyCa | SslMode::VerifyFull if self.root_cert.is_none() => {
                return Err(TlsError::NoRootCert(self.mode.as_str()))
            }
            SslMode::VerifyCa => (Pg::Require, Some(Verify::Chain)),
            SslMode::VerifyFull => (Pg::Require, Some(Verify::ChainAndHost)),
        };
        Ok(Plan { pg_mode, verify })
    }
}

/// A connection-string problem on the TLS side (no secret is ever part of the message).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Unknown sslmode value.
    #[error("sslmode={0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    BadMode(String),
    /// sslmode=allow.
    #[error("sslmode=allow is not supported (tokio-postgres cannot retry with TLS after plain text fails); use prefer or require")]
    Allow,
    /// verify-* without a root certificate.
    #[error(
        "sslmode={0} needs sslrootcert=PATH (PEM file of the CA that signs pgtier's certificate)"
    )]
    NoRootCert(&'static str),
    /// sslrootcert=system.
    #[error("sslrootcert=system is not supported (no system roots are bundled); give a PEM file")]
    SystemRoots,
    /// Only one of sslcert and sslkey.
    #[error("sslcert and sslkey must be given together")]
    HalfClientCert,
    /// A parameter value that is not valid percent-encoding or UTF-8.
    #[error("parameter {0} is not valid percent-encoded UTF-8")]
    Encoding(String),
    /// A key=value connection string that does not parse.
    #[error("connection string: {0}")]
    Syntax(&'static str),
    /// A certificate or key file that cannot be used.
    #[error("{param}={}: {reason}", path.display())]
    File {
        /// The parameter naming the file.
        param: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Splits a connection string (URL or key=value form) into the part tokio-postgres parses and
/// the TLS parameters. The first part keeps every other parameter as written.
pub fn split(conn: &str) -> Result<(String, TlsParams), TlsError> {
    let mut params = TlsParams::default();
    let rest = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        split_url(conn, &mut params)?
    } else {
        split_kv(conn, &mut params)?
    };
    Ok((rest, params))
}

fn set(params: &mut TlsParams, key: &str, value: String) -> Result<(), TlsError> {
    match key {
        "sslmode" => params.mode = SslMode::parse(&value)?,
        // libpq treats an empty value as unset.
        "sslrootcert" => params.root_cert = Some(value).filter(|v| !v.is_empty()).map(Into::into),
        "sslcert" => params.cert = Some(value).filter(|v| !v.is_empty()).map(Into::into),
        "sslkey" => params.key = Some(value).filter(|v| !v.is_empty()).map(Into::into),
        _ => unreachable!("not a TLS key: {key}"),
    }
    Ok(())
}

/// `postgres://...?a=b&sslmode=...`: the query parameters are `&`-separated, percent-encoded
/// `key=value` pairs after the first `?` that follows the credentials (as tokio-postgres reads
/// them).
fn split_url(conn: &str, params: &mut TlsParams) -> Result<String, TlsError> {
    let after_creds = conn.find('@').map_or(0, |i| i + 1);
    let Some(q) = conn[after_creds..].find('?').map(|i| after_creds + i) else {
        return Ok(conn.to_owned());
    };
    let mut kept = Vec::new();
    for seg in conn[q + 1..].split('&') {
        let tls_key = seg.split_once('=').and_then(|(k, v)| {
            let k = percent_decode(k).ok()?;
            TLS_KEYS.contains(&k.as_str()).then_some((k, v))
        });
        match tls_key {
            Some((k, v)) => {
                let v = percent_decode(v).map_err(|_| TlsError::Encoding(k.clone()))?;
                set(params, &k, v)?;
            }
            None => kept.push(seg),
        }
    }
    let mut out = conn[..q].to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, ()> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// `host=h sslmode=verify-full sslrootcert='/a b/ca.crt'`: whitespace-separated `key=value`,
/// values optionally single-quoted, backslash escapes (tokio-postgres' and libpq's syntax).
/// The other parameters are written back quoted.
fn split_kv(conn: &str, params: &mut TlsParams) -> Result<String, TlsError> {
    let mut it = conn.chars().peekable();
    let mut kept = Vec::new();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            if it.peek().is_some() {
                return Err(TlsError::Syntax("expected a keyword"));
            }
            break;
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.next() != Some('=') {
            return Err(TlsError::Syntax("expected `=` after a keyword"));
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next() {
                    None => return Err(TlsError::Syntax("unterminated quoted value")),
                    Some('\'') => break,
                    Some('\\') => value.extend(it.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(it.next());
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(TlsError::Syntax("a keyword without a value"));
            }
        }
        if TLS_KEYS.contains(&key.as_str()) {
            set(params, &key, value)?;
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok(kept.join(" "))
}

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

/// Parses a connection string with TLS parameters: the tokio-postgres config (its sslmode set
/// from the plan) and the connector to use with it.
pub fn parse(conn: &str) -> anyhow::Result<(tokio_postgres::Config, Connector)> {
    let (rest, params) = split(conn)?;
    // tokio-postgres' message names the problem, never the password.
    let mut config: tokio_postgres::Config =
        rest.parse().map_err(
            |e: tokio_postgres::Error| match std::error::Error::source(&e) {
                Some(why) => anyhow::anyhow!("not a valid connection string: {why}"),
                None => anyhow::anyhow!("not a valid connection string: {e}"),
            },
        )?;
    let (mode, connector) = Connector::new(&params)?;
    config.ssl_mode(mode);
    Ok((config, connector))
}

/// The certificate verifier for `verify` (`root`: the `sslrootcert` file, required for
/// `Chain` and `ChainAndHost`).
fn verifier(
    verify: Verify,
    root: Option<&Path>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    Ok(match (verify, root) {
        (Verify::ChainAndHost, Some(path)) => {
            WebPkiServerVerifier::builder_with_provider(Arc::new(load_roots(path)?), provider)
                .build()
                .map_err(|e| file_error("sslrootcert", path, e))?
        }
        (Verify::Chain, Some(path)) => Arc::new(ChainOnly {
            roots: load_roots(path)?,
            provider,
        }),
        (Verify::Nothing, _) => Arc::new(NoVerify { provider }),
        (_, None) => return Err(TlsError::NoRootCert("verify-ca")),
    })
}

fn file_error(param: &'static str, path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::File {
        param,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn load_certs(param: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(param, path, e))?;
    if certs.is_empty() {
        return Err(file_error(param, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("sslrootcert", path)? {
        roots
            .add(cert)
            .map_err(|e| file_error("sslrootcert", path, e))?;
    }
    Ok(roots)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error("sslkey", path, e))
}

/// `require`/`prefer` without `sslrootcert`: any certificate; the handshake signature is still
/// verified (so the peer holds the key of the certificate it sent).
#[derive(Debug)]
struct NoVerify {
    provider: Arc<CryptoProvider>,
}

/// `verify-ca` (and require/prefer with `sslrootcert`): the chain to the roots, not the name.
#[derive(Debug)]
struct ChainOnly {
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_postgres::config::SslMode as Pg;
    use tokio_postgres::tls::MakeTlsConnect;

    fn split_ok(s: &str) -> (String, TlsParams) {
        split(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn url_tls_parameters_are_taken_out_and_the_rest_kept() {
        let (rest, p) = split_ok(
            "postgres://app:pw@pgtier:6432/app?connect_timeout=5&sslmode=verify-full\
             &sslrootcert=%2Fcerts%2Fca.crt&application_name=x",
        );
        assert_eq!(
            rest,
            "postgres://app:pw@pgtier:6432/app?connect_timeout=5&application_name=x"
        );
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.root_cert.as_deref(), Some(Path::new("/certs/ca.crt")));
        assert_eq!((p.cert, p.key), (None, None));

        // Only TLS parameters: no `?` left; the last value of a repeated key wins (libpq).
        let (rest, p) = split_ok(
            "postgresql://h/db?sslmode=require&sslcert=/c.crt&sslkey=/c.key&sslmode=verify-ca&sslrootcert=/ca",
        );
        assert_eq!(rest, "postgresql://h/db");
        assert_eq!(p.mode, SslMode::VerifyCa);
        assert_eq!(p.cert.as_deref(), Some(Path::new("/c.crt")));
        assert_eq!(p.key.as_deref(), Some(Path::new("/c.key")));

        // No query, or none of ours: unchanged; a `?` in the credentials is not the query.
        for s in [
            "postgres://u:p@h:1/db",
            "postgres://u:p@h:1/db?connect_timeout=5",
            "postgres://u:p?x@h:1/db",
        ] {
            let (rest, p) = split_ok(s);
            assert_eq!(rest, s);
            assert_eq!(p, TlsParams::default());
        }
        let (rest, p) = split_ok("postgres://u:p?x@h:1/db?sslmode=disable");
        assert_eq!(rest, "postgres://u:p?x@h:1/db");
        assert_eq!(p.mode, SslMode::Disable);
    }

    #[test]
    fn key_value_tls_parameters_are_taken_out_and_the_rest_requoted() {
        let s = r"host=pgtier port = 6432 password='it\'s a \\ secret' sslmode=verify-full sslrootcert='/my certs/ca.crt' dbname=app";
        let (rest, p) = split_ok(s);
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.root_cert.as_deref(), Some(Path::new("/my certs/ca.crt")));
        let c: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(c.get_password(), Some(&br"it's a \ secret"[..]));
        assert_eq!(c.get_dbname(), Some("app"));
        assert_eq!(c.get_ports(), &[6432]);
        assert_eq!(split_ok("").0, "");
        assert!(matches!(
            split("host=h sslrootcert='/x"),
            Err(TlsError::Syntax(_))
        ));
        assert!(matches!(split("host"), Err(TlsError::Syntax(_))));
    }

    #[test]
    fn modes_map_to_a_plan() {
        let plan = |mode, root: Option<&str>| {
            TlsParams {
                mode,
                root_cert: root.map(PathBuf::from),
                ..TlsParams::default()
            }
            .plan()
        };
        let p = |pg_mode, verify| Plan { pg_mode, verify };
        let root = Some("/ca.crt");
        assert_eq!(plan(SslMode::Disable, None).unwrap(), p(Pg::Disable, None));
        assert_eq!(plan(SslMode::Disable, root).unwrap(), p(Pg::Disable, None));
        let nothing = Some(Verify::Nothing);
        let chain = Some(Verify::Chain);
        assert_eq!(plan(SslMode::Prefer, None).unwrap(), p(Pg::Prefer, nothing));
        assert_eq!(plan(SslMode::Prefer, root).unwrap(), p(Pg::Prefer, chain));
        assert_eq!(
            plan(SslMode::Require, None).unwrap(),
            p(Pg::Require, nothing)
        );
        // libpq: require with a root certificate checks the chain (as verify-ca).
        assert_eq!(plan(SslMode::Require, root).unwrap(), p(Pg::Require, chain));
        assert_eq!(
            plan(SslMode::VerifyCa, root).unwrap(),
            p(Pg::Require, chain)
        );
        assert_eq!(
            plan(SslMode::VerifyFull, root).unwrap(),
            p(Pg::Require, Some(Verify::ChainAndHost))
        );
        for m in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let e = plan(m, None).unwrap_err();
            assert!(matches!(e, TlsError::NoRootCert(_)), "{e}");
            assert!(e.to_string().contains("needs sslrootcert"), "{e}");
        }
        assert!(matches!(
            plan(SslMode::VerifyFull, Some("system")),
            Err(TlsError::SystemRoots)
        ));
    }

    #[test]
    fn bad_parameters_are_refused_without_echoing_the_password() {
        for (s, want) in [
            ("postgres://u:s3cret@h/db?sslmode=allow", "sslmode=allow"),
            ("postgres://u:s3cret@h/db?sslmode=verify", "\"verify\""),
            (
                "postgres://u:s3cret@h/db?sslmode=verify-full",
                "needs sslrootcert",
            ),
            ("postgres://u:s3cret@h/db?sslcert=/c", "together"),
            ("postgres://u:s3cret@h/db?sslmode=%ZZ", "sslmode"),
            ("host=h password=s3cret sslmode=bogus", "\"bogus\""),
            ("postgres://u:s3cret@h/db?nonsense=1", "nonsense"),
            (
                "postgres://u:s3cret@h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.crt",
                "sslrootcert=/nonexistent/ca.crt",
            ),
        ] {
            let e = format!("{:#}", parse(s).unwrap_err());
            assert!(e.contains(want), "{s}: {e}");
            assert!(!e.contains("s3cret"), "{s}: {e}");
        }
    }

    /// A CA and a server certificate for `localhost` and 127.0.0.1.
    struct Pki {
        ca: CertificateDer<'static>,
        server: CertificateDer<'static>,
        server_key: Vec<u8>,
        dir: PathBuf,
    }

    impl Pki {
        fn new(tag: &str) -> Pki {
            let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca.distinguished_name
                .push(DnType::CommonName, format!("app test CA {tag}"));
            let ca_key = KeyPair::generate().unwrap();
            let ca_cert = ca.self_signed(&ca_key).unwrap();
            let issuer = Issuer::new(ca, ca_key);
            let server =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .unwrap();
            let key = KeyPair::generate().unwrap();
            let server = server.signed_by(&key, &issuer).unwrap();
            let dir = std::env::temp_dir().join(format!(
                "pgtier-app-tls-{tag}-{}-{:?}",
                std::process::id(),
                std::time::SystemTime::now()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
            Pki {
                ca: ca_cert.der().clone(),
                server: server.der().clone(),
                server_key: key.serialize_der(),
                dir,
            }
        }

        fn ca_file(&self) -> PathBuf {
            self.dir.join("ca.crt")
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn check(v: &Arc<dyn ServerCertVerifier>, pki: &Pki, name: &str) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        v.verify_server_cert(&pki.server, &[], &name, &[], UnixTime::now())
            .map(drop)
    }

    fn provider() -> Arc<CryptoProvider> {
        #[allow(deprecated)]
        Arc::new(rustls::crypto::ring::default_provider())
    }

    #[test]
    fn verifiers_check_what_their_mode_promises() {
        let pki = Pki::new("verifiers");
        let other = Pki::new("other");
        let root = pki.ca_file();
        let wrong_root = other.ca_file();
        assert_ne!(pki.ca, other.ca);

        let full = verifier(Verify::ChainAndHost, Some(&root), provider()).unwrap();
        check(&full, &pki, "localhost").unwrap();
        check(&full, &pki, "127.0.0.1").unwrap();
        let e = check(&full, &pki, "pgtier.example").unwrap_err();
        assert!(e.to_string().contains("not valid for name"), "{e}");

        let chain = verifier(Verify::Chain, Some(&root), provider()).unwrap();
        check(&chain, &pki, "localhost").unwrap();
        check(&chain, &pki, "pgtier.example").unwrap();

        for v in [Verify::ChainAndHost, Verify::Chain] {
            let wrong = verifier(v, Some(&wrong_root), provider()).unwrap();
            let e = check(&wrong, &pki, "localhost").unwrap_err();
            assert!(e.to_string().contains("UnknownIssuer"), "{v:?}: {e}");
        }

        let nothing = verifier(Verify::Nothing, None, provider()).unwrap();
        check(&nothing, &pki, "pgtier.example").unwrap();
        check(&nothing, &other, "localhost").unwrap();
    }

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
