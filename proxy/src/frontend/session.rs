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
use crate::backend::params::ParamChanges;
use crate::backend::pool::ServerParams;
use crate::backend::{Checkout, Pool};
use crate::config::PoolMode;
use crate::protocol::frame::{is_frontend_tag, peek_header, FrameError};
use crate::protocol::messages::{
    auth_ok, backend_key_data, parameter_status, ready_for_query, TxStatus,
};
use crate::protocol::SqlState;
use crate::proxy::Proxy;
use crate::shutdown::{Phase, ShutdownWatch};

/// Longest wait for the DISCARD ALL that resets a server after a session.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(5);

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
    let pool = proxy.pool_for(db, user);
    let params = match Box::pin(pool.server_params()).await {
        Ok(p) => p,
        Err(e) => {
            warn!(%peer, pool = %pool.id(), error = %e, "no server connection");
            Box::pin(pool_farewell(&mut stream, &e)).await;
            return;
        }
    };
    // Session mode holds one server for the whole session, taken now.
    let held = match db.pool.mode {
        PoolMode::Session => match Box::pin(pool.checkout()).await {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(%peer, pool = %pool.id(), error = %e, "no server connection");
                Box::pin(pool_farewell(&mut stream, &e)).await;
                return;
            }
        },
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
    let session = Session {
        stream,
        pool,
        cancel,
        peer,
        user: user.name.clone(),
        _guard: guard,
        statements: ClientStatements::default(),
        params: client_params,
        defaults: params,
        // Session mode holds the server anyway: nothing to classify, nothing to reject.
        pinned: (db.pool.mode == PoolMode::Session).then_some("session mode"),
        shutdown: proxy.shutdown_watch(),
        idle_timeout: settings.client_idle_timeout,
        limits: Limits {
            mode: db.pool.mode,
            max_message: settings.raw.max_message_size as usize,
            idle_transaction_timeout: db.pool.idle_transaction_timeout,
            session_state: db.pool.session_state,
        },
    };
    // The session runs in a task of its own, so that an idle client costs only the session's
    // state, not what login needed.
    tokio::spawn(session.run(held));
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

/// A logged-in client.
struct Session {
    stream: TcpStream,
    pool: Arc<Pool>,
    cancel: CancelHandle,
    peer: SocketAddr,
    user: String,
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
    idle_timeout: Option<Duration>,
    limits: Limits,
}

impl Session {
    /// Serves the client until it leaves.
    async fn run(mut self, held: Option<Checkout>) {
        let reason = self.serve(held).await;
        info!(peer = %self.peer, user = %self.user, reason, "client disconnected");
    }

    /// Runs until the client leaves; returns why it ended (for the log).
    async fn serve(&mut self, held: Option<Checkout>) -> &'static str {
        // Boxed (session mode only) so that the idle task does not reserve room for it.
        let mut held = held.map(Box::new);
        loop {
            // Boxed too: a nested future is laid out twice in its caller's state, and this one
            // is the state of every idle client. The allocation is small and per request.
            let first = match Box::pin(self.next_request()).await {
                Ok(buf) => buf,
                Err(reason) => return reason,
            };
            if held.is_none() {
                if let Some(reply) = answer_parse_batch(&first, &mut self.statements) {
                    if self.stream.write_all(&reply).await.is_err() {
                        return "client closed";
                    }
                    continue;
                }
            }
            // Boxed so that an idle client's task does not carry the state of a transaction
            // (pool wait, relay): it is allocated only while one runs.
            if let Err(reason) = Box::pin(self.transaction(first, held.take().map(|b| *b))).await {
                return reason;
            }
        }
    }

    /// Runs one transaction (session mode: the rest of the session) on a server connection.
    async fn transaction(
        &mut self,
        first: BytesMut,
        held: Option<Checkout>,
    ) -> Result<(), &'static str> {
        let mut server = match held {
            Some(c) => c,
            None => self.checkout().await?,
        };
        self.cancel.slot.set(Some(server.conn().cancel_target()));
        let was_pinned = self.pinned.is_some();
        let outcome = relay::run(
            &mut self.stream,
            relay::ClientState {
                statements: &mut self.statements,
                params: &mut self.params,
                defaults: &self.defaults,
                pinned: &mut self.pinned,
            },
            server.conn().io(),
            first,
            self.limits,
            &self.shutdown,
        )
        .await;
        self.cancel.slot.set(None);
        if let (Some(reason), false) = (self.pinned, was_pinned) {
            info!(peer = %self.peer, user = %self.user, reason, "client pinned to its server connection until it disconnects");
        }
        let (code, message, reason) = match outcome {
            Outcome::Idle => {
                if self.shutdown.phase() < Phase::Draining {
                    server.release();
                    return Ok(());
                }
                self.give_back(server).await;
                self.close(SqlState::ADMIN_SHUTDOWN, SHUTDOWN_MESSAGE).await;
                return Err("shutdown");
            }
            Outcome::ClientGone { server_clean } => {
                if server_clean {
                    self.give_back(server).await;
                }
                return Err("client closed");
            }
            Outcome::ClientViolation(v) => {
                drop(server);
                self.violation(v).await;
                return Err("protocol violation");
            }
            Outcome::ServerGone(e) => {
                warn!(pool = %self.pool.id(), error = %e, "server connection lost");
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
        };
        // A server in an unknown state is closed, never returned (dropping the checkout does).
        drop(server);
        self.close(code, message).await;
        Err(reason)
    }

    /// Returns a clean server at the end of the session; one that held session state (session
    /// mode, or a pinned client) is reset with DISCARD ALL first, or closed if that fails.
    async fn give_back(&mut self, mut server: Checkout) {
        let holds = self.limits.mode == PoolMode::Session || self.pinned.is_some();
        if !holds || server.conn().discard_all(DISCARD_TIMEOUT).await {
            server.release();
        }
    }

    async fn checkout(&mut self) -> Result<Checkout, &'static str> {
        let pool = self.pool.clone();
        tokio::select! {
            r = pool.checkout() => match r {
                Ok(c) => Ok(c),
                Err(e) => {
                    warn!(pool = %pool.id(), error = %e, "no server connection for client");
                    pool_farewell(&mut self.stream, &e).await;
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
        let mut idle_timer = self.idle_timeout.map(|t| Box::pin(tokio::time::sleep(t)));
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
        warn!(pool = %self.pool.id(), %message, "client protocol violation");
        self.close(code, &message).await;
    }

    async fn close(&mut self, code: SqlState, message: &str) {
        // Boxed: rare, and it keeps the idle task small.
        Box::pin(farewell(&mut self.stream, code, message)).await;
    }
}
