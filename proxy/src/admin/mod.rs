//! The admin console: clients that log in to the virtual database `pgtier` (or `pgbouncer`) as
//! one of `admin_users` get SHOW commands over the simple query protocol, with PgBouncer's
//! column names where the concept matches.
//!
//! Implemented so far: SHOW HELP, VERSION, DATABASES, POOLS, REPLICAS, ROUTE. The rest of
//! PgBouncer's console (STATS, SERVERS, CLIENTS, CONFIG, PAUSE/RESUME, RELOAD...) answers
//! 0A000 naming the command.

mod show;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::frame::peek_header;
use crate::protocol::messages::{error_response, ready_for_query, Severity, TxStatus};
use crate::protocol::SqlState;
use crate::proxy::Proxy;

/// Largest admin command accepted.
const MAX_COMMAND: usize = 64 * 1024;

/// Serves one admin client until it leaves.
pub async fn serve(proxy: &Proxy, stream: &mut TcpStream) {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let h = match peek_header(&buf, MAX_COMMAND) {
            Ok(Some(h)) if buf.len() >= h.frame_len() => h,
            Ok(_) => match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
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
                match show::run(proxy, sql.trim().trim_end_matches(';').trim()) {
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

/// Sends a FATAL error and closes.
async fn farewell(stream: &mut TcpStream, code: SqlState, message: &str) {
    let mut out = BytesMut::new();
    error_response(&mut out, Severity::Fatal, code, message);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}
