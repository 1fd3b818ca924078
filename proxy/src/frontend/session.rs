//! One client from accept to close: login, the welcome (ParameterStatus, BackendKeyData,
//! ReadyForQuery), then the loop that waits for a request, checks out a server (transaction
//! mode: per transaction; session mode: once) and relays.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{info, warn};

use super::cancel::CancelHandle;
use super::farewell::{farewell, pool_farewell};
use super::listener::ClientGuard;
use super::login::{login, Login, LoginError};
use super::prepared::answer_parse_batch;
use super::prepared::ClientStatements;
use super::relay::{self, Limits, Outcome, Violation, BUF_SIZE};
use super::target::{self, Serving, TargetError};
use super::units::{self, UnitContext};
use crate::backend::params::ParamChanges;
use crate::backend::pool::ServerParams;
use crate::backend::{PoolError, Upstream};
use crate::cluster::Lsn;
use crate::config::PoolMode;
use crate::protocol::frame::{is_frontend_tag, peek_header, FrameError};
use crate::protocol::messages::{
    auth_ok, backend_key_data, parameter_status, ready_for_query, TxStatus,
};
use crate::protocol::SqlState;
use crate::proxy::Proxy;
use crate::router::commands;
use crate::router::route::{ClientRouting, Router, Target, UnitInfo};
use crate::shutdown::{Phase, ShutdownWatch};

/// Longest wait for the DISCARD ALL that resets a server after a session.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for the primary's WAL position after a write transaction.
const CAUSAL_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Message for clients closed by shutdown.
const SHUTDOWN_MESSAGE: &str =
    "terminating connection due to administrator command (pgtier is shutting down)";

/// Serves one accepted connection to the end.
pub async fn handle(
    proxy: Arc<Proxy>,
    mut stream: TcpStream,
    peer: SocketAddr,
    guard: ClientGuard,
) {
    let _ = stream.set_nodelay(true);
    let settings = proxy.settings();
    // Boxed, like the first server connection below: their state is large and freed once they
    // are done, so an idle client's task stays small.
    let (user, db, startup_params) =
        match Box::pin(login(&mut stream, peer, &settings, &guard, proxy.phase())).await {
            Ok(Login::Client { user, db, params }) => (user, db, params),
            Ok(Login::Admin { user }) => {
                let mut welcome = BytesMut::with_capacity(64);
                auth_ok(&mut welcome);
                ready_for_query(&mut welcome, TxStatus::Idle);
                if stream.write_all(&welcome).await.is_ok() {
                    Box::pin(crate::admin::serve(&proxy, &mut stream)).await;
                }
                info!(%peer, user = %user.name, "admin console client disconnected");
                return;
            }
            Ok(Login::Cancel(key)) => {
                drop(guard);
                Box::pin(proxy.forward_cancel(key)).await;
                return;
            }
            Err(LoginError::Io(_)) => return,
            Err(e) => {
                info!(%peer, error = %e, "login refused");
                Box::pin(farewell(&mut stream, e.sqlstate(), &e.to_string())).await;
                return;
            }
        };
    let (upstream, router) = proxy.upstream_for(db, user);
    let params = match Box::pin(welcome_params(&upstream, &router)).await {
        Ok(p) => p,
        Err(e) => {
            warn!(%peer, database = %db.name, error = %e, "no server connection");
            Box::pin(pool_farewell(&mut stream, &e)).await;
            return;
        }
    };
    // Session mode holds one server (on the primary) for the whole session, taken now.
    let held = match db.pool.mode {
        PoolMode::Session => {
            match Box::pin(target::checkout(
                &router,
                &upstream,
                &db.name,
                Target::Primary,
            ))
            .await
            {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(%peer, database = %db.name, error = %e, "no server connection");
                    Box::pin(target_farewell(&mut stream, &e)).await;
                    return;
                }
            }
        }
        PoolMode::Transaction => None,
    };
    let cancel = proxy.cancels().register();
    let mut welcome = BytesMut::with_capacity(512);
    auth_ok(&mut welcome);
    // The client's startup values of tracked parameters are its session's values: shown now,
    // and set on every server that serves it.
    let mut client_params = ParamChanges::default();
    for (k, v) in &startup_params {
        client_params.set(&params, k, v);
    }
    for (k, v) in params.iter() {
        parameter_status(&mut welcome, k, client_params.get(k).unwrap_or(v));
    }
    backend_key_data(&mut welcome, cancel.key.pid, cancel.key.secret);
    ready_for_query(&mut welcome, TxStatus::Idle);
    if stream.write_all(&welcome).await.is_err() {
        return;
    }
    drop(welcome);
    // The rules whose users / application_names match the client (its application_name is
    // looked at again whenever it is routed).
    let routing = router.client_routing(
        &user.name,
        client_params
            .get("application_name")
            .or_else(|| crate::backend::params::lookup(&params, "application_name"))
            .unwrap_or(""),
    );
    let session = Session {
        stream,
        upstream,
        router,
        routing,
        causal_unknown: false,
        cancel,
        peer,
        _guard: guard,
        statements: ClientStatements::default(),
        params: client_params,
        defaults: params,
        // Session mode holds the server anyway: nothing to classify, nothing to reject.
        pinned: (db.pool.mode == PoolMode::Session).then_some("session mode"),
        shutdown: proxy.shutdown_watch(),
        // Shared by all clients of the pool: an idle client's state stays small.
        limits: proxy.client_limits(&db.name),
    };
    // The session runs in a task of its own, so that an idle client costs only the session's
    // state, not what login needed.
    tokio::spawn(session.run(held));
}

/// How a run on one server ended.
enum Ran {
    /// The transaction is over; maybe with client bytes to route anew.
    Done(Option<BytesMut>),
    /// A read failed on a replica before anything reached the client: run it again.
    RetryRead,
}

/// What ended an idle wait.
enum Wake {
    /// The client sent something.
    Readable,
    /// The socket failed.
    Closed,
    /// `client_idle_timeout` expired.
    IdleTimeout,
    /// Shutdown began.
    Draining,
}

/// The parameters shown to a new client: those of the primary's pool, else of any node.
async fn welcome_params(upstream: &Upstream, router: &Router) -> Result<ServerParams, PoolError> {
    let primary = router.topology().view().primary;
    let order = primary
        .into_iter()
        .chain((0..upstream.pools().len()).filter(|&i| Some(i) != primary));
    let mut last = None;
    for i in order {
        match upstream.node(i).server_params().await {
            Ok(p) => return Ok(p),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("a database has at least one node"))
}

/// Tells the client why it gets no server, then closes.
async fn target_farewell(stream: &mut TcpStream, e: &TargetError) {
    match e {
        TargetError::Pool(e) => pool_farewell(stream, e).await,
        TargetError::NoPrimary { .. } => {
            farewell(stream, SqlState::NO_PRIMARY, &e.to_string()).await
        }
    }
}

/// A logged-in client.
struct Session {
    stream: TcpStream,
    /// Pools of the client's (database, user), one per node.
    upstream: Arc<Upstream>,
    /// The database's router.
    router: Arc<Router>,
    /// Routing state: override, causal token, borrowed token.
    routing: ClientRouting,
    /// A write transaction's WAL position could not be read: the next read needs it first.
    causal_unknown: bool,
    cancel: CancelHandle,
    peer: SocketAddr,
    /// Counts the client against `max_client_conn` until the session ends.
    _guard: ClientGuard,
    /// The client's named prepared statements.
    statements: ClientStatements,
    /// The client's tracked parameters, as changes from `defaults`.
    params: ParamChanges,
    /// The pool's default parameter values.
    defaults: ServerParams,
    /// Why the client holds its server until it disconnects (session state on it), if it does.
    pinned: Option<&'static str>,
    shutdown: ShutdownWatch,
    /// The pool's limits (shared).
    limits: Arc<Limits>,
}

impl Session {
    /// Serves the client until it leaves.
    async fn run(mut self, held: Option<Serving>) {
        let reason = self.serve(held).await;
        info!(peer = %self.peer, user = %self.user(), reason, "client disconnected");
    }

    /// Runs until the client leaves; returns why it ended (for the log).
    async fn serve(&mut self, held: Option<Serving>) -> &'static str {
        // Boxed (session mode only) so that the idle task does not reserve room for it.
        let mut held = held.map(Box::new);
        // Client bytes a relay handed back (a unit that needs another server).
        // Boxed: it is a local of every idle client's task, and rarely used.
        let mut pending: Option<Box<BytesMut>> = None;
        loop {
            let first = match pending.take() {
                Some(buf) => *buf,
                // Boxed too: a nested future is laid out twice in its caller's state, and this
                // one is the state of every idle client. The allocation is small and per request.
                None => match Box::pin(self.next_request()).await {
                    Ok(buf) => buf,
                    Err(reason) => return reason,
                },
            };
            if held.is_none() {
                if let Some(reply) = answer_parse_batch(&first, &mut self.statements) {
                    if self.stream.write_all(&reply).await.is_err() {
                        return "client closed";
                    }
                    continue;
                }
                if let Some(reply) = self.answer_pgtier_statement(&first) {
                    if self.stream.write_all(&reply).await.is_err() {
                        return "client closed";
                    }
                    continue;
                }
            }
            // Boxed so that an idle client's task does not carry the state of a transaction
            // (pool wait, relay): it is allocated only while one runs.
            match Box::pin(self.transaction(first, held.take().map(|b| *b))).await {
                Ok(leftover) => pending = leftover.map(Box::new),
                Err(reason) => return reason,
            }
        }
    }

    /// Answers a query that is exactly one pgtier statement (`SHOW pgtier.causal_lsn`...).
    fn answer_pgtier_statement(&mut self, buf: &[u8]) -> Option<BytesMut> {
        let h = peek_header(buf, usize::MAX).ok()??;
        if h.tag != b'Q' || buf.len() != h.frame_len() {
            return None;
        }
        let body = &buf[5..];
        let cmd = commands::command(body.strip_suffix(&[0]).unwrap_or(body))?;
        let mut out = BytesMut::new();
        super::local::answer(cmd, &mut self.routing, &mut out);
        Some(out)
    }

    /// Where the unit at the start of `first` goes.
    fn target_of(&mut self, first: &[u8]) -> Target {
        if !self.router.splits() || self.holds_server() {
            return Target::Primary;
        }
        if !self.router.rules().is_empty() {
            // The client's current application_name (SET tracks it) selects the rules that
            // apply; the relay's routing gate sees the same through `self.routing`.
            let app = self
                .params
                .get("application_name")
                .or_else(|| crate::backend::params::lookup(&self.defaults, "application_name"))
                .unwrap_or("");
            let user = &self.upstream.pools()[0].id().user;
            self.router.refresh_client(&mut self.routing, user, app);
        }
        let classifier = self.router.classifier();
        let unit = units::scan(
            first,
            self.limits.max_message,
            &UnitContext {
                classifier: &classifier,
                rules: self.router.rule_set(),
                statements: &self.statements,
                reported: &self.defaults,
            },
        );
        let info = if unit.len.is_some() {
            unit.info
        } else {
            UnitInfo::write()
        };
        self.router.target(&info, &self.routing)
    }

    /// Learns the primary's current WAL position, when the one after the client's last write
    /// could not be read (any later position covers that write).
    async fn refresh_causal(&mut self) -> Result<(), &'static str> {
        let mut serving = self.checkout(Target::Primary).await?;
        if let Some(lsn) = wal_insert_lsn(&mut serving).await {
            self.routing.causal = self.routing.causal.max(lsn);
            self.causal_unknown = false;
            serving.server.release();
        }
        Ok(())
    }

    /// Runs one transaction (session mode: the rest of the session) on a server connection;
    /// returns client bytes to route anew, if the relay held some back.
    async fn transaction(
        &mut self,
        mut first: BytesMut,
        mut held: Option<Serving>,
    ) -> Result<Option<BytesMut>, &'static str> {
        let mut retried = false;
        loop {
            let serving = match held.take() {
                Some(s) => s,
                None => self.serve_target(&first).await?,
            };
            // A read on a replica may run again elsewhere if that replica fails it before
            // anything reaches the client: keep its bytes until then.
            let copy = (serving.on_replica && !retried).then(|| first.clone());
            match self.run_on(serving, first).await? {
                Ran::Done(leftover) => return Ok(leftover),
                Ran::RetryRead => {
                    retried = true;
                    first = copy.expect("kept for a retry");
                }
            }
        }
    }

    /// Checks out a server for the unit at the start of `first`.
    async fn serve_target(&mut self, first: &[u8]) -> Result<Serving, &'static str> {
        let mut target = self.target_of(first);
        if self.causal_unknown && matches!(target, Target::Replica { .. }) {
            self.refresh_causal().await?;
            target = self.target_of(first);
            if self.causal_unknown {
                target = Target::Primary;
            }
        }
        self.checkout(target).await
    }

    /// Relays on `serving` until its transaction ends.
    async fn run_on(&mut self, mut serving: Serving, first: BytesMut) -> Result<Ran, &'static str> {
        let server = &mut serving.server;
        self.cancel.slot.set(Some(server.conn().cancel_target()));
        let was_pinned = self.pinned.is_some();
        let classifier = self.router.classifier();
        let track_writes = self.router.splits() && !self.holds_server();
        let end = relay::run(
            &mut self.stream,
            relay::ClientState {
                statements: &mut self.statements,
                params: &mut self.params,
                defaults: &self.defaults,
                pinned: &mut self.pinned,
                classifier: &classifier,
                rules: self.router.rule_set(),
                routing: self.routing,
                on_replica: serving.on_replica,
                track_writes,
            },
            server.conn().io(),
            first,
            *self.limits,
            &self.shutdown,
        )
        .await;
        drop(classifier);
        self.cancel.slot.set(None);
        if let (Some(reason), false) = (self.pinned, was_pinned) {
            info!(peer = %self.peer, user = %self.user(), reason, "client pinned to its server connection until it disconnects");
        }
        let (code, message, reason) = match end.outcome {
            Outcome::Idle => {
                if end.wrote && !serving.on_replica && self.router.splits() && !self.holds_server() {
                    self.advance_causal(&mut serving).await?;
                }
                if self.shutdown.phase() < Phase::Draining {
                    serving.server.release();
                    return Ok(Ran::Done((!end.leftover.is_empty()).then_some(end.leftover)));
                }
                self.give_back(serving).await;
                self.close(SqlState::ADMIN_SHUTDOWN, SHUTDOWN_MESSAGE).await;
                return Err("shutdown");
            }
            Outcome::ClientGone { server_clean } => {
                if server_clean {
                    self.give_back(serving).await;
                }
                return Err("client closed");
            }
            Outcome::ClientViolation(v) => {
                drop(serving);
                self.violation(v).await;
                return Err("protocol violation");
            }
            Outcome::ServerGone(e) => {
                warn!(database = %self.database(), node = %self.upstream.node(serving.node).node(), error = %e, retryable = end.retryable, on_replica = serving.on_replica, "server connection lost");
                self.router.topology().report_failure(serving.node);
                if serving.on_replica && end.retryable {
                    info!(database = %self.database(), "read failed on a replica before any reply: retrying it once elsewhere");
                    return Ok(Ran::RetryRead);
                }
                (
                    SqlState::CONNECTION_FAILURE,
                    "pgtier: server connection lost",
                    "server connection lost",
                )
            }
            Outcome::IdleInTransaction => (
                SqlState::IDLE_IN_TRANSACTION_TIMEOUT,
                "terminating connection due to idle-in-transaction timeout (idle_transaction_timeout)",
                "idle_transaction_timeout",
            ),
            Outcome::Shutdown => (SqlState::ADMIN_SHUTDOWN, SHUTDOWN_MESSAGE, "shutdown"),
            Outcome::SyncFailed(code, message) => {
                // Postgres refuses such a value at startup; the client gets the same, late.
                drop(serving);
                warn!(database = %self.database(), %code, %message, "a session parameter of the client was rejected by the server");
                let text = format!("invalid session parameter (from the startup packet or SET): {message}");
                self.close(SqlState::INVALID_PARAMETER_VALUE, &text).await;
                return Err("invalid session parameter");
            }
        };
        // A server in an unknown state is closed, never returned (dropping the checkout does).
        drop(serving);
        self.close(code, message).await;
        Err(reason)
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
        self.router.splits() && !self.holds_server()
    }

    /// Whether the client keeps its server between transactions (session mode, or pinned).
    fn holds_server(&self) -> bool {
        self.limits.mode == PoolMode::Session || self.pinned.is_some()
    }

    /// After a write transaction: the primary's WAL position becomes the client's causal token,
    /// reported to the client as ParameterStatus `pgtier.causal_lsn`.
    async fn advance_causal(&mut self, serving: &mut Serving) -> Result<(), &'static str> {
        let Some(lsn) = wal_insert_lsn(serving).await else {
            // The connection is in doubt (it is closed below); the next read asks again.
            self.causal_unknown = true;
            return Ok(());
        };
        self.routing.causal = self.routing.causal.max(lsn);
        if self.router.settings().report_causal_lsn {
            let mut msg = BytesMut::with_capacity(40);
            parameter_status(
                &mut msg,
                "pgtier.causal_lsn",
                &self.routing.causal.to_string(),
            );
            if self.stream.write_all(&msg).await.is_err() {
                return Err("client closed");
            }
        }
        Ok(())
    }

    /// Returns a clean server at the end of the session; one that held session state (session
    /// mode, or a pinned client) is reset with DISCARD ALL first, or closed if that fails.
    async fn give_back(&mut self, mut serving: Serving) {
        if !self.holds_server() || serving.server.conn().discard_all(DISCARD_TIMEOUT).await {
            serving.server.release();
        }
    }

    async fn checkout(&mut self, target: Target) -> Result<Serving, &'static str> {
        let router = self.router.clone();
        let upstream = self.upstream.clone();
        tokio::select! {
            r = target::checkout(&router, &upstream, self.upstream.database(), target) => match r {
                Ok(c) => Ok(c),
                Err(e) => {
                    warn!(database = %self.database(), error = %e, "no server connection for client");
                    target_farewell(&mut self.stream, &e).await;
                    Err("no server connection")
                }
            },
            _ = self.shutdown.reached(Phase::Closing) => {
                self.close(SqlState::ADMIN_SHUTDOWN, SHUTDOWN_MESSAGE).await;
                Err("shutdown")
            }
        }
    }

    /// Waits (holding no buffer) until the client sends a whole message, and returns the bytes.
    async fn next_request(&mut self) -> Result<BytesMut, &'static str> {
        let mut buf = BytesMut::new();
        let mut draining = pin!(self.shutdown.reached(Phase::Draining));
        // Only a configured timeout costs memory while idle: its timer is boxed.
        let mut idle_timer = self
            .limits
            .client_idle_timeout
            .map(|t| Box::pin(tokio::time::sleep(t)));
        loop {
            if self.shutdown.phase() >= Phase::Draining {
                self.close(SqlState::ADMIN_SHUTDOWN, SHUTDOWN_MESSAGE).await;
                return Err("shutdown");
            }
            // One hand-polled wait instead of a select!: an idle client's task stays small.
            let wake = poll_fn(|cx| {
                if draining.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Draining);
                }
                if let Some(t) = idle_timer.as_mut() {
                    if t.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::IdleTimeout);
                    }
                }
                self.stream.poll_read_ready(cx).map(|r| match r {
                    Ok(()) => Wake::Readable,
                    Err(_) => Wake::Closed,
                })
            })
            .await;
            match wake {
                Wake::Readable => {}
                Wake::Draining => continue,
                Wake::Closed => return Err("client closed"),
                Wake::IdleTimeout => {
                    self.close(
                        SqlState::IDLE_SESSION_TIMEOUT,
                        "terminating connection due to idle-session timeout (client_idle_timeout)",
                    )
                    .await;
                    return Err("client_idle_timeout");
                }
            }
            if buf.capacity() == 0 {
                buf.reserve(BUF_SIZE);
            }
            // A poll-based read (unlike try_read) clears readiness on a short read, which saves
            // the relay a wasted EAGAIN read per transaction. Polled once: a spurious wake-up
            // goes back to the wait above.
            let read = {
                let mut read = pin!(self.stream.read_buf(&mut buf));
                poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await
            };
            match read {
                Poll::Pending => continue,
                Poll::Ready(Ok(0) | Err(_)) => return Err("client closed"),
                Poll::Ready(Ok(_)) => {}
            }
            match peek_header(&buf, self.limits.max_message) {
                Ok(None) => {}
                Ok(Some(h)) if !is_frontend_tag(h.tag) => {
                    self.violation(Violation::UnknownType(h.tag)).await;
                    return Err("protocol violation");
                }
                Ok(Some(h)) if h.tag == b'X' => return Err("client closed"),
                // Routing looks at a whole unit: extended messages up to Sync.
                Ok(Some(h))
                    if self.routes()
                        && buf.len() >= h.frame_len()
                        && !units::complete(&buf, self.limits.max_message) =>
                {
                    buf.reserve(BUF_SIZE)
                }
                Ok(Some(h)) if buf.len() >= h.frame_len() || h.tag == b'd' => return Ok(buf),
                Ok(Some(h)) => buf.reserve(h.frame_len() - buf.len()),
                Err(e) => {
                    self.violation(Violation::Frame(e)).await;
                    return Err("protocol violation");
                }
            }
        }
    }

    async fn violation(&mut self, v: Violation) {
        let (code, message) = match v {
            Violation::UnknownType(t) => (
                SqlState::PROTOCOL_VIOLATION,
                format!("invalid frontend message type {t}"),
            ),
            Violation::Frame(e @ FrameError::TooLarge { .. }) => {
                (SqlState::PROGRAM_LIMIT_EXCEEDED, format!("pgtier: {e}"))
            }
            Violation::Frame(e) => (SqlState::PROTOCOL_VIOLATION, format!("pgtier: {e}")),
            Violation::TooManyInFlight => (
                SqlState::PROGRAM_LIMIT_EXCEEDED,
                "pgtier: too many messages awaiting replies (send Sync)".to_owned(),
            ),
        };
        warn!(database = %self.database(), %message, "client protocol violation");
        self.close(code, &message).await;
    }

    async fn close(&mut self, code: SqlState, message: &str) {
        // Boxed: rare, and it keeps the idle task small.
        Box::pin(farewell(&mut self.stream, code, message)).await;
    }
}

/// The primary's WAL insert position, read on the connection that just committed (None if the
/// query failed: the connection must then be closed, not released).
async fn wal_insert_lsn(serving: &mut Serving) -> Option<Lsn> {
    let value = serving
        .server
        .conn()
        .query_value("SELECT pg_current_wal_insert_lsn()", CAUSAL_PROBE_TIMEOUT)
        .await
        .ok()??;
    value.parse().ok()
}
