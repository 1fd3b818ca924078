//! The idle wait for a client's next request: one hand-polled future (shutdown and admin
//! wake-ups, idle timeout, socket readiness), so an idle client's task stays small.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tracing::warn;

use crate::frontend::relay::{units, Violation, BUF_SIZE};
use crate::protocol::frame::{is_frontend_tag, peek_header, FrameError};
use crate::protocol::{validate, SqlState};
use crate::shutdown::Phase;

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

/// What ended an idle wait.
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

impl Session {
    /// Waits (holding no buffer) until the client sends a whole message, and returns the bytes.
    pub(super) async fn next_request(&mut self) -> Result<BytesMut, &'static str> {
        let mut buf = BytesMut::new();
        let mut pokes = self.shutdown.pokes();
        // The phase that ends the wait: Closing once a draining client is finishing.
        let mut until = Phase::Draining;
        // Only a configured timeout costs memory while idle: its timer is boxed.
        let mut idle_timer = self
            .limits()
            .client_idle_timeout
            .map(|t| Box::pin(crate::timers::sleep(t)));
        loop {
            // Draining: a request the client already sent (its bytes here or in the socket) is
            // served, and the client closed after that transaction; closing now would fail it
            // unrun, which the client cannot tell from a failure after it ran. `Closing`
            // (shutdown_timeout) ends even that.
            let phase = self.shutdown.phase();
            let finishing = phase == Phase::Draining
                && (!buf.is_empty()
                    || poll_fn(|cx| Poll::Ready(self.stream.poll_read_ready(cx).is_ready())).await);
            if phase >= Phase::Draining && !finishing {
                Box::pin(self.close(SqlState::ADMIN_SHUTDOWN, SHUTDOWN_MESSAGE)).await;
                return Err("shutdown");
            }
            if finishing {
                until = Phase::Closing;
            }
            if self.runtime.control.kills() != self.kills_seen {
                Box::pin(self.close(SqlState::ADMIN_SHUTDOWN, KILL_MESSAGE)).await;
                return Err("admin KILL");
            }
            // The client is between transactions: what it was sent while busy goes out now.
            // Boxed: only listening clients pay for its state in their idle task.
            if self.listening.is_some() {
                Box::pin(self.deliver_notifications()).await?;
            }
            let listening = self.listening.as_deref();
            // One hand-polled wait instead of a select!: an idle client's task stays small.
            let wake = poll_fn(|cx| {
                if self
                    .shutdown
                    .poll_reached_or_poked(cx, until, Some(pokes))
                    .is_ready()
                {
                    return Poll::Ready(Wake::Draining);
                }
                if let Some(t) = idle_timer.as_mut().filter(|_| !finishing) {
                    if t.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::IdleTimeout);
                    }
                }
                if !finishing && listening.is_some_and(|l| l.poll_pending(cx).is_ready()) {
                    return Poll::Ready(Wake::Notified);
                }
                self.stream.poll_read_ready(cx).map(|r| match r {
                    Ok(()) => Wake::Readable,
                    Err(_) => Wake::Closed,
                })
            })
            .await;
            match wake {
                Wake::Readable => {}
                // Written at the top of the loop.
                Wake::Notified => continue,
                Wake::Draining => {
                    // A shutdown or an admin wake-up: look again (above) with a fresh wait.
                    pokes = self.shutdown.pokes();
                    continue;
                }
                Wake::Closed => return Err("client closed"),
                Wake::IdleTimeout => {
                    Box::pin(self.close(
                        SqlState::IDLE_SESSION_TIMEOUT,
                        "terminating connection due to idle-session timeout (client_idle_timeout)",
                    ))
                    .await;
                    return Err("client_idle_timeout");
                }
            }
            if buf.capacity() == 0 {
                buf = crate::frontend::relay::buffers::take();
            }
            // A poll-based read (unlike try_read) clears readiness on a short read, which saves
            // the relay a wasted EAGAIN read per transaction. Polled once: a spurious wake-up
            // goes back to the wait above.
            // Some(true): bytes came; Some(false): the client closed (or the read failed).
            let read = {
                let mut read = pin!(self.stream.read_buf(&mut buf));
                poll_fn(|cx| {
                    Poll::Ready(read.as_mut().poll(cx).map(|r| matches!(r, Ok(n) if n > 0)))
                })
                .await
            };
            match read {
                // Nothing came (a stale readiness: login's last read filled its buffer exactly,
                // which leaves the socket marked readable): an idle client holds no buffer.
                Poll::Pending => {
                    if buf.is_empty() {
                        crate::frontend::relay::buffers::give(std::mem::take(&mut buf));
                    }
                    continue;
                }
                Poll::Ready(false) => return Err("client closed"),
                Poll::Ready(true) => {}
            }
            // The violation, if any, is awaited with nothing but the loop's state alive: what
            // this future holds stays small (it is every idle client's).
            let violation = match self.look_at(&mut buf) {
                Look::Request => return Ok(buf),
                Look::More => continue,
                Look::Terminate => return Err("client closed"),
                Look::Violation(v) => v,
            };
            Box::pin(self.violation(violation)).await;
            return Err("protocol violation");
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
