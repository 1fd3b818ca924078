//! From a logged-in client to its session: registration against the client limits, the
//! welcome (ParameterStatus, BackendKeyData, ReadyForQuery), and the session's own task.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tracing::{info, warn};

use crate::backend::checkout;
use crate::backend::checkout::TargetError;
use crate::backend::params::{strings_of, ParamChanges};
use crate::backend::pool::ServerParams;
use crate::backend::{PoolError, Upstream};
use crate::config::{Database, PoolMode, Settings, User};
use crate::frontend::farewell::{farewell, pool_farewell};
use crate::frontend::stream::ClientStream;
use crate::metrics::ReasonLabel;
use crate::prepared::client::ClientStatements;
use crate::protocol::messages::{
    auth_ok, backend_key_data, parameter_status, ready_for_query, TxStatus,
};
use crate::protocol::SqlState;
use crate::router::route::{Router, Target};
use crate::runtime::clients::{ClientLimits, ClientState, NewClient};
use crate::runtime::{OpenClient, Proxy};
use crate::write::write_all_within;

use super::Session;

/// Who logged in, as a session starts from it.
pub(crate) struct LoggedIn<'s> {
    /// The user (owned when `auth_query` found it).
    pub user: Cow<'s, User>,
    /// The database.
    pub db: &'s Database,
    /// The session parameters of the startup packet.
    pub startup_params: Vec<(String, String)>,
}

/// Opens the session of a client that logged in: registration (client limits), the welcome,
/// and the session's own task. Consumes the connection.
pub(crate) async fn open(
    proxy: &Arc<Proxy>,
    mut stream: ClientStream,
    peer: SocketAddr,
    open: OpenClient,
    who: LoggedIn<'_>,
    settings: &Arc<Settings>,
) {
    let LoggedIn {
        user,
        db,
        startup_params,
    } = who;
    let Some(runtime) = proxy.database(&db.name) else {
        // Removed by a reload while this client logged in.
        Box::pin(farewell(
            &mut stream,
            SqlState::INVALID_CATALOG_NAME,
            &format!("database \"{}\" is not configured in pgtier", db.name),
        ))
        .await;
        return;
    };
    // Counted before any server is asked for: a client over its user's or database's limit
    // costs no server connection.
    let app_name = startup_params
        .iter()
        .rev()
        .find(|(k, _)| k.eq_ignore_ascii_case("application_name"))
        .map_or("", |(_, v)| v.as_str());
    let registered = proxy.client_registry().register(
        NewClient {
            peer,
            user: &user.name,
            database: &db.name,
            application_name: app_name,
            tls: stream.tls_info(),
        },
        ClientLimits {
            per_user: settings.max_user_client_connections(&user),
            per_database: db.max_client_connections,
        },
    );
    let client = match registered {
        Ok(c) => c,
        Err(e) => {
            info!(%peer, error = %e, "login refused");
            runtime.metrics.error(SqlState::TOO_MANY_CONNECTIONS.0);
            Box::pin(farewell(
                &mut stream,
                SqlState::TOO_MANY_CONNECTIONS,
                &e.to_string(),
            ))
            .await;
            return;
        }
    };
    let generation = settings_generation(proxy, settings);
    let upstream = proxy.upstream_for(db, &user);
    let mode = upstream.settings().mode;
    let router = runtime.router.clone();
    let params = match Box::pin(welcome_params(&upstream, &router)).await {
        Ok(p) => p,
        Err(e) => {
            warn!(%peer, user = %user.name, database = %db.name, error = %e, "no server connection: client closed");
            Box::pin(pool_farewell(&mut stream, &e)).await;
            return;
        }
    };
    // Session mode holds one server (on the primary) for the whole session, taken now.
    let held = match mode {
        PoolMode::Session => {
            match Box::pin(checkout::server_for(
                &router,
                &upstream,
                &db.name,
                Target::Primary,
                None,
                None,
                std::time::Instant::now(),
            ))
            .await
            {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(%peer, user = %user.name, database = %db.name, error = %e, "no server connection: client closed");
                    Box::pin(target_farewell(&mut stream, &e)).await;
                    return;
                }
            }
        }
        PoolMode::Transaction => None,
    };
    if held.is_some() {
        client.entry.set_state(ClientState::Active);
    }
    let mut welcome = BytesMut::with_capacity(512);
    auth_ok(&mut welcome);
    // The client's startup values are its session's values: the reported ones shown now, all
    // set on every server that serves it (a value a server refuses ends the session at its
    // first request, with the server's error), and restored by its RESETs.
    let client_params =
        ParamChanges::from_startup(&params, runtime.limits.extra_params, &startup_params);
    for (k, v) in params.iter() {
        parameter_status(&mut welcome, k, client_params.get(k).unwrap_or(v));
    }
    backend_key_data(&mut welcome, client.key.pid, client.key.secret);
    ready_for_query(&mut welcome, TxStatus::Idle);
    // In session mode a server is held already: the write is bounded like the relay's.
    if write_all_within(&mut stream, &welcome, settings.raw.client_write_timeout)
        .await
        .is_err()
    {
        return;
    }
    drop(welcome);
    // The rules whose users / application_names match the client (its application_name is
    // looked at again whenever it is routed).
    let routing = router.client_routing(&user.name, client_params.application_name(&params));
    let kills_seen = runtime.control.kills();
    let scope_kind = db.causal_scope_for(&user);
    let scope = runtime.scopes.token(scope_kind, &user.name, app_name);
    let session = Session {
        stream,
        upstream,
        runtime,
        proxy: proxy.clone(),
        generation,
        kills_seen,
        reason: ReasonLabel::Unrouted,
        routing,
        causal_unknown: false,
        client,
        _open: open,
        statements: ClientStatements::default(),
        params: client_params,
        default_strings: strings_of(&params),
        defaults: params,
        // Session mode holds the server anyway: nothing to classify, nothing to reject.
        pinned: (mode == PoolMode::Session).then_some("session mode"),
        scope,
        scope_kind,
        looked_up: match user {
            std::borrow::Cow::Owned(u) => Some(Arc::new(u)),
            std::borrow::Cow::Borrowed(_) => None,
        },
        listening: None,
        listen_statements: None,
        shutdown: proxy.shutdown_watch().register(),
    };
    // The session runs in a task of its own, so that an idle client costs only the session's
    // state, not what login needed.
    tokio::spawn(Box::new(session).run(held.map(Box::new), None));
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
pub(super) async fn target_farewell(stream: &mut ClientStream, e: &TargetError) {
    match e {
        TargetError::Pool(e) => pool_farewell(stream, e).await,
        TargetError::NoPrimary { .. } => {
            farewell(stream, SqlState::NO_PRIMARY, &e.to_string()).await
        }
    }
}

/// The generation of the snapshot `settings` came from (a reload may have happened since;
/// then the session refreshes at its first request).
fn settings_generation(proxy: &Proxy, settings: &Arc<crate::config::Settings>) -> u64 {
    let snapshot = proxy.snapshot();
    if Arc::ptr_eq(&snapshot.settings, settings) {
        snapshot.generation
    } else {
        u64::MAX
    }
}
