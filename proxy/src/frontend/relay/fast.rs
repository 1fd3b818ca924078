//! The fast lane, for the most common unit: a run that starts with one plain SELECT (the
//! session's analysis found it reads and pins nothing), alone in the client buffer as a simple
//! Query, as an unnamed Parse, Bind, Describe, Execute, Sync, or as the same Bind (Describe,
//! Execute, Sync) of a named statement the server connection has prepared already, with
//! nothing of pgtier's to send before it. It runs before any relay state is built: the
//! client's bytes go to the server as they are (a named statement's Bind renamed to the
//! statement's server name: no rewrite pass, no reply queue), and the whole reply is awaited
//! and passed on. Whatever needs the general relay (an error, a notice, a ParameterStatus, COPY, a
//! reply larger than the buffer, more client bytes, a wake-up) hands the run over with the
//! server's bytes untouched ([`Resume`]): the relay then routes the client's bytes as it would
//! have routed them (they pass through unchanged), which leaves the state it would have reached.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;

use crate::backend::params::strings_of;
use crate::backend::server::ServerIo;
use crate::frontend::stream::ClientStream;
use crate::prepared::client::{ClientStatements, Prepared};
use crate::protocol::extended;
use crate::protocol::frame::peek_header;
use crate::shutdown::{Phase, SessionWatch};
use crate::sql::session_state::may_pin;
use crate::write::{WriteError, WriteWithin};

use super::gate::plain_select;
use super::observe::{Context as Observed, Measured};
use super::shape::{unit_text, LaneText};
use super::to_client::client_write_failed;
use super::units::Analysed;
use super::{Limits, Outcome, Relay, BUF_SIZE};
use crate::metrics::DbMetrics;

/// How the fast lane left the run.
pub(crate) enum Lane {
    /// The whole reply reached the client: the server is idle, the unit consumed.
    Answered,
    /// The run ended otherwise; `retryable`: nothing reached the client (the read may run
    /// again elsewhere).
    Ended { outcome: Outcome, retryable: bool },
    /// The general relay goes on from here.
    HandOver(Resume),
}

/// Where the general relay takes a run over from the lane.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resume {
    /// Length of the unit the lane sent, at the front of the client buffer.
    pub len: usize,
    /// The admin wake-up count when the lane began (a later wake-up concerns the run).
    pub pokes: u64,
    /// The client sent more bytes meanwhile.
    pub more_input: bool,
}

/// What the lane works on.
pub(crate) struct LaneIo<'l, 's, 'o> {
    /// The client.
    pub client: &'l mut ClientStream,
    /// The server connection.
    pub server: &'l mut ServerIo<'s>,
    /// The client's bytes: exactly the unit (see [`lane_unit`]).
    pub cbuf: &'l mut BytesMut,
    /// The client's statements (its unnamed one follows the unit).
    pub statements: &'l mut ClientStatements,
    /// Measures the run.
    pub measured: &'l mut Measured,
    /// Where the measurements go.
    pub metrics: &'o DbMetrics,
    /// Who and where, for the slow-query log.
    pub context: Observed<'o>,
    /// The write timeouts.
    pub limits: &'l Limits,
}

/// How the lane sends a unit.
pub(crate) enum LaneUnit {
    /// As the client sent it.
    AsIs,
    /// Its Bind renamed to this statement's server name (prepared on the server already).
    Named(Arc<Prepared>),
}

/// What a walk over the buffered server bytes found.
#[derive(Clone, Copy)]
struct Walk {
    /// Bytes of whole messages that go to the client as they are.
    pass: usize,
    /// A ReadyForQuery (idle) ends them.
    ready: bool,
    /// The general relay takes the buffer.
    hand_over: bool,
}

/// Runs the unit in `io.cbuf` in the fast lane (see the module doc). The caller checked that
/// it fits: a plain unit, transaction mode, not pinned, no query or transaction timeout, and
/// nothing to send before it.
pub(crate) async fn lane(
    mut io: LaneIo<'_, '_, '_>,
    unit: LaneUnit,
    shutdown: &SessionWatch,
) -> Lane {
    let mut run = LaneRun::new(io.cbuf, unit, shutdown);
    poll_fn(|cx| run.poll(&mut io, shutdown, cx)).await
}

/// One unit in the fast lane, polled to its end: by [`lane`] in the client's task, or by
/// hand where a caller keeps the state between polls.
pub(crate) struct LaneRun {
    /// Length of the unit, at the front of the client buffer (it stays there until the lane
    /// knows how the run ended).
    len: usize,
    /// The admin wake-up count when the lane began (a later wake-up concerns the run).
    pokes: u64,
    /// A named unit's bytes renamed for the server (None: sent as they are).
    renamed: Option<BytesMut>,
    step: Step,
    /// The write in progress (to the server, then to the client).
    write: WriteWithin,
}

/// Where a lane run is.
#[derive(Clone, Copy)]
enum Step {
    /// Writing the unit to the server.
    ToServer,
    /// Waiting for the whole reply.
    Awaiting,
    /// Writing this many bytes of the reply to the client.
    ToClient(usize),
}

impl LaneRun {
    /// A run of the unit in `cbuf` (see [`lane_unit`]).
    pub(crate) fn new(cbuf: &BytesMut, unit: LaneUnit, shutdown: &SessionWatch) -> LaneRun {
        LaneRun {
            len: cbuf.len(),
            // Admin wake-ups (KILL, a failed health check) after now concern this run.
            pokes: shutdown.pokes(),
            renamed: match unit {
                LaneUnit::AsIs => None,
                LaneUnit::Named(stmt) => Some(renamed(cbuf, &stmt)),
            },
            step: Step::ToServer,
            write: WriteWithin::default(),
        }
    }

    fn resume(&self, more_input: bool) -> Lane {
        Lane::HandOver(Resume {
            len: self.len,
            pokes: self.pokes,
            more_input,
        })
    }

    /// Goes on with the run; Ready once it ended. Pending: `cx` is registered with what the
    /// run waits for (the server, the client, shutdown and admin wake-ups, a write's timer).
    pub(crate) fn poll(
        &mut self,
        io: &mut LaneIo<'_, '_, '_>,
        shutdown: &SessionWatch,
        cx: &mut Context<'_>,
    ) -> Poll<Lane> {
        let len = self.len;
        loop {
            match self.step {
                Step::ToServer => {
                    let out = self.renamed.as_deref().unwrap_or(&io.cbuf[..]);
                    let limit = io.limits.server_write_timeout;
                    let sent = ready!(self.write.poll(io.server.stream, out, limit, cx));
                    self.renamed = None;
                    self.write = WriteWithin::default();
                    if let Err(e) = sent {
                        let outcome = match e {
                            WriteError::Stalled { .. } => Outcome::ServerStalled,
                            WriteError::Io(e) => Outcome::ServerGone(e),
                        };
                        return Poll::Ready(Lane::Ended {
                            outcome,
                            retryable: true,
                        });
                    }
                    io.measured
                        .sent(&io.cbuf[..len], len, (0, 1), io.statements);
                    crate::fault::panic_point(&io.cbuf[..len]);
                    self.step = Step::Awaiting;
                }
                Step::Awaiting => {
                    if io.server.inbuf.capacity() - io.server.inbuf.len() < 1024 {
                        io.server.inbuf.reserve(BUF_SIZE);
                    }
                    if io.cbuf.capacity() - io.cbuf.len() < 1024 {
                        io.cbuf.reserve(BUF_SIZE);
                    }
                    // The server first, then the client, then wake-ups.
                    match pin!(io.server.stream.read_buf(io.server.inbuf)).poll(cx) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(server_gone(
                                std::io::ErrorKind::UnexpectedEof.into(),
                            ))
                        }
                        // Nothing reached the client (the whole reply is awaited first).
                        Poll::Ready(Err(e)) => return Poll::Ready(server_gone(e)),
                        Poll::Ready(Ok(_)) => {
                            let walk = walk(io.server.inbuf);
                            if walk.hand_over {
                                return Poll::Ready(self.resume(false));
                            }
                            if walk.ready {
                                self.step = Step::ToClient(walk.pass);
                            }
                            continue;
                        }
                        Poll::Pending => {}
                    }
                    match pin!(io.client.read_buf(io.cbuf)).poll(cx) {
                        Poll::Ready(Ok(0) | Err(_)) => {
                            let outcome = Outcome::ClientGone {
                                server_clean: false,
                            };
                            return Poll::Ready(Lane::Ended {
                                outcome,
                                retryable: false,
                            });
                        }
                        Poll::Ready(Ok(_)) => return Poll::Ready(self.resume(true)),
                        Poll::Pending => {}
                    }
                    // Shutdown, KILL, a failed health check: the general relay decides.
                    if shutdown
                        .poll_reached_or_poked(cx, Phase::Closing, Some(self.pokes))
                        .is_ready()
                    {
                        return Poll::Ready(self.resume(false));
                    }
                    return Poll::Pending;
                }
                Step::ToClient(pass) => {
                    let batch = &io.server.inbuf[..pass];
                    let limit = io.limits.client_write_timeout;
                    if let Err(e) = ready!(self.write.poll(io.client, batch, limit, cx)) {
                        let outcome = client_write_failed(&e, batch, 0);
                        return Poll::Ready(Lane::Ended {
                            outcome,
                            retryable: false,
                        });
                    }
                    io.server.inbuf.advance(pass);
                    let cbuf = &mut *io.cbuf;
                    // What routing the unit would have left: a simple Query destroys the
                    // client's unnamed statement; an unnamed Parse that succeeded makes its
                    // text the client's unnamed statement; a Bind of a named statement leaves
                    // it.
                    match peek_header(cbuf, usize::MAX) {
                        Ok(Some(h)) if h.tag == b'P' => io
                            .statements
                            .set_unnamed(extended::parse(&cbuf[5..h.frame_len()]).map(|p| p.rest)),
                        Ok(Some(h)) if h.tag == b'B' => {}
                        _ => io.statements.set_unnamed(None),
                    }
                    cbuf.advance(len);
                    io.measured.answered(io.metrics, &io.context, pass, 1, 0);
                    return Poll::Ready(Lane::Answered);
                }
            }
        }
    }
}

/// The server failed before anything reached the client: the read may run again elsewhere.
fn server_gone(e: std::io::Error) -> Lane {
    Lane::Ended {
        outcome: Outcome::ServerGone(e),
        retryable: true,
    }
}

impl Relay<'_> {
    /// Takes over a run from the lane (see [`Resume`]): routes the unit the lane sent as the
    /// general relay would have (it passes unchanged), which leaves the state that relay would
    /// have: the replies owed and queued, the client's and the server's statements.
    pub(super) fn take_over(&mut self, resume: Resume) -> Result<(), Outcome> {
        let len = resume.len;
        self.more_input = resume.more_input;
        let strings = self.params.string_syntax(strings_of(self.defaults));
        let scan = self.route(len, strings).map_err(Outcome::ClientViolation)?;
        // The relay writes what the lane sent (dropped here): the unit as it is, or renamed
        // when it opens with a Bind (of a named statement: the lane's only Bind-first shape).
        debug_assert!(
            scan.copied == (self.cbuf.first() == Some(&b'B')) && scan.consumed == len,
            "{scan:?}"
        );
        self.out.clear();
        if self.keep_for_retry {
            self.kept = Some(BytesMut::from(&self.cbuf[..len]));
        }
        self.cbuf.advance(len);
        self.gate.consumed(len);
        self.owed += scan.syncs;
        Ok(())
    }
}

/// The unit in `buf` renamed for the server: its Bind (first) under the statement's server
/// name, the rest as it is.
fn renamed(buf: &[u8], stmt: &Prepared) -> BytesMut {
    let mut out = BytesMut::with_capacity(buf.len() + stmt.server_name.len());
    // The lane's shape: a well-formed Bind opens the unit.
    let bind = match peek_header(buf, usize::MAX) {
        Ok(Some(h)) => extended::bind(&buf[5..h.frame_len()]).map(|b| (b, h.frame_len())),
        _ => None,
    };
    match bind {
        Some((b, end)) => {
            extended::write_bind(&mut out, b.portal, stmt.server_name.as_bytes(), b.rest);
            out.extend_from_slice(&buf[end..]);
        }
        // Not reached (the shape was checked). Sent as it is, the server's error hands the
        // run over: never an empty write followed by a wait for a reply that cannot come.
        None => {
            debug_assert!(false, "the lane's named unit does not open with a Bind");
            out.extend_from_slice(buf);
        }
    }
    out
}

/// How the lane sends `buf`, if it is exactly one unit the lane takes (see `shape`) whose
/// statement is one SELECT. With the unit's analysis (`analysed`, made where it was routed,
/// which followed its shape) the SELECT must read and pin nothing; without (the primary only,
/// nothing routed) it must have no function call, no INTO and no word that may pin (see
/// `gate::plain_select` and `may_pin`). A named statement (one of the client's `statements`)
/// must pass both (the second looked at once per statement); the caller checks that the
/// server has it prepared.
pub(crate) fn lane_unit(
    buf: &[u8],
    analysed: Option<&Analysed>,
    statements: &ClientStatements,
) -> Option<LaneUnit> {
    let unanalysed = |sql: &[u8]| one_select(sql) && plain_select(sql) && !may_pin(sql);
    let text = match analysed {
        Some(a) => a.plain_read(buf)?,
        None => unit_text(buf)?,
    };
    match text {
        LaneText::Sql(sql) if analysed.is_some() => one_select(sql).then_some(LaneUnit::AsIs),
        LaneText::Sql(sql) => unanalysed(sql).then_some(LaneUnit::AsIs),
        LaneText::Named(name) => {
            let stmt = statements.get(name)?;
            stmt.fits_lane(unanalysed)
                .then(|| LaneUnit::Named(stmt.clone()))
        }
    }
}

/// Whether `sql` (a statement's text) starts with the word SELECT and has no semicolon but a
/// trailing one (one in a string or comment counts too: such texts take the general path),
/// and no NUL.
fn one_select(sql: &[u8]) -> bool {
    let text = sql.trim_ascii();
    let text = text.strip_suffix(b";").unwrap_or(text);
    crate::sql::starts_with_select(text) && memchr::memchr2(b';', 0, text).is_none()
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
            // RowDescription, DataRow, CommandComplete, EmptyQueryResponse, ParseComplete,
            // BindComplete, NoData.
            b'T' | b'D' | b'C' | b'I' | b'1' | b'2' | b'n' => {}
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
    use super::{lane_unit, walk, LaneUnit};
    use crate::prepared::client::ClientStatements;

    fn plain_unanalysed(buf: &[u8]) -> bool {
        lane_unit(buf, None, &ClientStatements::default()).is_some()
    }
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
    fn an_unnamed_parse_bind_describe_execute_sync_of_a_select_is_plain() {
        let parse = |name: &str, sql: &str| {
            let mut b = format!("{name}\0{sql}\0").into_bytes();
            b.extend(0i16.to_be_bytes());
            frame(b'P', &b)
        };
        let bind = |portal: &str, statement: &str| {
            let mut b = format!("{portal}\0{statement}\0").into_bytes();
            b.extend([0, 0, 0, 0, 0, 0]); // no formats, no parameters, no result formats
            frame(b'B', &b)
        };
        let describe = frame(b'D', b"P\0");
        let execute = frame(b'E', b"\0\0\0\0\0");
        let sync = frame(b'S', b"");
        let select = "SELECT a FROM t WHERE id = $1";
        let unit = |parts: &[&Vec<u8>]| {
            parts
                .iter()
                .flat_map(|p| p.iter().copied())
                .collect::<Vec<u8>>()
        };
        let (p, b) = (parse("", select), bind("", ""));
        assert!(plain_unanalysed(&unit(&[
            &p, &b, &describe, &execute, &sync
        ])));
        assert!(plain_unanalysed(&unit(&[&p, &b, &execute, &sync])));
        // A named statement or portal, no Sync, a Flush, something after the Sync, a write.
        let named = parse("s1", select);
        assert!(!plain_unanalysed(&unit(&[&named, &b, &execute, &sync])));
        let portal = bind("p1", "");
        assert!(!plain_unanalysed(&unit(&[&p, &portal, &execute, &sync])));
        assert!(!plain_unanalysed(&unit(&[&p, &b, &describe, &execute])));
        let flush = frame(b'H', b"");
        assert!(!plain_unanalysed(&unit(&[&p, &b, &execute, &flush])));
        assert!(!plain_unanalysed(&unit(&[&p, &b, &execute, &sync, &sync])));
        let write = parse("", "SELECT nextval('s')");
        assert!(!plain_unanalysed(&unit(&[&write, &b, &execute, &sync])));
        // A malformed Bind (its fields do not fill its length) goes the general way.
        let mut bad = bind("", "");
        bad.extend([0, 0]);
        let len = (bad.len() - 1) as u32;
        bad[1..5].copy_from_slice(&len.to_be_bytes());
        assert!(!plain_unanalysed(&unit(&[&p, &bad, &execute, &sync])));
    }

    #[test]
    fn a_bind_of_a_named_plain_select_takes_the_lane_renamed() {
        let mut statements = ClientStatements::default();
        for (name, sql) in [("r", "SELECT a FROM t"), ("w", "SELECT nextval('s')")] {
            let rest = format!("{sql}\0\0\0");
            statements
                .insert(name.as_bytes(), rest.as_bytes(), usize::MAX)
                .unwrap();
        }
        let bind = |statement: &str| {
            let mut b = format!("\0{statement}\0").into_bytes();
            b.extend([0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0]); // one text parameter: '7'
            frame(b'B', &b)
        };
        let tail = [frame(b'E', b"\0\0\0\0\0"), frame(b'S', b"")].concat();
        let unit = [bind("r"), tail.clone()].concat();
        let Some(LaneUnit::Named(stmt)) = lane_unit(&unit, None, &statements) else {
            panic!("a named plain read takes the lane");
        };
        // Sent under its server name, parameters and the rest of the unit as they were.
        let sent = super::renamed(&unit, &stmt);
        let expected = [bind(&stmt.server_name), tail.clone()].concat();
        assert_eq!(&sent[..], &expected[..]);
        // A write, a statement the client does not have.
        for name in ["w", "nope"] {
            let unit = [bind(name), tail.clone()].concat();
            assert!(lane_unit(&unit, None, &statements).is_none(), "{name}");
        }
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
