//! The session's side of LISTEN/NOTIFY in transaction mode: `LISTEN`/`UNLISTEN` answered by
//! pgtier (see `notify`), and the client's pending notifications written when it is idle.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use crate::backend::Upstream;
use crate::router::route::Router;
use crate::runtime::Proxy;

use crate::frontend::relay::listen::channels_reply;
use crate::notify::Staged;
use crate::notify::{ListenLimits, Source, LIMIT_EXCEEDED};
use crate::protocol::extended::{split_cstr, target};
use crate::protocol::frame::peek_header;
use crate::protocol::messages::command_complete;
use crate::protocol::messages::{error_response, ready_for_query, Severity, TxStatus};
use crate::protocol::SqlState;
use crate::sql::listen::{listen_query, ListenCommand, ListenQuery};
use crate::sql::session_state::pins;

use super::listen_extended::{extended_listen, may_be_extended_listen, Step};
use super::Session;

/// Beyond connecting, how long the shared connection may take to LISTEN.
const LISTEN_ROUND_TRIP: Duration = Duration::from_secs(10);

/// What pgtier answers itself of a listening client's request.
pub(super) enum ListenRequest {
    /// LISTEN, UNLISTEN or UNLISTEN * (one or more, `;`-separated), or `SELECT
    /// pg_listening_channels()`: a simple Query ending at `end`, after `prefix` bytes of Close
    /// (of named statements) and Sync messages that drivers send ahead of it (tokio-postgres
    /// closes a dropped statement that way): those are answered here too, so that the replies
    /// stay in order. What follows `end` is served next.
    Command {
        prefix: usize,
        query: ListenQuery,
        end: usize,
    },
    /// A statement that would pin a client that listens through pgtier: this ERROR instead.
    Refused(&'static str),
    /// Extended-protocol units of nothing but LISTEN-family statements.
    Extended(Vec<Step>),
}

impl ListenRequest {
    /// Where in the request (`len` bytes) what is answered ends.
    pub(super) fn end(&self, len: usize) -> usize {
        match self {
            ListenRequest::Command { end, .. } => *end,
            _ => len,
        }
    }
}

impl Session {
    /// Whether `buf` is a simple query that is exactly `LISTEN ch`, `UNLISTEN ch` or
    /// `UNLISTEN *` from a transaction-mode client between transactions (answered without a
    /// server), or a statement that would pin a client that listens through pgtier. None:
    /// neither, or the client holds a server (session mode, pinned), which runs it as before.
    pub(super) fn listen_request(&self, buf: &[u8]) -> Option<ListenRequest> {
        if self.holds_server() {
            return None;
        }
        if let Some((prefix, query, end)) = listen_command(buf) {
            return Some(ListenRequest::Command { prefix, query, end });
        }
        let kept = self
            .listen_statements
            .as_deref()
            .map_or(&[][..], |k| &k[..]);
        if may_be_extended_listen(buf, !kept.is_empty()) {
            if let Some(steps) = extended_listen(buf, kept) {
                return Some(ListenRequest::Extended(steps));
            }
        }
        let listens = self
            .listening
            .as_ref()
            .is_some_and(|l| l.channel_count() > 0);
        // A pinned client stays in its relay, where pgtier does not write notifications:
        // refused rather than left to lose them silently. (Only a listening client's text is
        // lexed for this: every other request would pay for it.)
        if !listens {
            return None;
        }
        would_pin(buf).map(ListenRequest::Refused)
    }

    /// Answers `req` (ending in ReadyForQuery). A LISTEN of a channel new to the database is
    /// answered once the shared connection listens on it (as on Postgres, notifications
    /// committed after the answer reach the client).
    pub(super) async fn answer_listen(
        &mut self,
        buf: &[u8],
        req: ListenRequest,
    ) -> Result<(), &'static str> {
        let mut out = BytesMut::new();
        let failed = match req {
            ListenRequest::Extended(steps) => {
                self.answer_extended(steps, &mut out).await;
                return self.send(&out).await;
            }
            ListenRequest::Refused(reason) => Some((
                SqlState::FEATURE_NOT_SUPPORTED,
                format!("pgtier: {reason} would pin this client to a server connection, which a client that LISTENs through pgtier cannot be (UNLISTEN * first)"),
            )),
            ListenRequest::Command { prefix, query, .. } => {
                self.answer_closes(&buf[..prefix], &mut out);
                match query {
                    ListenQuery::Channels => {
                        channels_reply(self.listening.as_deref(), &mut out);
                        None
                    }
                    ListenQuery::Commands(cmds) => self.apply_all(&cmds, &mut out).await,
                }
            }
        };
        if let Some((code, message)) = failed {
            error_response(&mut out, Severity::Error, code, &message);
        }
        ready_for_query(&mut out, TxStatus::Idle);
        self.send(&out).await
    }

    /// Shows in SHOW CLIENTS how many channels pgtier listens on for the client.
    fn note_listening(&self) {
        let n = self.listening.as_ref().map_or(0, |l| l.channel_count());
        self.client.entry.set_listening(n);
    }

    /// Answers Close messages of named statements and Syncs (checked by [`listen_command`])
    /// as the relay would: the client forgets the name (the server-side statement may be
    /// shared), CloseComplete; ReadyForQuery for each Sync.
    fn answer_closes(&mut self, mut buf: &[u8], out: &mut BytesMut) {
        while let Ok(Some(h)) = peek_header(buf, usize::MAX) {
            let Some(frame) = buf.get(..h.frame_len()) else {
                break;
            };
            if let (b'C', Some((b'S', name))) = (h.tag, target(&frame[5..])) {
                self.statements.remove(name);
                out.extend_from_slice(b"3\0\0\0\x04");
            } else if h.tag == b'S' {
                ready_for_query(out, TxStatus::Idle);
            }
            buf = &buf[h.frame_len()..];
        }
        self.client.entry.set_prepared(self.statements.len());
    }

    /// Applies the LISTEN-family statements of one simple query, writing their
    /// CommandCompletes; Some: the ERROR to answer. Several are one implicit transaction, as
    /// on Postgres: staged, and in effect only if all succeed.
    async fn apply_all(
        &mut self,
        cmds: &[ListenCommand],
        out: &mut BytesMut,
    ) -> Option<(SqlState, String)> {
        if let [cmd] = cmds {
            return self.apply_listen(cmd).await.err().or_else(|| {
                command_complete(out, cmd.tag());
                None
            });
        }
        let proxy = self.proxy.clone();
        let (source, limit) = listen_source(&proxy, &self.runtime.router, &self.upstream);
        let mut staged = Staged::default();
        let mut failed = None;
        for cmd in cmds {
            // No server backend runs it (pid 0 is none's).
            let wait = proxy
                .listeners()
                .stage(&mut self.listening, &mut staged, cmd, 0, || source.clone());
            let wait = match wait {
                Ok(w) => w,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            if let (Some(hub), ListenCommand::Listen(channel)) = (wait, cmd) {
                if !hub.until_listening(channel, limit).await {
                    failed = Some((
                        SqlState::CONNECTION_FAILURE,
                        format!("pgtier: could not LISTEN on the primary within {limit:?} (see pgtier's log)"),
                    ));
                    break;
                }
            }
        }
        let slot = self.listening.as_deref();
        if failed.is_some() {
            // Nothing of the query takes effect, and its CommandCompletes are not sent.
            staged.discard(slot);
        } else {
            staged.commit(slot);
            for cmd in cmds {
                command_complete(out, cmd.tag());
            }
        }
        self.note_listening();
        failed
    }

    /// Applies a LISTEN-family command; Err: the ERROR to answer (nothing changed).
    pub(super) async fn apply_listen(
        &mut self,
        cmd: &ListenCommand,
    ) -> Result<(), (SqlState, String)> {
        let proxy = self.proxy.clone();
        let (source, limit) = listen_source(&proxy, &self.runtime.router, &self.upstream);
        let source = || source;
        let wait = proxy.listeners().apply(&mut self.listening, cmd, source);
        self.note_listening();
        let wait = wait.map_err(|m| (LIMIT_EXCEEDED, m))?;
        let (Some(hub), ListenCommand::Listen(channel)) = (wait, cmd) else {
            return Ok(());
        };
        if hub.until_listening(channel, limit).await {
            return Ok(());
        }
        // Not in effect: the client is not left believing it listens.
        if let Some(l) = &self.listening {
            l.unlisten(channel);
        }
        self.note_listening();
        Err((
            SqlState::CONNECTION_FAILURE,
            format!("pgtier: could not LISTEN on the primary within {limit:?} (see pgtier's log)"),
        ))
    }

    /// Writes the client's pending notifications (it is between transactions). Err(reason):
    /// the client must go (its queue overflowed: it is closed with FATAL 53400).
    pub(super) async fn deliver_notifications(&mut self) -> Result<(), &'static str> {
        let Some(listening) = &self.listening else {
            return Ok(());
        };
        let mut out = BytesMut::new();
        match listening.take(&mut out) {
            Ok(0) => Ok(()),
            Ok(_) => Box::pin(self.send(&out)).await,
            Err(o) => {
                let message = format!(
                    "pgtier: terminating connection because the client did not read its notifications: more than max_pending_notifications ({}) were waiting",
                    o.max
                );
                self.close(LIMIT_EXCEEDED, &message).await;
                Err("notification queue overflow")
            }
        }
    }
}

/// How the listening connection reaches the primary (the client's pools), and how long a
/// LISTEN of a new channel may wait for it to LISTEN.
pub(super) fn listen_source(
    proxy: &Proxy,
    router: &Arc<Router>,
    upstream: &Arc<Upstream>,
) -> (Source, Duration) {
    let settings = proxy.settings();
    let limit =
        settings.raw.primary_wait_timeout + settings.raw.server_connect_timeout + LISTEN_ROUND_TRIP;
    let source = Source {
        router: router.clone(),
        upstream: upstream.clone(),
        limits: ListenLimits {
            max_pending: settings.raw.max_pending_notifications as usize,
            max_channels: settings.raw.max_listen_channels as usize,
            connect_timeout: settings.raw.server_connect_timeout,
        },
    };
    (source, limit)
}

/// The statement pgtier answers (LISTEN-family statements, `pg_listening_channels()`) in the
/// first simple Query of `buf`, preceded only by Close messages of named statements, each batch
/// ended by a Sync: (length of that prefix, the statement, where the Query ends).
fn listen_command(buf: &[u8]) -> Option<(usize, ListenQuery, usize)> {
    let mut pos = 0;
    let mut synced = true;
    loop {
        let h = peek_header(&buf[pos..], usize::MAX).ok()??;
        let end = pos + h.frame_len();
        let body = buf.get(pos + 5..end)?;
        match h.tag {
            b'Q' if synced => {
                let query = listen_query(body.strip_suffix(&[0])?)?;
                // A malformed message goes the normal way, which refuses it (08P01).
                crate::protocol::validate::check(h.tag, body).ok()?;
                return Some((pos, query, end));
            }
            b'C' if matches!(target(body), Some((b'S', name)) if !name.is_empty()) => {
                synced = false
            }
            b'S' if !synced => synced = true,
            _ => return None,
        }
        pos = end;
    }
}

/// Why a request (a Query, or extended messages) would pin its client, if a statement of it
/// does so at the top level. A SET of a parameter is left out: pgtier may follow it (tracked
/// and extra parameters), which only the relay knows.
fn would_pin(mut buf: &[u8]) -> Option<&'static str> {
    while let Ok(Some(h)) = peek_header(buf, usize::MAX) {
        let frame = buf.get(..h.frame_len())?;
        let sql = match h.tag {
            b'Q' => split_cstr(&frame[5..]).map(|(q, _)| q),
            // Parse: statement name, then the query.
            b'P' => split_cstr(&frame[5..])
                .and_then(|(_, rest)| split_cstr(rest))
                .map(|(q, _)| q),
            _ => None,
        };
        let reason = sql.and_then(|s| pins(s, |_| true));
        if reason.is_some() {
            return reason;
        }
        buf = &buf[h.frame_len()..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::test_frame as msg;

    fn cat(frames: &[Vec<u8>]) -> Vec<u8> {
        frames.concat()
    }

    #[test]
    fn a_listen_behind_closes_of_named_statements_is_recognised() {
        let q = msg(b'Q', b"LISTEN a\0");
        assert_eq!(listen_command(&q).map(|(p, _, _)| p), Some(0));
        let with_close = cat(&[msg(b'C', b"Ss0\0"), msg(b'S', b""), q.clone()]);
        let (prefix, query, end) = listen_command(&with_close).unwrap();
        assert_eq!(
            (prefix, query, end),
            (
                with_close.len() - q.len(),
                ListenQuery::Commands(vec![ListenCommand::Listen("a".into())]),
                with_close.len()
            )
        );
        // A Query after it is served next.
        let two = cat(&[q.clone(), msg(b'Q', b"SELECT 1\0")]);
        assert_eq!(listen_command(&two).map(|(_, _, e)| e), Some(q.len()));
        // Not behind an unsynced Close, a portal Close, or anything else.
        assert!(listen_command(&cat(&[msg(b'C', b"Ss0\0"), q.clone()])).is_none());
        assert!(listen_command(&cat(&[msg(b'C', b"Pp\0"), msg(b'S', b""), q.clone()])).is_none());
        assert!(listen_command(&cat(&[msg(b'Q', b"SELECT 1\0"), q])).is_none());
        let channels = msg(b'Q', b"SELECT pg_listening_channels()\0");
        assert_eq!(
            listen_command(&channels).map(|(_, q, _)| q),
            Some(ListenQuery::Channels)
        );
    }
}
