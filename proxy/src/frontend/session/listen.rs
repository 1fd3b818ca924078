//! The session's side of LISTEN/NOTIFY in transaction mode: `LISTEN`/`UNLISTEN` answered by
//! pgtier (see `notify`), and the client's pending notifications written when it is idle.

use bytes::BytesMut;

use crate::notify::{ListenLimits, Source, LIMIT_EXCEEDED};
use crate::protocol::extended::{split_cstr, target};
use crate::protocol::frame::peek_header;
use crate::protocol::messages::command_complete;
use crate::protocol::messages::{error_response, ready_for_query, Severity, TxStatus};
use crate::protocol::SqlState;
use crate::sql::listen::ListenCommand;
use crate::sql::session_state::pins;

use super::Session;

/// Beyond connecting, how long the shared connection may take to LISTEN.
const LISTEN_ROUND_TRIP: std::time::Duration = std::time::Duration::from_secs(10);

/// What pgtier answers itself of a listening client's request.
pub(super) enum ListenRequest {
    /// LISTEN, UNLISTEN or UNLISTEN *, after `prefix` bytes of Close (of named statements)
    /// and Sync messages that drivers send ahead of it (tokio-postgres closes a dropped
    /// statement that way): those are answered here too, so that the replies stay in order.
    Command { prefix: usize, cmd: ListenCommand },
    /// A statement that would pin a client that listens through pgtier: this ERROR instead.
    Refused(&'static str),
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
        if let Some((prefix, cmd)) = listen_command(buf) {
            return Some(ListenRequest::Command { prefix, cmd });
        }
        let listens = self
            .listening
            .as_ref()
            .is_some_and(|l| l.channel_count() > 0);
        // A pinned client stays in its relay, where pgtier does not write notifications:
        // refused rather than left to lose them silently.
        would_pin(buf)
            .filter(|_| listens)
            .map(ListenRequest::Refused)
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
            ListenRequest::Refused(reason) => Some((
                SqlState::FEATURE_NOT_SUPPORTED,
                format!("pgtier: {reason} would pin this client to a server connection, which a client that LISTENs through pgtier cannot be (UNLISTEN * first)"),
            )),
            ListenRequest::Command { prefix, cmd } => {
                self.answer_closes(&buf[..prefix], &mut out);
                self.apply_listen(&cmd).await.err().or_else(|| {
                    command_complete(&mut out, cmd.tag());
                    None
                })
            }
        };
        if let Some((code, message)) = failed {
            error_response(&mut out, Severity::Error, code, &message);
        }
        ready_for_query(&mut out, TxStatus::Idle);
        self.send(&out).await
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

    /// Applies a LISTEN-family command; Err: the ERROR to answer (nothing changed).
    async fn apply_listen(&mut self, cmd: &ListenCommand) -> Result<(), (SqlState, String)> {
        let proxy = self.proxy.clone();
        let settings = proxy.settings();
        let source = || Source {
            router: self.runtime.router.clone(),
            upstream: self.upstream.clone(),
            limits: ListenLimits {
                max_pending: settings.raw.max_pending_notifications as usize,
                max_channels: settings.raw.max_listen_channels as usize,
                connect_timeout: settings.raw.server_connect_timeout,
            },
        };
        let wait = proxy
            .listeners()
            .apply(&mut self.listening, cmd, source)
            .map_err(|m| (LIMIT_EXCEEDED, m))?;
        let (Some(hub), ListenCommand::Listen(channel)) = (wait, cmd) else {
            return Ok(());
        };
        let limit = settings.raw.primary_wait_timeout
            + settings.raw.server_connect_timeout
            + LISTEN_ROUND_TRIP;
        if hub.until_listening(channel, limit).await {
            return Ok(());
        }
        // Not in effect: the client is not left believing it listens.
        if let Some(l) = &self.listening {
            l.unlisten(channel);
        }
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

/// The LISTEN-family statement `buf` ends with, if it is one simple Query of one, preceded
/// only by Close messages of named statements, each batch ended by a Sync: (length of that
/// prefix, the statement).
fn listen_command(buf: &[u8]) -> Option<(usize, ListenCommand)> {
    let mut pos = 0;
    let mut synced = true;
    loop {
        let h = peek_header(&buf[pos..], usize::MAX).ok()??;
        let end = pos + h.frame_len();
        let body = buf.get(pos + 5..end)?;
        match h.tag {
            b'Q' if end == buf.len() && synced => {
                let cmd = crate::sql::listen::parse(body.strip_suffix(&[0])?)?;
                return Some((pos, cmd));
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
