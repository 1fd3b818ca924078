//! Sleeps and timeouts without tokio's time driver.
//!
//! With tokio's time driver, every park of the runtime (two per transaction with one client)
//! locks the timer wheel, walks it and reads the clock twice: about 900 instructions per
//! transaction even when no timer is due. pgtier's runtime is built without it. Its timers are
//! kept here instead, ordered by deadline, behind one `timerfd` that the runtime's I/O driver
//! polls like a socket: a park costs nothing for timers, and a timer costs a map insert (and a
//! `timerfd_settime` when it is the earliest). A time driver on a thread of its own was tried
//! first: a second thread switches glibc's `malloc`, `send` and `recv` to their multi-threaded
//! paths, which cost more at eight clients than the driver saved (see benches/README.md).
//!
//! [`start`] sets this up on the current runtime; before it (unit tests, tools) every function
//! here falls back to `tokio::time` on the current runtime. Code in this crate makes its timers
//! here, never with `tokio::time`'s constructors (clippy's `disallowed-methods` in
//! `proxy/clippy.toml` holds to that).

use std::collections::BTreeMap;
use std::fs::File;
use std::future::{Future, IntoFuture};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// The timers of the process, once [`start`]ed.
static WHEEL: OnceLock<Wheel> = OnceLock::new();

/// Pending timers and the `timerfd` that fires at the earliest.
struct Wheel {
    state: Mutex<State>,
    fd: AsyncFd<File>,
}

/// A pending timer's place: its deadline, and a number that tells equal deadlines apart.
type Key = (Instant, u64);

#[derive(Default)]
struct State {
    pending: BTreeMap<Key, Waker>,
    next_id: u64,
    /// When the `timerfd` fires next (None: disarmed).
    armed: Option<Instant>,
}

/// Starts the timers on the current runtime (once per process; later calls do nothing). Must
/// run inside the runtime that serves, before anything makes a timer.
pub fn start() -> io::Result<()> {
    if WHEEL.get().is_some() {
        return Ok(());
    }
    let file = File::from(timerfd()?);
    // SAFETY: the `File` owns its descriptor and lives inside the `AsyncFd`: it stays open and
    // the same for the `AsyncFd`'s lifetime.
    let fd = unsafe { AsyncFd::register_with_interest(file, tokio::io::Interest::READABLE) }?;
    let _ = WHEEL.set(Wheel {
        state: Mutex::new(State::default()),
        fd,
    });
    if let Some(wheel) = WHEEL.get() {
        tokio::spawn(wheel.drive());
    }
    Ok(())
}

impl Wheel {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the timers that are due each time the `timerfd` fires, and arms it for the next.
    async fn drive(&'static self) {
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                return;
            };
            // Reads the expiration count; readiness is cleared only when the read would block,
            // so that a firing between the read and the clear is not lost.
            let read = ready.try_io(|fd| {
                let mut fd: &File = fd.get_ref();
                fd.read(&mut [0u8; 8])
            });
            if read.is_err() {
                continue;
            }
            let now = Instant::now();
            let mut due = Vec::new();
            {
                let mut state = self.lock();
                while let Some(first) = state.pending.first_entry() {
                    if first.key().0 > now {
                        break;
                    }
                    due.push(first.remove());
                }
                let next = state.pending.keys().next().map(|k| k.0);
                state.armed = next;
                self.arm(next, now);
            }
            for waker in due {
                waker.wake();
            }
        }
    }

    /// Sets the `timerfd` to fire at `at` (None: disarm).
    fn arm(&self, at: Option<Instant>, now: Instant) {
        // A zero value disarms a timerfd: a deadline already passed fires in a microsecond.
        let after = at.map(|at| {
            at.saturating_duration_since(now)
                .max(Duration::from_micros(1))
        });
        if let Err(e) = set_timerfd(self.fd.get_ref(), after) {
            tracing::error!(error = %e, "cannot arm the timer");
        }
    }
}

/// A nonblocking monotonic `timerfd`.
fn timerfd() -> io::Result<OwnedFd> {
    // SAFETY: plain system call; a non-negative result is a new descriptor that we own.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else holds it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes `fd` fire once after `after` (None: never).
fn set_timerfd(fd: &File, after: Option<Duration>) -> io::Result<()> {
    let after = after.unwrap_or_default();
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: after.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: after.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: `fd` is an open timerfd; `spec` is a valid itimerspec; the old value is not asked.
    let r = unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How many timers are pending (0 before [`start`]).
pub fn pending() -> usize {
    WHEEL.get().map_or(0, |w| w.lock().pending.len())
}

/// A future that completes at a deadline (like `tokio::time::Sleep`).
#[must_use = "futures do nothing unless polled"]
pub struct Sleep {
    deadline: Instant,
    inner: Inner,
}

enum Inner {
    /// In the wheel under this key once polled (None: not yet, or fired and taken out).
    Wheel(Option<Key>),
    /// Before [`start`]: tokio's timer on the current runtime.
    Tokio(Pin<Box<tokio::time::Sleep>>),
}

impl std::fmt::Debug for Sleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Sleep {
    /// The instant it completes at.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Moves the deadline (the sleep waits again if it had completed).
    pub fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
        match &mut self.inner {
            Inner::Wheel(key) => {
                if let (Some(key), Some(wheel)) = (key.take(), WHEEL.get()) {
                    wheel.lock().pending.remove(&key);
                }
            }
            Inner::Tokio(s) => s.as_mut().reset(deadline),
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let key = match &mut self.inner {
            Inner::Tokio(s) => return s.as_mut().poll(cx),
            Inner::Wheel(key) => key,
        };
        let Some(wheel) = WHEEL.get() else {
            return Poll::Ready(());
        };
        let mut state = wheel.lock();
        if let Some(k) = key {
            return match state.pending.get_mut(k) {
                // Fired: the driver took it out.
                None => {
                    *key = None;
                    // Completed; a later reset waits again.
                    Poll::Ready(())
                }
                Some(waker) => {
                    if !waker.will_wake(cx.waker()) {
                        waker.clone_from(cx.waker());
                    }
                    Poll::Pending
                }
            };
        }
        let now = Instant::now();
        if deadline <= now {
            return Poll::Ready(());
        }
        state.next_id += 1;
        let k = (deadline, state.next_id);
        state.pending.insert(k, cx.waker().clone());
        *key = Some(k);
        if state.armed.is_none_or(|armed| deadline < armed) {
            state.armed = Some(deadline);
            wheel.arm(Some(deadline), now);
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let (Inner::Wheel(Some(key)), Some(wheel)) = (&self.inner, WHEEL.get()) {
            wheel.lock().pending.remove(key);
        }
    }
}

/// A future that completes after `duration`.
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(Instant::now() + duration)
}

/// A future that completes at `deadline`.
#[allow(clippy::disallowed_methods)]
pub fn sleep_until(deadline: Instant) -> Sleep {
    let inner = match WHEEL.get() {
        Some(_) => Inner::Wheel(None),
        None => Inner::Tokio(Box::pin(tokio::time::sleep_until(deadline))),
    };
    Sleep { deadline, inner }
}

/// The error of a [`timeout`] that ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline has elapsed")]
pub struct Elapsed;

/// Runs `future` for at most `duration` (its deadline counts from this call).
pub fn timeout<F: IntoFuture>(duration: Duration, future: F) -> Timeout<F::IntoFuture> {
    timeout_at(Instant::now() + duration, future)
}

/// Runs `future` until `deadline` at most.
pub fn timeout_at<F: IntoFuture>(deadline: Instant, future: F) -> Timeout<F::IntoFuture> {
    Timeout {
        future: future.into_future(),
        expiry: sleep_until(deadline),
    }
}

pin_project_lite::pin_project! {
    /// A future bounded by a deadline (see [`timeout`]): the future and its timer side by side,
    /// as `tokio::time::Timeout` (an async fn would keep the future twice in its state, which
    /// every client's task would pay for around its login).
    #[must_use = "futures do nothing unless polled"]
    pub struct Timeout<F> {
        #[pin]
        future: F,
        expiry: Sleep,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.future.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        Pin::new(this.expiry).poll(cx).map(|()| Err(Elapsed))
    }
}

/// Ticks every `period`, the first at once; a late tick pushes the next ones back (tokio's
/// `MissedTickBehavior::Delay`).
#[derive(Debug)]
pub struct Interval {
    period: Duration,
    sleep: Sleep,
}

/// An [`Interval`] of `period`.
pub fn interval(period: Duration) -> Interval {
    Interval {
        period,
        sleep: sleep_until(Instant::now()),
    }
}

impl Interval {
    /// Waits for the next tick and returns its instant.
    pub async fn tick(&mut self) -> Instant {
        (&mut self.sleep).await;
        let now = Instant::now();
        self.sleep.reset(now + self.period);
        now
    }
}

/// hyper's timer (header read timeouts) on these timers.
#[derive(Debug, Clone, Copy, Default)]
pub struct HyperTimer;

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep(sleep(duration)))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep(sleep_until(deadline.into())))
    }
}

/// A [`Sleep`] as hyper's trait object.
struct HyperSleep(Sleep);

impl Future for HyperSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl hyper::rt::Sleep for HyperSleep {}
