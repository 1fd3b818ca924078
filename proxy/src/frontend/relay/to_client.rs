//! The server-to-client half of a relay: server bytes are routed (`responses`) and go to the
//! client in one write; a write the client does not take in time ends the relay.

use bytes::Buf;

use crate::protocol::messages::{ends_session, fatal_sqlstate, TxStatus};
use crate::shutdown::{Phase, SessionWatch};
use crate::write::{write_all_within, WriteError};

use super::responses::{route_server, ParamSync};
use super::{Outcome, Relay, CLIENT_CAUSED};

impl Relay<'_> {
    /// Routes and forwards buffered server bytes; returns an outcome if the relay must end.
    pub(super) async fn on_server_bytes(&mut self, shutdown: &SessionWatch) -> Option<Outcome> {
        // The rest of a message the client is receiving, which this batch starts with.
        let lead = self.streaming.forwarded_left().min(self.server.inbuf.len());
        let scan = match route_server(
            self.server.inbuf,
            &mut self.streaming,
            &mut self.expect,
            self.server.statements,
            self.statements,
            &mut ParamSync {
                defaults: self.defaults,
                client: self.params,
                server_login: self.server.login_params,
                server: self.server.changed,
            },
            &mut self.out,
        ) {
            Ok(s) => s,
            Err(e) => return Some(Outcome::ServerGone(std::io::Error::other(e))),
        };
        if let Some((code, message)) = self.expect.sync_failed.take() {
            return Some(Outcome::SyncFailed(code, message));
        }
        if let Some(end) = self.send_due_probe().await {
            return Some(end);
        }
        let batch = if scan.copied {
            &self.out[..]
        } else {
            &self.server.inbuf[..scan.consumed]
        };
        // A server that ends the session over what the client did is not failing: its error
        // is the client's answer, and the unit is not run elsewhere.
        let refused = if scan.errors.is_empty() {
            None
        } else {
            fatal_sqlstate(batch).and_then(|c| CLIENT_CAUSED.into_iter().find(|&k| k == c))
        };
        // A replica that ends the session (shutdown, crash) before any reply reached the client:
        // the read can run elsewhere, so its farewell is not passed on.
        if refused.is_none()
            && self.gate.on_replica
            && !self.replied
            && !self.more_input
            && scan.alerts
            && ends_session(batch)
        {
            return Some(Outcome::ServerGone(std::io::Error::other(
                "replica ended the session before replying",
            )));
        }
        if self.staged.is_some() {
            // A transaction block with LISTEN-family statements: its end decides them, before
            // the client has the reply.
            super::listen::on_replies(
                batch,
                lead,
                &mut self.staged,
                self.listen.as_ref(),
                self.expect.savepoint,
                self.entry,
            );
        }
        self.replied |= !batch.is_empty();
        let batch_len = batch.len();
        if let Err(e) = write_all_within(self.client, batch, self.limits.client_write_timeout).await
        {
            return Some(client_write_failed(&e, batch, lead));
        }
        self.out.clear();
        self.server.inbuf.advance(scan.consumed);
        self.owed = self.owed.saturating_sub(scan.ready + scan.ignored_syncs);
        self.observer.answered(batch_len, scan.ready, self.owed);
        for code in &scan.errors {
            self.observer.error(code);
        }
        if let Some(code) = refused {
            return Some(Outcome::ServerEndedClient(code));
        }
        if let Some(s) = scan.status {
            self.status = s;
        }
        if scan.ready > 0 {
            // Statements change as the server answers (SHOW CLIENTS' count).
            self.entry.set_prepared(self.statements.len());
            self.query_answered();
        }
        if self.gate.held && !self.busy() && self.server.inbuf.is_empty() {
            // The replica answered everything before a unit that needs the primary.
            if self.status == TxStatus::Idle {
                return Some(Outcome::Idle);
            }
            return self.on_client_bytes().await;
        }
        let done = scan.ready > 0
            && self.owed == 0
            && self.status == TxStatus::Idle
            && self.expect.is_empty()
            && !self.expect.unsynced
            && self.streaming.left == 0
            && self.server.inbuf.is_empty()
            && self.copy_left == 0
            && self.cbuf.is_empty();
        let release = !self.holds_server() || shutdown.phase() >= Phase::Draining;
        (done && release).then_some(Outcome::Idle)
    }
}

/// How a failed write to the client ends the relay. `batch` starts with `lead` bytes of an
/// unfinished message, then whole frames.
pub(super) fn client_write_failed(e: &WriteError, batch: &[u8], lead: usize) -> Outcome {
    match *e {
        WriteError::Stalled { written, .. } => Outcome::ClientStalled {
            at_boundary: at_boundary(batch, lead, written),
        },
        WriteError::Io(_) => Outcome::ClientGone {
            server_clean: false,
        },
    }
}

/// Whether `written` bytes of `batch` end at a message boundary (so that another message may
/// follow them on the client's stream).
fn at_boundary(batch: &[u8], lead: usize, written: usize) -> bool {
    if written < lead {
        return false;
    }
    let mut pos = lead;
    while pos < written {
        let Some(len) = batch.get(pos + 1..pos + 5) else {
            return false;
        };
        pos += 1 + u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
    }
    pos == written
}

#[cfg(test)]
mod tests {
    use super::at_boundary;

    #[test]
    fn boundaries_are_found_after_a_lead_and_whole_frames() {
        // 3 bytes finishing a message, then a 9-byte frame ('D', length 8), then 6 of a frame.
        let mut batch = vec![1, 2, 3, b'D', 0, 0, 0, 8, 0, 0, 0, 0];
        batch.extend_from_slice(&[b'D', 0, 0, 0, 9, 0]);
        assert!(!at_boundary(&batch, 3, 0));
        assert!(!at_boundary(&batch, 3, 2));
        assert!(at_boundary(&batch, 3, 3));
        assert!(!at_boundary(&batch, 3, 7));
        assert!(at_boundary(&batch, 3, 12));
        assert!(!at_boundary(&batch, 3, 14));
        assert!(at_boundary(&batch[3..], 0, 0));
    }
}
