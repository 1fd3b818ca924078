//! `query_timeout` and `transaction_timeout`: the relay's clocks for the query the server owes
//! a reply to and for the open transaction. Nothing is read from the clock unless one of them
//! is set.

use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::{Outcome, Relay};
use crate::backend::cancel::send_cancel;
use crate::protocol::messages::TxStatus;

/// How long a server may take to answer the cancel sent at `query_timeout` before its
/// connection (and client) is closed.
pub(crate) const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Longest wait for a server to take the CancelRequest itself.
const CANCEL_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// When the running query and transaction began.
#[derive(Debug, Default)]
pub(super) struct Clocks {
    /// The server owes a ReadyForQuery since then (reset at each one it sends).
    query: Option<Instant>,
    /// The query was canceled for `query_timeout` then.
    canceled: Option<Instant>,
    /// A transaction is open since then (None between transactions).
    transaction: Option<Instant>,
}

impl Relay<'_> {
    /// The `query_timeout` and `transaction_timeout` deadlines as of now (None: not running).
    pub(super) fn deadlines(&mut self) -> (Option<Instant>, Option<Instant>) {
        let (q, t) = (self.limits.query_timeout, self.limits.transaction_timeout);
        if q.is_none() && t.is_none() {
            return (None, None);
        }
        let now = Instant::now();
        let c = &mut self.clocks;
        let query = match q {
            Some(limit) if self.owed > 0 => {
                let since = *c.query.get_or_insert(now);
                Some(match c.canceled {
                    Some(at) => at + CANCEL_GRACE,
                    None => since + limit,
                })
            }
            _ => {
                c.query = None;
                c.canceled = None;
                None
            }
        };
        let in_transaction = self.status != TxStatus::Idle || self.owed > 0 || self.expect.unsynced;
        let transaction = match t {
            Some(limit) if in_transaction => Some(*c.transaction.get_or_insert(now) + limit),
            _ => {
                c.transaction = None;
                None
            }
        };
        (query, transaction)
    }

    /// Called at a ReadyForQuery: the next query's clock starts when it is sent.
    pub(super) fn query_answered(&mut self) {
        self.clocks.query = None;
        self.clocks.canceled = None;
    }

    /// The query deadline passed: the first time, the server is asked to cancel (the client
    /// then gets the server's own 57014); if it does not answer within `CANCEL_GRACE`, the
    /// relay ends.
    pub(super) fn query_timed_out(&mut self) -> Option<Outcome> {
        if self.clocks.canceled.is_some() {
            return Some(Outcome::QueryTimeout);
        }
        self.clocks.canceled = Some(Instant::now());
        warn!(server = %self.cancel.addr, limit = ?self.limits.query_timeout, "query_timeout: canceling the query");
        let target = self.cancel;
        tokio::spawn(async move {
            if let Err(e) = send_cancel(target, CANCEL_SEND_TIMEOUT).await {
                warn!(server = %target.addr, error = %e, "query_timeout: the cancel request failed");
            }
        });
        None
    }
}
