//! One accepted connection, from login to what serves it: the admin console, a cancel
//! request forwarded, a refusal with its reason, or a client session (`session::open`).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tracing::{error, info};

use crate::frontend::farewell::farewell;
use crate::frontend::login::{login, Login, LoginError};
use crate::frontend::stream::ClientStream;
use crate::panics::Contained;
use crate::protocol::messages::{auth_ok, ready_for_query, TxStatus};
use crate::protocol::SqlState;
use crate::runtime::{ClientGuard, Proxy};
use crate::shutdown::Phase;
use crate::write::write_all_within;

use super::session;

/// Serves one accepted connection to the end (`cancel_only`: a cancel request is forwarded,
/// a login refused as during shutdown).
pub async fn handle(
    proxy: Arc<Proxy>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    guard: ClientGuard,
    cancel_only: bool,
) {
    // Before any TLS handshake too: with Nagle on, its records wait for ACKs (40 ms each).
    let _ = tcp.set_nodelay(true);
    let mut stream = ClientStream::Plain(tcp);
    let snapshot = proxy.snapshot();
    let settings = snapshot.settings.clone();
    let tls = snapshot.client_tls.clone();
    // Boxed, like the first server connection below: their state is large and freed once they
    // are done, so an idle client's task stays small.
    let logged_in = {
        let login = Box::pin(login(
            &mut stream,
            peer,
            &settings,
            &snapshot.databases,
            tls.as_deref(),
            &guard,
            if cancel_only {
                proxy.phase().max(Phase::Draining)
            } else {
                proxy.phase()
            },
        ));
        tokio::select! {
            r = login => r,
            // max_client_conn reached and this is the oldest connection still logging in.
            () = guard.evicted() => {
                info!(%peer, "login not finished when max_client_conn was reached: connection closed for a newer one");
                return;
            }
        }
    };
    let open = guard.logged_in();
    drop(tls);
    drop(snapshot);
    match (&stream, &logged_in) {
        (ClientStream::Plain(_), _) => {}
        // A handshake cut short (the login timeout drops it: Broken) or refused after it
        // completed (direct TLS without ALPN).
        (ClientStream::Broken, _) | (_, Err(LoginError::Tls(_))) => {
            proxy.metrics().tls_handshake(false)
        }
        (ClientStream::Tls(_), _) => proxy.metrics().tls_handshake(true),
    }
    let (user, db, startup_params) = match logged_in {
        Ok(Login::Client {
            user,
            db,
            params,
            scram_keys,
        }) => {
            // SCRAM pass-through: with no server password, this login's keys are what logs
            // in to the servers as the same role.
            if let Some(keys) = scram_keys
                .filter(|_| user.server_password.is_none() && user.server_user == user.name)
            {
                crate::backend::auth::learn_scram_keys(&user.server_user, keys);
            }
            (user, db, params)
        }
        Ok(Login::Admin { user }) => {
            Box::pin(admin(&proxy, &mut stream, peer)).await;
            info!(%peer, user = %user.name, "admin console client disconnected");
            return;
        }
        Ok(Login::Cancel(key)) => {
            drop(open);
            Box::pin(proxy.forward_cancel(key)).await;
            return;
        }
        Err(LoginError::Io(_)) => return,
        Err(e @ LoginError::Tls(_)) => {
            // Nothing can be said to a client whose handshake failed: logged, closed.
            info!(%peer, error = %e, "TLS handshake failed: connection closed");
            return;
        }
        Err(e) => {
            info!(%peer, error = %e, "login refused");
            Box::pin(farewell(&mut stream, e.sqlstate(), &e.to_string())).await;
            return;
        }
    };
    Box::pin(session::open(
        &proxy,
        stream,
        peer,
        open,
        session::LoggedIn {
            user,
            db,
            startup_params,
        },
        &settings,
    ))
    .await;
}

/// Serves an admin console client; a panic in it closes the client with XX000.
async fn admin(proxy: &Arc<Proxy>, stream: &mut ClientStream, peer: SocketAddr) {
    let mut welcome = BytesMut::with_capacity(64);
    auth_ok(&mut welcome);
    ready_for_query(&mut welcome, TxStatus::Idle);
    let limit = proxy.settings().raw.client_write_timeout;
    if write_all_within(stream, &welcome, limit).await.is_err() {
        return;
    }
    if let Err(panic) = Contained(Box::pin(crate::frontend::admin::serve(proxy, stream))).await {
        error!(%peer, panic, "internal error in an admin session: closed");
        let message = "pgtier: internal error; the connection is closed (see pgtier's log)";
        farewell(stream, SqlState::INTERNAL_ERROR, message).await;
    }
}
