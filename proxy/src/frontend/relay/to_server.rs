//! The client-to-server half of a relay: client bytes pass the routing gate, are routed
//! (`rewrite`) and go to the server in one write.

use bytes::Buf;

use crate::backend::params::strings_of;
use crate::protocol::frame::peek_header;
use crate::protocol::messages::TxStatus;
use crate::write::{write_all_within, WriteError};

use super::gate::Moment;
use super::rewrite::{route_client, ClientScan, ClientSide, ServerSide, Violation};
use super::to_client::client_write_failed;
use super::units::UnitContext;
use super::{Outcome, Relay};

impl Relay<'_> {
    /// Routes and forwards buffered client bytes; returns an outcome if the relay must end.
    /// A unit the gate holds back ends the relay (outside a transaction) once the server has
    /// answered everything before it; inside a transaction it follows on this server.
    pub(super) async fn on_client_bytes(&mut self) -> Option<Outcome> {
        loop {
            if let Some(end) = self.forward_client_bytes().await {
                return Some(end);
            }
            if !self.gate.held || self.busy() {
                return None;
            }
            if self.status == TxStatus::Idle {
                return Some(Outcome::Idle);
            }
            // In a transaction block only a statement pgtier answers is held.
            if let Some(end) = self.answer_in_block().await {
                return Some(end);
            }
        }
    }

    pub(super) async fn forward_client_bytes(&mut self) -> Option<Outcome> {
        let strings = self.params.string_syntax(strings_of(self.defaults));
        let local = self.local_answers();
        let admitted = self.gate.admit(
            &self.cbuf,
            self.copy_left,
            self.limits.max_message,
            &Moment {
                ctx: UnitContext {
                    classifier: self.classifier,
                    rules: self.rules,
                    statements: self.statements,
                    reported: self.defaults,
                    strings,
                },
                client: self.routing,
                in_transaction: self.status != TxStatus::Idle,
                busy: self.busy(),
                unsynced: self.expect.unsynced,
                local,
            },
        );
        // Whether the server's transaction status is known before this batch (nothing of the
        // client's in flight), as the causal probe needs.
        let settled = self.owed == 0
            && self.expect.only_own()
            && !self.expect.unsynced
            && !self.expect.copy_in
            && self.copy_left == 0
            && !self.discard;
        let queued = self.expect.len();
        self.expect.causal.uncovered |= std::mem::take(&mut self.gate.wrote);
        let scan = self.route(admitted, strings);
        let scan = match scan {
            Ok(s) => s,
            Err(v) => return Some(Outcome::ClientViolation(v)),
        };
        // `out` may already hold statements pgtier sends first (parameter sync).
        if !scan.copied && !self.out.is_empty() {
            self.out.extend_from_slice(&self.cbuf[..scan.consumed]);
        }
        if self.pinned.is_some() {
            // The client keeps this server from now on: its reads no longer need a token.
            self.expect.causal.enabled = false;
        }
        if settled && scan.consumed > 0 && self.probe_pipelines(scan.consumed, queued) {
            if !scan.copied && self.out.is_empty() {
                self.out.extend_from_slice(&self.cbuf[..scan.consumed]);
            }
            self.queue_probe();
        }
        // A rebuilt batch may be empty (everything answered by pgtier, e.g. a lone Parse of a
        // statement this server already has): then nothing goes to the server, never the
        // client's original bytes.
        let batch = if scan.copied || !self.out.is_empty() {
            &self.out[..]
        } else {
            &self.cbuf[..scan.consumed]
        };
        if let Err(e) =
            write_all_within(self.server.stream, batch, self.limits.server_write_timeout).await
        {
            return Some(match e {
                WriteError::Stalled { .. } => Outcome::ServerStalled,
                WriteError::Io(e) => Outcome::ServerGone(e),
            });
        }
        self.observer.sent(
            &self.cbuf[..scan.consumed],
            batch.len(),
            (self.owed, self.owed + scan.syncs),
            self.statements,
        );
        crate::fault::panic_point(&self.cbuf[..scan.consumed]);
        self.out.clear();
        self.cbuf.advance(scan.consumed);
        self.gate.consumed(scan.consumed);
        self.owed += scan.syncs;
        // Replies pgtier gives itself go out as soon as nothing the server owes is before them.
        if self.expect.drain_synthetic(&mut self.out) {
            self.replied = true;
            let r =
                write_all_within(self.client, &self.out, self.limits.client_write_timeout).await;
            if let Err(e) = r {
                // Nothing the server owes comes before these replies: no server message is
                // half sent to the client.
                let end = client_write_failed(&e, &self.out, 0);
                self.out.clear();
                return Some(end);
            }
            self.out.clear();
        }
        if scan.terminate {
            let clean = self.owed == 0
                && self.copy_left == 0
                && self.expect.is_empty()
                && !self.expect.unsynced
                && self.status == TxStatus::Idle;
            return Some(Outcome::ClientGone {
                server_clean: clean,
            });
        }
        if let Some(h) = peek_header(&self.cbuf, self.limits.max_message)
            .ok()
            .flatten()
        {
            // Make room for the rest of a partially received message.
            self.cbuf
                .reserve(h.frame_len().saturating_sub(self.cbuf.len()));
        }
        None
    }

    /// Routes the client's messages in `cbuf[..len]` (see `rewrite::route_client`): what the
    /// server is sent for them goes to `out` when it differs, and the replies they owe are
    /// queued.
    pub(super) fn route(
        &mut self,
        len: usize,
        strings: crate::sql::lexer::StringSyntax,
    ) -> Result<ClientScan, Violation> {
        route_client(
            &self.cbuf[..len],
            self.limits.max_message,
            &mut ClientSide {
                statements: self.statements,
                discard: &mut self.discard,
                copy_left: &mut self.copy_left,
                pinned: self.pinned,
                reported: self.defaults,
                policy: self.limits.session_state,
                strings,
                extras: self.limits.extra_params,
                in_transaction: self.status != TxStatus::Idle,
                prepared_bytes: self.limits.prepared_bytes,
                startup: self.params.has_startup(),
                unpinned: self.gate.clean_ahead().min(len),
                params: self.params,
            },
            &mut ServerSide {
                registry: self.server.statements,
                expect: &mut self.expect,
                unnamed_here: &mut self.unnamed_here,
            },
            &mut self.out,
        )
    }
}
