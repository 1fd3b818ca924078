//! TLS between clients and pgtier: psql with verify-full, tokio-postgres over rustls (routing,
//! prepared statements, COPY, cancel), `require` refusing plain text, client certificates
//! (`auth = "cert"`, verify-full), direct TLS (a ClientHello first, ALPN "postgresql"),
//! certificate rotation by RELOAD, and bad handshakes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::SinkExt;
use pgtier_kit::fixture::{admin_console, read_node, scram_role, simple_rows, ConfigBuilder};
use pgtier_kit::tls::client_config;
use pgtier_kit::wire::{self, startup_packet};
use pgtier_kit::{bin_path, CertFiles, Cluster, Pgtier, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres_rustls::MakeRustlsConnect;

const LIMIT: Duration = Duration::from_secs(10);

/// A CA, pgtier's certificate from it, and a client certificate for `certuser`.
struct Certs {
    ca: TestCa,
    server: CertFiles,
}

fn certs() -> Certs {
    let ca = TestCa::new("pgtier TLS test CA").unwrap();
    let server = ca.server("pgtier", &["localhost", "127.0.0.1"]).unwrap();
    Certs { ca, server }
}

fn toml_path(p: &Path) -> String {
    p.display().to_string()
}

/// A pgtier with client TLS in `mode`, the CA for client certificates, users `tls` (SCRAM),
/// `certuser` (auth = "cert") and `admin`, and the cluster's replicas.
fn builder(c: &Certs, mode: &str) -> ConfigBuilder {
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
fn psql(conninfo: &str, sql: &str) -> (bool, String, String) {
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

fn conninfo(px: &Pgtier, user: &str, extra: &str) -> String {
    format!(
        "host=localhost port={} user={user} dbname=app {extra}",
        px.port()
    )
}

async fn tls_connect(
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

#[test]
fn psql_verify_full_reaches_pgtier_over_tls_and_show_clients_says_so() {
    let c = certs();
    let px = builder(&c, "prefer").start().unwrap();
    let ca = toml_path(&c.ca.ca_file());
    let (ok, out, err) = psql(
        &conninfo(
            &px,
            "tls",
            &format!("password=tls sslmode=verify-full sslrootcert={ca}"),
        ),
        "SELECT 41 + 1",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "42");
    // The certificate names localhost and 127.0.0.1, not another name: verify-full fails.
    let (ok, _, err) = psql(
        &format!(
            "host=pgtier.invalid hostaddr=127.0.0.1 port={} user=tls password=tls dbname=app sslmode=verify-full sslrootcert={ca}",
            px.port()
        ),
        "SELECT 1",
    );
    assert!(!ok && err.contains("does not match"), "{err}");
    // prefer: plain text still works.
    let (ok, out, err) = psql(
        &conninfo(&px, "tls", "password=tls sslmode=disable"),
        "SELECT 'plain'",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "plain");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = tls_connect(&px, &c.ca, "tls", "password=tls", None)
            .await
            .unwrap();
        client.simple_query("SELECT 1").await.unwrap();
        let admin = admin_console(&px, "admin", "admin").await;
        let rows = simple_rows(&admin, "SHOW CLIENTS").await;
        let tls: Vec<&str> = rows
            .iter()
            .filter(|r| r.get("user") == Some("tls"))
            .map(|r| r.get("tls").unwrap_or(""))
            .collect();
        assert_eq!(tls.len(), 1, "{tls:?}");
        assert!(tls[0].starts_with("TLSv1.3/TLS13_"), "{tls:?}");
    });
}

#[test]
fn require_refuses_plain_text_with_28000_and_serves_tls() {
    let c = certs();
    let px = builder(&c, "require").start().unwrap();
    let (ok, _, err) = psql(
        &conninfo(&px, "tls", "password=tls sslmode=disable"),
        "SELECT 1",
    );
    assert!(!ok && err.contains("SSL required"), "{err}");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        // The raw refusal: FATAL 28000 to a startup packet sent in plain text.
        let mut s = TcpStream::connect(px.addr()).await.unwrap();
        s.write_all(&startup_packet(0, &[("user", "tls"), ("database", "app")]))
            .await
            .unwrap();
        let (code, message) = wire::expect_fatal(&mut s, LIMIT).await.unwrap();
        assert_eq!((code.as_str(), message.as_str()), ("28000", "SSL required"));
        // A plain-text CancelRequest is still accepted (libpq sends cancels unencrypted).
        let mut cancel = TcpStream::connect(px.addr()).await.unwrap();
        let mut packet = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
        packet.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
        cancel.write_all(&packet).await.unwrap();
        assert!(wire::closed_within(&mut cancel, LIMIT).await);
        let client = tls_connect(&px, &c.ca, "tls", "password=tls", None)
            .await
            .unwrap();
        assert_eq!(
            simple_rows(&client, "SELECT 'over tls' AS v").await[0].get("v"),
            Some("over tls")
        );
    });
}

#[test]
fn routing_prepared_statements_copy_and_cancel_work_unchanged_over_tls() {
    let c = certs();
    let px = builder(&c, "require").start().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = tls_connect(&px, &c.ca, "tls", "password=tls", None)
            .await
            .unwrap();
        client
            .batch_execute("DROP TABLE IF EXISTS tls_t; CREATE TABLE tls_t (id int, v text)")
            .await
            .unwrap();
        // Routing: a write on the primary, then (after the write replayed) reads on replicas.
        let stmt = client
            .prepare("INSERT INTO tls_t VALUES ($1, $2)")
            .await
            .unwrap();
        for i in 0..20 {
            client.execute(&stmt, &[&i, &format!("row {i}")]).await.unwrap();
        }
        // A read waits at most causal_read_wait for a replica to replay the writes, then goes
        // to the primary: on a loaded machine the first reads may; once the replicas caught
        // up, reads reach them.
        tokio::task::block_in_place(|| Cluster::shared().wait_replicas_caught_up()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (port, in_recovery) = read_node(&client).await.unwrap();
            if in_recovery {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "reads over TLS still went to port {port}, not a replica, 10 s after the replicas caught up"
            );
        }
        let read = client.prepare("SELECT count(*) FROM tls_t WHERE id < $1").await.unwrap();
        for _ in 0..5 {
            let n: i64 = client.query_one(&read, &[&10i32]).await.unwrap().get(0);
            assert_eq!(n, 10, "read-your-writes over TLS");
        }
        // COPY in and out.
        let sink = client
            .copy_in("COPY tls_t (id, v) FROM STDIN")
            .await
            .unwrap();
        let mut sink = std::pin::pin!(sink);
        let mut data = BytesMut::new();
        for i in 100..1100 {
            data.extend_from_slice(format!("{i}\tcopied {i}\n").as_bytes());
        }
        sink.send(data.freeze()).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 1000);
        let n: i64 = client
            .query_one("SELECT count(*) FROM tls_t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1020);
        // Cancel: tokio-postgres sends the CancelRequest over a TLS connection of its own.
        let token = client.cancel_token();
        let config = client_config(&c.ca.ca_file(), None, &[]).unwrap();
        let sleeper = tokio::spawn(async move {
            client.simple_query("SELECT pg_sleep(30)").await.map(|_| ())
        });
        // Wait (on the primary's view) until the sleep runs, then cancel it.
        let deadline = Instant::now() + LIMIT;
        loop {
            let running = Cluster::shared()
                .primary()
                .psql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'")
                .unwrap();
            let running_replica = Cluster::shared().replicas().iter().any(|r| {
                r.psql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'")
                    .unwrap()
                    != "0"
            });
            if running != "0" || running_replica {
                break;
            }
            assert!(Instant::now() < deadline, "the sleep never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        token
            .cancel_query(MakeRustlsConnect::new(config))
            .await
            .unwrap();
        let err = tokio::time::timeout(LIMIT, sleeper)
            .await
            .expect("cancel took effect")
            .unwrap()
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
            "{err}"
        );
    });
}

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

/// Sends a startup packet over `s` and reads to the first ReadyForQuery or error.
async fn login_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    user: &str,
) -> Vec<u8> {
    s.write_all(&startup_packet(0, &[("user", user), ("database", "app")]))
        .await
        .unwrap();
    s.flush().await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + LIMIT;
    // Up to ReadyForQuery ('Z') or an ErrorResponse ('E').
    loop {
        let read = tokio::time::timeout_at(deadline.into(), s.read(&mut buf))
            .await
            .expect("an answer in time");
        // A close with or without close_notify ends the answer.
        let n = read.unwrap_or(0);
        if n == 0 {
            return got;
        }
        got.extend_from_slice(&buf[..n]);
        if wire_tags(&got).iter().any(|t| *t == b'Z' || *t == b'E') {
            return got;
        }
    }
}

fn wire_tags(mut b: &[u8]) -> Vec<u8> {
    let mut tags = Vec::new();
    while b.len() >= 5 {
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        if b.len() < 1 + len {
            break;
        }
        tags.push(b[0]);
        b = &b[1 + len..];
    }
    tags
}

#[test]
fn direct_tls_needs_alpn_postgresql_and_garbage_handshakes_are_closed() {
    let c = certs();
    let cluster = Cluster::shared();
    cluster.create_trust_role("pgtier_trust").unwrap();
    let mport = pgtier_kit::free_port().unwrap();
    let px = builder(&c, "require")
        .global("client_login_timeout = \"1s\"")
        .global(&format!("metrics_listen = \"127.0.0.1:{mport}\""))
        .user("pgtier_trust", "auth = \"trust\"")
        .start()
        .unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        // A ClientHello first, with ALPN "postgresql": a session.
        let config = client_config(&c.ca.ca_file(), None, &[b"postgresql"]).unwrap();
        let tcp = TcpStream::connect(px.addr()).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name.clone(), tcp)
            .await
            .unwrap();
        let got = login_over(&mut tls, "pgtier_trust").await;
        assert_eq!(wire_tags(&got).first(), Some(&b'R'), "{got:?}");
        assert_eq!(wire_tags(&got).last(), Some(&b'Z'), "{got:?}");
        // Without ALPN: closed before any startup.
        let config = client_config(&c.ca.ca_file(), None, &[]).unwrap();
        let tcp = TcpStream::connect(px.addr()).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name.clone(), tcp)
            .await
            .unwrap();
        let got = login_over(&mut tls, "pgtier_trust").await;
        assert!(got.is_empty(), "direct TLS without ALPN got {got:?}");
        // Garbage after an SSLRequest: closed, not a panic.
        let mut s = TcpStream::connect(px.addr()).await.unwrap();
        s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .unwrap();
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"S");
        s.write_all(b"this is not a ClientHello at all, it is text\r\n")
            .await
            .unwrap();
        assert!(wire::closed_within(&mut s, LIMIT).await);
        // A client that stalls mid-handshake is cut at client_login_timeout (1 s).
        let mut s = TcpStream::connect(px.addr()).await.unwrap();
        s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .unwrap();
        s.read_exact(&mut answer).await.unwrap();
        let t0 = Instant::now();
        assert!(wire::closed_within(&mut s, LIMIT).await);
        assert!(
            t0.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t0.elapsed()
        );
        // pgtier still serves, and counted the failures.
        let client = tls_connect(&px, &c.ca, "tls", "password=tls", None)
            .await
            .unwrap();
        client.simple_query("SELECT 1").await.unwrap();
        let log = px.log();
        assert!(log.contains("TLS handshake failed"), "{log}");
        // Failed: no ALPN, garbage, the stalled one. Completed: the ALPN one, the last one.
        let metrics = metrics_text(mport);
        let value = |series: &str| -> f64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(series))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
        };
        assert_eq!(
            value("pgtier_client_tls_handshakes_total{result=\"failure\"}"),
            3.0
        );
        assert_eq!(
            value("pgtier_client_tls_handshakes_total{result=\"success\"}"),
            2.0
        );
    });
}

fn metrics_text(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
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

#[test]
fn psycopg_and_asyncpg_connect_over_tls_including_asyncpg_direct_tls() {
    let c = certs();
    let px = builder(&c, "require").start().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/tls_drivers.py");
    let out = Command::new("timeout")
        .args(["-s", "KILL", "120", "python3"])
        .arg(&script)
        .args(["localhost", &px.port().to_string(), "tls", "tls", "app"])
        .arg(c.ca.ca_file())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("tls_drivers OK"),
        "{stdout}\n{stderr}\n{}",
        px.log()
    );
    assert!(
        stdout.contains("asyncpg direct_tls=True over TLSv1.3 alpn=postgresql"),
        "{stdout}"
    );
}

#[test]
fn client_tls_protocols_and_ciphers_limit_what_is_negotiated() {
    let c = certs();
    // rcgen's keys are ECDSA P-256: a TLS 1.2 ECDSA suite.
    let px = builder(&c, "require")
        .global("client_tls_protocols = \"tlsv1.2\"")
        .global("client_tls_ciphers = \"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\"")
        .start()
        .unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = tls_connect(&px, &c.ca, "tls", "password=tls", None)
            .await
            .unwrap();
        client.simple_query("SELECT 1").await.unwrap();
        let admin = tls_connect(&px, &c.ca, "admin", "password=admin dbname=pgtier", None)
            .await
            .unwrap();
        let rows = simple_rows(&admin, "SHOW CLIENTS").await;
        let tls: Vec<&str> = rows
            .iter()
            .filter(|r| r.get("user") == Some("tls"))
            .map(|r| r.get("tls").unwrap_or(""))
            .collect();
        assert_eq!(
            tls,
            ["TLSv1.2/TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"],
            "{tls:?}"
        );
        let config = simple_rows(&admin, "SHOW CONFIG").await;
        let value = |key: &str| {
            config
                .iter()
                .find(|r| r.get("key") == Some(key))
                .and_then(|r| r.get("value"))
                .map(str::to_owned)
        };
        assert_eq!(value("client_tls_sslmode").as_deref(), Some("require"));
        assert_eq!(value("client_tls_protocols").as_deref(), Some("tlsv1.2"));
    });
}
