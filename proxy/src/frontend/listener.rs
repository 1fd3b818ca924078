//! The client listener: accepts connections, counts them against `max_client_conn` (see
//! `runtime::client_count`), hands each to its own task, and stops accepting when shutdown
//! begins.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{error, info, warn};

use crate::panics::Contained;
use crate::runtime::Proxy;
use crate::shutdown::Phase;

use super::connection;

/// Connections taken from the accept queue when shutdown begins (more are left to the kernel).
const MAX_SWEPT: usize = 4096;

/// Accepts clients until shutdown begins; each client runs in its own task.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    accept_until_shutdown(&proxy, &listener).await;
    drop(listener);
}

/// `peer_listen`: accepts clients like [`serve`] until shutdown begins, then goes on
/// accepting until the process exits, for cancel requests only (peers forward to it the
/// cancels of transactions still finishing here; logins get 57P03).
pub async fn serve_peers(proxy: Arc<Proxy>, listener: TcpListener) {
    accept_until_shutdown(&proxy, &listener).await;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => spawn(&proxy, stream, peer, true),
            Err(e) => {
                warn!(error = %e, "accept failed");
                crate::timers::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn accept_until_shutdown(proxy: &Arc<Proxy>, listener: &TcpListener) {
    let stopping = proxy.shutdown_watch().reached(Phase::Quiescing);
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => spawn(proxy, stream, peer, false),
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    crate::timers::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut stopping => break,
        }
    }
    // Connections the kernel already completed would be reset when the socket closes (with
    // SO_REUSEPORT they are not moved to the other processes unless net.ipv4.tcp_migrate_req
    // is set): take them and serve them; they log in while shutdown_grace runs.
    let mut swept = 0;
    while swept < MAX_SWEPT {
        let ready = std::future::poll_fn(|cx| match listener.poll_accept(cx) {
            Poll::Ready(r) => Poll::Ready(r.ok()),
            Poll::Pending => Poll::Ready(None),
        })
        .await;
        let Some((stream, peer)) = ready else { break };
        spawn(proxy, stream, peer, false);
        swept += 1;
    }
    info!(swept, "stopped accepting clients");
}

/// Serves one accepted connection in its own task (`cancel_only`: logins are refused).
fn spawn(proxy: &Arc<Proxy>, stream: TcpStream, peer: SocketAddr, cancel_only: bool) {
    let limit = proxy.settings().raw.max_client_conn as usize;
    let guard = proxy.clients().enter(limit);
    let proxy = proxy.clone();
    tokio::spawn(async move {
        // Login (the session runs in a task of its own, contained there).
        let login = pin!(connection::handle(proxy, stream, peer, guard, cancel_only));
        if let Err(panic) = Contained(login).await {
            error!(%peer, panic, "internal error during login: connection closed");
        }
    });
}
