//! The relay between one client and the server connection serving it. Bytes flow in batches:
//! each read is scanned for frame headers only, and forwarded with one write. The scan keeps the
//! few facts pooling needs: how many ReadyForQuery replies are still owed (one per Query, Sync
//! and FunctionCall sent) and the transaction status of the last one.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::PoolMode;
use crate::protocol::frame::{is_frontend_tag, peek_header, FrameError};
use crate::protocol::messages::TxStatus;
use crate::shutdown::{Phase, ShutdownWatch};

/// Read buffer size per direction while a client is active.
pub(crate) const BUF_SIZE: usize = 16 * 1024;
/// Server messages are never buffered whole except these tiny ones; a cap guards the scan.
const MAX_SERVER_HEADER_BODY: usize = i32::MAX as usize;

/// How a relay ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The server is idle with nothing in flight: release it (transaction mode) or, in session
    /// mode, the proxy is draining and the client should be closed.
    Idle,
    /// The client sent Terminate or closed its socket.
    ClientGone {
        /// Whether the server can go back to the pool as is.
        server_clean: bool,
    },
    /// The server closed or failed.
    ServerGone(std::io::Error),
    /// The client broke the protocol.
    ClientViolation(Violation),
    /// The client sat idle inside a transaction past `idle_transaction_timeout`.
    IdleInTransaction,
    /// Shutdown reached its closing phase.
    Shutdown,
}

/// A client protocol violation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A bad or oversized frame.
    Frame(FrameError),
    /// A message type clients may not send.
    UnknownType(u8),
}

/// Limits the relay applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Pool mode of the client's pool.
    pub mode: PoolMode,
    /// Largest client message buffered.
    pub max_message: usize,
    /// Idle-in-transaction limit.
    pub idle_transaction_timeout: Option<Duration>,
}

/// What one scan of client bytes found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ClientScan {
    /// Bytes to forward now.
    pub forward: usize,
    /// Messages that each owe a ReadyForQuery (Query, Sync, FunctionCall).
    pub syncs: u32,
    /// Terminate was found at `forward` (it is not forwarded).
    pub terminate: bool,
}

/// Scans client bytes. Whole messages are forwarded (so later stages can read them); only
/// CopyData may stream through in pieces, with `skip` carrying its remaining length.
pub(crate) fn scan_client(
    buf: &[u8],
    skip: &mut usize,
    max: usize,
) -> Result<ClientScan, Violation> {
    let mut scan = ClientScan::default();
    let mut pos = (*skip).min(buf.len());
    *skip -= pos;
    while let Some(h) = peek_header(&buf[pos..], max).map_err(Violation::Frame)? {
        if !is_frontend_tag(h.tag) {
            return Err(Violation::UnknownType(h.tag));
        }
        let end = pos + h.frame_len();
        match h.tag {
            b'X' => {
                scan.terminate = true;
                break;
            }
            b'd' if end > buf.len() => {
                *skip = end - buf.len();
                pos = buf.len();
                break;
            }
            _ if end > buf.len() => break,
            b'Q' | b'S' | b'F' => scan.syncs += 1,
            _ => {}
        }
        pos = end;
    }
    scan.forward = pos;
    Ok(scan)
}

/// What one scan of server bytes found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ServerScan {
    /// Bytes to forward now.
    pub forward: usize,
    /// ReadyForQuery messages seen.
    pub ready: u32,
    /// Status of the last ReadyForQuery seen.
    pub status: Option<TxStatus>,
}

/// Scans server bytes; only ReadyForQuery bodies are read, everything else streams through.
pub(crate) fn scan_server(buf: &[u8], skip: &mut usize) -> Result<ServerScan, FrameError> {
    let mut scan = ServerScan::default();
    let mut pos = (*skip).min(buf.len());
    *skip -= pos;
    while let Some(h) = peek_header(&buf[pos..], MAX_SERVER_HEADER_BODY)? {
        let end = pos + h.frame_len();
        if h.tag == b'Z' {
            if end > buf.len() {
                break;
            }
            scan.ready += 1;
            scan.status = Some(TxStatus::from_byte(buf[end - 1]));
        } else if end > buf.len() {
            *skip = end - buf.len();
            pos = buf.len();
            break;
        }
        pos = end;
    }
    scan.forward = pos;
    Ok(scan)
}

/// Relays between `client` and `server` until the server is idle (transaction mode) or the
/// session ends. `cbuf` holds client bytes already read; `shutdown` stops it.
pub(crate) async fn run(
    client: &mut TcpStream,
    (server, sbuf): (&mut TcpStream, &mut BytesMut),
    mut cbuf: BytesMut,
    limits: Limits,
    shutdown: &ShutdownWatch,
) -> Outcome {
    let closing = shutdown.reached(Phase::Closing);
    let draining = shutdown.reached(Phase::Draining);
    tokio::pin!(closing, draining);
    let (mut cskip, mut sskip) = (0usize, 0usize);
    let mut owed: u32 = 0;
    let mut status = TxStatus::Idle;

    // Forward what the session already read.
    if let Some(end) =
        on_client_bytes(&mut cbuf, &mut cskip, &mut owed, server, limits, status).await
    {
        return end;
    }
    loop {
        let at_rest = owed == 0 && cskip == 0 && sskip == 0;
        let idle_deadline = match (
            at_rest && status != TxStatus::Idle,
            limits.idle_transaction_timeout,
        ) {
            (true, Some(t)) => Some(Instant::now() + t),
            _ => None,
        };
        let drain_when_idle =
            limits.mode == PoolMode::Session && at_rest && status == TxStatus::Idle;
        if cbuf.capacity() - cbuf.len() < 1024 {
            cbuf.reserve(BUF_SIZE);
        }
        if sbuf.capacity() - sbuf.len() < 1024 {
            sbuf.reserve(BUF_SIZE);
        }
        tokio::select! {
            r = client.read_buf(&mut cbuf) => match r {
                Ok(0) | Err(_) => return Outcome::ClientGone { server_clean: at_rest && status == TxStatus::Idle && cbuf.is_empty() },
                Ok(_) => {
                    if let Some(end) = on_client_bytes(&mut cbuf, &mut cskip, &mut owed, server, limits, status).await {
                        return end;
                    }
                }
            },
            r = server.read_buf(sbuf) => match r {
                Ok(0) => return Outcome::ServerGone(std::io::ErrorKind::UnexpectedEof.into()),
                Err(e) => return Outcome::ServerGone(e),
                Ok(_) => {
                    let scan = match scan_server(sbuf, &mut sskip) {
                        Ok(s) => s,
                        Err(e) => return Outcome::ServerGone(std::io::Error::other(e)),
                    };
                    if client.write_all(&sbuf[..scan.forward]).await.is_err() {
                        return Outcome::ClientGone { server_clean: false };
                    }
                    sbuf.advance(scan.forward);
                    owed = owed.saturating_sub(scan.ready);
                    if let Some(s) = scan.status {
                        status = s;
                    }
                    let done = scan.ready > 0 && owed == 0 && status == TxStatus::Idle
                        && sskip == 0 && sbuf.is_empty() && cskip == 0 && cbuf.is_empty();
                    if done && (limits.mode == PoolMode::Transaction || shutdown.phase() >= Phase::Draining) {
                        return Outcome::Idle;
                    }
                }
            },
            _ = sleep_until_opt(idle_deadline) => return Outcome::IdleInTransaction,
            _ = &mut draining, if drain_when_idle => return Outcome::Idle,
            _ = &mut closing => return Outcome::Shutdown,
        }
    }
}

/// Scans and forwards buffered client bytes; returns an outcome if the relay must end.
async fn on_client_bytes(
    cbuf: &mut BytesMut,
    cskip: &mut usize,
    owed: &mut u32,
    server: &mut TcpStream,
    limits: Limits,
    status: TxStatus,
) -> Option<Outcome> {
    let scan = match scan_client(cbuf, cskip, limits.max_message) {
        Ok(s) => s,
        Err(v) => return Some(Outcome::ClientViolation(v)),
    };
    if scan.forward > 0 {
        if let Err(e) = server.write_all(&cbuf[..scan.forward]).await {
            return Some(Outcome::ServerGone(e));
        }
        cbuf.advance(scan.forward);
        *owed += scan.syncs;
    }
    if scan.terminate {
        let clean = *owed == 0 && *cskip == 0 && status == TxStatus::Idle;
        return Some(Outcome::ClientGone {
            server_clean: clean,
        });
    }
    if let Some(h) = peek_header(cbuf, limits.max_message).ok().flatten() {
        // Make room for the rest of a partially received message.
        cbuf.reserve(h.frame_len().saturating_sub(cbuf.len()));
    }
    None
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn client_scan_counts_syncs_and_keeps_partial_messages() {
        let mut buf = msg(b'P', b"\0select 1\0\0\0");
        buf.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
        buf.extend(msg(b'E', b"\0\0\0\0\0"));
        buf.extend(msg(b'S', b""));
        let whole = buf.len();
        buf.extend(&msg(b'Q', b"select 2\0")[..7]);
        let mut skip = 0;
        let scan = scan_client(&buf, &mut skip, 1 << 20).unwrap();
        assert_eq!(scan.forward, whole);
        assert_eq!(scan.syncs, 1);
        assert!(!scan.terminate);
    }

    #[test]
    fn client_scan_streams_copy_data() {
        let data = msg(b'd', &[7u8; 100]);
        let mut skip = 0;
        let scan = scan_client(&data[..30], &mut skip, 1 << 20).unwrap();
        assert_eq!((scan.forward, skip), (30, 75));
        let scan = scan_client(&data[30..], &mut skip, 1 << 20).unwrap();
        assert_eq!((scan.forward, skip), (75, 0));
    }

    #[test]
    fn client_scan_rejects_bad_input() {
        let mut skip = 0;
        assert_eq!(
            scan_client(&msg(b'?', b""), &mut skip, 100),
            Err(Violation::UnknownType(b'?'))
        );
        assert!(matches!(
            scan_client(&msg(b'Q', &[1u8; 200]), &mut skip, 100),
            Err(Violation::Frame(FrameError::TooLarge { .. }))
        ));
    }

    #[test]
    fn client_scan_stops_at_terminate() {
        let mut buf = msg(b'Q', b"select 1\0");
        let q = buf.len();
        buf.extend(msg(b'X', b""));
        let scan = scan_client(&buf, &mut 0, 100).unwrap();
        assert_eq!((scan.forward, scan.syncs, scan.terminate), (q, 1, true));
    }

    #[test]
    fn server_scan_streams_rows_and_reads_ready() {
        let mut buf = msg(b'T', b"rowdesc");
        buf.extend(msg(b'D', &[1u8; 1000]));
        buf.extend(msg(b'C', b"SELECT 1\0"));
        buf.extend(msg(b'Z', b"T"));
        let mut skip = 0;
        // A DataRow split across reads streams through.
        let scan = scan_server(&buf[..500], &mut skip).unwrap();
        assert_eq!(scan.forward, 500);
        assert!(skip > 0);
        let scan = scan_server(&buf[500..], &mut skip).unwrap();
        assert_eq!(scan.forward, buf.len() - 500);
        assert_eq!(
            (scan.ready, scan.status),
            (1, Some(TxStatus::InTransaction))
        );
        // A split ReadyForQuery waits for its status byte.
        let z = msg(b'Z', b"I");
        let scan = scan_server(&z[..5], &mut 0).unwrap();
        assert_eq!((scan.forward, scan.ready), (0, 0));
    }
}
