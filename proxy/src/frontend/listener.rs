//! The client listener: accepts connections, counts them against `max_client_conn` (see
//! `runtime::client_count`), hands each to its own task, and stops accepting when shutdown
//! begins.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::panics::Contained;
use crate::runtime::Proxy;
use crate::shutdown::Phase;

use super::connection;

/// Accepts clients until shutdown begins; each client runs in its own task.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    let draining = proxy.shutdown_watch().reached(Phase::Draining);
    tokio::pin!(draining);
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let limit = proxy.settings().raw.max_client_conn as usize;
                    let guard = proxy.clients().enter(limit);
                    let proxy = proxy.clone();
                    tokio::spawn(async move {
                        // Login (the session runs in a task of its own, contained there).
                        let login = pin!(connection::handle(proxy, stream, peer, guard));
                        if let Err(panic) = Contained(login).await {
                            error!(%peer, panic, "internal error during login: connection closed");
                        }
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut draining => break,
        }
    }
    info!("stopped accepting clients");
}
