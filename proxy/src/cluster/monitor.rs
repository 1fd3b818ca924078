//! The per-node monitor: one task per node, its own tokio-postgres connection, one round trip
//! per check, reporting to the `Topology` it holds only weakly (the task ends once the topology
//! is dropped).
//!
//! Schedule: a check every `lag_check_interval` while the node answers; after a failure,
//! retries with exponential backoff ([`BACKOFF_START`] doubling up to [`BACKOFF_MAX`]). A wake-up
//! (`Topology::report_failure`) makes the next attempt come at most one interval after the
//! previous one, on a fresh connection.
//!
//! [`BACKOFF_MAX`] is short so that a node that is back rejoins within a second however long
//! it was away (a replica kept out by a long backoff left reads with only the primary): a
//! refused connect costs next to nothing, and a connect to a node that does not answer at all
//! (blackholed) is asynchronous and bounded; while one hangs, another starts every
//! [`BACKOFF_MAX`] (at most [`MAX_CONNECTS`] at once), so a fresh one reaches the node as soon
//! as it answers again, without waiting for the old one's SYN retransmissions.
//!
//! Limits: connect + login within `connect_timeout`; each check within
//! `ClusterSettings::check_timeout`. A check that times out drops its connection and is
//! confirmed on a fresh one within the same limit: only if that fails too
//! is it a failure (a busy node is slow, a lost one silent).

use std::error::Error as _;
use std::io;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::topology::{Check, Outcome, Topology};
use super::Lsn;
use crate::tls::connector::describe;

/// First retry delay after a failure.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest retry delay (also the spacing of overlapping connects to a silent node).
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Most connects to one node in flight at once (the oldest gives way to a new one).
pub const MAX_CONNECTS: usize = 4;

/// One round trip. `r` is evaluated once (a volatile sub-select is not flattened), so the
/// branches agree even while the node is being promoted. The timeline of a primary is the first
/// 8 hex digits of its current WAL file name (exact right after a promotion, unlike
/// `pg_control_checkpoint()` which waits for the next checkpoint).
const CHECK_SQL: &str = "\
SELECT r,
       (CASE WHEN r THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text,
       (CASE WHEN r THEN pg_last_wal_receive_lsn() END)::text,
       (extract(epoch FROM now() - pg_last_xact_replay_timestamp()))::float8,
       CASE WHEN NOT r THEN pg_walfile_name(pg_current_wal_lsn()) END
FROM (SELECT pg_is_in_recovery() AS r) AS s";

/// Spawns the monitor of `node` on `rt`.
pub(crate) fn spawn(rt: &tokio::runtime::Handle, topology: &Arc<Topology>, node: usize) {
    let s = topology.settings();
    let cfg = &s.nodes[node];
    let mut pg = tokio_postgres::Config::new();
    pg.host(&cfg.addr.host)
        .port(cfg.addr.port)
        .user(&s.login.user)
        .dbname(&s.login.dbname)
        .application_name("pgtier-monitor")
        .ssl_mode(topology.tls().postgres_mode());
    if let Some(pw) = &s.login.password {
        pg.password(pw.as_bytes());
    }
    let monitor = Monitor {
        topology: Arc::downgrade(topology),
        wake: topology.wake_handle(node),
        node,
        pg,
        tls: topology.tls().postgres_connector(),
        interval: s.lag_check_interval,
        connect_timeout: s.connect_timeout,
        check_timeout: s.check_timeout(),
        conn: None,
    };
    rt.spawn(monitor.run());
}

struct Monitor {
    topology: Weak<Topology>,
    wake: Arc<Notify>,
    node: usize,
    pg: tokio_postgres::Config,
    /// None: plain text only (`server_tls_sslmode = disable`).
    tls: Option<MakeRustlsConnect>,
    interval: Duration,
    connect_timeout: Duration,
    check_timeout: Duration,
    conn: Option<Conn>,
}

struct Conn {
    client: Client,
    check: Statement,
    /// When connecting began: a check on it says nothing of a failure reported after.
    since: Instant,
}

impl Monitor {
    async fn run(mut self) {
        let mut backoff = BACKOFF_START;
        loop {
            match self.topology.upgrade() {
                Some(t) if t.take_reconnect(self.node) => self.conn = None,
                Some(_) => {}
                None => return,
            }
            let started = tokio::time::Instant::now();
            let outcome = self.attempt().await;
            let ok = matches!(outcome, Outcome::Checked { .. });
            match self.topology.upgrade() {
                Some(t) => t.record(self.node, outcome),
                None => return,
            }
            let delay = if ok {
                backoff = BACKOFF_START;
                self.interval
            } else {
                let d = backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                d
            };
            tokio::select! {
                _ = crate::timers::sleep_until(started + delay) => {}
                _ = self.wake.notified() => {
                    crate::timers::sleep_until(started + delay.min(self.interval)).await;
                }
            }
        }
    }

    /// Connects if needed, then checks once.
    async fn attempt(&mut self) -> Outcome {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = None;
            match crate::timers::timeout(self.connect_timeout, self.connect()).await {
                Ok(Ok(c)) => self.conn = Some(c),
                Ok(Err(e)) => return classify(&e),
                Err(_) => {
                    return Outcome::Failed(format!(
                        "connect + login timed out after {:?}",
                        self.connect_timeout
                    ))
                }
            }
        }
        let Some(conn) = &self.conn else {
            unreachable!("connected above")
        };
        let sent_at = Instant::now();
        let result =
            crate::timers::timeout(self.check_timeout, conn.client.query_one(&conn.check, &[]))
                .await;
        let row = match result {
            Ok(Ok(row)) => row,
            Ok(Err(e)) => {
                self.conn = None;
                return Outcome::Failed(format!("check failed: {e}"));
            }
            Err(_) => {
                self.conn = None;
                return self.confirm().await;
            }
        };
        match parse(&row) {
            Ok(check) => Outcome::Checked {
                check,
                sent_at,
                connected: conn.since,
            },
            Err(e) => {
                self.conn = None;
                Outcome::Failed(e)
            }
        }
    }

    /// After a check timed out on an established connection: a busy node (a CPU-bound
    /// primary, an I/O stall) answers late, a lost one not at all. Only a fresh connection
    /// that also fails to connect and check within `check_timeout` makes it a failure, so
    /// one slow answer never bans a node (and cuts the transactions waiting on it).
    async fn confirm(&mut self) -> Outcome {
        let fresh = async {
            let c = self.connect().await.map_err(|e| e.to_string())?;
            let sent_at = Instant::now();
            let row = c
                .client
                .query_one(&c.check, &[])
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((c, row, sent_at))
        };
        let why = match crate::timers::timeout(self.check_timeout, fresh).await {
            Ok(Ok((c, row, sent_at))) => match parse(&row) {
                Ok(check) => {
                    let connected = c.since;
                    self.conn = Some(c);
                    return Outcome::Checked {
                        check,
                        sent_at,
                        connected,
                    };
                }
                Err(e) => e,
            },
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {:?}", self.check_timeout),
        };
        Outcome::Failed(format!(
            "check timed out after {:?}, and on a fresh connection: {why}",
            self.check_timeout
        ))
    }

    /// Connects and logs in; while an attempt hangs, starts another every [`BACKOFF_MAX`]
    /// (see the module doc). The first to finish decides; the others are dropped with it.
    async fn connect(&self) -> Result<Conn, tokio_postgres::Error> {
        let mut attempts = tokio::task::JoinSet::new();
        let mut order = std::collections::VecDeque::new();
        loop {
            if order.len() == MAX_CONNECTS {
                let oldest: tokio::task::AbortHandle = order.pop_front().expect("MAX_CONNECTS > 0");
                oldest.abort();
            }
            order.push_back(attempts.spawn(connect(self.pg.clone(), self.tls.clone())));
            let next = crate::timers::sleep(BACKOFF_MAX);
            tokio::pin!(next);
            loop {
                tokio::select! {
                    done = attempts.join_next() => match done {
                        Some(Ok(result)) => return result,
                        // Aborted to make way for a newer attempt.
                        Some(Err(_)) => {}
                        None => break,
                    },
                    _ = &mut next => break,
                }
            }
        }
    }
}

/// One connect + login (TLS as `server_tls_*` say), with the check statement prepared.
async fn connect(
    pg: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
) -> Result<Conn, tokio_postgres::Error> {
    let since = Instant::now();
    let client = crate::tls::connector::connect_postgres(&pg, tls).await?;
    let check = client.prepare(CHECK_SQL).await?;
    Ok(Conn {
        client,
        check,
        since,
    })
}

/// Refused (TCP refused, the server refusing logins while starting or stopping, or TLS
/// failing: a certificate that does not verify stays so until someone changes it) → Down;
/// anything else → Banned.
fn classify(e: &tokio_postgres::Error) -> Outcome {
    let mut refused = e.code() == Some(&SqlState::CANNOT_CONNECT_NOW);
    let mut tls = None;
    let mut cause = e.source();
    while let Some(c) = cause {
        refused |= c
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::ConnectionRefused);
        // tokio-rustls wraps rustls' error in an io::Error, whose `source` skips it.
        let inner = c
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>());
        if let Some(r) = c.downcast_ref::<rustls::Error>().or(inner) {
            tls = Some(describe(r));
        }
        cause = c.source();
    }
    let text = match (tls, e.source()) {
        (Some(why), _) => {
            refused = true;
            format!("connect failed: TLS: {why}")
        }
        (None, Some(src)) => format!("connect failed: {e}: {src}"),
        (None, None) => format!("connect failed: {e}"),
    };
    if refused {
        Outcome::Refused(text)
    } else {
        Outcome::Failed(text)
    }
}

fn parse(row: &tokio_postgres::Row) -> Result<Check, String> {
    let bad =
        |what: &str, e: &dyn std::fmt::Display| format!("unexpected check result ({what}): {e}");
    let in_recovery: bool = row.try_get(0).map_err(|e| bad("recovery", &e))?;
    let lsn_text: Option<String> = row.try_get(1).map_err(|e| bad("lsn", &e))?;
    let receive_text: Option<String> = row.try_get(2).map_err(|e| bad("receive lsn", &e))?;
    let since: Option<f64> = row.try_get(3).map_err(|e| bad("replay timestamp", &e))?;
    let walfile: Option<String> = row.try_get(4).map_err(|e| bad("wal file", &e))?;
    let lsn = match lsn_text {
        Some(t) => t.parse::<Lsn>().map_err(|e| bad("lsn", &e))?,
        None => Lsn::ZERO,
    };
    let receive = match receive_text {
        Some(t) => Some(t.parse::<Lsn>().map_err(|e| bad("receive lsn", &e))?),
        None => None,
    };
    Ok(Check {
        in_recovery,
        lsn,
        receive,
        // A replica clock behind the primary's makes this negative: count it as 0.
        since_last_replayed_xact: since
            .filter(|s| s.is_finite())
            .map(|s| Duration::from_secs_f64(s.max(0.0))),
        timeline: walfile.as_deref().and_then(timeline_of),
    })
}

/// The timeline of a WAL file name (`000000020000000000000003` → 2).
fn timeline_of(walfile: &str) -> Option<u32> {
    u32::from_str_radix(walfile.get(..8)?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_from_wal_file_name() {
        assert_eq!(timeline_of("000000020000000000000003"), Some(2));
        assert_eq!(timeline_of("0000001A0000000100000003"), Some(26));
        assert_eq!(timeline_of("short"), None);
        assert_eq!(timeline_of("zzzzzzzz0000000000000003"), None);
    }
}
