//! The idle wait for a client's next request: one hand-polled future (shutdown and admin
//! wake-ups, idle timeout, socket readiness), so an idle client's task stays small.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tracing::warn;

use crate::frontend::relay::{units, Violation, BUF_SIZE};
use crate::protocol::frame::{is_frontend_tag, peek_header, FrameError};
use crate::protocol::{validate, SqlState};
use crate::shutdown::Phase;
use crate::timers::Sleep;

use super::{Session, KILL_MESSAGE, SHUTDOWN_MESSAGE};

/// What the bytes of a request read so far make.
enum Look {
    /// A whole request (a message, or a unit when routing): serve it.
    Request,
    /// Not all there yet: read more.
    More,
    /// A Terminate: the client leaves.
    Terminate,
    /// The client broke the protocol.
    Violation(Violation),
}

/// What ended a wait of the idle loop.
enum Wake {
    /// The client sent something.
    Readable,
    /// The socket failed.
    Closed,
    /// `client_idle_timeout` expired.
    IdleTimeout,
    /// Shutdown began.
    Draining,
    /// Notifications for the client arrived.
    Notified,
}

/// How an idle wait ended.
pub(super) enum Idle {
    /// A whole request: serve it.
    Request(BytesMut),
    /// Notifications to deliver (the client listens) before the wait goes on.
    Deliver,
    /// Close the client with this error; the reason is for the log.
    Close(SqlState, &'static str, &'static str),
    /// The client left (a closed socket, a Terminate); the reason is for the log.
    Left(&'static str),
    /// The client broke the protocol.
    Violation(Violation),
}

/// An idle wait's state between polls (see [`Session::poll_idle`]).
pub(super) struct IdleWait {
    /// What the client sent so far (no buffer until it sends).
    buf: BytesMut,
    /// The admin wake-up count this wait has seen.
    pokes: u64,
    /// The phase that ends the wait: Closing once a draining client is finishing.
    until: Phase,
    /// Draining, and the client had sent a request: it is served first.
    finishing: bool,
    /// The start of an iteration was checked (shutdown, KILL, notifications).
    checked: bool,
    /// `client_idle_timeout`, boxed: only a configured timeout costs memory while idle.
    idle_timer: Option<Pin<Box<Sleep>>>,
}

/// Message for a client closed by `client_idle_timeout`.
const IDLE_MESSAGE: &str =
    "terminating connection due to idle-session timeout (client_idle_timeout)";

impl Session {
    /// Waits (holding no buffer) until the client sends a whole message, and returns the bytes.
    pub(super) async fn next_request(&mut self) -> Result<BytesMut, &'static str> {
        let mut wait = self.idle_wait();
        loop {
            match poll_fn(|cx| self.poll_idle(&mut wait, cx)).await {
                Idle::Request(buf) => return Ok(buf),
                Idle::Deliver => Box::pin(self.deliver_notifications()).await?,
                end => return Err(self.end_idle(end).await),
            }
        }
    }

    /// A fresh idle wait (its idle timeout starts now).
    pub(super) fn idle_wait(&self) -> IdleWait {
        IdleWait {
            buf: BytesMut::new(),
            pokes: self.shutdown.pokes(),
            until: Phase::Draining,
            finishing: false,
            checked: false,
            idle_timer: self
                .limits()
                .client_idle_timeout
                .map(|t| Box::pin(crate::timers::sleep(t))),
        }
    }

    /// Ends the session after an idle wait that ended other than with a request; returns
    /// why (for the log).
    pub(super) async fn end_idle(&mut self, end: Idle) -> &'static str {
        match end {
            Idle::Close(code, message, reason) => {
                Box::pin(self.close(code, message)).await;
                reason
            }
            Idle::Violation(v) => {
                Box::pin(self.violation(v)).await;
                "protocol violation"
            }
            Idle::Left(reason) => reason,
            // Not an end: callers serve these.
            Idle::Request(_) | Idle::Deliver => "client closed",
        }
    }

    /// Goes on with an idle wait: Ready once the client sent a whole request, or the wait
    /// ended otherwise; Pending with `cx` registered with the socket, shutdown and admin
    /// wake-ups, the idle timer and the client's notifications.
    pub(super) fn poll_idle(&mut self, w: &mut IdleWait, cx: &mut Context<'_>) -> Poll<Idle> {
        loop {
            if !w.checked {
                // Draining: a request the client already sent (its bytes here or in the
                // socket) is served, and the client closed after that transaction; closing
                // now would fail it unrun, which the client cannot tell from a failure after
                // it ran. `Closing` (shutdown_timeout) ends even that.
                let phase = self.shutdown.phase();
                w.finishing = phase == Phase::Draining
                    && (!w.buf.is_empty() || self.stream.poll_read_ready(cx).is_ready());
                if phase >= Phase::Draining && !w.finishing {
                    return Poll::Ready(Idle::Close(
                        SqlState::ADMIN_SHUTDOWN,
                        SHUTDOWN_MESSAGE,
                        "shutdown",
                    ));
                }
                if w.finishing {
                    w.until = Phase::Closing;
                }
                if self.runtime.control.kills() != self.kills_seen {
                    return Poll::Ready(Idle::Close(
                        SqlState::ADMIN_SHUTDOWN,
                        KILL_MESSAGE,
                        "admin KILL",
                    ));
                }
                w.checked = true;
                // The client is between transactions: what it was sent while busy goes out
                // now.
                if self.listening.is_some() {
                    return Poll::Ready(Idle::Deliver);
                }
            }
            let wake = {
                let listening = self.listening.as_deref();
                if self
                    .shutdown
                    .poll_reached_or_poked(cx, w.until, Some(w.pokes))
                    .is_ready()
                {
                    Wake::Draining
                } else if w
                    .idle_timer
                    .as_mut()
                    .filter(|_| !w.finishing)
                    .is_some_and(|t| t.as_mut().poll(cx).is_ready())
                {
                    Wake::IdleTimeout
                } else if !w.finishing && listening.is_some_and(|l| l.poll_pending(cx).is_ready()) {
                    Wake::Notified
                } else {
                    match self.stream.poll_read_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => Wake::Readable,
                        Poll::Ready(Err(_)) => Wake::Closed,
                    }
                }
            };
            match wake {
                Wake::Readable => {}
                // Written at the start of the next iteration.
                Wake::Notified => {
                    w.checked = false;
                    continue;
                }
                Wake::Draining => {
                    // A shutdown or an admin wake-up: look again with a fresh wait.
                    w.pokes = self.shutdown.pokes();
                    w.checked = false;
                    continue;
                }
                Wake::Closed => return Poll::Ready(Idle::Left("client closed")),
                Wake::IdleTimeout => {
                    return Poll::Ready(Idle::Close(
                        SqlState::IDLE_SESSION_TIMEOUT,
                        IDLE_MESSAGE,
                        "client_idle_timeout",
                    ))
                }
            }
            if w.buf.capacity() == 0 {
                w.buf = crate::frontend::relay::buffers::take();
            }
            // A poll-based read (unlike try_read) clears readiness on a short read, which saves
            // the relay a wasted EAGAIN read per transaction. Polled once: a spurious wake-up
            // goes back to the wait above.
            match pin!(self.stream.read_buf(&mut w.buf)).poll(cx) {
                // Nothing came (a stale readiness: login's last read filled its buffer exactly,
                // which leaves the socket marked readable): an idle client holds no buffer.
                Poll::Pending => {
                    if w.buf.is_empty() {
                        crate::frontend::relay::buffers::give(std::mem::take(&mut w.buf));
                    }
                    w.checked = false;
                    continue;
                }
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Idle::Left("client closed")),
                Poll::Ready(Ok(_)) => {}
            }
            match self.look_at(&mut w.buf) {
                Look::Request => return Poll::Ready(Idle::Request(std::mem::take(&mut w.buf))),
                Look::More => w.checked = false,
                Look::Terminate => return Poll::Ready(Idle::Left("client closed")),
                Look::Violation(v) => return Poll::Ready(Idle::Violation(v)),
            }
        }
    }

    /// What the bytes read so far make: a request, not yet, or a violation. Makes room in
    /// `buf` for the rest of a message (or unit) that is not all there.
    fn look_at(&self, buf: &mut BytesMut) -> Look {
        let header = peek_header(buf, self.limits().max_message);
        // A Sync claiming 64 KiB is refused now, not after waiting for its body.
        if let Ok(Some(h)) = &header {
            if let Err(e) = validate::check_length(h.tag, h.body_len) {
                return Look::Violation(Violation::Malformed(e));
            }
        }
        match header {
            Ok(None) => Look::More,
            Ok(Some(h)) if !is_frontend_tag(h.tag) => {
                Look::Violation(Violation::UnknownType(h.tag))
            }
            Ok(Some(h)) if h.tag == b'X' => Look::Terminate,
            // Routing looks at a whole unit: extended messages up to Sync.
            Ok(Some(h))
                if self.routes()
                    && buf.len() >= h.frame_len()
                    && !units::complete(buf, self.limits().max_message) =>
            {
                buf.reserve(BUF_SIZE);
                Look::More
            }
            Ok(Some(h)) if buf.len() >= h.frame_len() || h.tag == b'd' => Look::Request,
            Ok(Some(h)) => {
                buf.reserve(h.frame_len() - buf.len());
                Look::More
            }
            Err(e) => Look::Violation(Violation::Frame(e)),
        }
    }

    pub(super) async fn violation(&mut self, v: Violation) {
        let (code, message) = match v {
            Violation::UnknownType(t) => (
                SqlState::PROTOCOL_VIOLATION,
                format!("invalid frontend message type {t}"),
            ),
            Violation::Frame(e @ FrameError::TooLarge { .. }) => {
                (SqlState::PROGRAM_LIMIT_EXCEEDED, format!("pgtier: {e}"))
            }
            Violation::Frame(e) => (SqlState::PROTOCOL_VIOLATION, format!("pgtier: {e}")),
            Violation::Malformed(e) => (SqlState::PROTOCOL_VIOLATION, format!("pgtier: {e}")),
            Violation::TooManyInFlight => (
                SqlState::PROGRAM_LIMIT_EXCEEDED,
                "pgtier: too many messages awaiting replies (send Sync)".to_owned(),
            ),
        };
        warn!(database = %self.database(), %message, "client protocol violation");
        self.close(code, &message).await;
    }
}
