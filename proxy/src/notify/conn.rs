//! A database's listening connection: opened on the primary at the first LISTEN, it LISTENs on
//! the union of its clients' channels (UNLISTENs a channel when its last client leaves), hands
//! every NotificationResponse to the hub, and reconnects (bounded backoff, re-LISTEN) when it
//! is lost or the primary changes. It ends when no client listens any more.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::backend::ServerConn;
use crate::protocol::frame::peek_header;
use crate::timers::timeout;

use super::Hub;

/// First wait after a failed connection attempt; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A connection open this long before it was lost restarts the backoff.
const SERVED_A_WHILE: Duration = Duration::from_secs(10);
/// How often the connection checks that its node is still the primary.
const PRIMARY_CHECK: Duration = Duration::from_millis(500);
/// After this long without traffic the connection is probed (an empty query), so that a dead
/// peer is noticed.
const PROBE_AFTER: Duration = Duration::from_secs(15);
/// Limit on one round trip (LISTEN/UNLISTEN batch, probe), and on one write.
const ROUND_TRIP: Duration = Duration::from_secs(10);
/// Largest message accepted from the listening connection (a notification payload is at
/// most 8000 bytes by default).
const MAX_MESSAGE: usize = 1 << 20;

/// Why a listening connection stopped.
enum Stop {
    /// Nobody listens any more: the task ends.
    Unused,
    /// Lost, failed, or no longer on the primary: connect again.
    Lost(String),
}

/// The hub's connection task.
pub(super) async fn run(hub: Arc<Hub>) {
    let mut backoff = MIN_BACKOFF;
    // A connection was lost while clients listened: tell them when the next one is up.
    let mut lost = false;
    while let Some(source) = hub.source_or_end() {
        let topology = source.router.topology();
        let wait = source.router.settings().primary_wait_timeout;
        let connected = match topology.wait_for_primary(wait).await {
            None => Err("no primary known".to_owned()),
            Some(node) => {
                let pool = source.upstream.node(node);
                ServerConn::connect(pool.node(), pool.login(), source.limits.connect_timeout)
                    .await
                    .map(|c| (node, c))
                    .map_err(|e| e.to_string())
            }
        };
        let (node, mut conn) = match connected {
            Ok(c) => c,
            Err(error) => {
                warn!(database = %hub.database, %error, ?backoff, "cannot open the LISTEN connection to the primary: trying again");
                crate::timers::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                lost = true;
                continue;
            }
        };
        info!(database = %hub.database, node = %source.upstream.node(node).node(), pid = conn.pid(), "LISTEN connection open on the primary");
        let opened = Instant::now();
        let stop = serve(&hub, &mut conn, &source.router, node, lost).await;
        hub.disconnected();
        match stop {
            Stop::Unused => {
                info!(database = %hub.database, "no client listens any more: LISTEN connection closed");
                return;
            }
            Stop::Lost(why) => {
                warn!(database = %hub.database, why, "LISTEN connection lost: reconnecting and listening again");
                lost = true;
                // A connection that served a while starts the backoff over; one that failed
                // at once (a server that refuses the LISTEN) does not make a tight loop.
                if opened.elapsed() >= SERVED_A_WHILE {
                    backoff = MIN_BACKOFF;
                }
                crate::timers::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Keeps `conn` listening on what the hub wants until it is unused or lost.
async fn serve(
    hub: &Hub,
    conn: &mut ServerConn,
    router: &crate::router::route::Router,
    node: usize,
    lost: bool,
) -> Stop {
    let mut listening: HashSet<String> = HashSet::new();
    let mut announced = false;
    let mut last_traffic = Instant::now();
    loop {
        // Registered before reading what is wanted: a change after the read wakes it.
        let changed = hub.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let wanted = hub.wanted();
        if wanted.is_empty() && hub.source_or_end().is_none() {
            return Stop::Unused;
        }
        let mut sql = String::new();
        for ch in wanted.difference(&listening) {
            sql.push_str(&format!("LISTEN {};", quote(ch)));
        }
        for ch in listening.difference(&wanted) {
            sql.push_str(&format!("UNLISTEN {};", quote(ch)));
        }
        if !sql.is_empty() {
            tracing::debug!(database = %hub.database, sql, "listening connection");
            if let Err(why) = round_trip(hub, conn, &sql).await {
                return Stop::Lost(why);
            }
            listening = wanted;
            hub.synced(&listening);
            last_traffic = Instant::now();
        }
        if !announced {
            // Listening again now: clients told of a loss may resync and miss nothing after.
            hub.connected(lost);
            announced = true;
        }
        let io = conn.io();
        let check = crate::timers::sleep(PRIMARY_CHECK);
        tokio::select! {
            _ = &mut changed => {}
            read = io.stream.read_buf(io.inbuf) => match read {
                Ok(0) => return Stop::Lost("closed by the server".into()),
                Err(e) => return Stop::Lost(e.to_string()),
                Ok(_) => {
                    last_traffic = Instant::now();
                    if let Err(why) = dispatch_frames(hub, io.inbuf, false) {
                        return Stop::Lost(why);
                    }
                }
            },
            _ = check => {
                if router.topology().view().primary != Some(node) {
                    return Stop::Lost("the primary changed".into());
                }
                if last_traffic.elapsed() >= PROBE_AFTER {
                    if let Err(why) = round_trip(hub, conn, "").await {
                        return Stop::Lost(why);
                    }
                    last_traffic = Instant::now();
                }
            }
        }
    }
}

/// Sends one simple query and reads until its ReadyForQuery, dispatching notifications that
/// arrive meanwhile; Err if it fails or takes longer than [`ROUND_TRIP`].
async fn round_trip(hub: &Hub, conn: &mut ServerConn, sql: &str) -> Result<(), String> {
    let mut msg = Vec::with_capacity(sql.len() + 6);
    msg.push(b'Q');
    msg.extend_from_slice(&(sql.len() as u32 + 5).to_be_bytes());
    msg.extend_from_slice(sql.as_bytes());
    msg.push(0);
    let io = conn.io();
    let work = async {
        io.stream.write_all(&msg).await.map_err(|e| e.to_string())?;
        io.stream.flush().await.map_err(|e| e.to_string())?;
        loop {
            if dispatch_frames(hub, io.inbuf, true)? {
                return Ok(());
            }
            match io.stream.read_buf(io.inbuf).await {
                Ok(0) => return Err("closed by the server".to_owned()),
                Err(e) => return Err(e.to_string()),
                Ok(_) => {}
            }
        }
    };
    match timeout(ROUND_TRIP, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no reply within {ROUND_TRIP:?}")),
    }
}

/// Consumes the whole frames in `buf`: notifications go to the hub; an ErrorResponse is a
/// failure. Ok(true) once a ReadyForQuery was consumed (`until_ready`: stop there).
fn dispatch_frames(hub: &Hub, buf: &mut BytesMut, until_ready: bool) -> Result<bool, String> {
    loop {
        let h = match peek_header(buf, MAX_MESSAGE) {
            Ok(Some(h)) if buf.len() >= h.frame_len() => h,
            Ok(_) => return Ok(false),
            Err(e) => return Err(e.to_string()),
        };
        let frame = buf.split_to(h.frame_len()).freeze();
        match h.tag {
            b'A' => {
                // Int32 pid, channel, payload: the channel is what routes it.
                let body = &frame[5..];
                if body.len() > 4 {
                    let rest = &body[4..];
                    if let Some(end) = rest.iter().position(|&b| b == 0) {
                        hub.dispatch(&rest[..end], frame.clone());
                    }
                }
            }
            b'E' => {
                let (code, message) = crate::protocol::messages::error_fields(&frame[5..]);
                return Err(format!(
                    "server error {}: {}",
                    code.unwrap_or("?"),
                    message.unwrap_or("?")
                ));
            }
            b'Z' if until_ready => return Ok(true),
            // CommandComplete, EmptyQueryResponse, NoticeResponse, ParameterStatus...
            _ => {}
        }
    }
}

/// A channel name as a quoted identifier.
fn quote(channel: &str) -> String {
    format!("\"{}\"", channel.replace('"', "\"\""))
}
