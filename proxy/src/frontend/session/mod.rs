//! One client from accept to close: login, the welcome (ParameterStatus, BackendKeyData,
//! ReadyForQuery), then the loop that waits for a request, checks out a server (transaction
//! mode: per transaction; session mode: once) and relays.
//!
//! - `open`: from accept to a logged-in session (login, welcome, registration).
//! - `routing`: where each unit goes, server checkout (PAUSE, pool wait), the causal token.
//! - `run`: one relay run on a server and what its end means for client and server.
//! - `wait`: the idle wait for the client's next request.
//! - `recycled`: the per-request boxes of futures, their memory recycled per thread.
//! - `lane_loop`: one task that keeps idle clients and runs their fast-lane units as plain
//!   calls (one thread), handing a client to a task of its own for anything else.

mod lane_loop;
mod listen;
mod listen_extended;
mod local;
mod open;
mod recycled;
mod routing;
mod run;
mod wait;

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tracing::{error, info, warn};

use crate::backend::checkout::Serving;
use crate::backend::params::ParamChanges;
use crate::backend::pool::ServerParams;
use crate::backend::Upstream;
use crate::config::{CausalScope, PoolMode};
use crate::frontend::farewell::farewell;
use crate::frontend::relay::fast::Lane;
use crate::frontend::relay::Limits;
use crate::frontend::stream::ClientStream;
use crate::metrics::{PeerLabel, ReasonLabel};
use crate::panics::Contained;
use crate::prepared::client::{answer_parse_batch, ClientStatements};
use crate::protocol::frame::peek_header;
use crate::protocol::SqlState;
use crate::router::commands;
use crate::router::route::{ClientRouting, Router};
use crate::router::scopes::ScopeToken;
use crate::runtime::clients::ClientHandle;
use crate::runtime::{DbRuntime, OpenClient, Proxy};
use crate::shutdown::SessionWatch;
use crate::sql::lexer::StringSyntax;
use crate::write::write_all_within;
use recycled::Recycled;

pub(crate) use lane_loop::start as start_lane_loop;
pub(crate) use open::{open, LoggedIn};

/// Longest wait for the DISCARD ALL that resets a server after a session.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for a server to take a CancelRequest.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for the primary's WAL position when a write's position is unknown (the pipelined
/// probe has its own, `causal::PROBE_TIMEOUT`).
const CAUSAL_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Message for clients closed by shutdown.
const SHUTDOWN_MESSAGE: &str =
    "terminating connection due to administrator command (pgtier is shutting down)";

/// Message for clients closed by an admin KILL.
const KILL_MESSAGE: &str =
    "terminating connection due to administrator command (pgtier admin KILL of this database)";

/// How a run on one server ended.
enum Ran {
    /// The transaction is over; maybe with client bytes to route anew.
    Done(Option<BytesMut>),
    /// A read failed on a replica before anything reached the client: run these bytes (the
    /// copy kept for it) again elsewhere.
    RetryRead(BytesMut),
}

/// How serving a client ended for now.
enum Served {
    /// The client left; why (for the log).
    Left(&'static str),
    /// The client waits for its next request in the lane loop.
    Parked,
}

/// What a client the lane loop hands back to a task of its own goes on with.
enum HandedBack {
    /// Waiting for its next request.
    Wait,
    /// This request (it needs more than the fast lane).
    Request(BytesMut),
    /// This request, which pgtier answers itself (the loop found it so).
    Local(BytesMut, Box<Local>),
    /// Its idle wait ended other than with a request.
    Ended(wait::Idle),
    /// This request, whose transaction the loop began.
    Begun(BytesMut, Begun),
    /// Serving it panicked in the loop (its server was dropped, so closed).
    Panicked,
}

/// A transaction the lane loop began.
enum Begun {
    /// Routed; its checkout must wait.
    Routed(Box<routing::Routed>),
    /// Its run on a server, to end here: the lane's end, or None (the general relay runs the
    /// unit).
    Run(Box<run::Run>, Option<Lane>),
}

/// A logged-in client.
struct Session {
    stream: ClientStream,
    /// Pools of the client's (database, user), one per node.
    upstream: Arc<Upstream>,
    /// The database's router, limits, counters and admin state (shared by its clients, so
    /// an idle client's state stays small).
    runtime: Arc<DbRuntime>,
    proxy: Arc<Proxy>,
    /// The config snapshot `upstream` and `runtime` come from.
    generation: u64,
    /// The database's KILL count at login: a higher count closes the client.
    kills_seen: u64,
    /// Why the current transaction went where it went.
    reason: ReasonLabel,
    /// Routing state: override, causal token, borrowed token.
    routing: ClientRouting,
    /// A write transaction's WAL position could not be read: the next read needs it first.
    causal_unknown: bool,
    /// The client's registry entry and cancel key.
    client: ClientHandle,
    /// Counts the client against `max_client_conn` until the session ends.
    _open: OpenClient,
    /// The client's named prepared statements.
    statements: ClientStatements,
    /// The client's tracked parameters, as changes from `defaults`.
    params: ParamChanges,
    /// The pool's default parameter values.
    defaults: ServerParams,
    /// How string literals read under `defaults` (looked up once, not per unit).
    default_strings: StringSyntax,
    /// Why the client holds its server until it disconnects (session state on it), if it does.
    pinned: Option<&'static str>,
    /// The token shared with the clients of the same causal scope (None: `connection`).
    scope: Option<Arc<ScopeToken>>,
    /// Which scope that is (an `application_name` scope follows the client's SETs).
    scope_kind: CausalScope,
    /// The user, when `auth_query` found it (not in the config: it stays across reloads).
    looked_up: Option<Arc<crate::config::User>>,
    /// The channels pgtier listens on for the client (transaction mode), and its mailbox.
    listening: Option<Box<crate::notify::Listening>>,
    /// LISTEN/UNLISTEN statements the client prepared (answered by pgtier, see `listen`).
    listen_statements: Option<Box<listen_extended::ListenStatements>>,
    shutdown: SessionWatch,
}

/// Why a session ended when serving it panicked.
const PANICKED: &str = "internal error";

impl Session {
    /// Serves the client until it leaves, or until it waits in the lane loop (which hands it
    /// back to a task of its own with `back`: what to go on with).
    /// Boxed, with its held server boxed: an async fn keeps its arguments twice in its state
    /// (as captured and as moved in), and this state is every idle client's task.
    /// A panic in serving is contained here: the server it held was dropped with it (closed,
    /// never returned), and the client gets XX000 before it is closed.
    async fn run(mut self: Box<Self>, held: Option<Box<Serving>>, back: Option<Box<HandedBack>>) {
        // Only a flag lives across the close below: this state is every idle client's task.
        let reason = {
            let served = Contained(pin!(self.serve(held, back))).await;
            match served {
                Ok(Served::Left(reason)) => reason,
                Ok(Served::Parked) => {
                    lane_loop::park(self);
                    return;
                }
                Err(panic) => {
                    error!(peer = %self.client.entry.peer, user = %self.user(), database = %self.database(), panic, "internal error while serving a client: client closed, its server connection closed");
                    PANICKED
                }
            }
        };
        if reason == PANICKED {
            Box::pin(self.close(
                SqlState::INTERNAL_ERROR,
                "pgtier: internal error; the connection is closed (see pgtier's log)",
            ))
            .await;
        }
        info!(peer = %self.client.entry.peer, user = %self.user(), database = %self.database(), reason, "client disconnected");
    }

    /// Runs until the client leaves (returns why, for the log) or may wait in the lane loop.
    async fn serve(
        &mut self,
        mut held: Option<Box<Serving>>,
        back: Option<Box<HandedBack>>,
    ) -> Served {
        // Client bytes a relay handed back (a unit that needs another server).
        // Boxed: it is a local of every idle client's task, and rarely used.
        let mut pending: Option<Box<BytesMut>> = None;
        if let Some(back) = back {
            match *back {
                HandedBack::Wait => {}
                HandedBack::Request(first) => pending = Some(Box::new(first)),
                HandedBack::Local(first, local) => {
                    match Box::pin(self.answer_local(first, *local)).await {
                        Ok(rest) => pending = rest.map(Box::new),
                        Err(reason) => return Served::Left(reason),
                    }
                }
                HandedBack::Ended(end) => return Served::Left(self.end_idle(end).await),
                HandedBack::Panicked => return Served::Left(PANICKED),
                HandedBack::Begun(first, begun) => {
                    match Recycled::new(|| self.transaction(first, None, Some(begun))).await {
                        Ok(leftover) => pending = leftover.map(Box::new),
                        Err(reason) => return Served::Left(reason),
                    }
                }
            }
        }
        loop {
            let first = match pending.take() {
                Some(buf) => *buf,
                None if held.is_none() && self.parks() => return Served::Parked,
                // Boxed too: a nested future is laid out twice in its caller's state, and this
                // one is the state of every idle client. The allocation is small and per request.
                None => match Recycled::new(|| self.next_request()).await {
                    Ok(buf) => buf,
                    Err(reason) => return Served::Left(reason),
                },
            };
            if held.is_none() {
                // Boxed and only when needed: its state would otherwise sit in every idle
                // client's task.
                if self.needs_refresh() {
                    if let Err(reason) = Box::pin(self.refresh()).await {
                        return Served::Left(reason);
                    }
                }
                // Boxed: only a pointer lives in this (idle) state while it is answered.
                if let Some(local) = self.local_request(&first).map(Box::new) {
                    // Boxed: rare, and what it holds across its awaits would otherwise sit in
                    // every idle client's task.
                    match Box::pin(self.answer_local(first, *local)).await {
                        Ok(rest) => pending = rest.map(Box::new),
                        Err(reason) => return Served::Left(reason),
                    }
                    continue;
                }
            }
            // Boxed so that an idle client's task does not carry the state of a transaction
            // (pool wait, relay): it is allocated only while one runs.
            match Recycled::new(|| self.transaction(first, held.take().map(|b| *b), None)).await {
                Ok(leftover) => pending = leftover.map(Box::new),
                Err(reason) => return Served::Left(reason),
            }
        }
    }

    /// Whether `first` needs none of pgtier's own answers (see [`plain_select_first`]).
    fn plain_request(&self, first: &[u8]) -> bool {
        self.listen_statements.is_none()
            && self
                .listening
                .as_ref()
                .is_none_or(|l| l.channel_count() == 0)
            && plain_select_first(first)
    }

    /// What pgtier answers itself at the start of `first`, if it is one: a Parse batch of
    /// named statements, a pgtier statement, a LISTEN-family request.
    fn local_request(&mut self, first: &[u8]) -> Option<Local> {
        // A SELECT with no parenthesis is none of these (a Parse, a pgtier statement, a
        // LISTEN-family statement, `pg_listening_channels()`): the common request skips them.
        if self.plain_request(first) {
            return None;
        }
        let max_bytes = self.limits().prepared_bytes;
        if let Some(reply) = answer_parse_batch(first, &mut self.statements, max_bytes) {
            // The one place statements change outside a relay (which records the count at
            // each ReadyForQuery).
            self.client.entry.set_prepared(self.statements.len());
            return Some(Local::Reply(reply, first.len()));
        }
        if let Some((reply, len)) = self.answer_pgtier_statement(first) {
            return Some(Local::Reply(reply, len));
        }
        if let Some(req) = self.listen_request(first) {
            return Some(Local::Listen(req));
        }
        if self.listen_statements.is_some() {
            self.forget_listen_statements(first);
        }
        None
    }

    /// Answers `local`, the request at the start of `first`; returns the bytes after it (a
    /// relay hands back a pipelined batch whose next message is answered here), if any.
    async fn answer_local(
        &mut self,
        mut first: BytesMut,
        local: Local,
    ) -> Result<Option<BytesMut>, &'static str> {
        let end = match local {
            Local::Reply(reply, end) => {
                self.send(&reply).await?;
                end
            }
            Local::Listen(req) => {
                let end = req.end(first.len());
                // Boxed: its state is large and this one small.
                Box::pin(self.answer_listen(&first, req)).await?;
                end
            }
        };
        Ok((first.len() > end).then(|| first.split_off(end)))
    }

    /// Answers a first message that is one pgtier statement (`SHOW pgtier.causal_lsn`...);
    /// returns the reply and the message's length.
    fn answer_pgtier_statement(&mut self, buf: &[u8]) -> Option<(BytesMut, usize)> {
        let h = peek_header(buf, usize::MAX).ok()??;
        if h.tag != b'Q' || buf.len() < h.frame_len() {
            return None;
        }
        let body = &buf[5..h.frame_len()];
        let cmd = commands::command(body.strip_suffix(&[0]).unwrap_or(body))?;
        // A malformed one goes the normal way, which refuses it (08P01).
        crate::protocol::validate::check(h.tag, body).ok()?;
        let mut out = BytesMut::new();
        local::answer(cmd, &mut self.routing, &mut out);
        Some((out, h.frame_len()))
    }

    /// Runs one transaction (session mode: the rest of the session) on a server connection;
    /// returns client bytes to route anew, if the relay held some back. `begun`: the lane
    /// loop began it.
    async fn transaction(
        &mut self,
        mut first: BytesMut,
        mut held: Option<Serving>,
        mut begun: Option<Begun>,
    ) -> Result<Option<BytesMut>, &'static str> {
        // One retry at most: a read that fails on two servers before any reply is more likely
        // the cause than a victim, and is not sent to a third (the primary).
        let mut retried = false;
        loop {
            let (serving, analysed) = match (held.take(), begun.take()) {
                // Occupant since login (session mode): its run, and its first query, start now.
                (Some(mut s), _) => {
                    s.since = std::time::Instant::now();
                    (s, None)
                }
                (None, Some(Begun::Run(run, lane))) => {
                    let unit = std::mem::take(&mut first);
                    match self.end_run(*run, unit, lane).await? {
                        Ran::Done(leftover) => return Ok(leftover),
                        Ran::RetryRead(again) => {
                            retried = true;
                            first = again;
                            continue;
                        }
                    }
                }
                (None, Some(Begun::Routed(routed))) => self.serve_routed(*routed).await?,
                (None, None) => self.serve_target(&first).await?,
            };
            // A read on a replica may run again elsewhere if that replica fails it before
            // anything reaches the client: the relay keeps its bytes until then.
            let retry = serving.on_replica && !retried;
            match self.run_on(serving, first, retry, analysed).await? {
                Ran::Done(leftover) => return Ok(leftover),
                Ran::RetryRead(again) => {
                    retried = true;
                    first = again;
                }
            }
        }
    }

    /// The client's user name.
    fn user(&self) -> &str {
        &self.upstream.pools()[0].id().user
    }

    /// The client-facing database name.
    fn database(&self) -> &str {
        self.upstream.database()
    }

    /// Whether each unit is routed on its own (replicas to route to, transaction mode, not
    /// pinned).
    fn routes(&self) -> bool {
        self.router().splits() && !self.holds_server()
    }

    /// Whether the client keeps its server between transactions (session mode, or pinned).
    fn holds_server(&self) -> bool {
        self.upstream.settings().mode == PoolMode::Session || self.pinned.is_some()
    }

    /// The database's router.
    fn router(&self) -> &Arc<Router> {
        &self.runtime.router
    }

    /// The limits of the database's clients.
    fn limits(&self) -> &Limits {
        &self.runtime.limits
    }

    /// Whether an admin KILL or a reload happened since the client last looked.
    fn needs_refresh(&self) -> bool {
        self.runtime.control.kills() != self.kills_seen
            || self.proxy.generation() != self.generation
    }

    /// Between transactions: closes the client if an admin KILLed its database, and moves it
    /// to the current config snapshot if a reload happened (its pools, router and limits).
    async fn refresh(&mut self) -> Result<(), &'static str> {
        if self.runtime.control.kills() != self.kills_seen {
            self.close(SqlState::ADMIN_SHUTDOWN, KILL_MESSAGE).await;
            return Err("admin KILL");
        }
        if self.proxy.generation() == self.generation {
            return Ok(());
        }
        let snapshot = self.proxy.snapshot();
        let id = self.upstream.id().clone();
        let (Some(db), Some(user)) = (
            snapshot.settings.databases.get(&id.database),
            snapshot
                .settings
                .users
                .get(&id.user)
                .or(self.looked_up.as_deref()),
        ) else {
            let message = format!(
                "terminating connection: database \"{}\" or user \"{}\" was removed from pgtier's configuration",
                id.database, id.user
            );
            self.close(SqlState::ADMIN_SHUTDOWN, &message).await;
            return Err("removed by reload");
        };
        let Some(runtime) = snapshot.databases.get(&id.database) else {
            return Err("removed by reload");
        };
        self.upstream = self.proxy.upstream_for(db, user);
        if !Arc::ptr_eq(&self.runtime.router, &runtime.router) {
            // Its classifier may differ: prepared statements are classified again.
            self.statements.reclassify();
        }
        self.runtime = runtime.clone();
        self.generation = snapshot.generation;
        // Rules may have changed: which apply to this client is computed again at routing.
        self.routing.rules_on = 0;
        self.routing.rules_primary = 0;
        let app = self.params.application_name(&self.defaults);
        self.runtime
            .router
            .refresh_client(&mut self.routing, &id.user, app);
        self.scope_kind = db.causal_scope_for(user);
        self.scope = self.runtime.scopes.token(self.scope_kind, &id.user, app);
        Ok(())
    }

    /// Writes to the client within `client_write_timeout`; Err(reason) if the client must go.
    async fn send(&mut self, buf: &[u8]) -> Result<(), &'static str> {
        let limit = self.limits().client_write_timeout;
        match write_all_within(&mut self.stream, buf, limit).await {
            Ok(()) => Ok(()),
            Err(e) if e.stalled() => {
                self.runtime.metrics.write_timeout(PeerLabel::Client);
                warn!(peer = %self.client.entry.peer, user = %self.user(), database = %self.database(), ?limit, "client accepted no data for client_write_timeout: closing it");
                Err("client_write_timeout")
            }
            Err(_) => Err("client closed"),
        }
    }

    async fn close(&mut self, code: SqlState, message: &str) {
        self.runtime.metrics.error(code.0);
        // Boxed: rare, and it keeps the idle task small.
        Box::pin(farewell(&mut self.stream, code, message)).await;
    }
}

/// A request pgtier answers itself (see [`Session::local_request`]).
enum Local {
    /// Its reply, and where the request ends.
    Reply(BytesMut, usize),
    /// A LISTEN-family request.
    Listen(listen::ListenRequest),
}

/// Whether the first message in `buf` is a simple Query, or a Parse of the unnamed statement,
/// whose text starts with the word SELECT and has no `(` (whatever follows it). An unnamed
/// Parse is never answered by pgtier, and a LISTEN-family statement the client prepared is
/// named.
fn plain_select_first(buf: &[u8]) -> bool {
    let Ok(Some(h)) = peek_header(buf, usize::MAX) else {
        return false;
    };
    let Some(body) = buf.get(5..h.frame_len()) else {
        return false;
    };
    let sql = match h.tag {
        b'Q' => body,
        // The unnamed statement's empty name, then its text.
        b'P' if body.first() == Some(&0) => &body[1..],
        _ => return false,
    };
    let text = sql.trim_ascii_start();
    crate::sql::starts_with_select(text) && memchr::memchr(b'(', text).is_none()
}

#[cfg(test)]
mod tests {
    use super::plain_select_first;
    use crate::protocol::frame::test_frame as frame;

    #[test]
    fn only_a_select_without_parentheses_skips_the_session_checks() {
        let q = |sql: &str| frame(b'Q', format!("{sql}\0").as_bytes());
        assert!(plain_select_first(&q("SELECT a FROM t WHERE id = 1")));
        assert!(plain_select_first(&q("\n select a from t;")));
        for sql in [
            "SELECT pg_listening_channels()",
            "LISTEN c",
            "SHOW pgtier.causal_lsn",
            "SET pgtier.route = 'primary'",
            "SELECT",
            "SELECTa FROM t",
        ] {
            assert!(!plain_select_first(&q(sql)), "{sql}");
        }
        // The unnamed statement: the same; a named one is not (it may be answered by pgtier).
        assert!(plain_select_first(&frame(
            b'P',
            b"\0SELECT a FROM t WHERE id = $1\0\0\0"
        )));
        assert!(!plain_select_first(&frame(
            b'P',
            b"\0SELECT count(*) FROM t\0\0\0"
        )));
        assert!(!plain_select_first(&frame(b'P', b"s1\0SELECT 1\0\0\0")));
        assert!(!plain_select_first(&q("SELECT a FROM t")[..8]));
    }
}
