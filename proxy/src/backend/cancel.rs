//! Forwarding a client's CancelRequest to the server that runs its query.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::startup::CancelKey;

/// Where and with which key a running query can be cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelTarget {
    /// The server's address.
    pub addr: SocketAddr,
    /// The server backend's own key (from its BackendKeyData).
    pub key: CancelKey,
}

/// Sends a CancelRequest to the server; Postgres answers by closing the connection.
pub async fn send_cancel(target: CancelTarget, limit: Duration) -> std::io::Result<()> {
    cancel_at(target.addr, target.key, limit).await
}

/// Sends a CancelRequest with `key` to another pgtier process at `host:port` (cancel
/// peering) and waits until it closes the connection, as a server does.
pub async fn send_cancel_to_peer(
    host: &str,
    port: u16,
    key: CancelKey,
    limit: Duration,
) -> std::io::Result<()> {
    cancel_at((host, port), key, limit).await
}

/// Sends `key`'s CancelRequest to `addr` and waits (up to `limit`) for it to close.
async fn cancel_at(
    addr: impl tokio::net::ToSocketAddrs,
    key: CancelKey,
    limit: Duration,
) -> std::io::Result<()> {
    let work = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(&key.request_packet()).await?;
        let mut sink = [0u8; 64];
        while s.read(&mut sink).await? > 0 {}
        Ok(())
    };
    crate::timers::timeout(limit, work)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
