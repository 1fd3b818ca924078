//! The admin console: clients that log in to the virtual database `pgtier` (or `pgbouncer`) as
//! one of `admin_users` get SHOW commands over the simple query protocol, with PgBouncer's
//! column names where the concept matches.
//!
//! - `show`: SHOW HELP, VERSION, DATABASES, POOLS, REPLICAS, ROUTE.
//! - `lists`: SHOW STATS, SERVERS, CLIENTS, CONFIG.
//! - `commands`: PAUSE, RESUME, RELOAD, RECONNECT, KILL, SHUTDOWN, BAN, UNBAN.
//!
//! Anything else answers 0A000 naming the command.

mod commands;
mod lists;
mod show;
mod table;

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tracing::info;

use crate::frontend::stream::ClientStream;
use crate::protocol::frame::peek_header;
use crate::protocol::messages::{error_response, ready_for_query, Severity, TxStatus};
use crate::protocol::SqlState;
use crate::runtime::Proxy;
use crate::shutdown::Phase;
use crate::write::write_all_within;

/// Largest admin command accepted.
const MAX_COMMAND: usize = 64 * 1024;

/// Serves one admin client until it leaves.
pub async fn serve(proxy: &Proxy, stream: &mut ClientStream) {
    let mut buf = BytesMut::with_capacity(1024);
    // Admin sessions end when shutdown begins (they would hold the drain up otherwise).
    let draining = proxy.shutdown_watch().reached(Phase::Draining);
    tokio::pin!(draining);
    // `admin_idle_timeout` counts from the last command (a half-sent one does not count).
    // Read at each command, so a RELOAD applies from the next one.
    let idle = crate::timers::sleep(Duration::ZERO);
    tokio::pin!(idle);
    let mut idle_limit = idle_timeout(proxy);
    if let Some(t) = idle_limit {
        idle.as_mut().reset(Instant::now() + t);
    }
    loop {
        let h = match peek_header(&buf, MAX_COMMAND) {
            Ok(Some(h)) if buf.len() >= h.frame_len() => h,
            Ok(_) => tokio::select! {
                r = stream.read_buf(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                },
                _ = &mut idle, if idle_limit.is_some() => {
                    info!(limit = ?idle_limit, "admin console client idle for admin_idle_timeout: closing it");
                    farewell(
                        stream,
                        SqlState::IDLE_SESSION_TIMEOUT,
                        "terminating connection due to idle-session timeout (admin_idle_timeout)",
                    )
                    .await;
                    return;
                }
                _ = &mut draining => {
                    farewell(
                        stream,
                        SqlState::ADMIN_SHUTDOWN,
                        "terminating connection due to administrator command (pgtier is shutting down)",
                    )
                    .await;
                    return;
                }
            },
            Err(e) => {
                farewell(
                    stream,
                    SqlState::PROGRAM_LIMIT_EXCEEDED,
                    &format!("pgtier: {e}"),
                )
                .await;
                return;
            }
        };
        let frame = buf.split_to(h.frame_len());
        let mut out = BytesMut::new();
        match h.tag {
            b'Q' => {
                let body = &frame[5..];
                let sql = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body));
                match run(proxy, sql.trim().trim_end_matches(';').trim()).await {
                    Ok(reply) => out.extend_from_slice(&reply),
                    Err((code, message)) => {
                        error_response(&mut out, Severity::Error, code, &message)
                    }
                }
                ready_for_query(&mut out, TxStatus::Idle);
            }
            b'X' => return,
            _ => {
                farewell(
                    stream,
                    SqlState::PROTOCOL_VIOLATION,
                    "pgtier admin console: only the simple query protocol is supported",
                )
                .await;
                return;
            }
        }
        let limit = proxy.settings().raw.client_write_timeout;
        if let Err(e) = write_all_within(stream, &out, limit).await {
            if e.stalled() {
                info!(
                    ?limit,
                    "admin console client accepted no data for client_write_timeout: closing it"
                );
            }
            return;
        }
        idle_limit = idle_timeout(proxy);
        if let Some(t) = idle_limit {
            idle.as_mut().reset(Instant::now() + t);
        }
    }
}

/// The admin console's idle limit now (None: never).
fn idle_timeout(proxy: &Proxy) -> Option<Duration> {
    crate::config::settings::nonzero(proxy.settings().raw.admin_idle_timeout)
}

/// Runs one admin command; returns its reply (without ReadyForQuery).
async fn run(proxy: &Proxy, command: &str) -> Result<BytesMut, table::Failure> {
    let (verb, rest) = table::split(command);
    let verb = verb.to_ascii_lowercase();
    if verb == "show" {
        return show::run(proxy, command, rest);
    }
    match commands::run(proxy, &verb, rest).await {
        Some(r) => r,
        None => Err(table::unsupported(command)),
    }
}

/// Sends a FATAL error (bounded in time) and closes.
async fn farewell(stream: &mut ClientStream, code: SqlState, message: &str) {
    crate::frontend::farewell::farewell(stream, code, message).await;
}
