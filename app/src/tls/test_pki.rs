//! Test certificates for the verifier and connector tests: a CA and a server certificate.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;

/// A CA and a server certificate for `localhost` and 127.0.0.1.
pub(super) struct Pki {
    pub(super) ca: CertificateDer<'static>,
    pub(super) server: CertificateDer<'static>,
    pub(super) server_key: Vec<u8>,
    dir: PathBuf,
}

impl Pki {
    pub(super) fn new(tag: &str) -> Pki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("app test CA {tag}"));
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
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

    pub(super) fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(super) fn provider() -> Arc<CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}
