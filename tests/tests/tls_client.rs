//! TLS between clients and pgtier, sslmodes and handshakes: psql with verify-full,
//! tokio-postgres over rustls (routing, prepared statements, COPY, cancel), `require` refusing
//! plain text, direct TLS (a ClientHello first, ALPN "postgresql"), bad handshakes, psycopg and
//! asyncpg, protocol and cipher limits. Client certificates: tls_client_certs.rs.

mod tls_client_support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::SinkExt;
use pgtier_kit::fixture::{admin_console, read_node, simple_rows};
use pgtier_kit::tls::client_config;
use pgtier_kit::wire::{self, startup_packet};
use pgtier_kit::Cluster;
use tls_client_support::{builder, certs, conninfo, psql, tls_connect, toml_path, LIMIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres_rustls::MakeRustlsConnect;

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
