//! What the relay measures while it runs: bytes each way, queries answered, the time each
//! query waited for its ReadyForQuery (histogram, and the slow-query log above
//! `slow_query_threshold`). Two clock reads per query; the statement text is kept only while
//! the slow-query log is on, truncated, and never with its parameters.

use std::time::{Duration, Instant};

use tracing::warn;

use crate::metrics::{DbMetrics, RoleLabel, Tally};
use crate::prepared::client::ClientStatements;
use crate::protocol::frame::peek_header;

/// Longest statement text the slow-query log prints.
const SLOW_TEXT: usize = 200;

/// Who and where, for the slow-query log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context<'a> {
    /// Client-facing database.
    pub database: &'a str,
    /// Client-facing user.
    pub user: &'a str,
    /// The serving node.
    pub node: &'a crate::config::NodeAddr,
}

/// Measures one relay run.
pub(crate) struct Observer<'a> {
    metrics: &'a DbMetrics,
    context: Context<'a>,
    /// What it measured so far.
    pub measured: Measured,
}

/// What an [`Observer`] measured; kept by itself where a run waits outside a task (the lane
/// loop), and measured there with the metrics and context passed in.
#[derive(Debug)]
pub(crate) struct Measured {
    role: RoleLabel,
    slow: Option<Duration>,
    /// When the oldest unanswered query was sent.
    started: Option<Instant>,
    /// When the run began: the first query is timed from there (saves a clock read).
    run_started: Option<Instant>,
    /// When the last ReadyForQuery was answered.
    pub last_reply: Option<Instant>,
    /// Its text (slow-query log on only).
    text: Option<String>,
    /// What the run did so far.
    pub tally: Tally,
}

impl Measured {
    /// Measurements of a run on a node of `role`, begun at `run_started`.
    pub fn new(role: RoleLabel, run_started: Instant, slow: Option<Duration>) -> Measured {
        Measured {
            role,
            slow,
            started: None,
            run_started: Some(run_started),
            last_reply: None,
            text: None,
            tally: Tally::default(),
        }
    }

    /// Client bytes went to the server: `client` as the client sent them (before renaming),
    /// `forwarded` bytes in all; `owed_before`/`owed_after`: replies owed before and after.
    pub fn sent(
        &mut self,
        client: &[u8],
        forwarded: usize,
        (owed_before, owed_after): (u32, u32),
        statements: &ClientStatements,
    ) {
        self.tally.received += forwarded as u64;
        // The run's start stands for the first send only (later ones may follow client think
        // time).
        let run_started = self.run_started.take();
        if owed_before == 0 && owed_after > 0 {
            self.started = Some(run_started.unwrap_or_else(Instant::now));
            if self.slow.is_some() {
                self.text = statement_text(client, statements);
            }
        }
    }

    /// Server bytes went to the client; `ready`: ReadyForQuery among them; `owed`: replies
    /// still owed after them.
    pub fn answered(
        &mut self,
        metrics: &DbMetrics,
        context: &Context<'_>,
        bytes: usize,
        ready: u32,
        owed: u32,
    ) {
        self.tally.sent += bytes as u64;
        if ready == 0 {
            return;
        }
        self.tally.queries += u64::from(ready);
        let Some(start) = self.started else { return };
        let now = Instant::now();
        self.last_reply = Some(now);
        let took = now.saturating_duration_since(start);
        self.tally.query_time += took;
        metrics.query(self.role, took);
        if self.slow.is_some_and(|t| took >= t) {
            warn!(
                database = context.database,
                user = context.user,
                node = %context.node,
                duration_ms = took.as_secs_f64() * 1000.0,
                statement = self.text.as_deref().unwrap_or("(unknown)"),
                "slow query"
            );
        }
        // The next query in a pipeline is timed from here.
        self.started = (owed > 0).then_some(now);
    }
}

impl<'a> Observer<'a> {
    /// An observer that goes on from `measured`.
    pub fn new(metrics: &'a DbMetrics, context: Context<'a>, measured: Measured) -> Observer<'a> {
        Observer {
            metrics,
            context,
            measured,
        }
    }

    /// See [`Measured::sent`].
    pub fn sent(
        &mut self,
        client: &[u8],
        forwarded: usize,
        owed: (u32, u32),
        statements: &ClientStatements,
    ) {
        self.measured.sent(client, forwarded, owed, statements);
    }

    /// See [`Measured::answered`].
    pub fn answered(&mut self, bytes: usize, ready: u32, owed: u32) {
        self.measured
            .answered(self.metrics, &self.context, bytes, ready, owed);
    }

    /// The server sent an error with this SQLSTATE.
    pub fn error(&self, sqlstate: &str) {
        self.metrics.error(sqlstate);
    }
}

/// The first statement in a batch of client messages, for the slow-query log: a Query's text,
/// a Parse's text, or the text of the prepared statement a Bind executes (parameters are never
/// read).
pub(super) fn statement_text(batch: &[u8], statements: &ClientStatements) -> Option<String> {
    let h = peek_header(batch, usize::MAX).ok()??;
    let body = batch.get(5..h.frame_len().min(batch.len()))?;
    let prepared;
    let text = match h.tag {
        b'Q' => body.split(|&b| b == 0).next()?,
        b'P' => body.split(|&b| b == 0).nth(1)?,
        b'B' => {
            let name = body.split(|&b| b == 0).nth(1)?;
            let rest = if name.is_empty() {
                statements.unnamed()
            } else {
                statements.get(name).map(|p| &p.rest[..])
            };
            let Some(rest) = rest else {
                let name = String::from_utf8_lossy(name);
                return Some(format!("(execute prepared statement \"{name}\")"));
            };
            prepared = rest;
            prepared.split(|&b| b == 0).next()?
        }
        _ => return None,
    };
    let text = String::from_utf8_lossy(text);
    let mut end = text.len().min(SLOW_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(text[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::test_frame;

    #[test]
    fn statement_text_reads_query_parse_and_bind_but_not_parameters() {
        let none = ClientStatements::default();
        let q = test_frame(b'Q', b"SELECT 1\0");
        assert_eq!(statement_text(&q, &none).as_deref(), Some("SELECT 1"));
        let p = test_frame(b'P', b"s1\0SELECT $1\0\0\0");
        assert_eq!(statement_text(&p, &none).as_deref(), Some("SELECT $1"));
        let b = test_frame(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x06secret\0\0");
        let text = statement_text(&b, &none).unwrap();
        assert!(text.contains("s1") && !text.contains("secret"), "{text}");
        let mut known = ClientStatements::default();
        known.insert(b"s1", b"SELECT $1\0\0\0", usize::MAX).unwrap();
        assert_eq!(statement_text(&b, &known).as_deref(), Some("SELECT $1"));
        let long = test_frame(b'Q', format!("SELECT '{}'\0", "é".repeat(300)).as_bytes());
        assert!(statement_text(&long, &none).unwrap().len() <= SLOW_TEXT);
    }
}
