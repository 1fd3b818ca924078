//! What the server still owes, message by message, and who each reply is for. pgtier sends
//! some messages of its own (a Parse to prepare a client's statement on this server, a Close to
//! evict one) and answers some client messages itself (ParseComplete for a statement the
//! server already has, CloseComplete, errors): this queue keeps every reply in the order the
//! client expects, and drops the replies meant for pgtier.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;

use super::batch::Batch;
use crate::backend::params::{tracked, ParamChanges};
use crate::backend::statements::ServerStatements;
use crate::protocol::frame::{peek_header, FrameError};
use crate::protocol::messages::{error_fields, error_response, Severity, TxStatus};
use crate::protocol::SqlState;

/// Entries in flight before the client is considered to be flooding the server.
pub(crate) const MAX_IN_FLIGHT: usize = 100_000;

/// The kind of message a reply belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Parse,
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Close,
    Sync,
    Query,
    Function,
}

impl Kind {
    /// Whether a message with this tag is the last reply to this kind of message.
    fn ends_with(self, tag: u8) -> bool {
        match self {
            Kind::Parse => tag == b'1',
            Kind::Bind => tag == b'2',
            Kind::DescribeStatement | Kind::DescribePortal => matches!(tag, b'T' | b'n'),
            Kind::Execute => matches!(tag, b'C' | b'I' | b's'),
            Kind::Close => tag == b'3',
            Kind::Sync | Kind::Query | Kind::Function => tag == b'Z',
        }
    }

    /// Extended-protocol messages: after an error the server skips them until Sync.
    fn skipped_after_error(self) -> bool {
        !matches!(self, Kind::Sync | Kind::Query | Kind::Function)
    }
}

/// A reply pgtier gives on the server's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Synthetic {
    ParseComplete,
    CloseComplete,
    Error(SqlState, String),
}

/// One expected reply.
#[derive(Debug)]
pub(crate) enum Entry {
    /// The server owes replies to a message; `to_client` says where they go. A Parse or Bind
    /// of a pgtier-named statement carries its name: a failed or skipped Parse is forgotten
    /// from the registry, and a Bind failing with 0A000 (DDL changed the plan's result type)
    /// marks the statement stale, to be re-prepared at its next use.
    Server {
        kind: Kind,
        to_client: bool,
        statement: Option<Arc<str>>,
    },
    /// pgtier answers itself when this reaches the front.
    Synthetic(Synthetic),
    /// The client ended a COPY FROM STDIN here (CopyDone or CopyFail); no reply of its own.
    CopyEnd,
}

/// The queue of expected replies for one server connection.
#[derive(Debug, Default)]
pub(crate) struct Expectations {
    q: VecDeque<Entry>,
    /// The server is in an extended-protocol COPY FROM STDIN the client has not ended yet:
    /// Postgres ignores Sync and Flush until CopyDone/CopyFail, so they owe no reply.
    pub(crate) copy_in: bool,
    /// Extended-protocol messages were sent since the last Sync: the server may be inside an
    /// implicit transaction, so it is neither idle nor clean.
    pub(crate) unsynced: bool,
    /// Queries and FunctionCalls the server skipped after an error (they owe no
    /// ReadyForQuery), not yet reported.
    skipped_ready: u32,
    /// pgtier's own parameter sync failed (a client's startup value Postgres rejects): the
    /// server's (SQLSTATE, message). The session ends with it, as Postgres would at startup.
    pub(crate) sync_failed: Option<(String, String)>,
}

impl Expectations {
    pub(crate) fn push(&mut self, e: Entry) {
        self.q.push_back(e);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.q.len()
    }

    /// Whether a reply pgtier gives itself (or a COPY end marker) is next.
    fn synthetic_first(&self) -> bool {
        matches!(self.q.front(), Some(Entry::Synthetic(_) | Entry::CopyEnd))
    }

    /// Writes the synthetic replies now at the front; returns whether it wrote any.
    pub(crate) fn drain_synthetic(&mut self, out: &mut BytesMut) -> bool {
        let mut wrote = false;
        loop {
            match self.q.front() {
                Some(Entry::Synthetic(s)) => {
                    match s {
                        Synthetic::ParseComplete => out.extend_from_slice(b"1\0\0\0\x04"),
                        Synthetic::CloseComplete => out.extend_from_slice(b"3\0\0\0\x04"),
                        Synthetic::Error(code, msg) => {
                            error_response(out, Severity::Error, *code, msg)
                        }
                    }
                    wrote = true;
                }
                Some(Entry::CopyEnd) => {}
                _ => return wrote,
            }
            self.q.pop_front();
        }
    }

    /// CopyInResponse to an Execute: the Syncs the client sent before ending the COPY are
    /// ignored by Postgres, so they are dropped here; returns how many.
    fn copy_in_started(&mut self) -> u32 {
        if !matches!(
            self.q.front(),
            Some(Entry::Server {
                kind: Kind::Execute,
                ..
            })
        ) {
            return 0; // a simple-query COPY: no Syncs involved
        }
        let mut ignored = 0;
        let mut i = 1;
        while i < self.q.len() {
            match &self.q[i] {
                Entry::CopyEnd => return ignored,
                Entry::Server {
                    kind: Kind::Sync, ..
                } => {
                    self.q.remove(i);
                    ignored += 1;
                }
                _ => i += 1,
            }
        }
        self.copy_in = true; // the client has not ended the COPY yet
        ignored
    }

    /// Accounts for one server message (`body` is given for ErrorResponse); returns whether it
    /// goes to the client.
    fn on_message(&mut self, tag: u8, body: &[u8], registry: &mut ServerStatements) -> bool {
        // Asynchronous messages can come at any time and are always the client's.
        if matches!(tag, b'N' | b'A' | b'S') {
            return true;
        }
        let Some(Entry::Server {
            kind, to_client, ..
        }) = self.q.front()
        else {
            return true;
        };
        let (kind, to_client) = (*kind, *to_client);
        if tag == b'E' {
            if kind == Kind::Query && !to_client {
                // pgtier's own query (parameter sync) failed: not the client's to see as a
                // reply; the relay ends the session with it.
                let (code, message) = error_fields(body);
                self.sync_failed = Some((
                    code.unwrap_or("22023").to_owned(),
                    message.unwrap_or("invalid session parameter").to_owned(),
                ));
                return false;
            }
            if !kind.skipped_after_error() {
                return true; // a Query's or Sync's error; its ReadyForQuery follows
            }
            if let Some(Entry::Server {
                kind: Kind::Bind,
                statement: Some(name),
                ..
            }) = self.q.front()
            {
                if error_fields(body).0 == Some("0A000") {
                    registry.mark_stale(name);
                }
            }
            // The server now skips everything up to the next Sync.
            while let Some(e) = self.q.front() {
                if let Entry::Server {
                    kind: Kind::Query | Kind::Function,
                    ..
                } = e
                {
                    self.skipped_ready += 1;
                }
                match e {
                    Entry::Server {
                        kind: Kind::Sync, ..
                    } => break,
                    Entry::Server {
                        kind: Kind::Parse,
                        statement: Some(name),
                        ..
                    } => registry.remove(name),
                    _ => {}
                }
                self.q.pop_front();
            }
            // Errors always reach the client, even for pgtier's own messages: the client's
            // later messages were skipped, and this says why.
            return true;
        }
        if kind.ends_with(tag) {
            self.q.pop_front();
        }
        to_client
    }
}

/// What routing one batch of server bytes produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ServerScan {
    /// Bytes of the input consumed.
    pub consumed: usize,
    /// Whether `out` holds what to send (else send `input[..consumed]` as is).
    pub copied: bool,
    /// ReadyForQuery messages seen.
    pub ready: u32,
    /// Status of the last ReadyForQuery seen.
    pub status: Option<TxStatus>,
    /// Syncs the client sent that Postgres ignored (sent during COPY FROM STDIN).
    pub ignored_syncs: u32,
}

/// Passing bytes through a message whose body is still arriving.
#[derive(Debug, Default)]
pub(crate) struct Streaming {
    /// Bytes of the current message still to come.
    pub left: usize,
    /// Whether they go to the client.
    pub forward: bool,
}

/// The parameter values on both ends of the relay, updated from ParameterStatus messages.
pub(crate) struct ParamSync<'a> {
    /// The pool's default values (what a client sees if it changes nothing).
    pub defaults: &'a [(String, String)],
    /// The client's changes.
    pub client: &'a mut ParamChanges,
    /// The server's values at login.
    pub server_login: &'a [(String, String)],
    /// The server's changes.
    pub server: &'a mut ParamChanges,
}

impl ParamSync<'_> {
    /// Records a ParameterStatus body (`name\0value\0`); `to_client` if the client saw it.
    fn observe(&mut self, body: &[u8], to_client: bool) {
        let mut parts = body.split(|&b| b == 0);
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            return;
        };
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
            return;
        };
        if let Some(name) = tracked(name) {
            self.server.set(self.server_login, name, value);
            if to_client {
                self.client.set(self.defaults, name, value);
            }
        }
    }
}

/// Routes server bytes: forwards the client's replies (zero-copy when nothing is dropped or
/// added), drops pgtier's, and inserts synthetic replies in order. Only ReadyForQuery bodies
/// are read; other messages stream through.
pub(crate) fn route_server(
    buf: &[u8],
    streaming: &mut Streaming,
    exp: &mut Expectations,
    registry: &mut ServerStatements,
    params: &mut ParamSync<'_>,
    out: &mut BytesMut,
) -> Result<ServerScan, FrameError> {
    let mut scan = ServerScan::default();
    let mut batch = Batch::new(buf, out);
    let mut pos = streaming.left.min(buf.len());
    streaming.left -= pos;
    if !streaming.forward && pos > 0 {
        batch.drop_range(0, pos);
    }
    while let Some(h) = peek_header(&buf[pos..], i32::MAX as usize)? {
        let end = pos + h.frame_len();
        if matches!(h.tag, b'Z' | b'S' | b'E' | b'C') && end > buf.len() {
            break; // these few bodies are read: wait for the rest
        }
        let body = &buf[(pos + 5).min(buf.len())..end.min(buf.len())];
        if h.tag == b'G' {
            scan.ignored_syncs += exp.copy_in_started();
        }
        // At a message boundary, replies pgtier gives itself go out first.
        if exp.synthetic_first() {
            batch.insert(pos, |o| {
                exp.drain_synthetic(o);
            });
        }
        let forward = exp.on_message(h.tag, body, registry);
        if h.tag == b'S' {
            params.observe(body, forward);
        }
        // A client's DISCARD ALL or DEALLOCATE ALL drops statements pgtier prepared here too.
        if h.tag == b'C' && (body == b"DISCARD ALL\0" || body == b"DEALLOCATE ALL\0") {
            registry.clear();
        }
        if h.tag == b'Z' {
            // Only the client's ReadyForQuery count against what the client is owed.
            scan.ready += u32::from(forward);
            scan.status = Some(TxStatus::from_byte(buf[end - 1]));
        }
        let cut = end.min(buf.len());
        if !forward {
            batch.drop_range(pos, cut);
        }
        pos = cut;
        if end > buf.len() {
            *streaming = Streaming {
                left: end - buf.len(),
                forward,
            };
            break;
        }
    }
    if streaming.left == 0 && exp.synthetic_first() {
        batch.insert(pos, |o| {
            exp.drain_synthetic(o);
        });
    }
    scan.copied = batch.finish(pos);
    scan.ignored_syncs += std::mem::take(&mut exp.skipped_ready);
    scan.consumed = pos;
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! no_params {
        () => {
            ParamSync {
                defaults: &[],
                client: &mut ParamChanges::default(),
                server_login: &[],
                server: &mut ParamChanges::default(),
            }
        };
    }

    use crate::protocol::frame::test_frame as msg;

    fn server(kind: Kind, to_client: bool) -> Entry {
        Entry::Server {
            kind,
            to_client,
            statement: None,
        }
    }

    #[test]
    fn drops_pgtier_replies_and_inserts_synthetic_ones_in_order() {
        let mut exp = Expectations::default();
        let mut reg = ServerStatements::new(10);
        exp.push(server(Kind::Parse, false)); // injected Parse
        exp.push(server(Kind::Bind, true));
        exp.push(Entry::Synthetic(Synthetic::CloseComplete));
        exp.push(server(Kind::Execute, true));
        exp.push(server(Kind::Sync, true));
        let mut input = msg(b'1', b"");
        input.extend(msg(b'2', b""));
        input.extend(msg(b'D', b"\0\0"));
        input.extend(msg(b'C', b"SELECT 1\0"));
        input.extend(msg(b'Z', b"I"));
        let mut out = BytesMut::new();
        let scan = route_server(
            &input,
            &mut Streaming::default(),
            &mut exp,
            &mut reg,
            &mut no_params!(),
            &mut out,
        )
        .unwrap();
        assert!(scan.copied);
        assert_eq!(scan.consumed, input.len());
        assert_eq!((scan.ready, scan.status), (1, Some(TxStatus::Idle)));
        let mut want = msg(b'2', b"");
        want.extend(msg(b'3', b""));
        want.extend(msg(b'D', b"\0\0"));
        want.extend(msg(b'C', b"SELECT 1\0"));
        want.extend(msg(b'Z', b"I"));
        assert_eq!(&out[..], &want[..]);
        assert!(exp.is_empty());
    }

    #[test]
    fn plain_traffic_is_not_copied() {
        let mut exp = Expectations::default();
        exp.push(server(Kind::Query, true));
        let mut input = msg(b'T', b"x");
        input.extend(msg(b'D', &[0u8; 100]));
        input.extend(msg(b'C', b"SELECT 1\0"));
        input.extend(msg(b'Z', b"I"));
        let mut out = BytesMut::new();
        let mut st = Streaming::default();
        let mut reg = ServerStatements::new(10);
        let scan = route_server(
            &input[..20],
            &mut st,
            &mut exp,
            &mut reg,
            &mut no_params!(),
            &mut out,
        )
        .unwrap();
        assert_eq!((scan.consumed, scan.copied), (20, false));
        let scan = route_server(
            &input[20..],
            &mut st,
            &mut exp,
            &mut reg,
            &mut no_params!(),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            (scan.consumed, scan.copied, scan.ready),
            (input.len() - 20, false, 1)
        );
        assert!(out.is_empty() && exp.is_empty());
    }

    #[test]
    fn error_skips_to_sync_and_forgets_failed_parses() {
        let mut exp = Expectations::default();
        let mut reg = ServerStatements::new(10);
        reg.insert("pgtier_a".into());
        exp.push(Entry::Server {
            kind: Kind::Parse,
            to_client: false,
            statement: Some("pgtier_a".into()),
        });
        exp.push(server(Kind::Bind, true));
        exp.push(Entry::Synthetic(Synthetic::ParseComplete));
        exp.push(server(Kind::Sync, true));
        let mut input = msg(b'E', b"Cxx\0\0");
        input.extend(msg(b'Z', b"I"));
        let mut out = BytesMut::new();
        let scan = route_server(
            &input,
            &mut Streaming::default(),
            &mut exp,
            &mut reg,
            &mut no_params!(),
            &mut out,
        )
        .unwrap();
        assert!(
            !scan.copied,
            "the error and ReadyForQuery both go to the client"
        );
        assert!(exp.is_empty());
        assert!(!reg.touch("pgtier_a"));
    }
}
