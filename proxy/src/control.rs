//! What admin commands change that client sessions obey: a paused database (PAUSE, KILL)
//! holds new transactions until RESUME; a killed one (KILL) closes its clients. Sessions read
//! these with relaxed atomic loads; changes wake them through the shutdown notifier
//! (`Shutdown::poke`), so an idle client waits on nothing extra.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// Resolves once `done()` holds, checked now and whenever `notify` wakes its waiters.
async fn until(notify: &Notify, done: impl Fn() -> bool) {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        // Registered before checking, so a wake-up in between is not missed.
        notified.as_mut().enable();
        if done() {
            return;
        }
        notified.await;
    }
}

/// Admin state of one database (kept across reloads).
#[derive(Debug, Default)]
pub struct DbControl {
    paused: AtomicBool,
    /// KILL commands so far.
    kills: AtomicU64,
    resumed: Notify,
}

impl DbControl {
    /// New transactions wait (PAUSE).
    pub fn pause(&self) {
        self.paused.store(true, Ordering::Release);
    }

    /// New transactions run again (RESUME).
    pub fn resume(&self) {
        self.paused.store(false, Ordering::Release);
        self.resumed.notify_waiters();
    }

    /// Whether new transactions wait.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Clients connected before now must close (KILL).
    pub fn kill(&self) {
        self.kills.fetch_add(1, Ordering::AcqRel);
    }

    /// KILL commands so far: a client compares it with the count at its login.
    pub fn kills(&self) -> u64 {
        self.kills.load(Ordering::Acquire)
    }

    /// Waits up to `limit` while the database is paused; false if it still is.
    pub async fn wait_resumed(&self, limit: Duration) -> bool {
        crate::timers::timeout(limit, until(&self.resumed, || !self.is_paused()))
            .await
            .is_ok()
    }
}

/// Admin state of every database, and a pending SHUTDOWN request.
#[derive(Debug, Default)]
pub struct Control {
    databases: Mutex<HashMap<String, Arc<DbControl>>>,
    shutdown: Notify,
    shutdown_requested: AtomicBool,
}

impl Control {
    /// The state of `database` (created on first use).
    pub fn database(&self, database: &str) -> Arc<DbControl> {
        self.databases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(database.to_owned())
            .or_default()
            .clone()
    }

    /// Asks the process to shut down gracefully (admin SHUTDOWN).
    pub fn request_shutdown(&self) {
        self.shutdown_requested.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
    }

    /// Resolves when SHUTDOWN was requested.
    pub async fn shutdown_requested(&self) {
        until(&self.shutdown, || {
            self.shutdown_requested.load(Ordering::Acquire)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pause_holds_until_resume() {
        let c = Arc::new(DbControl::default());
        assert!(c.wait_resumed(Duration::from_millis(1)).await);
        c.pause();
        assert!(!c.wait_resumed(Duration::from_millis(20)).await);
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.wait_resumed(Duration::from_secs(5)).await });
        crate::timers::sleep(Duration::from_millis(10)).await;
        c.resume();
        assert!(waiter.await.unwrap());
        let before = c.kills();
        c.kill();
        assert_eq!(c.kills(), before + 1);
    }
}
