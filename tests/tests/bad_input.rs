//! Bad input never crashes, hangs or starves pgtier: each case is followed by a normal client
//! that must still be served.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgtier_kit::fixture::ConfigBuilder;
use pgtier_kit::{wire, Cluster, Pgtier};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(5);

fn pgtier() -> &'static Pgtier {
    static PX: OnceLock<Pgtier> = OnceLock::new();
    PX.get_or_init(|| {
        let c = Cluster::shared();
        pgtier_kit::fixture::ensure_app_db(c).unwrap();
        c.create_trust_role("pgtier_trust").unwrap();
        ConfigBuilder::new(c)
            .global("max_message_size = 65536\nclient_login_timeout = \"1s\"")
            .user("pgtier_trust", "auth = \"trust\"")
            .start()
            .unwrap()
    })
}

/// A normal client still gets served.
async fn still_serves(px: &Pgtier) {
    let (mut s, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    answers_select(&mut s).await;
}

/// A logged-in client's `SELECT 7` gets its row.
async fn answers_select(s: &mut TcpStream) {
    s.write_all(&wire::query("SELECT 7")).await.unwrap();
    let r = wire::read_until_ready(s, LIMIT).await.unwrap();
    assert!(r.iter().any(|m| m.tag == b'D'), "{r:?}");
}

async fn raw(px: &Pgtier, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(px.addr()).await.unwrap();
    s.write_all(bytes).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_startup_packets_are_closed() {
    let px = pgtier();
    for bytes in [
        &[0u8, 0, 0, 3][..],                 // length below the minimum
        &[0, 1, 0x86, 0xa0, 0, 3, 0, 0][..], // length 100000, above the maximum
        &[0, 0, 0, 12, 0, 3, 0, 0, b'u', b's', b'e', b'r'][..], // unterminated parameter
        &[0, 0, 0, 8, 0x12, 0x34, 0x56, 0x78][..], // unknown request code (major 4660)
    ] {
        let mut s = raw(px, bytes).await;
        assert!(
            wire::closed_within(&mut s, LIMIT).await,
            "not closed: {bytes:?}"
        );
    }
    still_serves(px).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn old_protocol_major_version_gets_0a000() {
    let px = pgtier();
    let mut p = wire::startup_packet(0, &[("user", "pgtier_trust")]);
    p[4..6].copy_from_slice(&2u16.to_be_bytes());
    let mut s = raw(px, &p).await;
    let (code, message) = wire::expect_fatal(&mut s, LIMIT).await.unwrap();
    assert_eq!(code, "0A000");
    assert!(
        message.contains("unsupported frontend protocol 2.0"),
        "{message}"
    );
    still_serves(px).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_message_gets_54000() {
    let px = pgtier();
    let (mut s, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    // Only the header: pgtier must refuse on the declared length, not wait for 1 GB.
    let mut header = vec![b'Q'];
    header.extend((1u32 << 30).to_be_bytes());
    s.write_all(&header).await.unwrap();
    let (code, message) = wire::expect_fatal(&mut s, LIMIT).await.unwrap();
    assert_eq!(code, "54000");
    assert!(message.contains("max_message_size"), "{message}");
    assert!(wire::closed_within(&mut s, LIMIT).await);
    still_serves(px).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_message_inside_a_transaction_gets_54000() {
    let px = pgtier();
    let (mut s, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    s.write_all(&wire::query("BEGIN")).await.unwrap();
    wire::read_until_ready(&mut s, LIMIT).await.unwrap();
    let big = format!("SELECT '{}'", "x".repeat(70_000));
    s.write_all(&wire::query(&big)).await.unwrap();
    let (code, _) = wire::expect_fatal(&mut s, LIMIT).await.unwrap();
    assert_eq!(code, "54000");
    still_serves(px).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_message_type_gets_08p01() {
    let px = pgtier();
    let (mut s, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    s.write_all(&wire::message(b'Y', b"junk")).await.unwrap();
    let (code, message) = wire::expect_fatal(&mut s, LIMIT).await.unwrap();
    assert_eq!(code, "08P01");
    assert!(
        message.contains("invalid frontend message type 89"),
        "{message}"
    );
    still_serves(px).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn negative_length_gets_08p01() {
    let px = pgtier();
    let (mut s, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    s.write_all(&[b'Q', 0xff, 0xff, 0xff, 0xff]).await.unwrap();
    let (code, _) = wire::expect_fatal(&mut s, LIMIT).await.unwrap();
    assert_eq!(code, "08P01");
    still_serves(px).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_client_hits_the_login_timeout() {
    let px = pgtier();
    let t0 = Instant::now();
    let mut s = TcpStream::connect(px.addr()).await.unwrap();
    assert!(wire::closed_within(&mut s, LIMIT).await);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
    // Half a startup packet, then nothing.
    let mut s = raw(px, &[0, 0, 0, 40, 0, 3]).await;
    assert!(wire::closed_within(&mut s, LIMIT).await);
    still_serves(px).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn password_message_out_of_place_is_rejected() {
    let c = Cluster::shared();
    pgtier_kit::fixture::scram_role(c, "app_scram", "pw").unwrap();
    let px = ConfigBuilder::new(c)
        .user("app_scram", "password = \"pw\"")
        .start()
        .unwrap();
    let mut s = raw(
        &px,
        &wire::startup_packet(0, &[("user", "app_scram"), ("database", "app")]),
    )
    .await;
    let m = wire::read_msg(&mut s, LIMIT).await.unwrap();
    assert_eq!(m.tag, b'R'); // AuthenticationSASL
                             // A Query instead of SASLInitialResponse.
    s.write_all(&wire::query("SELECT 1")).await.unwrap();
    let (code, _) = wire::expect_fatal(&mut s, LIMIT).await.unwrap();
    assert_eq!(code, "08P01");
    // Garbage SASL data.
    let mut s = raw(
        &px,
        &wire::startup_packet(0, &[("user", "app_scram"), ("database", "app")]),
    )
    .await;
    wire::read_msg(&mut s, LIMIT).await.unwrap();
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend(5i32.to_be_bytes());
    body.extend(b"xyzzy");
    s.write_all(&wire::message(b'p', &body)).await.unwrap();
    let (code, _) = wire::expect_fatal(&mut s, LIMIT).await.unwrap();
    assert_eq!(code, "08P01");
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_clients_get_53300() {
    let c = Cluster::shared();
    pgtier_kit::fixture::ensure_app_db(c).unwrap();
    c.create_trust_role("pgtier_trust").unwrap();
    let px = ConfigBuilder::new(c)
        .global("max_client_conn = 2")
        .user("pgtier_trust", "auth = \"trust\"")
        .start()
        .unwrap();
    let (a, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    let (_b, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    let mut s = raw(
        &px,
        &wire::startup_packet(0, &[("user", "pgtier_trust"), ("database", "app")]),
    )
    .await;
    let (code, message) = wire::expect_fatal(&mut s, LIMIT).await.unwrap();
    assert_eq!(code, "53300");
    assert!(message.contains("max_client_conn"), "{message}");
    drop(a);
    // The slot frees once pgtier has seen `a` leave: a new client then logs in and is served.
    let t0 = std::time::Instant::now();
    let mut s = loop {
        match wire::login_trust(&px.addr(), "pgtier_trust", "app").await {
            Ok((s, _)) => break s,
            Err(e) => assert!(t0.elapsed() < LIMIT, "no slot after a client left: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    answers_select(&mut s).await;
}
