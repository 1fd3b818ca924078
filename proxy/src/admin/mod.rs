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

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::frame::peek_header;
use crate::protocol::messages::{error_response, ready_for_query, Severity, TxStatus};
use crate::protocol::SqlState;
use crate::proxy::Proxy;
use crate::shutdown::Phase;

/// Largest admin command accepted.
const MAX_COMMAND: usize = 64 * 1024;

/// Serves one admin client until it leaves.
pub async fn serve(proxy: &Proxy, stream: &mut TcpStream) {
    let mut buf = BytesMut::with_capacity(1024);
    // Admin sessions end when shutdown begins (they would hold the drain up otherwise).
    let draining = proxy.shutdown_watch().reached(Phase::Draining);
    tokio::pin!(draining);
    loop {
        let h = match peek_header(&buf, MAX_COMMAND) {
            Ok(Some(h)) if buf.len() >= h.frame_len() => h,
            Ok(_) => tokio::select! {
                r = stream.read_buf(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                },
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
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
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

/// Sends a FATAL error and closes.
async fn farewell(stream: &mut TcpStream, code: SqlState, message: &str) {
    let mut out = BytesMut::new();
    error_response(&mut out, Severity::Fatal, code, message);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}
