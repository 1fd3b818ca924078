//! One server connection: TCP connect, startup, authentication (SCRAM-SHA-256, MD5, cleartext or
//! trust, as the server asks) and the parameters the server reports.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::backend::cancel::CancelTarget;
use crate::backend::params::ParamChanges;
use crate::backend::stream::{negotiate, ServerStream};
use crate::config::{NodeAddr, SslMode};
use crate::prepared::server::ServerStatements;
use crate::protocol::frame::peek_header;
use crate::protocol::startup::CancelKey;
use crate::tls::connector::ServerTls;
use crate::tls::TlsInfo;

/// Largest message accepted from a server during login.
pub(super) const MAX_LOGIN_MESSAGE: usize = 1 << 20;

/// Credentials and database for logging in to a server.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerLogin {
    /// Role name on the server.
    pub user: String,
    /// Password, if the server asks for one.
    pub password: Option<String>,
    /// The role's `md5...` hash (md5 pass-through when there is no password).
    pub md5: Option<String>,
    /// Database name on the server.
    pub dbname: String,
    /// Most prepared statements kept per server connection.
    pub max_prepared_statements: usize,
    /// TLS towards the server (`server_tls_*` of the database).
    pub tls: ServerTls,
}

impl std::fmt::Debug for ServerLogin {
    // Never the password or the hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerLogin")
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("has_password", &self.password.is_some())
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Why a server connection could not be made.
#[derive(Debug, Error)]
pub enum BackendError {
    /// TCP or socket failure.
    #[error("cannot connect to server {addr}: {source}")]
    Io {
        /// Server address.
        addr: NodeAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Connect + login took longer than `server_connect_timeout`.
    #[error("connecting to server {addr} timed out after {timeout:?} (server_connect_timeout)")]
    Timeout {
        /// Server address.
        addr: NodeAddr,
        /// The limit.
        timeout: Duration,
    },
    /// TLS was refused, failed, or the server's certificate did not verify.
    #[error("cannot connect to {addr}: TLS: {reason}")]
    Tls {
        /// Server address.
        addr: NodeAddr,
        /// Why (e.g. "certificate verify failed: UnknownIssuer").
        reason: String,
    },
    /// The server refused the login with an ErrorResponse (kept whole for the client).
    #[error("server {addr} refused the login: {code} {message}")]
    Refused {
        /// Server address.
        addr: NodeAddr,
        /// SQLSTATE.
        code: String,
        /// Message.
        message: String,
        /// The raw ErrorResponse frame, relayed unchanged to the client.
        frame: Bytes,
    },
    /// The server wants a password but none is configured.
    #[error("server {addr} asks user {user} for a password, but no server_password is configured")]
    NoPassword {
        /// Server address.
        addr: NodeAddr,
        /// Server-side user.
        user: String,
    },
    /// SCRAM pass-through: no client of this role has logged in with SCRAM since pgtier
    /// started, so pgtier has nothing to answer the server with.
    #[error("server {addr} asks user {user} for SCRAM, and pgtier has no password: a client of this user must log in with SCRAM first (pass-through)")]
    NoScramKeys {
        /// Server address.
        addr: NodeAddr,
        /// Server-side user.
        user: String,
    },
    /// The server broke the protocol or asked for something pgtier cannot do.
    #[error("server {addr}: {what}")]
    Protocol {
        /// Server address.
        addr: NodeAddr,
        /// What went wrong.
        what: String,
    },
}

/// What the relay works on: a server connection's socket, read buffer and statements.
#[derive(Debug)]
pub struct ServerIo<'a> {
    /// The socket.
    pub stream: &'a mut ServerStream,
    /// Bytes read from the server and not yet relayed.
    pub inbuf: &'a mut BytesMut,
    /// pgtier-named statements prepared on this connection.
    pub statements: &'a mut ServerStatements,
    /// Parameter values reported at login.
    pub login_params: &'a [(String, String)],
    /// Tracked parameters changed since login.
    pub changed: &'a mut ParamChanges,
    /// A transaction since the last reset may have left sequence state (nextval/setval, which
    /// currval/lastval read): another client's transaction must not see it.
    pub sequences_dirty: &'a mut bool,
}

/// An authenticated server connection, idle at ReadyForQuery.
#[derive(Debug)]
pub struct ServerConn {
    stream: ServerStream,
    /// Read buffer for server bytes; it lives with the connection (bounded by pool sizes), so
    /// relaying a transaction allocates nothing for it.
    inbuf: BytesMut,
    statements: ServerStatements,
    /// Tracked parameters now differing from their values at login.
    changed: ParamChanges,
    /// Sequence state may be on the connection (see [`ServerIo::sequences_dirty`]).
    sequences_dirty: bool,
    peer: SocketAddr,
    /// pgtier's end of the socket (for SHOW SERVERS).
    local: Option<SocketAddr>,
    key: CancelKey,
    params: Vec<(String, String)>,
    created: Instant,
    /// Login time in µs since the Unix epoch (for SHOW SERVERS).
    connected_at: u64,
    last_used: Instant,
    /// Slots of the limits shared between pools (given back when the connection closes).
    slots: super::caps::Slots,
}

/// What SHOW SERVERS shows of a server connection.
#[derive(Debug, Clone, Copy)]
pub struct ServerSummary {
    /// The server backend's process id.
    pub pid: i32,
    /// The server's address.
    pub peer: SocketAddr,
    /// pgtier's end of the socket.
    pub local: Option<SocketAddr>,
    /// Login time (µs since the Unix epoch).
    pub connected_at: u64,
    /// Statements pgtier prepared on it.
    pub prepared: usize,
    /// TLS version and cipher suite (None: plain text).
    pub tls: Option<TlsInfo>,
}

impl ServerConn {
    /// Connects and logs in, all within `limit`.
    pub async fn connect(
        addr: &NodeAddr,
        login: &ServerLogin,
        limit: Duration,
    ) -> Result<ServerConn, BackendError> {
        match crate::timers::timeout(limit, Self::connect_inner(addr, login)).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Timeout {
                addr: addr.clone(),
                timeout: limit,
            }),
        }
    }

    async fn connect_inner(
        addr: &NodeAddr,
        login: &ServerLogin,
    ) -> Result<ServerConn, BackendError> {
        match login.tls.mode() {
            SslMode::Disable => Self::attempt(addr, login, false).await,
            // Plain text first; TLS once more if the server refuses plain text (pg_hba
            // `hostssl`, or a `host ... reject` for unencrypted connections: 28000).
            SslMode::Allow => match Self::attempt(addr, login, false).await {
                Err(BackendError::Refused { code, .. }) if code == "28000" => {
                    Self::attempt(addr, login, true).await
                }
                other => other,
            },
            _ => Self::attempt(addr, login, true).await,
        }
    }

    /// One connect + login; `tls`: send SSLRequest first.
    async fn attempt(
        addr: &NodeAddr,
        login: &ServerLogin,
        tls: bool,
    ) -> Result<ServerConn, BackendError> {
        let io = |source| BackendError::Io {
            addr: addr.clone(),
            source,
        };
        let tcp = TcpStream::connect((addr.host.as_str(), addr.port))
            .await
            .map_err(io)?;
        // Before the handshake: with Nagle, each handshake flight would wait for the delayed
        // ACK of the previous one (~40 ms per connection).
        tcp.set_nodelay(true).map_err(io)?;
        let peer = tcp.peer_addr().map_err(io)?;
        let mut stream = if tls {
            negotiate(tcp, addr, &login.tls).await?
        } else {
            ServerStream::Plain(tcp)
        };
        let (key, reported) = super::auth::authenticate(&mut stream, addr, login).await?;
        let now = Instant::now();
        let local = stream.local_addr().ok();
        Ok(ServerConn {
            local,
            connected_at: crate::clock::unix_micros(),
            stream,
            inbuf: BytesMut::with_capacity(16 * 1024),
            statements: ServerStatements::new(login.max_prepared_statements),
            changed: ParamChanges::default(),
            sequences_dirty: false,
            peer,
            key: key.unwrap_or(CancelKey { pid: 0, secret: 0 }),
            params: reported,
            created: now,
            last_used: now,
            slots: Default::default(),
        })
    }

    /// Keeps `slots` of shared limits until the connection closes.
    pub fn hold(&mut self, slots: super::caps::Slots) {
        self.slots = slots;
    }

    /// The socket, its read buffer and its prepared statements, for relaying.
    pub fn io(&mut self) -> ServerIo<'_> {
        ServerIo {
            stream: &mut self.stream,
            inbuf: &mut self.inbuf,
            statements: &mut self.statements,
            login_params: &self.params,
            changed: &mut self.changed,
            sequences_dirty: &mut self.sequences_dirty,
        }
    }

    /// The server backend's process id.
    pub fn pid(&self) -> i32 {
        self.key.pid
    }

    /// What SHOW SERVERS shows of it.
    pub fn summary(&self) -> ServerSummary {
        ServerSummary {
            pid: self.pid(),
            peer: self.peer,
            local: self.local,
            connected_at: self.connected_at,
            prepared: self.statements.len(),
            tls: self.stream.tls_info(),
        }
    }

    /// Parameters the server reported at login.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// Where a cancel for this connection's query must go.
    pub fn cancel_target(&self) -> CancelTarget {
        CancelTarget {
            addr: self.peer,
            key: self.key,
        }
    }

    /// Resets all session state with `DISCARD ALL` before another client may use the
    /// connection; false if that failed (the caller then closes it).
    pub async fn discard_all(&mut self, limit: Duration) -> bool {
        let ok = self.query_value("DISCARD ALL", limit).await.is_ok();
        if ok {
            self.statements.clear();
            self.changed = ParamChanges::default();
            self.sequences_dirty = false;
        }
        ok
    }

    /// Runs one simple query on an idle connection and returns the first column of its first
    /// row (None for no row or NULL). Fails if the query fails, times out, or leaves the
    /// connection anything but idle; the caller must then close the connection.
    pub async fn query_value(
        &mut self,
        sql: &str,
        limit: Duration,
    ) -> Result<Option<String>, QueryFailed> {
        let work = async {
            let mut msg = Vec::with_capacity(sql.len() + 6);
            msg.push(b'Q');
            msg.extend_from_slice(&(sql.len() as u32 + 5).to_be_bytes());
            msg.extend_from_slice(sql.as_bytes());
            msg.push(0);
            super::auth::write_flush(&mut self.stream, &msg).await?;
            self.inbuf.clear();
            let mut clean = true;
            let mut value = None;
            loop {
                let h = match peek_header(&self.inbuf, MAX_LOGIN_MESSAGE) {
                    Ok(Some(h)) if self.inbuf.len() >= h.frame_len() => h,
                    Ok(_) => {
                        if self.stream.read_buf(&mut self.inbuf).await? == 0 {
                            return Ok(None);
                        }
                        continue;
                    }
                    Err(_) => return Ok(None),
                };
                let frame = self.inbuf.split_to(h.frame_len());
                match h.tag {
                    b'E' => clean = false,
                    b'D' if value.is_none() => value = Some(first_column(&frame[5..])),
                    b'Z' => {
                        return Ok::<_, std::io::Error>(
                            // A ReadyForQuery without its status byte is not clean.
                            (clean && frame.get(5) == Some(&b'I')).then(|| value.flatten()),
                        );
                    }
                    _ => {}
                }
            }
        };
        match crate::timers::timeout(limit, work).await {
            Ok(Ok(Some(v))) => Ok(v),
            _ => Err(QueryFailed),
        }
    }

    /// Age since login.
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    /// Age since login at `now`.
    pub fn age_at(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.created)
    }

    /// Time since it was last returned to the pool.
    pub fn idle_for(&self) -> Duration {
        self.last_used.elapsed()
    }

    /// Marks the connection as returned to the pool at `now`.
    pub fn touch_at(&mut self, now: Instant) {
        self.last_used = now;
    }

    /// False if the server closed the socket or sent something unprompted (e.g. a FATAL after
    /// `pg_terminate_backend`) while the connection sat idle: such a connection is not reused.
    pub fn is_alive(&mut self) -> bool {
        self.stream.is_alive()
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        // Terminate, best effort and without blocking, so the server does not log an EOF.
        self.stream.terminate();
    }
}

/// A query pgtier ran on its own failed, timed out or left the connection unusable.
#[derive(Debug, Error)]
#[error("pgtier's own query on a server connection failed")]
pub struct QueryFailed;

/// The first column of a DataRow body, as text (None for NULL or a malformed row).
fn first_column(body: &[u8]) -> Option<String> {
    let count = u16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    if count == 0 {
        return None;
    }
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    let bytes = body.get(6..6 + len)?;
    String::from_utf8(bytes.to_vec()).ok()
}
