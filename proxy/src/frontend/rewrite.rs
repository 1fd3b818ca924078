//! Routing client bytes to the server: whole messages are checked and forwarded (zero-copy when
//! nothing changes), named statements are renamed to their pgtier server-side names and
//! prepared on this server connection first when it lacks them, and every message that owes a
//! reply is recorded in the expectations queue. CopyData may stream through in pieces.

use std::sync::Arc;

use bytes::BytesMut;

use super::batch::Batch;
use super::extra_sets::{extra_update, followed_set};
use super::prepared::{ClientStatements, FollowedSet, Prepared};
use super::responses::{Entry, Expectations, Kind, Synthetic, Undo, MAX_IN_FLIGHT};
use crate::backend::params::{lookup, tracked, ExtraParams, ParamChanges};
use crate::backend::statements::ServerStatements;
use crate::config::SessionStatePolicy;
use crate::protocol::extended;
use crate::protocol::frame::{is_frontend_tag, peek_header, FrameError};
use crate::protocol::validate::{self, Malformed};
use crate::protocol::SqlState;
use crate::router::lexer::StringSyntax;
use crate::router::session_state::{
    function_call_pins, pins_in, resets, resets_all, session_command, Resets, SessionCommand,
};

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
}

impl ClientSide<'_> {
    /// Pins the client if `sql` leaves session state on the server; under the reject policy
    /// returns the error message to answer instead.
    fn check_session_state(&mut self, sql: &[u8]) -> Option<String> {
        if self.pinned.is_some() {
            return None;
        }
        let reported = self.reported;
        let reason = pins_in(sql, self.strings, |name| {
            std::str::from_utf8(name)
                .ok()
                .and_then(tracked)
                .is_some_and(|n| lookup(reported, n).is_some())
        })
        .or_else(|| {
            // RESET ALL also resets extra parameters (and the client's unreported startup
            // values), which pgtier can only follow when it is a statement of its own outside
            // a transaction (see `extra_update`).
            ((!self.extras.is_empty() || self.startup.1) && resets_all(sql, self.strings))
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
            _ => route_one(h.tag, body, &buf[end..], unit_start, client, server),
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

/// What to do with one client message.
enum Route {
    /// Send it unchanged; it owes replies of this kind (if any), and what to undo if it fails.
    Forward(Option<Kind>, Option<Undo>),
    /// Send a Parse under the statement's server name (the client asked for it; the undo
    /// frees the client's name if it fails).
    Parse(Arc<Prepared>, Undo),
    /// Send the Bind with the statement's server name, preparing it here first if needed.
    Bind(Arc<Prepared>),
    /// Send Describe with the statement's server name, preparing it here first if needed.
    DescribeStatement(Arc<Prepared>),
    /// Send `DEALLOCATE` of the statement's server name (the client's name and statement).
    Deallocate(Box<[u8]>, Arc<Prepared>),
    /// Send a Parse of the client's unnamed statement (reply dropped), then the message.
    Reparse(Kind, bytes::Bytes),
    /// Send, instead of the client's query, one that fails with this message (0A000): the
    /// server then aborts a transaction and answers ReadyForQuery exactly as for any error.
    Reject(String),
    /// Send, instead of the client's extended-protocol message, an unnamed statement that fails
    /// with this error: Postgres then aborts a transaction block and skips to Sync exactly as
    /// for its own error (an error pgtier answered alone would leave the transaction open).
    Fail(SqlState, String),
    /// Send nothing; pgtier answers in order (the undo applies if the server skips it).
    Synthetic(Synthetic, Option<Undo>),
}

impl Route {
    /// Writes what replaces the client's message and records the replies it owes.
    fn write(self, body: &[u8], out: &mut BytesMut, server: &mut ServerSide<'_>) {
        let reply = Entry::client;
        match self {
            Route::Forward(..) => unreachable!("forwarded messages are not rewritten"),
            Route::Parse(stmt, undo) => prepare(&stmt, out, server, Some(undo)),
            Route::Bind(stmt) => {
                let b = extended::bind(body).expect("checked when routed");
                ensure_prepared(&stmt, out, server);
                extended::write_bind(out, b.portal, stmt.server_name.as_bytes(), b.rest);
                server
                    .expect
                    .push(reply(Kind::Bind).with(Some(stmt.server_name.clone()), None));
            }
            Route::DescribeStatement(stmt) => {
                ensure_prepared(&stmt, out, server);
                extended::write_target(out, b'D', b'S', stmt.server_name.as_bytes());
                server.expect.push(reply(Kind::DescribeStatement));
            }
            Route::Reparse(kind, rest) => {
                extended::write_parse(out, b"", &rest);
                server.expect.push(Entry::own(Kind::Parse));
                out.extend_from_slice(&body_frame_tag(kind));
                out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
                out.extend_from_slice(body);
                server.expect.push(reply(kind));
            }
            Route::Deallocate(name, stmt) => {
                let server_name = stmt.server_name.clone();
                if !server.registry.touch(&server_name) {
                    // Not prepared here: a placeholder under its name lets the server answer
                    // the DEALLOCATE as Postgres would (the client's text might not even
                    // parse). Only an aborted transaction makes these fail, and then the
                    // DEALLOCATE gives Postgres' answer (25P02): their errors are dropped, and
                    // pgtier's Sync ends the skipping they cause.
                    extended::write_target(out, b'C', b'S', server_name.as_bytes());
                    server.expect.push(Entry::own(Kind::Close).quietly());
                    extended::write_parse(out, server_name.as_bytes(), b"SELECT NULL\0\0\0");
                    server.expect.push(Entry::own(Kind::Parse).quietly());
                    out.extend_from_slice(b"S\0\0\0\x04");
                    server.expect.push(Entry::own(Kind::Sync));
                }
                let sql = format!("DEALLOCATE \"{server_name}\"\0");
                out.extend_from_slice(b"Q");
                out.extend_from_slice(&(sql.len() as u32 + 4).to_be_bytes());
                out.extend_from_slice(sql.as_bytes());
                server.registry.remove(&server_name);
                // If it fails (an aborted transaction), the client keeps the statement.
                let undo = Undo::ClientClose(name, stmt);
                server
                    .expect
                    .push(reply(Kind::Query).with(None, Some(undo)));
            }
            Route::Reject(message) => {
                let sql = format!(
                    "DO $pgtier$ BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = '{}'; END $pgtier$\0",
                    message.replace('\'', "''")
                );
                out.extend_from_slice(b"Q");
                out.extend_from_slice(&(sql.len() as u32 + 4).to_be_bytes());
                out.extend_from_slice(sql.as_bytes());
                server.expect.push(reply(Kind::Query));
            }
            Route::Fail(code, message) => {
                let sql = format!(
                    "DO $pgtier$ BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = '{}'; END $pgtier$\0\0\0",
                    message.replace('\'', "''")
                );
                // It replaces the unnamed statement and portal here, which the error ends
                // anyway; the client's unnamed statement is parsed again at its next use.
                extended::write_parse(out, b"", sql.as_bytes());
                server.expect.push(Entry::own(Kind::Parse));
                extended::write_bind(out, b"", b"", b"\0\0\0\0\0\0");
                server.expect.push(Entry::own(Kind::Bind));
                out.extend_from_slice(b"E\0\0\0\x09\0\0\0\0\0");
                // Own replies are dropped, but errors go through: the client sees this one.
                server.expect.push(Entry::own(Kind::Execute));
                *server.unnamed_here = false;
            }
            Route::Synthetic(s, undo) => server.expect.push(Entry::Synthetic(s, undo)),
        }
    }
}

/// Routes one client message; `after` is what the client sent after it, `unit_start` says it
/// begins a unit (nothing unsynced before it).
fn route_one(
    tag: u8,
    body: &[u8],
    after: &[u8],
    unit_start: bool,
    client: &mut ClientSide<'_>,
    server: &mut ServerSide<'_>,
) -> Route {
    let plain = |k| Route::Forward(Some(k), None);
    match tag {
        b'Q' => {
            // A simple Query destroys the unnamed statement (also pgtier's replacements).
            client.statements.set_unnamed(None);
            *server.unnamed_here = false;
            let sql = body.strip_suffix(b"\0").unwrap_or(body);
            match extra_update(sql, client, server.expect, unit_start) {
                Some(update) => server.expect.param_update = Some(update),
                None => {
                    if let Some(message) = client.check_session_state(sql) {
                        return Route::Reject(message);
                    }
                }
            }
            client.note_resets(sql, server.expect);
            match session_command(sql) {
                // The client's own protocol-level statement: drop it on the server (see
                // Route::Deallocate); if that fails the client keeps it, as in Postgres.
                Some(SessionCommand::Deallocate(name)) => match client.statements.remove(name) {
                    Some(stmt) => Route::Deallocate(name.into(), stmt),
                    None => plain(Kind::Query),
                },
                // These drop every statement on the server, which pgtier notices from the
                // command tag; the client's own names are forgotten here (and come back if
                // the server does not run it, e.g. DISCARD ALL inside a transaction block).
                Some(SessionCommand::DeallocateAll | SessionCommand::DiscardAll) => {
                    let saved = client.statements.take_all();
                    Route::Forward(Some(Kind::Query), Some(Undo::ClientClear(saved)))
                }
                None => plain(Kind::Query),
            }
        }
        b'S' => plain(Kind::Sync),
        b'F' => {
            // A fastpath call of a built-in that leaves session state pins like its SQL call.
            let oid = body.first_chunk().map(|b| u32::from_be_bytes(*b));
            if let Some(reason) = oid.and_then(function_call_pins) {
                if let Some(message) = client.pin_for(reason) {
                    return Route::Reject(message);
                }
            }
            plain(Kind::Function)
        }
        b'E' => plain(Kind::Execute),
        b'P' => match extended::parse(body) {
            Some(p) => {
                if p.name.is_empty() && unit_start {
                    if let Some(update) = followed_set(p.rest, after, client, server.expect) {
                        server.expect.param_update = Some(update);
                        client.statements.set_unnamed(Some(p.rest));
                        client.statements.mark_unnamed_set(FollowedSet::BindPending);
                        *server.unnamed_here = true;
                        return plain(Kind::Parse);
                    }
                }
                if let Some(message) = client.check_session_state(p.rest) {
                    *client.discard = true;
                    return Route::Synthetic(
                        Synthetic::Error(SqlState::FEATURE_NOT_SUPPORTED, message),
                        None,
                    );
                }
                if p.name.is_empty() {
                    // Replacing a followed SET: if this Parse is skipped (an earlier error in
                    // the pipeline), the SET stays the unnamed statement, and re-running it
                    // must still pin.
                    let undo = (client.statements.unnamed_set() != FollowedSet::No)
                        .then(|| unnamed_undo(client.statements));
                    client.statements.set_unnamed(Some(p.rest));
                    *server.unnamed_here = true;
                    Route::Forward(Some(Kind::Parse), undo)
                } else {
                    route_parse(p, client, server)
                }
            }
            None => plain(Kind::Parse),
        },
        b'B' => match extended::bind(body) {
            Some(b) if b.statement.is_empty() => {
                if let Some(rejected) = rebind_followed_set(client) {
                    return rejected;
                }
                if let Some(rest) = client.statements.unnamed().filter(|_| client.startup.0) {
                    client.note_bound_resets(rest, server.expect);
                }
                unnamed(Kind::Bind, client, server)
            }
            Some(b) => match client.statements.get(b.statement) {
                Some(stmt) => {
                    if client.startup.0 {
                        client.note_bound_resets(&stmt.rest, server.expect);
                    }
                    Route::Bind(stmt.clone())
                }
                None => plain(Kind::Bind),
            },
            None => plain(Kind::Bind),
        },
        b'D' => match extended::target(body) {
            Some((b'S', b"")) => unnamed(Kind::DescribeStatement, client, server),
            Some((b'S', name)) => match client.statements.get(name) {
                Some(stmt) => Route::DescribeStatement(stmt.clone()),
                None => plain(Kind::DescribeStatement),
            },
            _ => plain(Kind::DescribePortal),
        },
        b'C' => match extended::target(body) {
            // Closing a named statement only forgets the client's name: the server-side
            // statement may be shared, and closing an unknown name is not an error. Skipped
            // after an error in the pipeline, it leaves the statement, as in Postgres.
            Some((b'S', name)) if !name.is_empty() => {
                let undo = client
                    .statements
                    .remove(name)
                    .map(|stmt| Undo::ClientClose(name.into(), stmt));
                Route::Synthetic(Synthetic::CloseComplete, undo)
            }
            // The unnamed statement is gone on this server, so the client has none (a Bind
            // gets 26000, not a re-parse elsewhere); back if the Close is skipped.
            Some((b'S', _)) => {
                let undo = unnamed_undo(client.statements);
                client.statements.set_unnamed(None);
                *server.unnamed_here = false;
                Route::Forward(Some(Kind::Close), Some(undo))
            }
            _ => plain(Kind::Close),
        },
        // Flush and COPY messages owe no reply of their own.
        _ => Route::Forward(None, None),
    }
}

/// A Bind or Describe of the client's unnamed statement: if it was parsed on another server
/// connection, pgtier parses it here first; if the client has none, the answer is Postgres'
/// 26000 (never another client's unnamed statement).
fn unnamed(kind: Kind, client: &mut ClientSide<'_>, server: &mut ServerSide<'_>) -> Route {
    if *server.unnamed_here {
        return Route::Forward(Some(kind), None);
    }
    match client.statements.unnamed() {
        Some(rest) => {
            *server.unnamed_here = true;
            Route::Reparse(kind, bytes::Bytes::copy_from_slice(rest))
        }
        None => {
            *client.discard = true;
            Route::Synthetic(
                Synthetic::Error(
                    SqlState::INVALID_SQL_STATEMENT_NAME,
                    "unnamed prepared statement does not exist".into(),
                ),
                None,
            )
        }
    }
}

fn route_parse(
    p: extended::Parse<'_>,
    client: &mut ClientSide<'_>,
    server: &mut ServerSide<'_>,
) -> Route {
    if client.statements.contains(p.name) {
        *client.discard = true;
        let name = String::from_utf8_lossy(p.name);
        return Route::Synthetic(
            Synthetic::Error(
                SqlState::DUPLICATE_PREPARED_STATEMENT,
                format!("prepared statement \"{name}\" already exists"),
            ),
            None,
        );
    }
    let stmt = match client
        .statements
        .insert(p.name, p.rest, client.prepared_bytes)
    {
        Ok(stmt) => stmt,
        // Refused as Postgres refuses a Parse: an error (raised by the server, so that a
        // transaction block is aborted too), then the unit is skipped to Sync.
        Err(e) => {
            *client.discard = true;
            return Route::Fail(e.sqlstate(), e.to_string());
        }
    };
    // The name is the client's from now on for routing what follows in the pipeline; if the
    // Parse fails (or is skipped after an earlier error) it is free again, as in Postgres.
    if server.registry.touch(&stmt.server_name) {
        let undo = Undo::ClientParse(p.name.into(), stmt);
        return Route::Synthetic(Synthetic::ParseComplete, Some(undo));
    }
    Route::Parse(stmt.clone(), Undo::ClientPrepare(p.name.into(), stmt))
}

/// What puts the client's unnamed statement back as it is now (if replacing or closing it
/// fails or is skipped).
fn unnamed_undo(statements: &ClientStatements) -> Undo {
    Undo::Unnamed(
        statements.unnamed().map(Box::from),
        statements.unnamed_set(),
    )
}

/// A Bind of the unnamed statement when that is a SET pgtier followed: its own Bind passes; a
/// later one would run it again unseen, so it goes through the pinning check (under the reject
/// policy, the answer is the error).
fn rebind_followed_set(client: &mut ClientSide<'_>) -> Option<Route> {
    match client.statements.unnamed_set() {
        FollowedSet::No => None,
        FollowedSet::BindPending => {
            client.statements.mark_unnamed_set(FollowedSet::Bound);
            None
        }
        FollowedSet::Bound => {
            let sql = client.statements.unnamed().map(<[u8]>::to_vec)?;
            let message = client.check_session_state(&sql)?;
            *client.discard = true;
            Some(Route::Synthetic(
                Synthetic::Error(SqlState::FEATURE_NOT_SUPPORTED, message),
                None,
            ))
        }
    }
}

/// The message type byte of a Bind or Describe being re-sent.
fn body_frame_tag(kind: Kind) -> [u8; 1] {
    match kind {
        Kind::Bind => [b'B'],
        _ => [b'D'],
    }
}

/// Closes a pgtier statement on the server (the CloseComplete is pgtier's).
fn close_on_server(
    name: &str,
    out: &mut BytesMut,
    server: &mut ServerSide<'_>,
    undo: Option<Undo>,
) {
    extended::write_target(out, b'C', b'S', name.as_bytes());
    server.expect.push(Entry::own(Kind::Close).with(None, undo));
}

/// Prepares `stmt` on this server if it is not there yet (the reply is pgtier's).
fn ensure_prepared(stmt: &Prepared, out: &mut BytesMut, server: &mut ServerSide<'_>) {
    if !server.registry.touch(&stmt.server_name) {
        prepare(stmt, out, server, None);
    }
}

/// Writes a Parse for `stmt` under its server name (the client's Parse when `client` says
/// what to undo if it fails), evicting the least recently used statements if the registry is
/// full.
fn prepare(stmt: &Prepared, out: &mut BytesMut, server: &mut ServerSide<'_>, client: Option<Undo>) {
    // The server may have the name although the registry does not (an evicting Close that
    // was skipped after an error, a statement gone stale): closing a name that does not exist
    // is no error, so the Parse can never fail with 42P05.
    close_on_server(&stmt.server_name, out, server, None);
    for victim in server.registry.insert(stmt.server_name.clone()) {
        // If this Close is skipped the statement is still there: the registry takes it back.
        close_on_server(&victim, out, server, Some(Undo::Evict(victim.clone())));
    }
    extended::write_parse(out, stmt.server_name.as_bytes(), &stmt.rest);
    let entry = match client {
        Some(undo) => Entry::client(Kind::Parse).with(None, Some(undo)),
        None => {
            let undo = Undo::Prepare(stmt.server_name.clone());
            Entry::own(Kind::Parse).with(None, Some(undo))
        }
    };
    server.expect.push(entry);
}

#[cfg(test)]
#[path = "rewrite_tests.rs"]
mod tests;
