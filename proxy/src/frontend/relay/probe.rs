//! The relay's part in the causal token (see `frontend::causal`): the probe pipelined behind a
//! batch that ends a write transaction, or sent when the ReadyForQuery that ends one is held,
//! and what happens to the held ReadyForQuery if the server fails before the probe answers.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::backend::params::strings_of;
use crate::frontend::relay::causal;
use crate::frontend::relay::responses::Entry;
use crate::frontend::relay::units::UnitContext;
use crate::protocol::messages::TxStatus;
use crate::write::write_all_within;

use super::{Outcome, Relay};

impl Relay<'_> {
    /// After a batch of `consumed` client bytes (its entries from `queued` on): whether the
    /// causal probe goes right behind it, because it may write (or follows writes not covered)
    /// and certainly ends the transaction.
    pub(super) fn probe_pipelines(&mut self, consumed: usize, queued: usize) -> bool {
        let c = &self.expect.causal;
        if !c.enabled || !c.uncovered {
            return false;
        }
        self.expect.ends_with_client_ready()
            && !self.expect.unsynced
            && !self.expect.copy_in
            && self.copy_left == 0
            && !self.discard
            && !self.expect.answers_error_since(queued)
            && causal::ends_idle(
                &self.cbuf[..consumed],
                self.status != TxStatus::Idle,
                &UnitContext {
                    classifier: self.classifier,
                    rules: self.rules,
                    statements: self.statements,
                    reported: self.defaults,
                    strings: self.params.string_syntax(strings_of(self.defaults)),
                },
            )
    }

    /// Appends the probe to the batch in `out`; its reply covers every write before it.
    pub(super) fn queue_probe(&mut self) {
        causal::write_probe(&mut self.out);
        self.expect.push(Entry::Probe);
        self.expect.causal.uncovered = false;
        // A simple Query destroys the unnamed statement on the server.
        self.unnamed_here = false;
    }

    /// Sends the probe queued at a ReadyForQuery that ended a transaction after a write the
    /// pipelined probe did not cover (the uncommon case: one round trip).
    pub(super) async fn send_due_probe(&mut self) -> Option<Outcome> {
        if !std::mem::take(&mut self.expect.causal.send_now) {
            return None;
        }
        let mut probe = BytesMut::new();
        causal::write_probe(&mut probe);
        self.unnamed_here = false;
        match self.server.stream.write_all(&probe).await {
            Ok(()) => None,
            Err(e) => Some(self.server_lost(e).await),
        }
    }

    /// The server closed, failed, or did not answer the probe in time. If only the probe was
    /// in flight, the client's transaction is complete: its held ReadyForQuery goes out
    /// (without a token) and the client stays.
    pub(super) async fn server_lost(&mut self, e: std::io::Error) -> Outcome {
        let timed_out = e.kind() == std::io::ErrorKind::TimedOut;
        let mut out = BytesMut::new();
        if !self.expect.causal.lose(&mut out) {
            return Outcome::ServerGone(e);
        }
        self.replied = true;
        if write_all_within(self.client, &out, self.limits.client_write_timeout)
            .await
            .is_err()
        {
            return Outcome::ClientGone {
                server_clean: false,
            };
        }
        self.owed = self.owed.saturating_sub(1);
        if self.owed == 0 && self.expect.len() == 1 {
            return Outcome::ProbeLost { failed: !timed_out };
        }
        Outcome::ServerGone(e)
    }
}
