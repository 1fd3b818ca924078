//! The client listener: accepts connections, counts them against `max_client_conn`, and stops
//! accepting when shutdown begins.

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{error, info, warn};

use super::session;
use crate::panics::Contained;
use crate::proxy::Proxy;
use crate::shutdown::Phase;

/// Number of open client connections.
#[derive(Debug, Default)]
pub struct ClientCount(Arc<AtomicUsize>);

/// One counted client connection; uncounted on drop.
#[derive(Debug)]
pub struct ClientGuard {
    count: Arc<AtomicUsize>,
    over_limit: bool,
}

impl ClientCount {
    /// Counts a new connection; the guard says whether it is over `limit`.
    pub fn enter(&self, limit: usize) -> ClientGuard {
        let now = self.0.fetch_add(1, Ordering::AcqRel) + 1;
        ClientGuard {
            count: self.0.clone(),
            over_limit: now > limit,
        }
    }

    /// Open client connections.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl ClientGuard {
    /// Whether this connection exceeds `max_client_conn`.
    pub fn over_limit(&self) -> bool {
        self.over_limit
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

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
                        let login = pin!(session::handle(proxy, stream, peer, guard));
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
