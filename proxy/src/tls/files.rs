//! Reading certificates, keys and CA bundles (PEM), and the crypto provider a side's
//! `*_tls_ciphers` and `*_tls_protocols` allow.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{RootCertStore, SupportedProtocolVersion};
use thiserror::Error;

use crate::config::TlsVersions;

/// Why a TLS configuration could not be built (never contains key material).
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{what} {}: {reason}", path.display())]
    File {
        /// Which key's file (e.g. "client_tls_cert_file").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `*_tls_ciphers` names nothing the provider implements.
    #[error("{key}: {reason}")]
    Ciphers {
        /// The config key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the combination (e.g. the key does not match the certificate).
    #[error("{context}: {source}")]
    Rustls {
        /// What was being built.
        context: &'static str,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built from the CA file.
    #[error("{context}: {reason}")]
    Verifier {
        /// What was being built.
        context: &'static str,
        /// Why.
        reason: String,
    },
}

/// Every certificate in a PEM file (a chain: leaf first).
pub fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |reason: String| TlsError::File {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(pem_reason(e)))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what,
        path: path.to_owned(),
        reason: pem_reason(e),
    })
}

/// A root store of every certificate in a PEM file.
pub fn roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(what, path)? {
        store.add(c).map_err(|e| TlsError::File {
            what,
            path: path.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(store)
}

/// The file errors of rustls-pki-types, without any of the file's bytes.
fn pem_reason(e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(e) => e.to_string(),
        E::NoItemsFound => "no PEM item of the expected kind in the file".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// The ring provider with the cipher suites `ciphers` allows: `default` (or PgBouncer's
/// `secure`, `fast`, `normal`, `all`) keeps rustls' list; otherwise a list of IANA suite
/// names (e.g. `TLS13_AES_256_GCM_SHA384:TLS13_CHACHA20_POLY1305_SHA256`), in that order.
pub fn provider(key: &'static str, ciphers: &str) -> Result<Arc<CryptoProvider>, TlsError> {
    // ring has no post-quantum key exchange (hence the deprecation); it is chosen for build
    // time, and its classical groups are what PgBouncer and Postgres offer.
    #[allow(deprecated)]
    let mut p = rustls::crypto::ring::default_provider();
    let words: Vec<&str> = ciphers
        .split([':', ',', ' '])
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    let all = words.is_empty()
        || words.iter().all(|w| {
            matches!(
                w.to_ascii_lowercase().as_str(),
                "default" | "secure" | "fast" | "normal" | "all"
            )
        });
    if !all {
        let known: Vec<String> = p
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        let mut chosen = Vec::new();
        for w in &words {
            match p
                .cipher_suites
                .iter()
                .find(|s| format!("{:?}", s.suite()).eq_ignore_ascii_case(w))
            {
                Some(s) => chosen.push(*s),
                None => {
                    return Err(TlsError::Ciphers {
                        key,
                        reason: format!("unknown cipher suite `{w}`; known: {}", known.join(", ")),
                    })
                }
            }
        }
        p.cipher_suites = chosen;
    }
    Ok(Arc::new(p))
}

/// `provider` with P-256 as the first key-exchange group: a rustls client sends a key share for
/// its first group only, and PostgreSQL up to 17 accepts only P-256 by default
/// (`ssl_ecdh_curve = prime256v1`), so any other first group costs each new server connection a
/// HelloRetryRequest round trip.
pub fn p256_first(provider: Arc<CryptoProvider>) -> Arc<CryptoProvider> {
    let mut p = (*provider).clone();
    if let Some(i) = p
        .kx_groups
        .iter()
        .position(|g| g.name() == rustls::NamedGroup::secp256r1)
    {
        let g = p.kx_groups.remove(i);
        p.kx_groups.insert(0, g);
    }
    Arc::new(p)
}

/// The rustls protocol versions of a side.
pub fn versions(v: TlsVersions) -> Vec<&'static SupportedProtocolVersion> {
    let mut out = Vec::with_capacity(2);
    if v.tls13 {
        out.push(&rustls::version::TLS13);
    }
    if v.tls12 {
        out.push(&rustls::version::TLS12);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_lists_filter_the_provider_and_unknown_names_are_refused() {
        assert!(provider("k", "default").unwrap().cipher_suites.len() > 3);
        let p = provider("k", "TLS13_AES_256_GCM_SHA384").unwrap();
        assert_eq!(p.cipher_suites.len(), 1);
        let e = provider("k", "ECDHE-RSA-AES128-SHA")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown cipher suite") && e.contains("TLS13_AES_128_GCM_SHA256"),
            "{e}"
        );
    }

    #[test]
    fn p256_leads_the_server_side_groups() {
        let p = p256_first(provider("k", "default").unwrap());
        assert_eq!(p.kx_groups[0].name(), rustls::NamedGroup::secp256r1);
        assert_eq!(
            p.kx_groups.len(),
            provider("k", "default").unwrap().kx_groups.len()
        );
    }

    #[test]
    fn a_missing_or_empty_file_names_the_key_and_the_path() {
        let e = certs("client_tls_cert_file", Path::new("/nonexistent/c.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("client_tls_cert_file /nonexistent/c.pem:"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("pgtier-tls-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("empty.pem");
        std::fs::write(&f, "not pem").unwrap();
        let e = key("client_tls_key_file", &f).unwrap_err().to_string();
        assert!(e.contains("no PEM item"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
