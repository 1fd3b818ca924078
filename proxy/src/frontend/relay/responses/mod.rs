//! What the server still owes, message by message, and who each reply is for. pgtier sends
//! some messages of its own (a Parse to prepare a client's statement on this server, a Close to
//! evict one) and answers some client messages itself (ParseComplete for a statement the
//! server already has, CloseComplete, errors): this queue keeps every reply in the order the
//! client expects, and drops the replies meant for pgtier.
//!
//! - `route`: routing one batch of server bytes against this queue.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;

use crate::backend::params::ExtraUpdate;
use crate::prepared::client::{ClientStatements, FollowedSet, Prepared, Saved};
use crate::prepared::server::ServerStatements;
use crate::protocol::messages::{error_fields, error_response, Severity};
use crate::protocol::SqlState;

use super::causal::Causal;

mod route;

pub(crate) use route::{route_server, ParamSync, Streaming};

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

/// A change made when a message was routed (to the client's statement names or to the
/// server's registry) that must be undone if the server skips or fails that message: Postgres
/// only creates or drops a statement when its Parse or Close succeeds.
#[derive(Debug)]
pub(crate) enum Undo {
    /// The client's Parse of this name, answered by pgtier (the server has the statement):
    /// the name is free again.
    ClientParse(Box<[u8]>, Arc<Prepared>),
    /// The client's Parse of this name, sent to the server: the name is free again, and the
    /// statement is not on the server.
    ClientPrepare(Box<[u8]>, Arc<Prepared>),
    /// The client's Close (or DEALLOCATE) of this name: the statement is back.
    ClientClose(Box<[u8]>, Arc<Prepared>),
    /// The client's DEALLOCATE ALL or DISCARD ALL: its statements are back.
    ClientClear(Saved),
    /// pgtier's Close evicting this statement: it is still on the server.
    Evict(Arc<str>),
    /// pgtier's Parse of this statement: it is not on the server.
    Prepare(Arc<str>),
    /// The client's Parse or Close of its unnamed statement: the one before is back (its text,
    /// and whether it is a SET pgtier followed).
    Unnamed(Option<Box<[u8]>>, FollowedSet),
}

impl Undo {
    fn apply(self, registry: &mut ServerStatements, statements: &mut ClientStatements) {
        match self {
            Undo::ClientParse(name, stmt) => statements.remove_if(&name, &stmt),
            Undo::ClientPrepare(name, stmt) => {
                registry.remove(&stmt.server_name);
                statements.remove_if(&name, &stmt);
            }
            Undo::ClientClose(name, stmt) => statements.put_back(&name, stmt),
            Undo::ClientClear(saved) => statements.restore(saved),
            Undo::Evict(name) => registry.restore(name),
            Undo::Prepare(name) => registry.remove(&name),
            Undo::Unnamed(text, followed) => {
                statements.set_unnamed(text.as_deref());
                statements.mark_unnamed_set(followed);
            }
        }
    }
}

/// One expected reply.
#[derive(Debug)]
pub(crate) enum Entry {
    /// The server owes replies to a message; `to_client` says where they go (`quiet`: not
    /// even its error, for a pgtier message whose failure the next one reports). A Bind of a
    /// pgtier-named statement carries its name: failing with 0A000 (DDL changed the plan's
    /// result type) marks the statement stale, to be re-prepared at its next use. `undo` is
    /// applied if the message fails or is skipped.
    Server {
        kind: Kind,
        to_client: bool,
        quiet: bool,
        statement: Option<Arc<str>>,
        undo: Option<Undo>,
    },
    /// pgtier answers itself when this reaches the front (`undo`: if it is skipped instead).
    Synthetic(Synthetic, Option<Undo>),
    /// The client ended a COPY FROM STDIN here (CopyDone or CopyFail); no reply of its own.
    CopyEnd,
    /// pgtier's causal probe (a Query): its reply is the client's token, none of it is sent.
    Probe,
}

impl Entry {
    /// The replies to a client's message.
    pub(crate) fn client(kind: Kind) -> Entry {
        Entry::Server {
            kind,
            to_client: true,
            quiet: false,
            statement: None,
            undo: None,
        }
    }

    /// The replies to a message pgtier sends on its own (dropped; errors still go through).
    pub(crate) fn own(kind: Kind) -> Entry {
        Entry::Server {
            kind,
            to_client: false,
            quiet: false,
            statement: None,
            undo: None,
        }
    }

    /// The same entry with a statement name and an undo action.
    pub(crate) fn with(self, name: Option<Arc<str>>, action: Option<Undo>) -> Entry {
        match self {
            Entry::Server {
                kind,
                to_client,
                quiet,
                ..
            } => Entry::Server {
                kind,
                to_client,
                quiet,
                statement: name,
                undo: action,
            },
            other => other,
        }
    }

    /// The same (pgtier) entry with its error dropped too.
    pub(crate) fn quietly(mut self) -> Entry {
        if let Entry::Server { quiet, .. } = &mut self {
            *quiet = true;
        }
        self
    }
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
    /// A change of extra parameters by the client's next statement (a Query, or an Execute
    /// alone in its unit; the only one in flight), recorded for the client and the server once
    /// it completes.
    pub(crate) param_update: Option<ExtraUpdate>,
    /// Statements that set the client's startup values again, to send after the client's
    /// Query (or the Sync of its unit) that resets them.
    pub(crate) restore: Option<String>,
    /// The client's causal token and the probe that reads it.
    pub(crate) causal: Causal,
    /// The transaction block used a SAVEPOINT (see `relay::listen`).
    pub(crate) savepoint: bool,
}

impl Expectations {
    /// An empty queue with the client's causal state, with room for an extended-protocol
    /// statement (five entries: Parse, Bind, Describe, Execute, Sync) at once, rather than an
    /// allocation and a regrowth per run.
    pub(crate) fn with(causal: Causal) -> Expectations {
        Expectations {
            q: VecDeque::with_capacity(8),
            causal,
            ..Expectations::default()
        }
    }

    pub(crate) fn push(&mut self, e: Entry) {
        self.q.push_back(e);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.q.len()
    }

    /// Whether everything in flight is pgtier's own (nothing of the client's is before a
    /// message routed now).
    pub(crate) fn only_own(&self) -> bool {
        self.q.iter().all(|e| {
            matches!(
                e,
                Entry::Server {
                    to_client: false,
                    ..
                } | Entry::Probe
            )
        })
    }

    /// Whether the last message queued owes the client a ReadyForQuery.
    pub(crate) fn ends_with_client_ready(&self) -> bool {
        matches!(
            self.q.back(),
            Some(Entry::Server {
                kind: Kind::Query | Kind::Sync | Kind::Function,
                to_client: true,
                ..
            })
        )
    }

    /// Whether pgtier answers an error itself among the entries from `from` on (the client's
    /// messages after it, up to Sync, never reach the server).
    pub(crate) fn answers_error_since(&self, from: usize) -> bool {
        self.q
            .iter()
            .skip(from)
            .any(|e| matches!(e, Entry::Synthetic(Synthetic::Error(..), _)))
    }

    /// At the client's ReadyForQuery (`status`): whether it waits for a causal probe's reply
    /// (see `Causal::hold_ready`); a probe it needs now is queued here, sent by the relay.
    fn hold_ready(&mut self, status: u8) -> bool {
        let probe_next = matches!(self.q.front(), Some(Entry::Probe));
        // A COPY's end marker may still be queued: it owes nothing.
        let nothing_owed = || self.q.iter().all(|e| matches!(e, Entry::CopyEnd));
        let held = self.causal.hold_ready(status, probe_next, nothing_owed);
        if held && !probe_next {
            self.q.push_back(Entry::Probe);
        }
        held
    }

    /// Whether the next reply is to a client's message; `statement`: to its Query or Execute.
    fn client_first(&self, statement: bool) -> bool {
        matches!(
            self.q.front(),
            Some(Entry::Server {
                kind,
                to_client: true,
                ..
            }) if !statement || matches!(kind, Kind::Query | Kind::Execute)
        )
    }

    /// Whether a reply pgtier gives itself (or a COPY end marker) is next.
    fn synthetic_first(&self) -> bool {
        matches!(self.q.front(), Some(Entry::Synthetic(..) | Entry::CopyEnd))
    }

    /// Writes the synthetic replies now at the front; returns whether it wrote any.
    pub(crate) fn drain_synthetic(&mut self, out: &mut BytesMut) -> bool {
        let mut wrote = false;
        loop {
            match self.q.front() {
                Some(Entry::Synthetic(s, _)) => {
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
    fn on_message(
        &mut self,
        tag: u8,
        body: &[u8],
        registry: &mut ServerStatements,
        statements: &mut ClientStatements,
    ) -> bool {
        // Asynchronous messages can come at any time and are always the client's.
        if matches!(tag, b'N' | b'A' | b'S') {
            return true;
        }
        if let Some(Entry::Probe) = self.q.front() {
            self.causal.on_reply(tag, body);
            if tag == b'Z' {
                self.q.pop_front();
            }
            return false;
        }
        let Some(Entry::Server {
            kind,
            to_client,
            quiet,
            ..
        }) = self.q.front_mut()
        else {
            return true;
        };
        let (kind, to_client, quiet) = (*kind, *to_client, *quiet);
        if tag == b'E' {
            if kind == Kind::Query && !to_client {
                if quiet {
                    // pgtier's restore of startup values after a reset, in a transaction the
                    // client aborted: the reset is undone with it.
                    return false;
                }
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
                // A Query's or Sync's error; its ReadyForQuery follows. A failed DEALLOCATE
                // (or DISCARD ALL) leaves the client's statements as they were.
                if let Some(Entry::Server { undo, .. }) = self.q.front_mut() {
                    if let Some(u) = undo.take() {
                        u.apply(registry, statements);
                    }
                }
                return true;
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
            self.skip_to_sync(registry, statements);
            // Errors reach the client, even for pgtier's own messages: the client's later
            // messages were skipped, and this says why (unless the next message says it).
            return !quiet;
        }
        if kind.ends_with(tag) {
            self.q.pop_front();
        }
        to_client
    }

    /// After an error the server skips everything up to the next Sync: so does the queue,
    /// undoing (latest first) what routing the skipped messages did.
    fn skip_to_sync(&mut self, registry: &mut ServerStatements, statements: &mut ClientStatements) {
        let mut undo = Vec::new();
        while let Some(e) = self.q.front() {
            match e {
                Entry::Server {
                    kind: Kind::Sync, ..
                } => break,
                Entry::Server {
                    kind: Kind::Query | Kind::Function,
                    ..
                } => self.skipped_ready += 1,
                _ => {}
            }
            if let Some(Entry::Server { undo: Some(u), .. } | Entry::Synthetic(_, Some(u))) =
                self.q.pop_front()
            {
                undo.push(u);
            }
        }
        for u in undo.into_iter().rev() {
            u.apply(registry, statements);
        }
    }
}

#[cfg(test)]
mod tests;
