//! Shutdown phases shared by the listener and every client session, and admin wake-ups (KILL,
//! PAUSE...). The phase and the wake-up count are atomics (read on hot paths without a lock).
//! The listener and the admin console park on one `Notify`; each client session registers a
//! waker slot once, for its life ([`ShutdownWatch::register`]), so that waiting for a phase or
//! a wake-up during every transaction costs two atomic loads and a waker swap instead of a
//! `Notify` registration (a lock to enter the list and another to leave it).

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use tokio::sync::Notify;

/// Where pgtier is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Serving.
    Running = 0,
    /// No new connections (the listener is closed, so processes sharing the port get them);
    /// clients go on as usual for `shutdown_grace`, so a client that connected just before
    /// (its login and first transaction on their way) is served, not cut off.
    Quiescing = 1,
    /// No new clients; clients close (57P01) as soon as their transaction ends.
    Draining = 2,
    /// `shutdown_timeout` passed: every client is closed now.
    Closing = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Running,
            1 => Phase::Quiescing,
            2 => Phase::Draining,
            _ => Phase::Closing,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    phase: AtomicU8,
    /// Admin wake-ups so far (see [`Shutdown::poke`]).
    pokes: AtomicU64,
    changed: Notify,
    /// The sessions' waker slots.
    slots: Mutex<Slots>,
}

impl Inner {
    /// Wakes every waiter: `Notify` waiters and every registered session.
    fn wake_all(&self) {
        self.changed.notify_waiters();
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for w in slots.live.iter().flatten() {
            w.wake();
        }
    }

    fn reached_or_poked(&self, phase: Phase, seen: Option<u64>) -> bool {
        self.phase.load(Ordering::Acquire) >= phase as u8
            || seen.is_some_and(|s| self.pokes.load(Ordering::Acquire) != s)
    }
}

/// Registered session wakers, by index; freed indexes are reused.
#[derive(Debug, Default)]
struct Slots {
    live: Vec<Option<Arc<AtomicWaker>>>,
    free: Vec<usize>,
}

/// The sending side, owned by whoever drives shutdown.
#[derive(Debug, Default)]
pub struct Shutdown(Arc<Inner>);

impl Shutdown {
    /// Moves to `phase` (never backwards) and wakes every waiter.
    pub fn advance(&self, phase: Phase) {
        self.0.phase.fetch_max(phase as u8, Ordering::AcqRel);
        self.0.wake_all();
    }

    /// Wakes every waiter without changing the phase: an admin command changed something
    /// clients must look at (a KILL, a RESUME).
    pub fn poke(&self) {
        self.0.pokes.fetch_add(1, Ordering::AcqRel);
        self.0.wake_all();
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

    /// Admin wake-ups so far: pass it to [`ShutdownWatch::reached_or_poked`].
    pub fn pokes(&self) -> u64 {
        self.0.pokes.load(Ordering::Acquire)
    }

    /// Resolves once the phase is at least `phase`. Create it once per wait loop, not per
    /// iteration: each new future registers with the notifier.
    pub fn reached(&self, phase: Phase) -> impl Future<Output = ()> + Send + 'static {
        self.reached_or_poked(phase, None)
    }

    /// Resolves once the phase is at least `phase`, or (with `seen`) once an admin wake-up
    /// came after the count `seen`.
    pub fn reached_or_poked(
        &self,
        phase: Phase,
        seen: Option<u64>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let inner = self.0.clone();
        async move {
            loop {
                let notified = inner.changed.notified();
                tokio::pin!(notified);
                // Register before checking, so an advance in between is not missed.
                notified.as_mut().enable();
                if inner.reached_or_poked(phase, seen) {
                    return;
                }
                notified.await;
            }
        }
    }

    /// A waker slot for one session's task, registered until it is dropped.
    pub fn register(&self) -> SessionWatch {
        let waker = Arc::new(AtomicWaker::new());
        let mut slots = self.0.slots.lock().unwrap_or_else(|e| e.into_inner());
        let index = match slots.free.pop() {
            Some(i) => {
                slots.live[i] = Some(waker.clone());
                i
            }
            None => {
                slots.live.push(Some(waker.clone()));
                slots.live.len() - 1
            }
        };
        drop(slots);
        SessionWatch {
            inner: self.0.clone(),
            waker,
            index,
        }
    }
}

/// A session's view of the shutdown phases and admin wake-ups, with its own waker slot: its
/// waits register nothing per transaction. Every future it makes must be polled by the one
/// task that owns it (the slot holds one waker).
#[derive(Debug)]
pub struct SessionWatch {
    inner: Arc<Inner>,
    waker: Arc<AtomicWaker>,
    index: usize,
}

impl SessionWatch {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.inner.phase.load(Ordering::Acquire))
    }

    /// Admin wake-ups so far: pass it to [`SessionWatch::reached_or_poked`].
    pub fn pokes(&self) -> u64 {
        self.inner.pokes.load(Ordering::Acquire)
    }

    /// Ready once the phase is at least `phase`, or (with `seen`) once an admin wake-up came
    /// after the count `seen`.
    pub fn poll_reached_or_poked(
        &self,
        cx: &mut Context<'_>,
        phase: Phase,
        seen: Option<u64>,
    ) -> Poll<()> {
        if self.inner.reached_or_poked(phase, seen) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Checked again after registering, so a change in between is not missed.
        if self.inner.reached_or_poked(phase, seen) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves once the phase is at least `phase`, or (with `seen`) once an admin wake-up
    /// came after the count `seen`.
    pub fn reached_or_poked(
        &self,
        phase: Phase,
        seen: Option<u64>,
    ) -> impl Future<Output = ()> + Send + '_ {
        std::future::poll_fn(move |cx| self.poll_reached_or_poked(cx, phase, seen))
    }

    /// Resolves once the phase is at least `phase`.
    pub fn reached(&self, phase: Phase) -> impl Future<Output = ()> + Send + '_ {
        self.reached_or_poked(phase, None)
    }
}

impl Drop for SessionWatch {
    fn drop(&mut self) {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.live[self.index] = None;
        slots.free.push(self.index);
    }
}

/// A handle that only wakes waiters, as [`Shutdown::poke`] does (a node failed: sessions on it
/// look).
#[derive(Debug, Clone)]
pub struct Poker(Arc<Inner>);

impl Poker {
    /// See [`Shutdown::poke`].
    pub fn poke(&self) {
        self.0.pokes.fetch_add(1, Ordering::AcqRel);
        self.0.wake_all();
    }
}

impl Shutdown {
    /// A [`Poker`] for this shutdown's waiters.
    pub fn poker(&self) -> Poker {
        Poker(self.0.clone())
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
        crate::timers::sleep(Duration::from_millis(10)).await;
        assert!(!draining.is_finished());
        s.advance(Phase::Draining);
        crate::timers::timeout(Duration::from_secs(1), draining)
            .await
            .unwrap()
            .unwrap();
        assert!(!closing.is_finished());
        s.advance(Phase::Closing);
        s.advance(Phase::Draining);
        assert_eq!(w.phase(), Phase::Closing);
        crate::timers::timeout(Duration::from_secs(1), closing)
            .await
            .unwrap()
            .unwrap();
        // A poke wakes only those that asked for pokes.
        let s2 = Shutdown::default();
        let w2 = s2.watch();
        let seen = w2.pokes();
        let poked = tokio::spawn(w2.reached_or_poked(Phase::Closing, Some(seen)));
        let not_poked = tokio::spawn(w2.reached(Phase::Closing));
        s2.poke();
        crate::timers::timeout(Duration::from_secs(1), poked)
            .await
            .unwrap()
            .unwrap();
        crate::timers::sleep(Duration::from_millis(10)).await;
        assert!(!not_poked.is_finished());
        not_poked.abort();
        // Already reached: resolves at once.
        crate::timers::timeout(Duration::from_secs(1), w.reached(Phase::Draining))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn registered_sessions_wake_on_pokes_and_phases() {
        let s = Shutdown::default();
        let w = s.watch();
        let session = |phase: Phase, pokes: bool| {
            let w = w.clone();
            tokio::spawn(async move {
                let me = w.register();
                let seen = pokes.then(|| me.pokes());
                me.reached_or_poked(phase, seen).await;
                me.phase()
            })
        };
        let poked = session(Phase::Closing, true);
        let draining = session(Phase::Draining, false);
        // Both registered (and, being spawned, possibly not yet waiting: a poke or advance
        // before their first poll is seen by the check, after it by the waker).
        let registered = || s.0.slots.lock().unwrap().live.iter().flatten().count();
        while registered() < 2 {
            tokio::task::yield_now().await;
        }
        s.poke();
        let phase = crate::timers::timeout(Duration::from_secs(1), poked)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(phase, Phase::Running);
        assert!(!draining.is_finished());
        s.advance(Phase::Draining);
        let phase = crate::timers::timeout(Duration::from_secs(1), draining)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(phase, Phase::Draining);
        // Dropped sessions give their slots back, and the next registration reuses one.
        let slots = s.0.slots.lock().unwrap().live.len();
        drop(w.register());
        assert_eq!(s.0.slots.lock().unwrap().live.len(), slots);
        assert!(s.0.slots.lock().unwrap().live.iter().all(Option::is_none));
    }
}
