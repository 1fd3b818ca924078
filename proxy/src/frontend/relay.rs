//! The relay between one client and the server connection serving it. Bytes flow in batches:
//! each read is routed (`rewrite` for client bytes, `responses` for server bytes) and sent with
//! one write. The relay keeps the facts pooling needs: how many ReadyForQuery replies are still
//! owed (one per Query, Sync and FunctionCall sent), the transaction status of the last one,
//! and the replies the server owes (`Expectations`).

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::causal::Causal;
use super::gate::{Gate, Moment};
use super::observe::Observer;
use super::prepared::ClientStatements;
use super::responses::{route_server, Entry, Expectations, Kind, ParamSync, Streaming};
pub(crate) use super::rewrite::Violation;
use super::rewrite::{route_client, ClientSide, ServerSide};
use super::units::UnitContext;
use crate::backend::params::{bring_in_line, ExtraParams, ParamChanges};
use crate::backend::server::ServerIo;
use crate::config::{PoolMode, SessionStatePolicy};
use crate::protocol::frame::peek_header;
use crate::protocol::messages::{ends_session, fatal_sqlstate, TxStatus};
use crate::router::classify::Classifier;
use crate::router::route::ClientRouting;
use crate::router::rules::RuleSet;
use crate::shutdown::{Phase, ShutdownWatch};
use crate::write::{write_all_within, WriteError};

/// SQLSTATEs of the FATAL errors with which a server ends a session over what its client did:
/// a protocol violation, or the client's own idle-in-transaction, transaction or idle-session
/// timeout. The node is healthy: it is neither banned nor given the unit again.
const CLIENT_CAUSED: [&str; 4] = ["08P01", "25P03", "25P04", "57P05"];

// The causal probe's part of the relay (pipelining it, sending it late, losing it).
#[path = "relay_causal.rs"]
mod probe;

/// Read buffer size per direction while a client is active.
pub(crate) const BUF_SIZE: usize = 16 * 1024;

/// The Query message that clears a server's sequence state.
const DISCARD_SEQUENCES: &[u8] = b"Q\0\0\0\x16DISCARD SEQUENCES\0";

/// How a relay ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The server is idle with nothing in flight: release it (transaction mode) or, in session
    /// mode, the proxy is draining and the client should be closed.
    Idle,
    /// The client sent Terminate or closed its socket.
    ClientGone {
        /// Whether the server can go back to the pool as is.
        server_clean: bool,
    },
    /// The server closed or failed.
    ServerGone(std::io::Error),
    /// The client accepted no data for `client_write_timeout`: the server is abandoned
    /// mid-result (closed), the client closed.
    ClientStalled {
        /// The client's stream stopped at a message boundary (a FATAL may follow).
        at_boundary: bool,
    },
    /// The server accepted no data for `server_write_timeout`.
    ServerStalled,
    /// The client broke the protocol.
    ClientViolation(Violation),
    /// The client sat idle inside a transaction past `idle_transaction_timeout`.
    IdleInTransaction,
    /// Shutdown reached its closing phase.
    Shutdown,
    /// An admin KILLed the client's database.
    Killed,
    /// Bringing the server's parameters in line with the client's failed: (SQLSTATE, message).
    SyncFailed(String, String),
    /// The server ended the session over what the client did (a FATAL with one of
    /// `CLIENT_CAUSED`, this SQLSTATE), and the client has its error: the node is not at fault.
    ServerEndedClient(&'static str),
    /// The transaction's replies all reached the client, but the server failed or timed out
    /// on the causal probe after it (`failed`: it closed or broke): close the server only.
    ProbeLost { failed: bool },
}

/// How a relay ended, and what the session needs next.
#[derive(Debug)]
pub(crate) struct RunEnd {
    /// Why it ended.
    pub outcome: Outcome,
    /// Client bytes not sent (a unit held back for another server).
    pub leftover: BytesMut,
    /// The client's causal token after the run (moved by the probes that succeeded).
    pub causal: crate::cluster::Lsn,
    /// A probe succeeded in the run.
    pub causal_learned: bool,
    /// A write is not covered by a probe that succeeded (the token is unknown).
    pub causal_uncovered: bool,
    /// Nothing reached the client and nothing beyond the first request reached the server:
    /// a read that failed like this may run again elsewhere.
    pub retryable: bool,
    /// What the run did (queries, bytes, query time).
    pub tally: crate::metrics::Tally,
    /// When the last ReadyForQuery reached the client.
    pub last_reply: Option<std::time::Instant>,
}

/// Limits the relay applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Pool mode of the client's pool.
    pub mode: PoolMode,
    /// Largest client message buffered.
    pub max_message: usize,
    /// Idle-in-transaction limit.
    pub idle_transaction_timeout: Option<Duration>,
    /// Pin or reject statements that leave session state.
    pub session_state: SessionStatePolicy,
    /// Parameters synced per client although not reported (`track_extra_params`).
    pub extra_params: ExtraParams,
    /// A client idle (outside a transaction) this long is disconnected (None: never).
    pub client_idle_timeout: Option<Duration>,
    /// Queries slower than this are logged (None: no slow-query log).
    pub slow_query: Option<Duration>,
    /// Longest a client may accept no data while pgtier writes to it.
    pub client_write_timeout: Duration,
    /// Longest a server may accept no data while pgtier writes to it.
    pub server_write_timeout: Duration,
    /// Bytes a client's named prepared statements may take.
    pub prepared_bytes: usize,
}

impl Limits {
    /// The limits of `db`'s clients.
    pub fn of(settings: &crate::config::Settings, db: &crate::config::Database) -> Limits {
        Limits {
            mode: db.pool.mode,
            max_message: settings.raw.max_message_size as usize,
            idle_transaction_timeout: db.pool.idle_transaction_timeout,
            session_state: db.pool.session_state,
            extra_params: ExtraParams::intern(&settings.raw.track_extra_params),
            client_idle_timeout: settings.client_idle_timeout,
            slow_query: settings.slow_query_threshold,
            client_write_timeout: settings.raw.client_write_timeout,
            server_write_timeout: settings.raw.server_write_timeout,
            prepared_bytes: usize::try_from(settings.raw.max_prepared_statement_bytes_per_client)
                .unwrap_or(usize::MAX),
        }
    }
}

/// Relays between the client and its server until the server is idle (transaction mode) or
/// the session ends. `cbuf` holds client bytes already read; `shutdown` stops it.
pub(crate) async fn run(
    client: &mut TcpStream,
    state: ClientState<'_>,
    server: ServerIo<'_>,
    cbuf: BytesMut,
    limits: Limits,
    shutdown: &ShutdownWatch,
) -> RunEnd {
    let mut r = Relay {
        client,
        statements: state.statements,
        params: state.params,
        defaults: state.defaults,
        pinned: state.pinned,
        classifier: state.classifier,
        rules: state.rules,
        routing: state.routing,
        gate: Gate::new(state.on_replica, state.track_writes, state.track_sequences),
        server,
        cbuf,
        out: BytesMut::new(),
        expect: Expectations::with(Causal::new(
            state.track_writes && !state.on_replica,
            state.report_causal,
            state.routing.causal,
        )),
        copy_left: 0,
        discard: false,
        streaming: Streaming::default(),
        owed: 0,
        status: TxStatus::Idle,
        limits,
        replied: false,
        more_input: false,
        unnamed_here: false,
        observer: state.observer,
        killed: state.killed,
        entry: state.entry,
    };
    let outcome = r.run(shutdown).await;
    if r.gate.wrote {
        *r.server.sequences_dirty = true;
    }
    RunEnd {
        outcome,
        leftover: std::mem::take(&mut r.cbuf),
        causal: r.expect.causal.token,
        causal_learned: r.expect.causal.learned,
        causal_uncovered: r.expect.causal.uncovered || r.gate.wrote,
        retryable: !r.replied && !r.more_input,
        tally: r.observer.tally,
        last_reply: r.observer.last_reply,
    }
}

impl Relay<'_> {
    async fn run(&mut self, shutdown: &ShutdownWatch) -> Outcome {
        let r = self;
        let limits = r.limits;
        // Admin wake-ups (KILL) end the run too if they concern this client.
        let closing = shutdown.reached_or_poked(Phase::Closing, Some(shutdown.pokes()));
        let draining = shutdown.reached(Phase::Draining);
        tokio::pin!(closing, draining);
        // Bring the server's session parameters in line with the client's, ahead of its request.
        if let Some(sql) = bring_in_line(
            r.defaults,
            r.params,
            r.server.login_params,
            r.server.changed,
        ) {
            let mut body = sql.into_bytes();
            body.push(0);
            r.out.put_u8(b'Q');
            r.out.put_u32(body.len() as u32 + 4);
            r.out.put_slice(&body);
            r.expect.push(Entry::own(Kind::Query));
        }
        // Sequence state (currval, lastval) is session state: a transaction starts on a server
        // with none left by an earlier one, so that no client reads another's (or a stale
        // value of its own). Sent ahead of the request like the parameter sync: no round trip.
        if *r.server.sequences_dirty && !r.holds_server() {
            r.out.put_slice(DISCARD_SEQUENCES);
            r.expect.push(Entry::own(Kind::Query));
            *r.server.sequences_dirty = false;
        }
        // Forward what the session already read.
        if let Some(end) = r.on_client_bytes().await {
            return end;
        }
        loop {
            // Waiting on the client with nothing in flight; at rest if no implicit transaction
            // either (no extended messages since the last Sync).
            let waiting =
                r.owed == 0 && r.copy_left == 0 && r.streaming.left == 0 && r.expect.is_empty();
            let at_rest = waiting && !r.expect.unsynced;
            let idle_deadline = match (
                waiting && (r.status != TxStatus::Idle || r.expect.unsynced),
                limits.idle_transaction_timeout,
            ) {
                (true, Some(t)) => Some(Instant::now() + t),
                _ => None,
            };
            let drain_when_idle = r.holds_server() && at_rest && r.status == TxStatus::Idle;
            if r.cbuf.capacity() - r.cbuf.len() < 1024 {
                r.cbuf.reserve(BUF_SIZE);
            }
            if r.server.inbuf.capacity() - r.server.inbuf.len() < 1024 {
                r.server.inbuf.reserve(BUF_SIZE);
            }
            tokio::select! {
                // Not while a unit is held back: it waits for the server's replies, and reading
                // on would buffer whatever the client sends meanwhile, without bound.
                res = r.client.read_buf(&mut r.cbuf), if !r.gate.held => match res {
                    Ok(0) | Err(_) => {
                        let clean = at_rest && r.status == TxStatus::Idle && r.cbuf.is_empty();
                        return Outcome::ClientGone { server_clean: clean };
                    }
                    Ok(_) => {
                        r.more_input = true;
                        if let Some(end) = r.on_client_bytes().await {
                            return end;
                        }
                    }
                },
                res = r.server.stream.read_buf(r.server.inbuf) => match res {
                    Ok(0) => return r.server_lost(std::io::ErrorKind::UnexpectedEof.into()).await,
                    Err(e) => return r.server_lost(e).await,
                    Ok(_) => {
                        if let Some(end) = r.on_server_bytes(shutdown).await {
                            return end;
                        }
                    }
                },
                _ = sleep_until_opt(idle_deadline) => return Outcome::IdleInTransaction,
                _ = sleep_until_opt(r.expect.causal.deadline()) => {
                    return r.server_lost(std::io::ErrorKind::TimedOut.into()).await;
                }
                _ = &mut draining, if drain_when_idle => return Outcome::Idle,
                _ = &mut closing => {
                    if shutdown.phase() >= Phase::Closing {
                        return Outcome::Shutdown;
                    }
                    if (r.killed)() {
                        return Outcome::Killed;
                    }
                    closing.set(shutdown.reached_or_poked(Phase::Closing, Some(shutdown.pokes())));
                }
            }
        }
    }
}

/// What the relay needs of the client's session.
pub(crate) struct ClientState<'a> {
    /// The client's named prepared statements.
    pub statements: &'a mut ClientStatements,
    /// The client's tracked parameters (changes from `defaults`).
    pub params: &'a mut ParamChanges,
    /// The pool's default parameter values.
    pub defaults: &'a [(String, String)],
    /// Why the client is pinned to its server, if it is.
    pub pinned: &'a mut Option<&'static str>,
    /// The database's classifier.
    pub classifier: &'a Classifier,
    /// The database's routing rules (None: it has none).
    pub rules: Option<&'a RuleSet>,
    /// The client's routing state.
    pub routing: ClientRouting,
    /// The server is a replica (units that need the primary are held back).
    pub on_replica: bool,
    /// Note whether anything that may write goes through (read-your-writes needs to know).
    pub track_writes: bool,
    /// Note whether anything may change sequence state (transaction pooling: the server is
    /// then cleaned before the next transaction).
    pub track_sequences: bool,
    /// Report the causal token as ParameterStatus (`report_causal_lsn`).
    pub report_causal: bool,
    /// Measures the run.
    pub observer: Observer<'a>,
    /// Whether an admin KILLed the client's database (asked when an admin wakes sessions).
    pub killed: &'a (dyn Fn() -> bool + Sync),
    /// The client's registry entry (SHOW CLIENTS' prepared-statement count).
    pub entry: &'a super::clients::ClientEntry,
}

/// The relay's state for one run.
struct Relay<'a> {
    client: &'a mut TcpStream,
    statements: &'a mut ClientStatements,
    params: &'a mut ParamChanges,
    defaults: &'a [(String, String)],
    pinned: &'a mut Option<&'static str>,
    classifier: &'a Classifier,
    rules: Option<&'a RuleSet>,
    routing: ClientRouting,
    gate: Gate,
    server: ServerIo<'a>,
    /// Client bytes read and not yet routed.
    cbuf: BytesMut,
    /// A batch rebuilt by routing (only when something was renamed, dropped or added).
    out: BytesMut,
    expect: Expectations,
    copy_left: usize,
    discard: bool,
    streaming: Streaming,
    owed: u32,
    status: TxStatus,
    limits: Limits,
    /// Something was written to the client.
    replied: bool,
    /// Client bytes beyond the first request were read.
    more_input: bool,
    /// The client's unnamed statement is on this server connection.
    unnamed_here: bool,
    observer: Observer<'a>,
    killed: &'a (dyn Fn() -> bool + Sync),
    entry: &'a super::clients::ClientEntry,
}

impl Relay<'_> {
    /// Whether the server stays with the client between transactions (session mode, or the
    /// client is pinned).
    fn holds_server(&self) -> bool {
        self.limits.mode == PoolMode::Session || self.pinned.is_some()
    }

    /// Whether the server still owes replies or holds unfinished extended work.
    fn busy(&self) -> bool {
        self.owed > 0
            || self.copy_left > 0
            || self.streaming.left > 0
            || !self.expect.is_empty()
            || self.expect.unsynced
    }

    /// Routes and forwards buffered client bytes; returns an outcome if the relay must end.
    /// A unit the gate holds back ends the relay (outside a transaction) once the server has
    /// answered everything before it; inside a transaction it follows on this server.
    async fn on_client_bytes(&mut self) -> Option<Outcome> {
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
        }
    }

    async fn forward_client_bytes(&mut self) -> Option<Outcome> {
        let strings = self.params.string_syntax(self.defaults);
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
        // Taken per batch for the causal token; the server's sequence state must be cleared
        // at the end of the run all the same.
        let wrote = std::mem::take(&mut self.gate.wrote);
        self.expect.causal.uncovered |= wrote;
        *self.server.sequences_dirty |= wrote;
        let scan = route_client(
            &self.cbuf[..admitted],
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
                params: self.params,
            },
            &mut ServerSide {
                registry: self.server.statements,
                expect: &mut self.expect,
                unnamed_here: &mut self.unnamed_here,
            },
            &mut self.out,
        );
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

    /// Routes and forwards buffered server bytes; returns an outcome if the relay must end.
    async fn on_server_bytes(&mut self, shutdown: &ShutdownWatch) -> Option<Outcome> {
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
            && ends_session(batch)
        {
            return Some(Outcome::ServerGone(std::io::Error::other(
                "replica ended the session before replying",
            )));
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
fn client_write_failed(e: &WriteError, batch: &[u8], lead: usize) -> Outcome {
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

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
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
