//! The client listener: accepts connections, counts them against `max_client_conn` (at the
//! limit the oldest connection still logging in gives way), and stops accepting when shutdown
//! begins.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use super::session;
use crate::panics::Contained;
use crate::proxy::Proxy;
use crate::shutdown::Phase;

/// Open client connections, and those of them still logging in (oldest first).
#[derive(Debug, Default)]
pub struct ClientCount {
    open: Arc<AtomicUsize>,
    logins: Arc<Mutex<Logins>>,
}

/// Connections that have not logged in yet, oldest first (bounded by the open connections).
#[derive(Debug, Default)]
struct Logins {
    next: u64,
    queue: VecDeque<(u64, Arc<Notify>)>,
}

/// One counted client connection; uncounted on drop.
#[derive(Debug)]
pub struct ClientGuard {
    open: Arc<AtomicUsize>,
    logins: Arc<Mutex<Logins>>,
    over_limit: bool,
    /// Its place among the logins (None once logged in), and what tells it to give way.
    login: Option<(u64, Arc<Notify>)>,
}

fn lock(logins: &Mutex<Logins>) -> std::sync::MutexGuard<'_, Logins> {
    logins.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClientCount {
    /// Counts a new connection; the guard says whether it is over `limit`. At the limit, the
    /// oldest connection still logging in gives way instead (it is closed): half-open logins
    /// cannot lock clients out, and the count stays bounded.
    pub fn enter(&self, limit: usize) -> ClientGuard {
        let now = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let mut logins = lock(&self.logins);
        let mut over_limit = now > limit;
        if over_limit {
            if let Some((_, oldest)) = logins.queue.pop_front() {
                oldest.notify_one();
                over_limit = false;
            }
        }
        let id = logins.next;
        logins.next += 1;
        let notify = Arc::new(Notify::new());
        logins.queue.push_back((id, notify.clone()));
        ClientGuard {
            open: self.open.clone(),
            logins: self.logins.clone(),
            over_limit,
            login: Some((id, notify)),
        }
    }

    /// Open client connections.
    pub fn get(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl ClientGuard {
    /// Whether this connection exceeds `max_client_conn`.
    pub fn over_limit(&self) -> bool {
        self.over_limit
    }

    /// Resolves when a newer connection needs this one's place (it is still logging in).
    pub async fn evicted(&self) {
        match &self.login {
            Some((_, n)) => n.notified().await,
            None => std::future::pending().await,
        }
    }

    /// The client logged in: it no longer gives way to newer connections.
    pub fn logged_in(&mut self) {
        if let Some((id, _)) = self.login.take() {
            lock(&self.logins).queue.retain(|(i, _)| *i != id);
        }
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.logged_in();
        self.open.fetch_sub(1, Ordering::AcqRel);
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
