//! LISTEN/UNLISTEN and `pg_listening_channels()` inside a transaction block, for a
//! transaction-mode client that is not pinned: answered by pgtier, never sent to the server
//! (which would then hold session state and pin the client). As in Postgres, the statements
//! are staged (`notify::Staged`) and take effect at the block's COMMIT; a ROLLBACK, a COMMIT
//! that ends in ROLLBACK or fails, or a block that otherwise ends drops them.
//!
//! The gate holds such a simple Query at the front of the client buffer until the server owes
//! nothing (the transaction status is then known); `answer_in_block` answers it. The end of
//! the block is read from the replies going to the client, only while something is staged
//! (`on_replies`): for every other client the cost is one branch per server batch.

use std::time::Duration;

use bytes::{Buf, BytesMut};

use crate::notify::{Listeners, Listening, Source, Staged};
use crate::protocol::frame::peek_header;
use crate::protocol::messages::{
    command_complete, data_row, error_response, ready_for_query, row_description, Severity,
    TxStatus,
};
use crate::protocol::SqlState;
use crate::runtime::ClientEntry;
use crate::sql::listen::{listen_query, ListenCommand, ListenQuery};
use crate::write::{write_all_within, WriteError};

use super::responses::{Entry, Kind};
use super::to_client::client_write_failed;
use super::{Outcome, Relay};

/// What the relay needs to answer LISTEN-family statements (None in session mode).
pub(crate) struct ListenCtx<'a> {
    /// Every database's hubs.
    pub listeners: &'a Listeners,
    /// The client's membership (channels, mailbox), made at its first LISTEN.
    pub slot: &'a mut Option<Box<Listening>>,
    /// How the listening connection reaches the primary, and how long a LISTEN may wait for it.
    pub source: &'a (dyn Fn() -> (Source, Duration) + Sync),
}

/// Which statements pgtier answers now (see [`Relay::local_answers`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LocalAnswers {
    /// LISTEN-family statements.
    pub listen: bool,
    /// `pg_listening_channels()`.
    pub channels: bool,
}

impl LocalAnswers {
    /// Whether pgtier answers the simple Query `sql` itself.
    pub fn answers(&self, sql: &[u8]) -> bool {
        if !self.listen && !self.channels {
            return false;
        }
        match listen_query(sql) {
            Some(ListenQuery::Commands(_)) => self.listen,
            Some(ListenQuery::Channels) => self.channels,
            None => false,
        }
    }
}

/// Writes the answer to `SELECT pg_listening_channels()`: the client's channels (sorted; those
/// staged in an open block are not listed until its COMMIT, as in Postgres).
pub(crate) fn channels_reply(slot: Option<&Listening>, out: &mut BytesMut) {
    channels_description(out, false);
    channels_rows(slot, out);
}

/// The RowDescription of that answer: one text column (`binary`: in binary format, whose
/// bytes for text are the same).
pub(crate) fn channels_description(out: &mut BytesMut, binary: bool) {
    row_description(out, &["pg_listening_channels"]);
    if binary {
        // The format code is the description's last field (its low byte).
        if let Some(last) = out.last_mut() {
            *last = 1;
        }
    }
}

/// Its DataRows and CommandComplete.
pub(crate) fn channels_rows(slot: Option<&Listening>, out: &mut BytesMut) {
    let channels = slot.map_or_else(Vec::new, Listening::channels);
    for c in &channels {
        data_row(out, &[c]);
    }
    command_complete(out, &format!("SELECT {}", channels.len()));
}

impl Relay<'_> {
    /// Which statements pgtier answers at this moment: none for a client that holds its server
    /// (session mode, pinned). Inside a block that used a SAVEPOINT a LISTEN goes to the server
    /// as before (pgtier does not follow which savepoint a ROLLBACK TO undoes).
    pub(super) fn local_answers(&self) -> LocalAnswers {
        if self.listen.is_none() || self.holds_server() {
            return LocalAnswers::default();
        }
        LocalAnswers {
            listen: !(self.status != TxStatus::Idle && self.expect.savepoint),
            channels: true,
        }
    }

    /// Answers the simple Query the gate held at the front of the client buffer, inside a
    /// transaction block with nothing in flight.
    pub(super) async fn answer_in_block(&mut self) -> Option<Outcome> {
        let whole = match peek_header(&self.cbuf, self.limits.max_message) {
            Ok(Some(h)) if h.tag == b'Q' && self.cbuf.len() >= h.frame_len() => {
                let body = &self.cbuf[5..h.frame_len()];
                let sql = body.strip_suffix(&[0]).unwrap_or(body);
                let query = listen_query(sql).filter(|_| self.local_answers().answers(sql));
                query.map(|q| (q, h.frame_len()))
            }
            _ => None,
        };
        let Some((query, len)) = whole else {
            // Not ours after all (cannot happen: the gate held it with the same test): to the
            // server, as before, rather than held again.
            self.gate.pass_once = true;
            return None;
        };
        self.cbuf.advance(len);
        self.gate.consumed(len);
        let mut out = BytesMut::new();
        let mut failed = None;
        if self.status == TxStatus::Failed {
            error_response(
                &mut out,
                Severity::Error,
                SqlState::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            );
        } else {
            match query {
                ListenQuery::Channels => {
                    let slot = self.listen.as_ref().and_then(|l| l.slot.as_deref());
                    channels_reply(slot, &mut out);
                }
                ListenQuery::Commands(cmds) => {
                    for cmd in &cmds {
                        match self.stage(cmd).await {
                            Ok(()) => command_complete(&mut out, cmd.tag()),
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                }
            }
        }
        if failed.is_none() {
            ready_for_query(&mut out, self.status);
        }
        self.replied = true;
        if let Err(e) = write_all_within(self.client, &out, self.limits.client_write_timeout).await
        {
            return Some(client_write_failed(&e, &out, 0));
        }
        let (code, message) = failed?;
        // The block must fail as on Postgres: the server raises the error, aborting it, and
        // answers the client's Query (ErrorResponse, ReadyForQuery 'E').
        let sql = format!(
            "DO $pgtier$ BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = '{}'; END $pgtier$\0",
            message.replace('\'', "''")
        );
        let mut q = BytesMut::with_capacity(sql.len() + 5);
        q.extend_from_slice(b"Q");
        q.extend_from_slice(&(sql.len() as u32 + 4).to_be_bytes());
        q.extend_from_slice(sql.as_bytes());
        if let Err(e) =
            write_all_within(self.server.stream, &q, self.limits.server_write_timeout).await
        {
            return Some(match e {
                WriteError::Stalled { .. } => Outcome::ServerStalled,
                WriteError::Io(e) => Outcome::ServerGone(e),
            });
        }
        self.expect.push(Entry::client(Kind::Query));
        self.owed += 1;
        None
    }

    /// Stages one LISTEN-family statement of the block; a LISTEN of a channel new to the
    /// database waits until the listening connection LISTENs on it (as outside a block).
    async fn stage(&mut self, cmd: &ListenCommand) -> Result<(), (SqlState, String)> {
        let Some(ctx) = self.listen.as_mut() else {
            return Ok(());
        };
        let staged = self.staged.get_or_insert_with(Default::default);
        let mut limit = Duration::ZERO;
        let wait = ctx
            .listeners
            .stage(ctx.slot, staged, cmd, self.cancel.key.pid, || {
                let (source, wait) = (ctx.source)();
                limit = wait;
                source
            })?;
        let (Some(hub), ListenCommand::Listen(channel)) = (wait, cmd) else {
            return Ok(());
        };
        if hub.until_listening(channel, limit).await {
            return Ok(());
        }
        // The reservation is given back when the block, which this error aborts, ends.
        Err((
            SqlState::CONNECTION_FAILURE,
            format!("pgtier: could not LISTEN on the primary within {limit:?} (see pgtier's log)"),
        ))
    }

    /// The relay ends: a block that did not commit (the client or the server went away in it)
    /// drops what it staged.
    pub(super) fn drop_staged(&mut self) {
        if let Some(mut staged) = self.staged.take() {
            staged.discard(self.listen.as_ref().and_then(|l| l.slot.as_deref()));
        }
    }
}

/// Reads the end of the block from the replies going to the client (`batch`, past `lead` bytes
/// of a message already under way), while something is staged: CommandComplete `COMMIT`
/// applies it (before the client has the reply, so every notification committed after the
/// client sees its COMMIT reaches it); `ROLLBACK` (a ROLLBACK, or a COMMIT of a failed block),
/// or a ReadyForQuery 'I' without a COMMIT (a COMMIT that failed, PREPARE TRANSACTION) drops it.
/// `savepoint`: the block used a SAVEPOINT, so a `ROLLBACK` followed by more of the block is a
/// ROLLBACK TO SAVEPOINT, which leaves what was staged before the savepoint.
pub(super) fn on_replies(
    batch: &[u8],
    lead: usize,
    staged: &mut Option<Box<Staged>>,
    listen: Option<&ListenCtx<'_>>,
    savepoint: bool,
    entry: &ClientEntry,
) {
    let mut pos = lead;
    while let Some(Ok(Some(h))) = batch.get(pos..).map(|b| peek_header(b, usize::MAX)) {
        let end = pos + h.frame_len();
        let Some(body) = batch.get(pos + 5..end) else {
            return;
        };
        let commit = match (h.tag, body) {
            (b'C', b"COMMIT\0") => true,
            (b'C', b"ROLLBACK\0") if !savepoint => false,
            (b'Z', b"I") => false,
            _ => {
                pos = end;
                continue;
            }
        };
        let slot = listen.and_then(|l| l.slot.as_deref());
        if let Some(mut s) = staged.take() {
            if commit {
                entry.set_listening(s.commit(slot));
            } else {
                s.discard(slot);
            }
        }
        return;
    }
}
