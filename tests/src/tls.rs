//! Test certificates: a CA and the server and client certificates it signs, written as PEM
//! files (generated with rcgen; nothing is checked in).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::tmp::make_temp_dir;

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The private key (PKCS#8 PEM).
    pub key: PathBuf,
}

/// A test CA in its own directory; it signs server and client certificates.
pub struct TestCa {
    dir: PathBuf,
    name: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("dir", &self.dir).finish()
    }
}

impl TestCa {
    /// A new CA named `name` (its common name), in a fresh temp directory.
    pub fn new(name: &str) -> Result<TestCa> {
        let dir = make_temp_dir("pgtier-certs")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write(&dir.join("ca.crt"), &cert.pem())?;
        Ok(TestCa {
            dir,
            name: name.to_owned(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (PEM), for `*_tls_ca_file` and `sslrootcert`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The CA's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A server certificate for `names` (DNS names or IP addresses, e.g. `localhost`,
    /// `127.0.0.1`), written as `<file>.crt` / `<file>.key`.
    pub fn server(&self, file: &str, names: &[&str]) -> Result<CertFiles> {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(file));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(file, params)
    }

    /// A client certificate whose common name is `cn` (the user name for `auth = "cert"`).
    pub fn client(&self, file: &str, cn: &str) -> Result<CertFiles> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(file, params)
    }

    fn sign(&self, file: &str, mut params: CertificateParams) -> Result<CertFiles> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing {file} with {}", self.name))?;
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        write(&files.cert, &cert.pem())?;
        write(&files.key, &key.serialize_pem())?;
        // libpq and Postgres refuse a key others can read.
        set_mode(&files.key, 0o600)?;
        Ok(files)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A rustls client config that trusts `ca_file` and presents `client` (if given), with the
/// given ALPN protocols: for tokio-postgres-rustls and raw TLS tests.
pub fn client_config(
    ca_file: &Path,
    client: Option<&CertFiles>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_file)? {
        roots.add(c?)?;
    }
    #[allow(deprecated)] // ring: the provider pgtier uses (no post-quantum groups)
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match client {
        Some(files) => {
            let chain =
                CertificateDer::pem_file_iter(&files.cert)?.collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(&files.key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Whether the run asks for existing tests over TLS (`PGTIER_TEST_TLS=1`): configs from
/// [`crate::fixture::ConfigBuilder`] then enable client TLS ("prefer", the kit's certificate),
/// and [`connect`] connects with `sslmode=require`, verifying the kit's CA.
pub fn test_tls() -> bool {
    std::env::var("PGTIER_TEST_TLS").is_ok_and(|v| v == "1")
}

/// The kit's CA and the pgtier certificate it signed (for `localhost` and `127.0.0.1`),
/// made once per test process.
pub fn kit_certs() -> &'static (TestCa, CertFiles) {
    static CERTS: std::sync::OnceLock<(TestCa, CertFiles)> = std::sync::OnceLock::new();
    CERTS.get_or_init(|| {
        let ca = TestCa::new("pgtier kit CA").expect("making the kit's test CA");
        let files = ca
            .server("pgtier", &["localhost", "127.0.0.1"])
            .expect("signing the kit's pgtier certificate");
        (ca, files)
    })
}

/// Config lines that turn on client TLS with the kit's certificate.
pub fn kit_client_tls_lines() -> String {
    let (_, files) = kit_certs();
    format!(
        "client_tls_sslmode = \"prefer\"\nclient_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"\n",
        files.cert.display(),
        files.key.display()
    )
}

/// Connects with tokio-postgres (its connection task spawned): over TLS verified against the
/// kit's CA when [`test_tls`] is on (a pgtier without TLS then fails), else in plain text.
pub async fn connect(dsn: &str) -> Result<tokio_postgres::Client> {
    if !test_tls() {
        let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        return Ok(client);
    }
    let (ca, _) = kit_certs();
    let config = client_config(&ca.ca_file(), None, &[])?;
    let (client, conn) = tokio_postgres::connect(
        &format!("{dsn} sslmode=require"),
        tokio_postgres_rustls::MakeRustlsConnect::new(config),
    )
    .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Sets a file's permission bits.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_signs_server_and_client_certificates() {
        let ca = TestCa::new("kit test CA").unwrap();
        let s = ca.server("server", &["localhost", "127.0.0.1"]).unwrap();
        let c = ca.client("alice", "alice").unwrap();
        for f in [&s.cert, &c.cert, &ca.ca_file()] {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{text}");
        }
        let key = std::fs::read_to_string(&s.key).unwrap();
        assert!(key.contains("PRIVATE KEY"), "{key}");
    }
}
