//! Routing client bytes to the server: whole messages are checked and forwarded (zero-copy when
//! nothing changes), named statements are renamed to their pgtier server-side names and
//! prepared on this server connection first when it lacks them, and every message that owes a
//! reply is recorded in the expectations queue. CopyData may stream through in pieces.
//!
//! - `message`: the route of one client message (what it becomes on this server).

use bytes::BytesMut;

use crate::backend::params::{lookup, tracked, ExtraParams, ParamChanges};
use crate::config::SessionStatePolicy;
use crate::prepared::client::ClientStatements;
use crate::prepared::server::ServerStatements;
use crate::protocol::extended;
use crate::protocol::frame::{is_frontend_tag, peek_header, FrameError};
use crate::protocol::validate::{self, Malformed};
use crate::sql::lexer::StringSyntax;
use crate::sql::session_commands::{resets, resets_all, Resets};
use crate::sql::session_state::pins_in;

use super::batch::Batch;
use super::responses::{Entry, Expectations, Kind, MAX_IN_FLIGHT};

mod message;

use message::{route_one, Route};

/// A client protocol violation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A bad or oversized frame.
    Frame(FrameError),
    /// A message type clients may not send.
    UnknownType(u8),
    /// More unanswered messages than pgtier tracks.
    TooManyInFlight,
    /// A message whose fields do not fill its length exactly (or a fixed one of another
    /// length): refused before a server sees it.
    Malformed(Malformed),
}

/// What routing one batch of client bytes produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ClientScan {
    /// Bytes of the input consumed.
    pub consumed: usize,
    /// Whether `out` holds what to send (else send `input[..consumed]` as is).
    pub copied: bool,
    /// Messages forwarded that each owe a ReadyForQuery (Query, Sync, FunctionCall).
    pub syncs: u32,
    /// Terminate was found at `consumed` (it is not forwarded).
    pub terminate: bool,
}

/// Per-client state the routing needs.
pub(crate) struct ClientSide<'a> {
    /// The client's named statements.
    pub statements: &'a mut ClientStatements,
    /// After pgtier answered an error itself, messages are discarded up to Sync, as the server
    /// would after its own error.
    pub discard: &'a mut bool,
    /// Bytes of a CopyData message still streaming through.
    pub copy_left: &'a mut usize,
    /// Why the client is pinned to its server, once a statement left state there.
    pub pinned: &'a mut Option<&'static str>,
    /// Parameters the server reports (changes to those are synced, not pinned).
    pub reported: &'a [(String, String)],
    /// Pin the client, or reject the statement.
    pub policy: SessionStatePolicy,
    /// How the client's plain string literals read (its standard_conforming_strings).
    pub strings: StringSyntax,
    /// Parameters tracked per client although not reported (`track_extra_params`).
    pub extras: ExtraParams,
    /// The client is inside a transaction block (the last ReadyForQuery was not idle).
    pub in_transaction: bool,
    /// Bytes the client's named statements may take (`max_prepared_statement_bytes_per_client`).
    pub prepared_bytes: usize,
    /// The client's parameters, with its startup values (what its RESETs restore).
    pub params: &'a ParamChanges,
    /// [`ParamChanges::has_startup`] of `params`: (any startup values, unreported ones).
    pub startup: (bool, bool),
    /// Bytes at the front of the batch in units whose analysis found nothing that pins: their
    /// Query and Parse texts are not lexed for session state again.
    pub unpinned: usize,
}

impl ClientSide<'_> {
    /// Pins the client if `sql` leaves session state on the server; under the reject policy
    /// returns the error message to answer instead.
    /// `analysed`: the unit's analysis already found that `sql` does not pin.
    fn check_session_state(&mut self, sql: &[u8], analysed: bool) -> Option<String> {
        if self.pinned.is_some() {
            return None;
        }
        let reported = self.reported;
        let pins = || {
            pins_in(sql, self.strings, |name| {
                std::str::from_utf8(name)
                    .ok()
                    .and_then(tracked)
                    .is_some_and(|n| lookup(reported, n).is_some())
            })
        };
        let reason = (if analysed { None } else { pins() }).or_else(|| {
            // RESET ALL also resets extra parameters (and the client's unreported startup
            // values), which pgtier can only follow when it is a statement of its own outside
            // a transaction (see `extra_update`).
            // A client that set no extra has the servers' defaults on record: RESET ALL
            // changes nothing pgtier tracks for it.
            ((self.params.has_extras() || self.startup.1) && resets_all(sql, self.strings))
                .then_some("RESET ALL of tracked extra parameters inside a transaction")
        })?;
        self.pin_for(reason)
    }

    /// [`ClientSide::note_resets`] for the statement a Bind runs (`rest`: its Parse body
    /// after the name).
    fn note_bound_resets(&self, rest: &[u8], expect: &mut Expectations) {
        if let Some((sql, _)) = extended::split_cstr(rest) {
            self.note_resets(sql, expect);
        }
    }

    /// Notes, for a client with startup values, the statements that set those again after
    /// `sql` (a Query, or the statement of a Bind) reset some of them on the server.
    fn note_resets(&self, sql: &[u8], expect: &mut Expectations) {
        if !self.startup.0 {
            return;
        }
        let restore = match resets(sql, self.strings) {
            None => return,
            Some(Resets::All) => self.params.restore_sql(None),
            Some(Resets::Names(names)) => self.params.restore_sql(Some(&names)),
        };
        if let Some(sql) = restore {
            expect
                .restore
                .get_or_insert_with(String::new)
                .push_str(&sql);
        }
    }

    /// Pins the client for `reason`; under the reject policy returns the error message instead.
    fn pin_for(&mut self, reason: &'static str) -> Option<String> {
        if self.pinned.is_some() {
            return None;
        }
        match self.policy {
            SessionStatePolicy::Pin => {
                *self.pinned = Some(reason);
                None
            }
            SessionStatePolicy::Reject => Some(format!(
                "pgtier: {reason} is not allowed in transaction pooling (session_state = \"reject\")"
            )),
        }
    }
}

/// Per-server state the routing needs.
pub(crate) struct ServerSide<'a> {
    /// Statements prepared on this server connection.
    pub registry: &'a mut ServerStatements,
    /// Replies the server owes.
    pub expect: &'a mut Expectations,
    /// The client's unnamed statement is on this server connection (parsed during this run).
    pub unnamed_here: &'a mut bool,
}

/// Routes the whole messages in `buf` (see the module doc).
pub(crate) fn route_client(
    buf: &[u8],
    max: usize,
    client: &mut ClientSide<'_>,
    server: &mut ServerSide<'_>,
    out: &mut BytesMut,
) -> Result<ClientScan, Violation> {
    let mut scan = ClientScan::default();
    let mut pos = (*client.copy_left).min(buf.len());
    *client.copy_left -= pos;
    let mut batch = Batch::new(buf, out);
    // CopyData streams through in pieces, so max_message_size does not apply to it.
    let limit = |at: usize| {
        if buf.get(at) == Some(&b'd') {
            i32::MAX as usize
        } else {
            max
        }
    };
    while let Some(h) = peek_header(&buf[pos..], limit(pos)).map_err(Violation::Frame)? {
        if !is_frontend_tag(h.tag) {
            return Err(Violation::UnknownType(h.tag));
        }
        validate::check_length(h.tag, h.body_len).map_err(Violation::Malformed)?;
        if server.expect.len() > MAX_IN_FLIGHT {
            return Err(Violation::TooManyInFlight);
        }
        let end = pos + h.frame_len();
        if h.tag == b'X' {
            scan.terminate = true;
            break;
        }
        if h.tag == b'd' && end > buf.len() {
            *client.copy_left = end - buf.len();
            pos = buf.len();
            break;
        }
        if end > buf.len() {
            break;
        }
        let body = &buf[pos + 5..end];
        // No server sees a malformed message (one would close the connection, and pgtier
        // would take the client's fault for the server's).
        validate::check(h.tag, body).map_err(Violation::Malformed)?;
        if *client.discard {
            if h.tag == b'S' {
                *client.discard = false;
            } else {
                batch.drop_range(pos, end);
                pos = end;
                continue;
            }
        }
        // A message after a Sync (or none) starts a unit.
        let unit_start = !server.expect.unsynced;
        match h.tag {
            b'S' => server.expect.unsynced = false,
            // A Flush does no work: after a Sync (psycopg ends its pipelines with Sync,
            // Flush) the server is still at rest.
            b'P' | b'B' | b'D' | b'E' | b'C' => server.expect.unsynced = true,
            _ => {}
        }
        // During an extended-protocol COPY FROM STDIN Postgres ignores Sync and Flush.
        let route = match h.tag {
            b'S' | b'H' if server.expect.copy_in => Route::Forward(None, None),
            b'c' | b'f' => {
                server.expect.copy_in = false;
                server.expect.push(Entry::CopyEnd);
                Route::Forward(None, None)
            }
            _ => route_one(
                h.tag,
                body,
                &buf[end..],
                (unit_start, end <= client.unpinned),
                client,
                server,
            ),
        };
        match route {
            Route::Forward(kind, undo) => {
                if let Some(kind) = kind {
                    if matches!(kind, Kind::Query | Kind::Sync | Kind::Function) {
                        scan.syncs += 1;
                    }
                    server.expect.push(Entry::client(kind).with(None, undo));
                }
            }
            replace => {
                // A DEALLOCATE sent in place of the client's is a Query: it owes ReadyForQuery.
                scan.syncs +=
                    u32::from(matches!(replace, Route::Deallocate(..) | Route::Reject(_)));
                batch.drop_range(pos, end);
                batch.insert(end, |out| replace.write(body, out, server));
            }
        }
        // The client's startup values a Query (or the unit this Sync ends) reset on the
        // server are set again right after it, before anything else of the client's runs. A
        // failure (the transaction was aborted, so the reset is undone too) changes nothing.
        if matches!(h.tag, b'Q' | b'S') && !server.expect.copy_in {
            if let Some(sql) = server.expect.restore.take() {
                batch.insert(end, |out| {
                    out.extend_from_slice(b"Q");
                    out.extend_from_slice(&(sql.len() as u32 + 5).to_be_bytes());
                    out.extend_from_slice(sql.as_bytes());
                    out.extend_from_slice(b"\0");
                });
                server.expect.push(Entry::own(Kind::Query).quietly());
            }
        }
        pos = end;
    }
    scan.copied = batch.finish(pos);
    scan.consumed = pos;
    Ok(scan)
}

#[cfg(test)]
mod tests;
