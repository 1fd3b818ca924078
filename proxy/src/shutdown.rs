//! Shutdown phases shared by the listener and every client session.

use tokio::sync::watch;

/// Where pgtier is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Serving.
    Running,
    /// No new clients; clients close (57P01) as soon as their transaction ends.
    Draining,
    /// `shutdown_timeout` passed: every client is closed now.
    Closing,
}

/// The sending side, owned by whoever drives shutdown.
#[derive(Debug)]
pub struct Shutdown {
    tx: watch::Sender<Phase>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            tx: watch::Sender::new(Phase::Running),
        }
    }
}

impl Shutdown {
    /// Moves to `phase` (never backwards).
    pub fn advance(&self, phase: Phase) {
        self.tx.send_if_modified(|p| {
            let later = phase > *p;
            if later {
                *p = phase;
            }
            later
        });
    }

    /// A handle for waiting on phases.
    pub fn watch(&self) -> ShutdownWatch {
        ShutdownWatch(self.tx.subscribe())
    }
}

/// The receiving side, one per task.
#[derive(Debug, Clone)]
pub struct ShutdownWatch(watch::Receiver<Phase>);

impl ShutdownWatch {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.0.borrow()
    }

    /// Resolves once the phase is at least `phase`. Create it once per wait loop, not per
    /// iteration: each new future registers with the channel.
    pub fn reached(&self, phase: Phase) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            // The sender lives as long as the proxy; if it is gone, treat it as closing.
            let _ = rx.wait_for(|p| *p >= phase).await;
        }
    }
}
