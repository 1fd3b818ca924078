//! Shutdown phases shared by the listener and every client session. The phase is an atomic
//! (read on hot paths without a lock) and waiters park on a `Notify` (a small future per
//! waiting client).

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Where pgtier is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Serving.
    Running = 0,
    /// No new clients; clients close (57P01) as soon as their transaction ends.
    Draining = 1,
    /// `shutdown_timeout` passed: every client is closed now.
    Closing = 2,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Running,
            1 => Phase::Draining,
            _ => Phase::Closing,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    phase: AtomicU8,
    changed: Notify,
}

/// The sending side, owned by whoever drives shutdown.
#[derive(Debug, Default)]
pub struct Shutdown(Arc<Inner>);

impl Shutdown {
    /// Moves to `phase` (never backwards) and wakes every waiter.
    pub fn advance(&self, phase: Phase) {
        self.0.phase.fetch_max(phase as u8, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }

    /// A handle for waiting on phases.
    pub fn watch(&self) -> ShutdownWatch {
        ShutdownWatch(self.0.clone())
    }
}

/// The receiving side, one per task.
#[derive(Debug, Clone)]
pub struct ShutdownWatch(Arc<Inner>);

impl ShutdownWatch {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.0.phase.load(Ordering::Acquire))
    }

    /// Resolves once the phase is at least `phase`. Create it once per wait loop, not per
    /// iteration: each new future registers with the notifier.
    pub fn reached(&self, phase: Phase) -> impl Future<Output = ()> + Send + 'static {
        let inner = self.0.clone();
        async move {
            loop {
                let notified = inner.changed.notified();
                tokio::pin!(notified);
                // Register before checking, so an advance in between is not missed.
                notified.as_mut().enable();
                if inner.phase.load(Ordering::Acquire) >= phase as u8 {
                    return;
                }
                notified.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_wake_on_advance_and_phases_only_move_forward() {
        let s = Shutdown::default();
        let w = s.watch();
        let draining = tokio::spawn(w.reached(Phase::Draining));
        let closing = tokio::spawn(w.reached(Phase::Closing));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!draining.is_finished());
        s.advance(Phase::Draining);
        tokio::time::timeout(Duration::from_secs(1), draining)
            .await
            .unwrap()
            .unwrap();
        assert!(!closing.is_finished());
        s.advance(Phase::Closing);
        s.advance(Phase::Draining);
        assert_eq!(w.phase(), Phase::Closing);
        tokio::time::timeout(Duration::from_secs(1), closing)
            .await
            .unwrap()
            .unwrap();
        // Already reached: resolves at once.
        tokio::time::timeout(Duration::from_secs(1), w.reached(Phase::Draining))
            .await
            .unwrap();
    }
}
