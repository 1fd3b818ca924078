//! What the client TLS tests share: a CA and certificates, a pgtier with client TLS, connections.
// Shared by two test binaries, each using part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use pgtier_kit::fixture::{scram_role, ConfigBuilder};
use pgtier_kit::tls::client_config;
use pgtier_kit::{bin_path, CertFiles, Cluster, Pgtier, TestCa};
use tokio_postgres_rustls::MakeRustlsConnect;

pub const LIMIT: Duration = Duration::from_secs(10);

/// A CA, pgtier's certificate from it, and a client certificate for `certuser`.
pub struct Certs {
    pub ca: TestCa,
    pub server: CertFiles,
}

pub fn certs() -> Certs {
    let ca = TestCa::new("pgtier TLS test CA").unwrap();
    let server = ca.server("pgtier", &["localhost", "127.0.0.1"]).unwrap();
    Certs { ca, server }
}

pub fn toml_path(p: &Path) -> String {
    p.display().to_string()
}

/// A pgtier with client TLS in `mode`, the CA for client certificates, users `tls` (SCRAM),
/// `certuser` (auth = "cert") and `admin`, and the cluster's replicas.
pub fn builder(c: &Certs, mode: &str) -> ConfigBuilder {
    let cluster = Cluster::shared();
    scram_role(cluster, "tls", "tls").unwrap();
    scram_role(cluster, "certuser", "certuser").unwrap();
    ConfigBuilder::new(cluster)
        .with_replicas(cluster)
        .global(&format!("client_tls_sslmode = \"{mode}\""))
        .global(&format!(
            "client_tls_cert_file = \"{}\"",
            toml_path(&c.server.cert)
        ))
        .global(&format!(
            "client_tls_key_file = \"{}\"",
            toml_path(&c.server.key)
        ))
        .global(&format!(
            "client_tls_ca_file = \"{}\"",
            toml_path(&c.ca.ca_file())
        ))
        .global("server_tls_sslmode = \"disable\"")
        .global("admin_users = [\"admin\"]")
        .user("tls", "password = \"tls\"")
        .user(
            "certuser",
            "auth = \"cert\"\nserver_password = \"certuser\"",
        )
        .user(
            "admin",
            "password = \"admin\"\nserver_password = \"app\"\nserver_user = \"app\"",
        )
}

/// Runs psql with a libpq connection string; returns (success, stdout, stderr).
pub fn psql(conninfo: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new(bin_path("psql").unwrap())
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
            conninfo,
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

pub fn conninfo(px: &Pgtier, user: &str, extra: &str) -> String {
    format!(
        "host=localhost port={} user={user} dbname=app {extra}",
        px.port()
    )
}

pub async fn tls_connect(
    px: &Pgtier,
    ca: &TestCa,
    user: &str,
    extra: &str,
    client_cert: Option<&CertFiles>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let config = client_config(&ca.ca_file(), client_cert, &[]).unwrap();
    let dsn = format!(
        "host=localhost port={} user={user} dbname=app sslmode=require connect_timeout=10 {extra}",
        px.port()
    );
    let (client, conn) = tokio_postgres::connect(&dsn, MakeRustlsConnect::new(config)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}
