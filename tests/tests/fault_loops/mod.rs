//! Shared by the fault tests (`fault_more.rs`, `fault_links.rs`, `fault_reload_failover.rs`,
//! `fault_partition.rs`): a read loop and a write loop (`writes`) that record every outcome (a
//! failure with its SQLSTATE, after which the client logs in again), the admin console's SHOW
//! REPLICAS view polled with a deadline, and the config they share.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use pgtier_kit::fixture::{dsn, read_node, simple_rows};
use pgtier_kit::proxy::Pgtier;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

mod writes;
#[allow(unused_imports)]
pub use writes::{Write, WriteLoop};

/// One answered read.
#[derive(Debug, Clone, Copy)]
pub struct Read {
    pub port: u16,
    pub in_recovery: bool,
    pub started: Instant,
    pub took: Duration,
}

/// One failed read: its SQLSTATE ("closed" when the connection ended without an error,
/// "timeout" when it took longer than the loop's bound) and message.
#[derive(Debug, Clone)]
pub struct Failed {
    pub started: Instant,
    /// When the failure reached the client (a read may first wait on a node that fails, then
    /// run again elsewhere and fail there).
    pub ended: Instant,
    pub code: String,
    pub message: String,
}

/// The SQLSTATE and message of a failed call ("closed" when no error reached the client).
pub fn sqlstate(e: &anyhow::Error) -> (String, String) {
    match e
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
    {
        Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
        None => ("closed".to_owned(), format!("{e:#}")),
    }
}

/// `clients` readers of `inet_server_port(), pg_is_in_recovery()` in a loop of autocommit reads
/// through pgtier until stopped. Every outcome is sent on the channel; after a failure the
/// reader logs in again.
pub struct ReadLoop {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<Result<()>>,
    outcomes: mpsc::UnboundedReceiver<Result<Read, Failed>>,
    /// Failures seen so far by [`ReadLoop::next`].
    pub failed: Vec<Failed>,
    /// Answered reads seen so far by [`ReadLoop::next`].
    pub answered: usize,
    /// The longest answered read seen so far.
    pub longest: Duration,
    bound: Duration,
}

impl ReadLoop {
    /// Starts the readers; a read longer than `bound` is given up and recorded as "timeout".
    pub async fn start(
        px: &Pgtier,
        user: &str,
        pw: &str,
        clients: usize,
        bound: Duration,
    ) -> Result<ReadLoop> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, outcomes) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        let dsn = dsn(px, user, pw);
        for _ in 0..clients {
            let mut c = pgtier_kit::tls::connect(&dsn).await?;
            let (stop, tx, dsn) = (stop.clone(), tx.clone(), dsn.clone());
            tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let r = match tokio::time::timeout(bound, read_node(&c)).await {
                        Ok(Ok((port, in_recovery))) => Ok(Read {
                            port,
                            in_recovery,
                            started,
                            took: started.elapsed(),
                        }),
                        Ok(Err(e)) => {
                            let (code, message) = sqlstate(&e);
                            Err(Failed {
                                started,
                                ended: Instant::now(),
                                code,
                                message,
                            })
                        }
                        Err(_) => Err(Failed {
                            started,
                            ended: Instant::now(),
                            code: "timeout".into(),
                            message: format!("no answer within {bound:?}"),
                        }),
                    };
                    let failed = r.is_err();
                    if tx.send(r).is_err() {
                        break;
                    }
                    if failed {
                        c = pgtier_kit::tls::connect(&dsn).await?;
                    }
                }
                Ok(())
            });
        }
        Ok(ReadLoop {
            stop,
            tasks,
            outcomes,
            failed: Vec::new(),
            answered: 0,
            longest: Duration::ZERO,
            bound,
        })
    }

    /// The next answered read (failures on the way are recorded in `failed`); fails if nothing
    /// answered for the loop's bound and a second, or a reader ended.
    pub async fn next(&mut self) -> Result<Read> {
        let limit = self.bound + Duration::from_secs(1);
        loop {
            let r = tokio::select! {
                r = self.outcomes.recv() => r.ok_or_else(|| anyhow::anyhow!("the readers ended"))?,
                Some(done) = self.tasks.join_next() => {
                    done??;
                    anyhow::bail!("a reader ended early")
                }
                _ = tokio::time::sleep(limit) => anyhow::bail!("no read answered for {limit:?}"),
            };
            match r {
                Ok(read) => {
                    self.answered += 1;
                    self.longest = self.longest.max(read.took);
                    return Ok(read);
                }
                Err(f) => self.failed.push(f),
            }
        }
    }

    /// Follows the loop until `want` holds for a read that started after `after`; fails after
    /// `limit`.
    pub async fn until(
        &mut self,
        after: Instant,
        limit: Duration,
        what: &str,
        want: impl Fn(&Read) -> bool,
    ) -> Result<Read> {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.next().await?;
            if r.started > after && want(&r) {
                return Ok(r);
            }
            anyhow::ensure!(Instant::now() < deadline, "{what}: not within {limit:?}");
        }
    }

    /// Follows the loop for at least 200 reads and 1 s from now and fails if one that started
    /// from now was answered by `port` (a node that must be out of the rotation).
    pub async fn stay_off(&mut self, port: u16, what: &str) -> Result<()> {
        let out = Instant::now();
        let mut after = 0;
        while after < 200 || out.elapsed() < Duration::from_secs(1) {
            let r = self.next().await?;
            if r.started > out {
                anyhow::ensure!(r.port != port, "a read reached {what} (port {port})");
                after += 1;
            }
        }
        Ok(())
    }

    /// Stops the readers and drains what they answered; fails if a reader failed to log in
    /// again.
    pub async fn finish(mut self) -> Result<ReadLoop> {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(done) = self.tasks.join_next().await {
            done??;
        }
        while let Ok(r) = self.outcomes.try_recv() {
            match r {
                Ok(read) => {
                    self.answered += 1;
                    self.longest = self.longest.max(read.took);
                }
                Err(f) => self.failed.push(f),
            }
        }
        Ok(self)
    }
}

/// SHOW REPLICAS' row for `node` ("host:port"): (role, state, time_lag_ms, last_error).
pub async fn node_row(
    adm: &tokio_postgres::Client,
    node: &str,
) -> Result<(String, String, String, String)> {
    let rows = simple_rows(adm, "SHOW REPLICAS").await;
    let r = rows
        .iter()
        .find(|r| r.get("node") == Some(node))
        .ok_or_else(|| anyhow::anyhow!("{node} is not in SHOW REPLICAS"))?;
    let get = |c: &str| r.get(c).unwrap_or("").to_owned();
    Ok((
        get("role"),
        get("state"),
        get("time_lag_ms"),
        get("last_error"),
    ))
}

/// Polls SHOW REPLICAS until `node`'s state is one of `states`; how long that took. Fails after
/// `limit`.
pub async fn wait_state(
    adm: &tokio_postgres::Client,
    node: &str,
    states: &[&str],
    limit: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let (_, state, _, _) = node_row(adm, node).await?;
        if states.contains(&state.as_str()) {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < limit,
            "{node} is {state}, not {states:?}, after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fault config on `cluster`: the admin console (`admin` / `admin-pw`), `user` with
/// `password`, 50 ms lag checks and `connect_timeout` (which also caps the checks' limit).
pub fn fault_config(
    cluster: &pgtier_kit::Cluster,
    user: &str,
    password: &str,
    connect_timeout: &str,
) -> pgtier_kit::fixture::ConfigBuilder {
    pgtier_kit::fixture::ConfigBuilder::new(cluster)
        .global("admin_users = [\"admin\"]")
        .global("lag_check_interval = \"50ms\"")
        .global(&format!("server_connect_timeout = \"{connect_timeout}\""))
        .user("admin", "password = \"admin-pw\"")
        .user(user, &format!("password = \"{password}\""))
}

/// The ids in `table` (one int column) of database app on `node`, in order.
pub fn ids_on(node: &pgtier_kit::Node, table: &str) -> Result<Vec<i32>> {
    let out = node.psql_db(
        "app",
        &format!("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM {table}"),
    )?;
    out.trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| Ok(s.parse()?))
        .collect()
}
