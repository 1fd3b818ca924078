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

/// One counted client connection while it logs in; uncounted on drop.
#[derive(Debug)]
pub struct ClientGuard {
    open: OpenClient,
    queued: Queued,
    over_limit: bool,
}

/// One counted client connection that logged in (8 bytes in every idle session); uncounted
/// on drop.
#[derive(Debug)]
pub struct OpenClient(Arc<AtomicUsize>);

/// A connection's place among the logins; it leaves the queue on drop.
#[derive(Debug)]
struct Queued {
    logins: Arc<Mutex<Logins>>,
    /// What tells it to give way, also its identity in the queue.
    notify: Arc<Notify>,
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
            open: OpenClient(self.open.clone()),
            queued: Queued {
                logins: self.logins.clone(),
                notify,
            },
            over_limit,
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
        self.queued.notify.notified().await
    }

    /// The client logged in: it no longer gives way to newer connections; what stays is its
    /// count.
    pub fn logged_in(self) -> OpenClient {
        let ClientGuard { open, queued, .. } = self;
        drop(queued);
        open
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        lock(&self.logins)
            .queue
            .retain(|n| !Arc::ptr_eq(n, &self.notify));
    }
}

impl Drop for OpenClient {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
