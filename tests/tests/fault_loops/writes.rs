//! A write loop: one client inserting one new id at a time through pgtier, every outcome
//! recorded with the port that answered it or its SQLSTATE; after a failure it logs in again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use pgtier_kit::fixture::dsn;
use pgtier_kit::proxy::Pgtier;
use tokio::sync::mpsc;

use super::sqlstate;

/// One write: its id, and the port that answered it or its SQLSTATE ("closed" without an
/// error, "timeout" after 30 s); when its outcome arrived.
#[derive(Debug, Clone)]
pub struct Write {
    pub id: i32,
    pub outcome: Result<u16, String>,
    pub at: Instant,
}

/// The running loop; [`WriteLoop::until`] follows it, [`WriteLoop::finish`] stops it.
pub struct WriteLoop {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<()>>,
    outcomes: mpsc::UnboundedReceiver<Write>,
    /// Every write seen so far, in order.
    pub seen: Vec<Write>,
}

impl WriteLoop {
    /// Starts inserting into `table` (one int column) as `user`:
    /// `INSERT ... VALUES (id) RETURNING inet_server_port()`, ids 1, 2, 3...
    pub async fn start(px: &Pgtier, user: &str, pw: &str, table: &str) -> Result<WriteLoop> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, outcomes) = mpsc::unbounded_channel();
        let dsn = dsn(px, user, pw);
        let mut c = pgtier_kit::tls::connect(&dsn).await?;
        let (flag, table) = (stop.clone(), table.to_owned());
        let task = tokio::spawn(async move {
            let mut id = 0;
            while !flag.load(Ordering::Relaxed) {
                id += 1;
                let sql = format!("INSERT INTO {table} VALUES ({id}) RETURNING inet_server_port()");
                let outcome =
                    match tokio::time::timeout(Duration::from_secs(30), c.simple_query(&sql)).await
                    {
                        Ok(Ok(msgs)) => Ok(msgs
                            .iter()
                            .find_map(|m| match m {
                                tokio_postgres::SimpleQueryMessage::Row(r) => {
                                    r.get(0)?.parse().ok()
                                }
                                _ => None,
                            })
                            .unwrap_or(0)),
                        Ok(Err(e)) => Err(sqlstate(&anyhow::Error::from(e)).0),
                        Err(_) => Err("timeout".to_owned()),
                    };
                let failed = outcome.is_err();
                let at = Instant::now();
                if tx.send(Write { id, outcome, at }).is_err() {
                    break;
                }
                if failed {
                    c = pgtier_kit::tls::connect(&dsn).await?;
                }
            }
            Ok(())
        });
        Ok(WriteLoop {
            stop,
            task,
            outcomes,
            seen: Vec::new(),
        })
    }

    /// Follows the loop until `want` holds for a write answered after `after`; fails after 40 s
    /// (a write waits at most `primary_wait_timeout` for a primary).
    pub async fn until(
        &mut self,
        after: Instant,
        what: &str,
        want: impl Fn(&Write) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let w = tokio::time::timeout_at(deadline.into(), self.outcomes.recv())
                .await
                .map_err(|_| anyhow::anyhow!("{what}: not within 40 s ({:?})", self.seen.last()))?
                .ok_or_else(|| anyhow::anyhow!("the write loop ended"))?;
            let hit = w.at > after && want(&w);
            self.seen.push(w);
            if hit {
                return Ok(());
            }
        }
    }

    /// Follows the loop for `n` more writes answered after now.
    pub async fn next_n(&mut self, n: usize, what: &str) -> Result<()> {
        let from = Instant::now();
        for _ in 0..n {
            self.until(from, what, |_| true).await?;
        }
        Ok(())
    }

    /// Stops the loop; every write it made, in order.
    pub async fn finish(mut self) -> Result<Vec<Write>> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await??;
        while let Ok(w) = self.outcomes.try_recv() {
            self.seen.push(w);
        }
        Ok(self.seen)
    }
}
