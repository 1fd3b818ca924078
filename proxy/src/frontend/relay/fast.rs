//! The relay's fast lane, for the most common unit: a run that starts with one simple Query
//! holding one plain SELECT (the session's analysis found it reads and pins nothing), alone in
//! the client buffer, with nothing of pgtier's to send before it. The Query goes to the server
//! as is (no rewrite, no reply queue), and the replies are only walked frame by frame to find
//! ReadyForQuery. Whatever needs the general relay (an error, a ParameterStatus, COPY, a
//! message larger than the buffer, more client bytes, a wake-up) hands the run over at that
//! message, in the state the general relay would have reached there (the Query counted as
//! owed, its reply entry queued).

use std::future::poll_fn;

use bytes::Buf;
use tokio::io::AsyncReadExt;

use crate::config::PoolMode;
use crate::protocol::frame::peek_header;
use crate::protocol::messages::TxStatus;
use crate::shutdown::{Phase, SessionWatch};
use crate::write::{write_all_within, WriteError};

use crate::sql::session_state::may_pin;

use super::gate::plain_select;
use super::responses::{Entry, Kind};
use super::to_client::client_write_failed;
use super::units::one_select;
use super::{Outcome, Relay, BUF_SIZE};

/// How the fast lane left the run.
pub(super) enum Lane {
    /// The run ended.
    End(Outcome),
    /// The general relay goes on from here.
    HandOver,
}

/// What a walk over the buffered server bytes found.
#[derive(Clone, Copy)]
struct Walk {
    /// Bytes of whole messages that go to the client as they are.
    pass: usize,
    /// A ReadyForQuery (idle) ends them.
    ready: bool,
    /// The message at `pass` needs the general relay.
    hand_over: bool,
}

impl Relay<'_> {
    /// Whether the run can start in the fast lane; `plain`: the session's analysis found the
    /// client buffer to hold exactly one plain-read Query (see `Analysed::plain_read`).
    pub(super) fn fast_lane_fits(&self, plain: bool) -> bool {
        plain
            && self.limits.mode == PoolMode::Transaction
            && self.pinned.is_none()
            && self.out.is_empty()
            && self.expect.is_empty()
            && !self.expect.causal.uncovered
            && self.limits.query_timeout.is_none()
            && self.limits.transaction_timeout.is_none()
    }

    /// Runs the unit in the fast lane (see the module doc).
    pub(super) async fn fast_lane(&mut self, shutdown: &SessionWatch, pokes: u64) -> Lane {
        let len = self.cbuf.len();
        if let Err(e) = write_all_within(
            self.server.stream,
            &self.cbuf,
            self.limits.server_write_timeout,
        )
        .await
        {
            return Lane::End(match e {
                WriteError::Stalled { .. } => Outcome::ServerStalled,
                WriteError::Io(e) => Outcome::ServerGone(e),
            });
        }
        self.observer.sent(&self.cbuf, len, (0, 1), self.statements);
        crate::fault::panic_point(&self.cbuf);
        // A simple Query destroys the unnamed statement.
        self.statements.set_unnamed(None);
        self.unnamed_here = false;
        self.cbuf.clear();
        self.gate.consumed(len);
        self.owed = 1;
        loop {
            if self.server.inbuf.capacity() - self.server.inbuf.len() < 1024 {
                self.server.inbuf.reserve(BUF_SIZE);
            }
            let woken =
                poll_fn(|cx| shutdown.poll_reached_or_poked(cx, Phase::Closing, Some(pokes)));
            tokio::select! {
                biased;
                res = self.server.stream.read_buf(self.server.inbuf) => match res {
                    Ok(0) => {
                        let e = std::io::ErrorKind::UnexpectedEof.into();
                        return Lane::End(self.server_lost(e).await);
                    }
                    Err(e) => return Lane::End(self.server_lost(e).await),
                    Ok(_) => {
                        if let Some(lane) = self.fast_replies().await {
                            return lane;
                        }
                    }
                },
                res = self.client.read_buf(&mut self.cbuf) => match res {
                    Ok(0) | Err(_) => return Lane::End(Outcome::ClientGone { server_clean: false }),
                    Ok(_) => {
                        self.more_input = true;
                        return self.hand_over();
                    }
                },
                // Shutdown, KILL, a failed health check: the general relay decides.
                () = woken => return self.hand_over(),
            }
        }
    }

    /// Forwards the whole messages buffered from the server; Some when the lane ends.
    async fn fast_replies(&mut self) -> Option<Lane> {
        let walk = walk(self.server.inbuf);
        if walk.hand_over {
            return Some(self.hand_over());
        }
        if !walk.ready {
            return None;
        }
        let batch = &self.server.inbuf[..walk.pass];
        self.replied = true;
        let r = write_all_within(self.client, batch, self.limits.client_write_timeout).await;
        if let Err(e) = r {
            return Some(Lane::End(client_write_failed(&e, batch, 0)));
        }
        self.server.inbuf.advance(walk.pass);
        self.owed = 0;
        self.status = TxStatus::Idle;
        self.observer.answered(walk.pass, 1, 0);
        Some(Lane::End(Outcome::Idle))
    }

    /// The state the general relay would have at this point of the unit.
    fn hand_over(&mut self) -> Lane {
        if self.owed > 0 {
            self.expect.push(Entry::client(Kind::Query));
        }
        Lane::HandOver
    }
}

/// Whether `buf` is exactly one simple Query holding one plain SELECT (no function call, no
/// INTO, no word that may pin: see `gate::plain_select` and `may_pin`), for a run whose unit
/// was not analysed (nothing to route: the primary only).
pub(super) fn plain_unanalysed(buf: &[u8]) -> bool {
    let Ok(Some(h)) = peek_header(buf, usize::MAX) else {
        return false;
    };
    if h.tag != b'Q' || h.frame_len() != buf.len() {
        return false;
    }
    let Some(sql) = buf[5..].strip_suffix(&[0]) else {
        return false;
    };
    one_select(sql) && plain_select(sql) && !may_pin(sql)
}

/// Looks for the whole reply at the front of `buf`: its messages up to an idle ReadyForQuery
/// that ends the buffer. Nothing passes before the whole reply is there, so that the general
/// relay, if it takes over, sees everything the server sent as it would have: a replica's
/// FATAL or shutdown warning after a RowDescription it had not flushed yet, or right after
/// the reply, then still finds the read unanswered, and the read runs again elsewhere. The
/// general relay takes the buffer at a message it must see (an error, a notice, a
/// ParameterStatus, COPY, anything unusual), at bytes after the ReadyForQuery, and when the
/// reply outgrows the read buffer (it streams from there).
fn walk(buf: &[u8]) -> Walk {
    let mut pos = 0;
    let (wait, hand_over) = (
        Walk {
            pass: 0,
            ready: false,
            hand_over: false,
        },
        Walk {
            pass: 0,
            ready: false,
            hand_over: true,
        },
    );
    loop {
        // More is awaited while the buffer has room; then the general relay streams it.
        let more = |end: usize| {
            if end.max(buf.len()) > BUF_SIZE {
                hand_over
            } else {
                wait
            }
        };
        let h = match peek_header(&buf[pos..], i32::MAX as usize) {
            Ok(Some(h)) => h,
            Ok(None) => return more(pos + 5),
            Err(_) => return hand_over,
        };
        let end = pos + h.frame_len();
        match h.tag {
            // RowDescription, DataRow, CommandComplete, EmptyQueryResponse.
            b'T' | b'D' | b'C' | b'I' => {}
            b'Z' if h.body_len == 1 && end <= buf.len() => {
                if buf[end - 1] != b'I' || end < buf.len() {
                    return hand_over;
                }
                return Walk {
                    pass: end,
                    ready: true,
                    hand_over: false,
                };
            }
            b'Z' if h.body_len == 1 => return more(end),
            _ => return hand_over,
        }
        if end > buf.len() {
            return more(end);
        }
        pos = end;
    }
}

#[cfg(test)]
mod tests {
    use super::{plain_unanalysed, walk};
    use crate::protocol::frame::test_frame as frame;

    #[test]
    fn only_a_lone_plain_select_is_plain_without_an_analysis() {
        let q = |sql: &str| frame(b'Q', format!("{sql}\0").as_bytes());
        assert!(plain_unanalysed(&q(
            "SELECT abalance FROM t WHERE aid = 7;"
        )));
        assert!(plain_unanalysed(&q(" select a from t")));
        for sql in [
            "SELECT nextval('s')",
            "SELECT a INTO b FROM t",
            "SELECT 1; SELECT 2",
            "SELECT * FROM pg_temp.t",
            "SET a = 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
        ] {
            assert!(!plain_unanalysed(&q(sql)), "{sql}");
        }
        // Two messages, half a message, a NUL inside.
        let mut two = q("SELECT a FROM t");
        two.extend(q("SELECT a FROM t"));
        assert!(!plain_unanalysed(&two));
        assert!(!plain_unanalysed(&two[..10]));
        assert!(!plain_unanalysed(&frame(b'Q', b"SELECT a\0FROM t\0")));
    }

    #[test]
    fn replies_pass_up_to_ready_for_query_or_what_needs_the_general_relay() {
        let mut reply = frame(b'T', b"\0\0");
        reply.extend(frame(b'D', b"\0\x01\0\0\0\x011"));
        reply.extend(frame(b'C', b"SELECT 1\0"));
        let rows = reply.len();
        reply.extend(frame(b'Z', b"I"));
        let w = walk(&reply);
        assert_eq!((w.pass, w.ready, w.hand_over), (reply.len(), true, false));
        // Half a ReadyForQuery, half a row: nothing passes, the rest is awaited.
        let w = walk(&reply[..reply.len() - 2]);
        assert_eq!((w.pass, w.ready, w.hand_over), (0, false, false));
        let w = walk(&reply[..rows - 12]);
        assert_eq!((w.pass, w.ready, w.hand_over), (0, false, false));
        // Bytes after the ReadyForQuery (a FATAL of a replica going away): the general relay.
        let mut more = reply.clone();
        more.extend(frame(b'E', b"SFATAL\0\0"));
        let w = walk(&more);
        assert_eq!((w.pass, w.ready, w.hand_over), (0, false, true));
        // A ReadyForQuery inside a transaction block, an error, a ParameterStatus, COPY: the
        // general relay takes the whole batch.
        for (tag, body) in [
            (b'Z', &b"T"[..]),
            (b'E', b"SERROR\0\0"),
            (b'S', b"a\0b\0"),
            (b'H', b"\0\0\0"),
            (b'N', b"SWARNING\0\0"),
        ] {
            let mut r = reply[..rows].to_vec();
            r.extend(frame(tag, body));
            let w = walk(&r);
            assert_eq!(
                (w.pass, w.ready, w.hand_over),
                (0, false, true),
                "{}",
                tag as char
            );
        }
        // A DataRow larger than the read buffer streams through the general relay.
        let mut big = reply[..rows].to_vec();
        big.extend(frame(b'D', &vec![0u8; super::BUF_SIZE + 10])[..100].iter());
        let w = walk(&big);
        assert_eq!((w.pass, w.ready, w.hand_over), (0, false, true));
    }
}
