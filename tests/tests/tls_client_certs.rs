//! Client TLS certificates: client certificates, `pgtier check` of the files, rotation by RELOAD.

mod tls_client_support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use pgtier_kit::{CertFiles, Pgtier, TestCa};
use tls_client_support::{builder, certs, conninfo, psql, tls_connect, toml_path};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[test]
fn client_certificates_authenticate_cert_users_and_wrong_ones_are_refused() {
    let c = certs();
    let px = builder(&c, "prefer").start().unwrap();
    let good = c.ca.client("certuser", "certuser").unwrap();
    let other = c.ca.client("someone", "someone").unwrap();
    let foreign_ca = TestCa::new("another CA").unwrap();
    let foreign = foreign_ca.client("certuser-foreign", "certuser").unwrap();
    let ca = toml_path(&c.ca.ca_file());
    let with = |files: &CertFiles| {
        format!(
            "sslmode=verify-full sslrootcert={ca} sslcert={} sslkey={}",
            toml_path(&files.cert),
            toml_path(&files.key)
        )
    };
    let (ok, out, err) = psql(
        &conninfo(&px, "certuser", &with(&good)),
        "SELECT current_user",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "certuser");
    let (ok, _, err) = psql(&conninfo(&px, "certuser", &with(&other)), "SELECT 1");
    assert!(
        !ok && err.contains("certificate authentication failed for user \"certuser\""),
        "{err}"
    );
    let (ok, _, err) = psql(
        &conninfo(
            &px,
            "certuser",
            &format!("sslmode=verify-full sslrootcert={ca}"),
        ),
        "SELECT 1",
    );
    assert!(!ok && err.contains("no client certificate"), "{err}");
    let (ok, _, err) = psql(&conninfo(&px, "certuser", &with(&foreign)), "SELECT 1");
    assert!(!ok, "a certificate from another CA must not pass: {err}");
    // Password users may still present a certificate; it does not replace the password.
    let (ok, _, err) = psql(
        &conninfo(&px, "tls", &format!("{} password=wrong", with(&good))),
        "SELECT 1",
    );
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );
    drop(px);

    // verify-full: every client needs a certificate naming its user (password still asked).
    let px = builder(&c, "verify-full").start().unwrap();
    let tls_cert = c.ca.client("tls", "tls").unwrap();
    let (ok, out, err) = psql(
        &conninfo(&px, "tls", &format!("{} password=tls", with(&tls_cert))),
        "SELECT current_user",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "tls");
    let (ok, _, err) = psql(
        &conninfo(&px, "tls", &format!("{} password=tls", with(&good))),
        "SELECT 1",
    );
    assert!(
        !ok && err.contains("common name is not the user name"),
        "{err}"
    );
    let (ok, _, err) = psql(
        &conninfo(&px, "tls", "sslmode=require password=tls"),
        "SELECT 1",
    );
    assert!(
        !ok,
        "verify-full without a client certificate must fail: {err}"
    );
}

#[test]
fn pgtier_check_reads_the_certificate_files() {
    let c = certs();
    let dir = pgtier_kit::make_temp_dir("pgtier-tls-check").unwrap();
    let write = |name: &str, key_file: &str| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "client_tls_sslmode = \"require\"\nclient_tls_cert_file = \"{}\"\n\
                 client_tls_key_file = \"{key_file}\"\n[users.a]\npassword = \"x\"\n\
                 [databases.app]\nprimary = \"127.0.0.1:5432\"\n",
                toml_path(&c.server.cert)
            ),
        )
        .unwrap();
        Command::new(pgtier_kit::pgtier_bin().unwrap())
            .arg("check")
            .arg(&path)
            .output()
            .unwrap()
    };
    let ok = write("ok.toml", &toml_path(&c.server.key));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let missing = write("missing.toml", "/nonexistent/pgtier.key");
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success()
            && err.contains("client_tls_key_file /nonexistent/pgtier.key: No such file"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The certificate pgtier presents on a new TLS connection (DER of the leaf).
async fn presented_certificate(px: &Pgtier) -> Vec<u8> {
    // Trusts any certificate (pgtier's own verifier for sslmode=require): the test compares
    // what it got.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(pgtier::tls::verify::AnyCertificate::new(
            provider_for_verify(),
        )))
        .with_no_client_auth();
    let mut tcp = TcpStream::connect(px.addr()).await.unwrap();
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn provider_for_verify() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

#[test]
fn reload_rotates_the_certificate_for_new_connections_and_a_bad_key_keeps_the_old_one() {
    let c = certs();
    let px = builder(&c, "require").start().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        assert_eq!(presented_certificate(&px).await, pem_der(&c.server.cert));
        let before = tls_connect(&px, &c.ca, "tls", "password=tls", None)
            .await
            .unwrap();
        // A new certificate from a new CA, written over the config's file names.
        let ca2 = TestCa::new("rotated CA").unwrap();
        let rotated = ca2.server("pgtier2", &["localhost", "127.0.0.1"]).unwrap();
        std::fs::copy(&rotated.cert, &c.server.cert).unwrap();
        std::fs::copy(&rotated.key, &c.server.key).unwrap();
        let admin = tls_connect(&px, &c.ca, "admin", "password=admin dbname=pgtier", None)
            .await
            .unwrap();
        admin.simple_query("RELOAD").await.unwrap();
        assert_eq!(presented_certificate(&px).await, pem_der(&rotated.cert));
        // New clients verify against the new CA; the established one carries on.
        let after = tls_connect(&px, &ca2, "tls", "password=tls", None)
            .await
            .unwrap();
        after.simple_query("SELECT 1").await.unwrap();
        assert!(tls_connect(&px, &c.ca, "tls", "password=tls", None)
            .await
            .is_err());
        before.simple_query("SELECT 1").await.unwrap();
        // A key that does not match the certificate: RELOAD fails, the rotated one stays.
        let third = ca2.server("pgtier3", &["localhost"]).unwrap();
        std::fs::copy(&third.key, &c.server.key).unwrap();
        let err = admin.simple_query("RELOAD").await.unwrap_err();
        let db = err.as_db_error().unwrap();
        assert_eq!(db.code().code(), "F0000", "{db:?}");
        assert!(
            db.message()
                .contains("client_tls_cert_file / client_tls_key_file"),
            "{}",
            db.message()
        );
        assert_eq!(presented_certificate(&px).await, pem_der(&rotated.cert));
        // An unreadable file: the same.
        std::fs::write(&c.server.cert, "garbage").unwrap();
        let err = admin.simple_query("RELOAD").await.unwrap_err();
        assert!(
            err.as_db_error()
                .unwrap()
                .message()
                .contains("client_tls_cert_file"),
            "{err:?}"
        );
        assert_eq!(presented_certificate(&px).await, pem_der(&rotated.cert));
    });
}
