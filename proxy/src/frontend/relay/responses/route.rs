//! Routing one batch of server bytes: the client's replies go through (zero-copy when nothing
//! is dropped or added), pgtier's own are dropped, synthetic ones are inserted in order.

use bytes::BytesMut;

use crate::backend::params::{tracked, ParamChanges};
use crate::prepared::client::ClientStatements;
use crate::prepared::server::ServerStatements;
use crate::protocol::frame::{peek_header, FrameError};
use crate::protocol::messages::{error_fields, TxStatus};

use super::super::batch::Batch;
use super::{Entry, Expectations};

/// What routing one batch of server bytes produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ServerScan {
    /// Bytes of the input consumed.
    pub consumed: usize,
    /// Whether `out` holds what to send (else send `input[..consumed]` as is).
    pub copied: bool,
    /// ReadyForQuery messages seen.
    pub ready: u32,
    /// Status of the last ReadyForQuery seen.
    pub status: Option<TxStatus>,
    /// Syncs the client sent that Postgres ignored (sent during COPY FROM STDIN).
    pub ignored_syncs: u32,
    /// SQLSTATEs of the errors forwarded to the client (rare: allocates only then).
    pub errors: Vec<String>,
    /// An ErrorResponse or NoticeResponse was among the messages (only then can the batch
    /// announce the end of the session).
    pub alerts: bool,
}

/// Passing bytes through a message whose body is still arriving.
#[derive(Debug, Default)]
pub(crate) struct Streaming {
    /// Bytes of the current message still to come.
    pub left: usize,
    /// Whether they go to the client.
    pub forward: bool,
}

impl Streaming {
    /// Bytes of an unfinished message still to come that go to the client.
    pub fn forwarded_left(&self) -> usize {
        if self.forward {
            self.left
        } else {
            0
        }
    }
}

/// The parameter values on both ends of the relay, updated from ParameterStatus messages.
pub(crate) struct ParamSync<'a> {
    /// The pool's default values (what a client sees if it changes nothing).
    pub defaults: &'a [(String, String)],
    /// The client's changes.
    pub client: &'a mut ParamChanges,
    /// The server's values at login.
    pub server_login: &'a [(String, String)],
    /// The server's changes.
    pub server: &'a mut ParamChanges,
}

impl ParamSync<'_> {
    /// Records a ParameterStatus body (`name\0value\0`); `to_client` if the client saw it.
    fn observe(&mut self, body: &[u8], to_client: bool) {
        let mut parts = body.split(|&b| b == 0);
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            return;
        };
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
            return;
        };
        if let Some(name) = tracked(name) {
            self.server.set(self.server_login, name, value);
            if to_client {
                self.client.set(self.defaults, name, value);
            }
        }
    }
}

/// Routes server bytes: forwards the client's replies (zero-copy when nothing is dropped or
/// added), drops pgtier's, and inserts synthetic replies in order. Only ReadyForQuery bodies
/// are read; other messages stream through.
pub(crate) fn route_server(
    buf: &[u8],
    streaming: &mut Streaming,
    exp: &mut Expectations,
    registry: &mut ServerStatements,
    statements: &mut ClientStatements,
    params: &mut ParamSync<'_>,
    out: &mut BytesMut,
) -> Result<ServerScan, FrameError> {
    let mut scan = ServerScan::default();
    let mut batch = Batch::new(buf, out);
    let mut pos = streaming.left.min(buf.len());
    streaming.left -= pos;
    if !streaming.forward && pos > 0 {
        batch.drop_range(0, pos);
    }
    while let Some(h) = peek_header(&buf[pos..], i32::MAX as usize)? {
        let end = pos + h.frame_len();
        let read = matches!(h.tag, b'Z' | b'S' | b'E' | b'C')
            || h.tag == b'D' && matches!(exp.q.front(), Some(Entry::Probe));
        if read && end > buf.len() {
            break; // these few bodies are read: wait for the rest
        }
        let body = &buf[(pos + 5).min(buf.len())..end.min(buf.len())];
        scan.alerts |= matches!(h.tag, b'E' | b'N');
        if h.tag == b'G' {
            scan.ignored_syncs += exp.copy_in_started();
        }
        // At a message boundary, replies pgtier gives itself go out first.
        if exp.synthetic_first() {
            batch.insert(pos, |o| {
                exp.drain_synthetic(o);
            });
        }
        if exp.param_update.is_some() {
            // The client's SET/RESET of extra parameters: done once it completed, void if it
            // (or its Parse) failed. pgtier's own statements before it do not count.
            match h.tag {
                b'C' if exp.client_first(true) => {
                    // The server had the client's extra values, and has them again once
                    // pgtier restored the startup values a reset took (it follows at once).
                    let update = exp.param_update.take().expect("checked");
                    update.apply(params.client);
                    params.server.copy_extra_from(params.client);
                }
                b'E' | b'Z' if exp.client_first(false) => exp.param_update = None,
                _ => {}
            }
        }
        let mut forward = exp.on_message(h.tag, body, registry, statements);
        if h.tag == b'S' {
            params.observe(body, forward);
        }
        // A client's DISCARD ALL or DEALLOCATE ALL drops statements pgtier prepared here too.
        if h.tag == b'C' && (body == b"DISCARD ALL\0" || body == b"DEALLOCATE ALL\0") {
            registry.clear();
        }
        // Known at a LISTEN in the block (pgtier answers those only outside savepoints).
        if h.tag == b'C' && body == b"SAVEPOINT\0" {
            exp.savepoint = true;
        }
        if h.tag == b'E' && forward {
            // Counted by SQLSTATE class in the metrics.
            if let Some(code) = error_fields(body).0 {
                scan.errors.push(code.to_owned());
            }
        }
        if h.tag == b'Z' {
            // The client's ReadyForQuery may wait for the causal probe's reply (after it).
            forward = forward && !exp.hold_ready(buf[end - 1]);
            // Only the client's ReadyForQuery count against what the client is owed.
            scan.ready += u32::from(forward);
            scan.status = Some(TxStatus::from_byte(buf[end - 1]));
            if buf[end - 1] == b'I' {
                exp.savepoint = false;
            }
        }
        let cut = end.min(buf.len());
        if !forward {
            batch.drop_range(pos, cut);
        }
        if exp.causal.answered {
            // The probe replied: the token, then the client's ReadyForQuery held for it.
            let causal = &mut exp.causal;
            batch.insert(cut, |o| scan.ready += u32::from(causal.release(o)));
        }
        pos = cut;
        if end > buf.len() {
            *streaming = Streaming {
                left: end - buf.len(),
                forward,
            };
            break;
        }
    }
    if streaming.left == 0 && exp.synthetic_first() {
        batch.insert(pos, |o| {
            exp.drain_synthetic(o);
        });
    }
    scan.copied = batch.finish(pos);
    scan.ignored_syncs += std::mem::take(&mut exp.skipped_ready);
    scan.consumed = pos;
    Ok(scan)
}
