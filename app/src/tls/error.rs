//! The TLS side's connection-string and certificate-file errors.

use std::path::PathBuf;

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
