//! The route of one client message: forwarded as is, renamed to its server-side statement
//! (prepared here first if this server lacks it), answered by pgtier, or refused.

use std::sync::Arc;

use bytes::BytesMut;

use crate::prepared::client::{ClientStatements, FollowedSet, Prepared};
use crate::protocol::{extended, SqlState};
use crate::sql::session_commands::{session_command, SessionCommand};
use crate::sql::session_state::function_call_pins;

use super::super::extra_sets::{extra_update, followed_set};
use super::super::responses::{Entry, Kind, Synthetic, Undo};
use super::{ClientSide, ServerSide};

/// What to do with one client message.
pub(super) enum Route {
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
    pub(super) fn write(self, body: &[u8], out: &mut BytesMut, server: &mut ServerSide<'_>) {
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

/// Routes one client message; `after` is what the client sent after it. `unit_start` says it
/// begins a unit (nothing unsynced before it), `analysed` that its unit's analysis found
/// nothing in it that pins.
pub(super) fn route_one(
    tag: u8,
    body: &[u8],
    after: &[u8],
    (unit_start, analysed): (bool, bool),
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
                    if let Some(message) = client.check_session_state(sql, analysed) {
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
                if let Some(message) = client.check_session_state(p.rest, analysed) {
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
            let message = client.check_session_state(&sql, false)?;
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
