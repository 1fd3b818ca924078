//! Set-up shared by the COPY and streaming tests: a trust user `copier` and its pgtier.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Duration;

use pgtier_kit::fixture::{scram_role, ConfigBuilder};
use pgtier_kit::{wire, Cluster, Pgtier};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::Client;

/// Longest wait for a reply.
pub const LIMIT: Duration = Duration::from_secs(20);

pub fn cluster() -> &'static Cluster {
    static SETUP: OnceLock<()> = OnceLock::new();
    let c = Cluster::shared();
    SETUP.get_or_init(|| scram_role(c, "copier", "copier").unwrap());
    c
}

pub fn start(pool_size: u32) -> Pgtier {
    ConfigBuilder::new(cluster())
        .global("pool_mode = \"transaction\"")
        // A server leaked by a COPY makes the next waiter fail (53300) instead of hanging.
        .global("query_wait_timeout = \"15s\"")
        .user("copier", "auth = \"trust\"\nserver_password = \"copier\"")
        .database(&format!("pool_size = {pool_size}"))
        .start()
        .unwrap()
}

pub async fn client(px: &Pgtier) -> Client {
    let dsn = format!(
        "host=127.0.0.1 port={} user=copier dbname=app connect_timeout=10",
        px.port()
    );
    // Over TLS when PGTIER_TEST_TLS=1.
    pgtier_kit::tls::connect(&dsn).await.unwrap()
}

pub async fn raw(px: &Pgtier) -> TcpStream {
    wire::login_trust(&px.addr(), "copier", "app")
        .await
        .unwrap()
        .0
}

pub async fn send(s: &mut TcpStream, parts: &[Vec<u8>]) -> Vec<wire::Msg> {
    s.write_all(&parts.concat()).await.unwrap();
    wire::read_until_ready(s, LIMIT).await.unwrap()
}
