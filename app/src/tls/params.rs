//! The TLS parameters of a connection string (sslmode, certificate files) and their plan.

use std::path::{Path, PathBuf};

use super::error::TlsError;

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
    pub(super) fn parse(v: &str) -> Result<SslMode, TlsError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::SslMode as Pg;

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
}
