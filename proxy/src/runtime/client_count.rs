//! The count of open client connections against `max_client_conn`: at the limit the oldest
//! connection still logging in gives way, so half-open logins cannot lock clients out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Open client connections, and those of them still logging in (oldest first).
#[derive(Debug, Default)]
pub struct ClientCount {
    open: Arc<AtomicUsize>,
    logins: Arc<Mutex<Logins>>,
}

/// Connections that have not logged in yet, oldest first (bounded by the open connections).
#[derive(Debug, Default)]
struct Logins {
    /// What tells each to give way (its identity too).
    queue: VecDeque<Arc<Notify>>,
}

/// One counted client connection; uncounted on drop.
#[derive(Debug)]
pub struct ClientGuard {
    open: Arc<AtomicUsize>,
    logins: Arc<Mutex<Logins>>,
    over_limit: bool,
    /// What tells it to give way, also its place among the logins (None once logged in).
    login: Option<Arc<Notify>>,
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
            if let Some(oldest) = logins.queue.pop_front() {
                oldest.notify_one();
                over_limit = false;
            }
        }
        let notify = Arc::new(Notify::new());
        logins.queue.push_back(notify.clone());
        ClientGuard {
            open: self.open.clone(),
            logins: self.logins.clone(),
            over_limit,
            login: Some(notify),
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
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    }

    /// The client logged in: it no longer gives way to newer connections.
    pub fn logged_in(&mut self) {
        if let Some(mine) = self.login.take() {
            lock(&self.logins).queue.retain(|n| !Arc::ptr_eq(n, &mine));
        }
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.logged_in();
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}
