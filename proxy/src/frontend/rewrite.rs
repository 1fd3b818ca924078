//! Routing client bytes to the server: whole messages are checked and forwarded (zero-copy when
//! nothing changes), named statements are renamed to their pgtier server-side names and
//! prepared on this server connection first when it lacks them, and every message that owes a
//! reply is recorded in the expectations queue. CopyData may stream through in pieces.

use std::sync::Arc;

use bytes::BytesMut;

use super::batch::Batch;
use super::prepared::{ClientStatements, Prepared, MAX_PER_CLIENT};
use super::responses::{Entry, Expectations, Kind, Synthetic, MAX_IN_FLIGHT};
use crate::backend::params::{lookup, tracked};
use crate::backend::statements::ServerStatements;
use crate::config::SessionStatePolicy;
use crate::protocol::extended;
use crate::protocol::frame::{is_frontend_tag, peek_header, FrameError};
use crate::protocol::SqlState;
use crate::router::session_state::{pins, session_command, SessionCommand};

/// A client protocol violation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A bad or oversized frame.
    Frame(FrameError),
    /// A message type clients may not send.
    UnknownType(u8),
    /// More unanswered messages than pgtier tracks.
    TooManyInFlight,
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
}

impl ClientSide<'_> {
    /// Pins the client if `sql` leaves session state on the server; under the reject policy
    /// returns the error message to answer instead.
    fn check_session_state(&mut self, sql: &[u8]) -> Option<String> {
        if self.pinned.is_some() {
            return None;
        }
        let reported = self.reported;
        let reason = pins(sql, |name| {
            std::str::from_utf8(name)
                .ok()
                .and_then(tracked)
                .is_some_and(|n| lookup(reported, n).is_some())
        })?;
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
        if *client.discard {
            if h.tag == b'S' {
                *client.discard = false;
            } else {
                batch.drop_range(pos, end);
                pos = end;
                continue;
            }
        }
        match h.tag {
            b'S' => server.expect.unsynced = false,
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => server.expect.unsynced = true,
            _ => {}
        }
        // During an extended-protocol COPY FROM STDIN Postgres ignores Sync and Flush.
        let route = match h.tag {
            b'S' | b'H' if server.expect.copy_in => Route::Forward(None),
            b'c' | b'f' => {
                server.expect.copy_in = false;
                server.expect.push(Entry::CopyEnd);
                Route::Forward(None)
            }
            _ => route_one(h.tag, body, client, server),
        };
        match route {
            Route::Forward(kind) => {
                if let Some(kind) = kind {
                    if matches!(kind, Kind::Query | Kind::Sync | Kind::Function) {
                        scan.syncs += 1;
                    }
                    server.expect.push(Entry::Server {
                        kind,
                        to_client: true,
                        statement: None,
                    });
                }
            }
            replace => {
                // A DEALLOCATE sent in place of the client's is a Query: it owes ReadyForQuery.
                scan.syncs += u32::from(matches!(replace, Route::Deallocate(_) | Route::Reject(_)));
                batch.drop_range(pos, end);
                batch.insert(end, |out| replace.write(body, out, server));
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
    /// Send it unchanged; it owes replies of this kind (if any).
    Forward(Option<Kind>),
    /// Send a Parse under the statement's server name (the client asked for it).
    Parse(Arc<Prepared>),
    /// Send the Bind with the statement's server name, preparing it here first if needed.
    Bind(Arc<Prepared>),
    /// Send Describe with the statement's server name, preparing it here first if needed.
    DescribeStatement(Arc<Prepared>),
    /// Send `DEALLOCATE` of the statement's server name (preparing it here first if needed).
    Deallocate(Arc<Prepared>),
    /// Send a Parse of the client's unnamed statement (reply dropped), then the message.
    Reparse(Kind, bytes::Bytes),
    /// Send, instead of the client's query, one that fails with this message (0A000): the
    /// server then aborts a transaction and answers ReadyForQuery exactly as for any error.
    Reject(String),
    /// Send nothing; pgtier answers in order.
    Synthetic(Synthetic),
}

impl Route {
    /// Writes what replaces the client's message and records the replies it owes.
    fn write(self, body: &[u8], out: &mut BytesMut, server: &mut ServerSide<'_>) {
        let reply = |kind| Entry::Server {
            kind,
            to_client: true,
            statement: None,
        };
        match self {
            Route::Forward(_) => unreachable!("forwarded messages are not rewritten"),
            Route::Parse(stmt) => prepare(&stmt, out, server, true),
            Route::Bind(stmt) => {
                let b = extended::bind(body).expect("checked when routed");
                ensure_prepared(&stmt, out, server);
                extended::write_bind(out, b.portal, stmt.server_name.as_bytes(), b.rest);
                server.expect.push(Entry::Server {
                    kind: Kind::Bind,
                    to_client: true,
                    statement: Some(stmt.server_name.clone()),
                });
            }
            Route::DescribeStatement(stmt) => {
                ensure_prepared(&stmt, out, server);
                extended::write_target(out, b'D', b'S', stmt.server_name.as_bytes());
                server.expect.push(reply(Kind::DescribeStatement));
            }
            Route::Reparse(kind, rest) => {
                extended::write_parse(out, b"", &rest);
                server.expect.push(Entry::Server {
                    kind: Kind::Parse,
                    to_client: false,
                    statement: None,
                });
                out.extend_from_slice(&body_frame_tag(kind));
                out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
                out.extend_from_slice(body);
                server.expect.push(reply(kind));
            }
            Route::Deallocate(stmt) => {
                ensure_prepared(&stmt, out, server);
                let sql = format!("DEALLOCATE \"{}\"\0", stmt.server_name);
                out.extend_from_slice(b"Q");
                out.extend_from_slice(&(sql.len() as u32 + 4).to_be_bytes());
                out.extend_from_slice(sql.as_bytes());
                server.registry.remove(&stmt.server_name);
                server.expect.push(reply(Kind::Query));
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
            Route::Synthetic(s) => server.expect.push(Entry::Synthetic(s)),
        }
    }
}

fn route_one(
    tag: u8,
    body: &[u8],
    client: &mut ClientSide<'_>,
    server: &mut ServerSide<'_>,
) -> Route {
    let plain = |k| Route::Forward(Some(k));
    match tag {
        b'Q' => {
            // A simple Query destroys the unnamed statement (also pgtier's replacements).
            client.statements.set_unnamed(None);
            *server.unnamed_here = false;
            let sql = body.strip_suffix(b"\0").unwrap_or(body);
            if let Some(message) = client.check_session_state(sql) {
                return Route::Reject(message);
            }
            match session_command(sql) {
                // The client's own protocol-level statement: drop it where it is prepared (it
                // is prepared here first, so the server answers DEALLOCATE as Postgres would).
                Some(SessionCommand::Deallocate(name)) => match client.statements.get(name) {
                    Some(stmt) => {
                        let stmt = stmt.clone();
                        client.statements.remove(name);
                        Route::Deallocate(stmt)
                    }
                    None => plain(Kind::Query),
                },
                // These drop every statement on the server, which pgtier notices from the
                // command tag; the client's own names are forgotten here.
                Some(SessionCommand::DeallocateAll | SessionCommand::DiscardAll) => {
                    client.statements.clear();
                    plain(Kind::Query)
                }
                None => plain(Kind::Query),
            }
        }
        b'S' => plain(Kind::Sync),
        b'F' => plain(Kind::Function),
        b'E' => plain(Kind::Execute),
        b'P' => match extended::parse(body) {
            Some(p) => {
                if let Some(message) = client.check_session_state(p.rest) {
                    *client.discard = true;
                    return Route::Synthetic(Synthetic::Error(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        message,
                    ));
                }
                if p.name.is_empty() {
                    client.statements.set_unnamed(Some(p.rest));
                    *server.unnamed_here = true;
                    plain(Kind::Parse)
                } else {
                    route_parse(p, client, server)
                }
            }
            None => plain(Kind::Parse),
        },
        b'B' => match extended::bind(body) {
            Some(b) if b.statement.is_empty() => unnamed(Kind::Bind, client, server),
            Some(b) => match client.statements.get(b.statement) {
                Some(stmt) => Route::Bind(stmt.clone()),
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
            // statement may be shared, and closing an unknown name is not an error.
            Some((b'S', name)) if !name.is_empty() => {
                client.statements.remove(name);
                Route::Synthetic(Synthetic::CloseComplete)
            }
            _ => plain(Kind::Close),
        },
        // Flush and COPY messages owe no reply of their own.
        _ => Route::Forward(None),
    }
}

/// A Bind or Describe of the client's unnamed statement: if it was parsed on another server
/// connection, pgtier parses it here first; if the client has none, the answer is Postgres'
/// 26000 (never another client's unnamed statement).
fn unnamed(kind: Kind, client: &mut ClientSide<'_>, server: &mut ServerSide<'_>) -> Route {
    if *server.unnamed_here {
        return Route::Forward(Some(kind));
    }
    match client.statements.unnamed() {
        Some(rest) => {
            *server.unnamed_here = true;
            Route::Reparse(kind, bytes::Bytes::copy_from_slice(rest))
        }
        None => {
            *client.discard = true;
            Route::Synthetic(Synthetic::Error(
                SqlState::INVALID_SQL_STATEMENT_NAME,
                "unnamed prepared statement does not exist".into(),
            ))
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
        return Route::Synthetic(Synthetic::Error(
            SqlState::DUPLICATE_PREPARED_STATEMENT,
            format!("prepared statement \"{name}\" already exists"),
        ));
    }
    let stmt = Arc::new(Prepared::new(p.rest));
    if !client.statements.insert(p.name, stmt.clone()) {
        *client.discard = true;
        return Route::Synthetic(Synthetic::Error(
            SqlState::PROGRAM_LIMIT_EXCEEDED,
            format!("pgtier: too many prepared statements for one client (limit {MAX_PER_CLIENT})"),
        ));
    }
    if server.registry.touch(&stmt.server_name) {
        return Route::Synthetic(Synthetic::ParseComplete);
    }
    Route::Parse(stmt)
}

/// The message type byte of a Bind or Describe being re-sent.
fn body_frame_tag(kind: Kind) -> [u8; 1] {
    match kind {
        Kind::Bind => [b'B'],
        _ => [b'D'],
    }
}

/// Closes a pgtier statement on the server (the CloseComplete is pgtier's).
fn close_on_server(name: &str, out: &mut BytesMut, server: &mut ServerSide<'_>) {
    extended::write_target(out, b'C', b'S', name.as_bytes());
    server.expect.push(Entry::Server {
        kind: Kind::Close,
        to_client: false,
        statement: None,
    });
}

/// Prepares `stmt` on this server if it is not there yet (the reply is pgtier's).
fn ensure_prepared(stmt: &Prepared, out: &mut BytesMut, server: &mut ServerSide<'_>) {
    if !server.registry.touch(&stmt.server_name) {
        prepare(stmt, out, server, false);
    }
}

/// Writes a Parse for `stmt` under its server name, evicting the least recently used
/// statement if the registry is full.
fn prepare(stmt: &Prepared, out: &mut BytesMut, server: &mut ServerSide<'_>, to_client: bool) {
    if server.registry.take_stale(&stmt.server_name) {
        close_on_server(&stmt.server_name, out, server);
    }
    if let Some(victim) = server.registry.insert(stmt.server_name.clone()) {
        close_on_server(&victim, out, server);
    }
    extended::write_parse(out, stmt.server_name.as_bytes(), &stmt.rest);
    server.expect.push(Entry::Server {
        kind: Kind::Parse,
        to_client,
        statement: Some(stmt.server_name.clone()),
    });
}

#[cfg(test)]
#[path = "rewrite_tests.rs"]
mod tests;
