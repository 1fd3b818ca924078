//! One client from accept to close: startup, authentication, the welcome (ParameterStatus,
//! BackendKeyData, ReadyForQuery), then the loop that waits for a request, checks out a server
//! (transaction mode: per transaction; session mode: once) and relays.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::listener::ClientGuard;
use super::relay::{self, Limits, Outcome, Violation, BUF_SIZE};
use super::startup::{negotiate, Opening};
use super::{auth, cancel::CancelSlot};
use crate::backend::{BackendError, Checkout, Pool, PoolError};
use crate::config::PoolMode;
use crate::protocol::frame::{is_frontend_tag, peek_header, FrameError};
use crate::protocol::messages::{
    auth_ok, backend_key_data, error_response, parameter_status, ready_for_query, Severity,
    TxStatus,
};
use crate::protocol::startup::StartupError;
use crate::protocol::SqlState;
use crate::proxy::Proxy;
use crate::shutdown::{Phase, ShutdownWatch};

/// How long pgtier tries to deliver a final error before closing anyway.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a client did not get a session.
#[derive(Debug, Error)]
pub enum LoginError {
    /// Socket failure or the client went away.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// Malformed startup packet.
    #[error("invalid startup packet: {0}")]
    Startup(String),
    /// Protocol major version other than 3.
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0 to 3.0")]
    UnsupportedProtocol(u16, u16),
    /// Message out of place during login.
    #[error("{0}")]
    Protocol(String),
    /// No `user` in the startup packet.
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
    /// Wrong password or unknown user.
    #[error("password authentication failed for user \"{0}\"")]
    PasswordFailed(String),
    /// No such database in the config.
    #[error("database \"{0}\" does not exist")]
    UnknownDatabase(String),
    /// `max_client_conn` reached.
    #[error("sorry, too many clients already (max_client_conn = {0})")]
    TooManyClients(u32),
    /// Startup and authentication took longer than `client_login_timeout`.
    #[error("client_login_timeout ({0:?}) expired before login completed")]
    Timeout(Duration),
    /// pgtier is shutting down.
    #[error("the database system is shutting down")]
    ShuttingDown,
}

impl From<StartupError> for LoginError {
    fn from(e: StartupError) -> Self {
        match e {
            StartupError::Io(e) => LoginError::Io(e),
            other => LoginError::Startup(other.to_string()),
        }
    }
}

impl LoginError {
    fn sqlstate(&self) -> SqlState {
        match self {
            LoginError::Io(_) | LoginError::Startup(_) | LoginError::Protocol(_) => {
                SqlState::PROTOCOL_VIOLATION
            }
            LoginError::UnsupportedProtocol(..) => SqlState::FEATURE_NOT_SUPPORTED,
            LoginError::NoUser => SqlState::INVALID_AUTHORIZATION,
            LoginError::PasswordFailed(_) => SqlState::INVALID_PASSWORD,
            LoginError::UnknownDatabase(_) => SqlState::INVALID_CATALOG_NAME,
            LoginError::TooManyClients(_) => SqlState::TOO_MANY_CONNECTIONS,
            LoginError::Timeout(_) => SqlState::PROTOCOL_VIOLATION,
            LoginError::ShuttingDown => SqlState::CANNOT_CONNECT_NOW,
        }
    }
}

/// Sends a FATAL error (bounded in time) and closes the socket.
async fn farewell(stream: &mut TcpStream, code: SqlState, message: &str) {
    let mut buf = BytesMut::new();
    error_response(&mut buf, Severity::Fatal, code, message);
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, async {
        stream.write_all(&buf).await?;
        stream.shutdown().await
    })
    .await;
}

/// Sends a raw ErrorResponse frame from a server (unchanged) and closes.
async fn relay_farewell(stream: &mut TcpStream, frame: &[u8]) {
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, async {
        stream.write_all(frame).await?;
        stream.shutdown().await
    })
    .await;
}

/// Tells the client why it gets no server connection, then closes.
async fn pool_farewell(stream: &mut TcpStream, err: &PoolError) {
    match err {
        PoolError::Connect(BackendError::Refused { frame, .. }) => {
            relay_farewell(stream, frame).await
        }
        PoolError::WaitTimeout { .. } => {
            farewell(
                stream,
                SqlState::TOO_MANY_CONNECTIONS,
                &format!("pgtier: {err}"),
            )
            .await
        }
        PoolError::Connect(_) => {
            farewell(stream, SqlState::CANNOT_CONNECT, &format!("pgtier: {err}")).await
        }
    }
}

/// Serves one accepted connection to the end.
pub async fn handle(
    proxy: Arc<Proxy>,
    mut stream: TcpStream,
    peer: SocketAddr,
    guard: ClientGuard,
) {
    let _ = stream.set_nodelay(true);
    let settings = proxy.settings();
    let login_timeout = settings.raw.client_login_timeout;
    let opening = match tokio::time::timeout(login_timeout, negotiate(&mut stream)).await {
        Ok(Ok(o)) => o,
        Ok(Err(LoginError::Io(_))) => return,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "startup rejected");
            farewell(&mut stream, e.sqlstate(), &e.to_string()).await;
            return;
        }
        Err(_) => {
            let e = LoginError::Timeout(login_timeout);
            farewell(&mut stream, e.sqlstate(), &e.to_string()).await;
            return;
        }
    };
    let startup = match opening {
        Opening::Cancel(key) => {
            drop(guard);
            proxy.forward_cancel(key).await;
            return;
        }
        Opening::Client(m) => m,
    };
    let refusal = if guard.over_limit() {
        Some(LoginError::TooManyClients(settings.raw.max_client_conn))
    } else if proxy.phase() >= Phase::Draining {
        Some(LoginError::ShuttingDown)
    } else {
        None
    };
    if let Some(e) = refusal {
        warn!(%peer, error = %e, "client refused");
        farewell(&mut stream, e.sqlstate(), &e.to_string()).await;
        return;
    }
    let Some(user_name) = startup.param("user").map(str::to_owned) else {
        let e = LoginError::NoUser;
        farewell(&mut stream, e.sqlstate(), &e.to_string()).await;
        return;
    };
    let db_name = startup.param("database").unwrap_or(&user_name).to_owned();
    let app_name = startup.param("application_name").map(str::to_owned);

    let user = settings.users.get(&user_name);
    match tokio::time::timeout(
        login_timeout,
        auth::authenticate(&mut stream, user, &user_name),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(LoginError::Io(_))) => return,
        Ok(Err(e)) => {
            info!(%peer, user = %user_name, error = %e, "authentication failed");
            farewell(&mut stream, e.sqlstate(), &e.to_string()).await;
            return;
        }
        Err(_) => {
            let e = LoginError::Timeout(login_timeout);
            farewell(&mut stream, e.sqlstate(), &e.to_string()).await;
            return;
        }
    }
    let (Some(user), Some(db)) = (user, settings.databases.get(&db_name)) else {
        let e = LoginError::UnknownDatabase(db_name);
        farewell(&mut stream, e.sqlstate(), &e.to_string()).await;
        return;
    };
    let pool = proxy.pool_for(db, user);
    let mut welcome = BytesMut::with_capacity(512);
    auth_ok(&mut welcome);
    // Session mode holds one server for the whole session, taken now.
    let held = match pool.settings().mode {
        PoolMode::Session => match pool.checkout().await {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(%peer, pool = %pool.id(), error = %e, "no server connection");
                pool_farewell(&mut stream, &e).await;
                return;
            }
        },
        PoolMode::Transaction => None,
    };
    let params = match pool.server_params().await {
        Ok(p) => p,
        Err(e) => {
            warn!(%peer, pool = %pool.id(), error = %e, "no server connection");
            pool_farewell(&mut stream, &e).await;
            return;
        }
    };
    for (k, v) in params.iter() {
        match (k.as_str(), &app_name) {
            ("application_name", Some(app)) => parameter_status(&mut welcome, k, app),
            _ => parameter_status(&mut welcome, k, v),
        }
    }
    let cancel = proxy.cancels().register();
    backend_key_data(&mut welcome, cancel.key.pid, cancel.key.secret);
    ready_for_query(&mut welcome, TxStatus::Idle);
    if stream.write_all(&welcome).await.is_err() {
        return;
    }
    drop(welcome);
    info!(%peer, user = %user_name, database = %db.name, "client logged in");
    let mut session = Session {
        stream,
        pool,
        slot: &cancel.slot,
        shutdown: proxy.shutdown_watch(),
        idle_timeout: settings.client_idle_timeout,
        limits: Limits {
            mode: db.pool.mode,
            max_message: settings.raw.max_message_size as usize,
            idle_transaction_timeout: db.pool.idle_transaction_timeout,
        },
    };
    drop(settings);
    let end = session.run(held).await;
    info!(%peer, user = %user_name, reason = end, "client disconnected");
}

/// A logged-in client.
struct Session<'a> {
    stream: TcpStream,
    pool: Arc<Pool>,
    slot: &'a CancelSlot,
    shutdown: ShutdownWatch,
    idle_timeout: Option<Duration>,
    limits: Limits,
}

impl Session<'_> {
    /// Runs until the client leaves; returns why it ended (for the log).
    async fn run(&mut self, mut held: Option<Checkout>) -> &'static str {
        loop {
            let first = match self.next_request().await {
                Ok(buf) => buf,
                Err(reason) => return reason,
            };
            let mut server = match held.take() {
                Some(c) => c,
                None => match self.checkout().await {
                    Ok(c) => c,
                    Err(reason) => return reason,
                },
            };
            self.slot.set(Some(server.conn().cancel_target()));
            // Boxed so that an idle client's task does not carry the relay's state.
            let outcome = Box::pin(relay::run(
                &mut self.stream,
                server.conn().io(),
                first,
                self.limits,
                &self.shutdown,
            ))
            .await;
            self.slot.set(None);
            match outcome {
                Outcome::Idle => {
                    server.release();
                    if self.shutdown.phase() >= Phase::Draining {
                        self.close(SqlState::ADMIN_SHUTDOWN, "terminating connection due to administrator command (pgtier is shutting down)").await;
                        return "shutdown";
                    }
                }
                Outcome::ClientGone { server_clean } => {
                    if server_clean {
                        server.release();
                    }
                    return "client closed";
                }
                Outcome::ServerGone(e) => {
                    warn!(pool = %self.pool.id(), error = %e, "server connection lost");
                    drop(server);
                    self.close(
                        SqlState::CONNECTION_FAILURE,
                        "pgtier: server connection lost",
                    )
                    .await;
                    return "server connection lost";
                }
                Outcome::ClientViolation(v) => {
                    drop(server);
                    self.violation(v).await;
                    return "protocol violation";
                }
                Outcome::IdleInTransaction => {
                    drop(server);
                    self.close(SqlState::IDLE_IN_TRANSACTION_TIMEOUT, "terminating connection due to idle-in-transaction timeout (idle_transaction_timeout)").await;
                    return "idle_transaction_timeout";
                }
                Outcome::Shutdown => {
                    drop(server);
                    self.close(SqlState::ADMIN_SHUTDOWN, "terminating connection due to administrator command (pgtier is shutting down)").await;
                    return "shutdown";
                }
            }
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
                self.close(SqlState::ADMIN_SHUTDOWN, "terminating connection due to administrator command (pgtier is shutting down)").await;
                Err("shutdown")
            }
        }
    }

    /// Waits (holding no buffer) until the client sends a whole message, and returns the bytes.
    async fn next_request(&mut self) -> Result<BytesMut, &'static str> {
        let mut buf = BytesMut::new();
        let draining = self.shutdown.reached(Phase::Draining);
        tokio::pin!(draining);
        loop {
            if self.shutdown.phase() >= Phase::Draining {
                self.close(
                    SqlState::ADMIN_SHUTDOWN,
                    "terminating connection due to administrator command (pgtier is shutting down)",
                )
                .await;
                return Err("shutdown");
            }
            // An idle client holds no read buffer: wait for readiness first, then allocate.
            if buf.is_empty() {
                tokio::select! {
                    r = self.stream.readable() => if r.is_err() { return Err("client closed") },
                    _ = sleep_opt(self.idle_timeout) => return Err(self.idle_timeout_expired().await),
                    _ = &mut draining => continue,
                }
                buf.reserve(BUF_SIZE);
            }
            // A poll-based read (unlike try_read) clears readiness on a short read, which saves
            // the relay a wasted EAGAIN read per transaction.
            tokio::select! {
                r = self.stream.read_buf(&mut buf) => match r {
                    Ok(0) | Err(_) => return Err("client closed"),
                    Ok(_) => {}
                },
                _ = sleep_opt(self.idle_timeout) => return Err(self.idle_timeout_expired().await),
                _ = &mut draining => continue,
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

    async fn idle_timeout_expired(&mut self) -> &'static str {
        self.close(
            SqlState::IDLE_SESSION_TIMEOUT,
            "terminating connection due to idle-session timeout (client_idle_timeout)",
        )
        .await;
        "client_idle_timeout"
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
        };
        warn!(pool = %self.pool.id(), %message, "client protocol violation");
        self.close(code, &message).await;
    }

    async fn close(&mut self, code: SqlState, message: &str) {
        farewell(&mut self.stream, code, message).await;
    }
}

async fn sleep_opt(limit: Option<Duration>) {
    match limit {
        Some(t) => tokio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}
