//! Login: startup negotiation, `max_client_conn` and shutdown checks, authentication and the
//! database lookup, all under one `client_login_timeout`.

pub mod auth;
pub mod startup;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tracing::{error, info};

use crate::config::{Database, Settings, SslMode, User};
use crate::frontend::stream::ClientStream;
use crate::protocol::auth::ScramKeys;
use crate::protocol::startup::{CancelKey, OptionsError, StartupError};
use crate::protocol::SqlState;
use crate::runtime::auth_lookup::LookupError;
use crate::runtime::{ClientGuard, DbRuntime};
use crate::shutdown::Phase;
use crate::tls::acceptor::common_name;
use crate::tls::ClientTls;

use startup::{negotiate, Opening};

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
    /// A user not in `admin_users` asked for the admin console.
    #[error("user \"{0}\" may not use the pgtier admin console (admin_users)")]
    NotAdmin(String),
    /// `max_client_conn` reached.
    #[error("sorry, too many clients already (max_client_conn = {0})")]
    TooManyClients(u32),
    /// Startup and authentication took longer than `client_login_timeout`.
    #[error("client_login_timeout ({0:?}) expired before login completed")]
    Timeout(Duration),
    /// pgtier is shutting down.
    #[error("the database system is shutting down")]
    ShuttingDown,
    /// `auth_query` could not answer (the primary is down or slow).
    #[error(transparent)]
    AuthQuery(#[from] LookupError),
    /// The TLS handshake failed or was not acceptable (nothing can be told to the client).
    #[error("{0}")]
    Tls(String),
    /// A plain-text startup where client TLS is required.
    #[error("SSL required")]
    SslRequired,
    /// A client certificate was needed and is missing, unverified or names someone else.
    #[error("certificate authentication failed for user \"{user}\": {why}")]
    Certificate {
        /// The user the client logged in as.
        user: String,
        /// What was wrong.
        why: &'static str,
    },
    /// A startup parameter pgtier cannot apply to pooled servers.
    #[error(transparent)]
    Options(#[from] OptionsError),
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
    /// The SQLSTATE the client is told.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            LoginError::Io(_)
            | LoginError::Startup(_)
            | LoginError::Protocol(_)
            | LoginError::Tls(_) => SqlState::PROTOCOL_VIOLATION,
            LoginError::AuthQuery(_) => SqlState::CANNOT_CONNECT,
            LoginError::SslRequired | LoginError::Certificate { .. } => {
                SqlState::INVALID_AUTHORIZATION
            }
            LoginError::UnsupportedProtocol(..) => SqlState::FEATURE_NOT_SUPPORTED,
            LoginError::NoUser | LoginError::NotAdmin(_) => SqlState::INVALID_AUTHORIZATION,
            LoginError::PasswordFailed(_) => SqlState::INVALID_PASSWORD,
            LoginError::UnknownDatabase(_) => SqlState::INVALID_CATALOG_NAME,
            LoginError::TooManyClients(_) => SqlState::TOO_MANY_CONNECTIONS,
            LoginError::Timeout(_) => SqlState::PROTOCOL_VIOLATION,
            LoginError::ShuttingDown => SqlState::CANNOT_CONNECT_NOW,
            LoginError::Options(OptionsError::NeedsValue(_)) => SqlState::SYNTAX_ERROR,
            LoginError::Options(_) => SqlState::FEATURE_NOT_SUPPORTED,
        }
    }
}

/// How a login attempt ended well (returned once per connection: its size does not matter).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Login<'s> {
    /// The connection was a cancel request.
    Cancel(CancelKey),
    /// An authenticated admin-console user (database `pgtier` or `pgbouncer`).
    Admin {
        /// The user.
        user: &'s User,
    },
    /// An authenticated client for a configured database.
    Client {
        /// The user (owned when `auth_query` found it).
        user: Cow<'s, User>,
        /// The database.
        db: &'s Database,
        /// The session parameters of the startup packet (`options` split into them).
        params: Vec<(String, String)>,
        /// From a SCRAM login: what logs in to the servers without the password.
        scram_keys: Option<ScramKeys>,
    },
}

/// Runs startup and authentication within `client_login_timeout`.
pub async fn login<'s>(
    stream: &mut ClientStream,
    peer: SocketAddr,
    settings: &'s Settings,
    lookups: &HashMap<String, Arc<DbRuntime>>,
    tls: Option<&ClientTls>,
    guard: &ClientGuard,
    phase: Phase,
) -> Result<Login<'s>, LoginError> {
    let limit = settings.raw.client_login_timeout;
    crate::timers::timeout(
        limit,
        login_inner(stream, peer, settings, lookups, tls, guard, phase),
    )
    .await
    .unwrap_or(Err(LoginError::Timeout(limit)))
}

async fn login_inner<'s>(
    stream: &mut ClientStream,
    peer: SocketAddr,
    settings: &'s Settings,
    lookups: &HashMap<String, Arc<DbRuntime>>,
    tls: Option<&ClientTls>,
    guard: &ClientGuard,
    phase: Phase,
) -> Result<Login<'s>, LoginError> {
    let startup = match negotiate(stream, tls).await? {
        Opening::Cancel(key) => return Ok(Login::Cancel(key)),
        Opening::Client(m) => m,
    };
    if guard.over_limit() {
        return Err(LoginError::TooManyClients(settings.raw.max_client_conn));
    }
    if phase >= Phase::Draining {
        return Err(LoginError::ShuttingDown);
    }
    let user_name = startup.param("user").ok_or(LoginError::NoUser)?;
    let db_name = startup.param("database").unwrap_or(user_name);
    let looked_up = match settings.users.get(user_name) {
        Some(_) => None,
        None => look_up(settings, lookups, user_name, db_name).await?,
    };
    let user = settings.users.get(user_name).or(looked_up.as_ref());
    // A certificate the client presented was verified in the handshake (against
    // client_tls_ca_file); its common name is who it proves to be.
    let cert_name = stream
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| common_name(leaf));
    if tls.is_some_and(|t| t.mode == SslMode::VerifyFull) && cert_name.as_deref() != Some(user_name)
    {
        return Err(LoginError::Certificate {
            user: user_name.to_owned(),
            why: "client_tls_sslmode is verify-full and the certificate's common name is not the user name",
        });
    }
    let scram_keys = auth::authenticate(stream, user, user_name, cert_name.as_deref()).await?;
    if matches!(db_name, "pgtier" | "pgbouncer") && !settings.databases.contains_key(db_name) {
        // Only configured users (never one found by auth_query) may be admins.
        let user = settings
            .users
            .get(user_name)
            .ok_or_else(|| LoginError::PasswordFailed(user_name.to_owned()))?;
        if !settings.raw.admin_users.contains(&user.name) {
            return Err(LoginError::NotAdmin(user.name.clone()));
        }
        info!(%peer, user = %user.name, database = db_name, "admin console client connected");
        return Ok(Login::Admin { user });
    }
    let user = match (settings.users.get(user_name), looked_up) {
        (Some(u), _) => Cow::Borrowed(u),
        (None, Some(u)) => Cow::Owned(u),
        (None, None) => return Err(LoginError::UnknownDatabase(db_name.to_owned())),
    };
    let Some(db) = settings.databases.get(db_name) else {
        return Err(LoginError::UnknownDatabase(db_name.to_owned()));
    };
    // Every session parameter is the client's (set on every server that serves it): what
    // cannot be is refused now, never ignored.
    let params = startup.session_params()?;
    // Paired with "client disconnected" in `session` (same peer, user and database fields).
    info!(%peer, user = %user.name, database = %db.name, "client connected");
    Ok(Login::Client {
        user,
        db,
        params,
        scram_keys,
    })
}

/// A user pgtier has no entry for, from the database's `auth_query` (None: not found, no lookup
/// configured, or a secret that cannot check this login; the login then fails like a wrong
/// password).
async fn look_up(
    settings: &Settings,
    lookups: &HashMap<String, Arc<DbRuntime>>,
    user: &str,
    db: &str,
) -> Result<Option<User>, LoginError> {
    let (Some(a), Some(lookup)) = (
        settings
            .databases
            .get(db)
            .and_then(|d| d.auth_query.as_ref()),
        lookups.get(db).and_then(|rt| rt.auth_lookup.as_ref()),
    ) else {
        return Ok(None);
    };
    let Some(secret) = lookup.secret(user).await? else {
        return Ok(None);
    };
    let found = crate::config::looked_up_user(user, &secret, a.method);
    if found.is_none() {
        // The secret itself is never logged.
        error!(user, auth_type = ?a.method, "auth_query returned a secret that cannot check this login (not a SCRAM verifier or md5 hash, or an md5 hash with auth_type scram-sha-256)");
    }
    Ok(found)
}
