//! The relay between one client and the server connection serving it. Bytes flow in batches:
//! each read is routed (`rewrite` for client bytes, `responses` for server bytes) and sent with
//! one write. The relay keeps the facts pooling needs: how many ReadyForQuery replies are still
//! owed (one per Query, Sync and FunctionCall sent), the transaction status of the last one,
//! and the replies the server owes (`Expectations`).
//!
//! - `to_server`: client bytes through the routing gate and `rewrite` to the server.
//! - `to_client`: server bytes through `responses` to the client.
//! - `fast`: the fast lane for a lone plain-read unit, run before any relay state is built
//!   (no rewrite, no reply queue); `shape` the unit shape it takes, which the unit scan
//!   follows as it walks.
//! - `probe`: the causal probe's part (pipelining it, sending it late, losing it).
//! - `units`: a unit's one analysis (statements, classification, pinning verdict); `gate`
//!   holds back what a replica may not run; `causal` the client's causal token; `observe`
//!   what is measured; `extra_sets` the SET/RESET of `track_extra_params`; `batch` and
//!   `buffers` the bytes in flight.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::backend::params::{bring_in_line, ParamChanges};
use crate::backend::server::ServerIo;
use crate::config::PoolMode;
use crate::frontend::stream::ClientStream;
use crate::prepared::client::ClientStatements;
use crate::protocol::messages::TxStatus;
use crate::router::classify::Classifier;
use crate::router::route::ClientRouting;
use crate::router::rules::RuleSet;
use crate::shutdown::{Phase, SessionWatch};

use causal::Causal;
use gate::Gate;
use observe::Observer;
use responses::{Entry, Expectations, Kind, Streaming};
pub(crate) use rewrite::Violation;

/// SQLSTATEs of the FATAL errors with which a server ends a session over what its client did:
/// a protocol violation, or the client's own idle-in-transaction, transaction or idle-session
/// timeout. The node is healthy: it is neither banned nor given the unit again.
const CLIENT_CAUSED: [&str; 4] = ["08P01", "25P03", "25P04", "57P05"];

pub(crate) mod batch;
pub(crate) mod buffers;
pub(crate) mod causal;
pub(crate) mod extra_sets;
pub(crate) mod fast;
pub(crate) mod gate;
pub(crate) mod listen;
pub(crate) mod observe;
mod probe;
pub(crate) mod responses;
pub(crate) mod rewrite;
mod shape;
mod timeouts;
mod to_client;
mod to_server;
pub(crate) mod units;

#[cfg(test)]
mod fuzz_tests;

pub(crate) use crate::runtime::Limits;
pub(crate) use timeouts::CANCEL_GRACE;

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
    /// A query went unanswered past `query_timeout`, and the server ignored the cancel sent
    /// then for `CANCEL_GRACE`.
    QueryTimeout,
    /// A transaction stayed open past `transaction_timeout`.
    TransactionTimeout,
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
    /// The first request, kept for that (only when asked for, see `ClientState`).
    pub retry: Option<BytesMut>,
    /// What the run did (queries, bytes, query time).
    pub tally: crate::metrics::Tally,
    /// When the last ReadyForQuery reached the client.
    pub last_reply: Option<std::time::Instant>,
}

/// Relays between the client and its server until the server is idle (transaction mode) or
/// the session ends. `cbuf` holds client bytes already read; `shutdown` stops it; `resume`: the
/// fast lane already sent the unit at the front of `cbuf` and hands the run over. The relay is
/// built before the future, which then holds it once (an async fn would also keep its
/// arguments: the transaction's state is touched on every run).
pub(crate) fn run<'a>(
    client: &'a mut ClientStream,
    state: ClientState<'a>,
    server: ServerIo<'a>,
    cbuf: BytesMut,
    limits: Limits,
    shutdown: &'a SessionWatch,
    resume: Option<fast::Resume>,
) -> impl std::future::Future<Output = RunEnd> + 'a {
    let mut r = Relay {
        client,
        statements: state.statements,
        params: state.params,
        defaults: state.defaults,
        pinned: state.pinned,
        classifier: state.classifier,
        rules: state.rules,
        routing: state.routing,
        gate: Gate::new(
            state.on_replica,
            state.track_writes,
            state.track_sequences,
            state.analysed,
        ),
        server,
        cbuf,
        out: BytesMut::new(),
        expect: Expectations::with(Causal::new(
            state.track_writes && !state.on_replica,
            state.report_causal,
            state.routing.causal,
            state
                .scope
                .filter(|_| state.track_writes && !state.on_replica),
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
        cancel: state.cancel,
        clocks: timeouts::Clocks::default(),
        failed_checks: state.failed_checks,
        listen: state.listen,
        staged: None,
        keep_for_retry: state.keep_for_retry,
        kept: None,
    };
    async move {
        let outcome = r.run(shutdown, resume).await;
        r.drop_staged();
        if r.gate.wrote_in_run {
            *r.server.sequences_dirty = true;
        }
        RunEnd {
            outcome,
            leftover: std::mem::take(&mut r.cbuf),
            causal: r.expect.causal.token,
            causal_learned: r.expect.causal.learned,
            causal_uncovered: r.expect.causal.uncovered || r.gate.wrote,
            retryable: !r.replied && !r.more_input,
            retry: r.kept.take(),
            tally: r.observer.measured.tally,
            last_reply: r.observer.measured.last_reply,
        }
    }
}

impl Relay<'_> {
    async fn run(&mut self, shutdown: &SessionWatch, resume: Option<fast::Resume>) -> Outcome {
        let r = self;
        // Admin wake-ups (KILL) end the run too if they concern this client: those after now
        // (after the lane began, if it ran first).
        let pokes = resume.map_or_else(|| shutdown.pokes(), |f| f.pokes);
        if let Some(resume) = resume {
            // The lane sent the unit (with nothing before it) and read no reply bytes past
            // what the server buffer holds.
            if let Err(end) = r.take_over(resume) {
                return end;
            }
            if !r.server.inbuf.is_empty() {
                if let Some(end) = r.on_server_bytes(shutdown).await {
                    return end;
                }
            }
            if !r.cbuf.is_empty() {
                if let Some(end) = r.on_client_bytes().await {
                    return end;
                }
            }
        } else if let Some(end) = r.start().await {
            return end;
        }
        let limits = r.limits;
        let closing = shutdown.reached_or_poked(Phase::Closing, Some(pokes));
        let draining = shutdown.reached(Phase::Draining);
        tokio::pin!(closing, draining);
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
            let (query_deadline, tx_deadline) = r.deadlines();
            // One timer, for the earliest deadline: the others are looked at again after it.
            let timer = [
                (idle_deadline, Timer::IdleInTransaction),
                (query_deadline, Timer::Query),
                (tx_deadline, Timer::Transaction),
                (r.expect.causal.deadline(), Timer::Probe),
            ]
            .into_iter()
            .filter_map(|(at, timer)| Some((at?, timer)))
            .min_by_key(|(at, _)| *at);
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
                _ = sleep_until_opt(timer.map(|(at, _)| at)) => match timer.map(|(_, t)| t) {
                    Some(Timer::IdleInTransaction) => return Outcome::IdleInTransaction,
                    Some(Timer::Query) => {
                        if let Some(end) = r.query_timed_out() {
                            return end;
                        }
                    }
                    Some(Timer::Transaction) => return Outcome::TransactionTimeout,
                    Some(Timer::Probe) => {
                        return r.server_lost(std::io::ErrorKind::TimedOut.into()).await;
                    }
                    None => {}
                },

                _ = &mut draining, if drain_when_idle => return Outcome::Idle,
                _ = &mut closing => {
                    if shutdown.phase() >= Phase::Closing {
                        return Outcome::Shutdown;
                    }
                    if (r.killed)() {
                        return Outcome::Killed;
                    }
                    if let Some((count, seen)) = r.failed_checks {
                        let now = count.load(Ordering::Acquire);
                        if now != seen && r.busy() {
                            let e = std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "the node failed a health check while a reply from it was awaited",
                            );
                            return r.server_lost(e).await;
                        }
                        r.failed_checks = Some((count, now));
                    }
                    closing.set(shutdown.reached_or_poked(Phase::Closing, Some(shutdown.pokes())));
                }
            }
        }
    }

    /// A fresh run's start: what pgtier sends first, then the client's bytes the session read;
    /// Some when the run ends there.
    async fn start(&mut self) -> Option<Outcome> {
        let r = self;
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
        // The general relay may send more than the first request: its copy is made now.
        if r.keep_for_retry {
            r.kept = Some(r.cbuf.clone());
        }
        // Forwarded what the session already read.
        r.on_client_bytes().await
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
    pub entry: &'a crate::runtime::ClientEntry,
    /// Where a cancel of the server's running query goes (`query_timeout`).
    pub cancel: crate::backend::CancelTarget,
    /// The token of the client's causal scope (advanced by its commits; None: `connection`).
    pub scope: Option<&'a std::sync::Arc<crate::router::scopes::ScopeToken>>,
    /// The analysis of the first unit in `cbuf`, made when it was routed (not made again).
    pub analysed: Option<units::Analysed>,
    /// The count of failed health checks of the server's node, and its value when the run
    /// began: when it moves (an admin wake-up follows), a reply still awaited is given up (the
    /// server is closed; a read that sent nothing to the client yet runs again elsewhere).
    pub failed_checks: Option<(&'a AtomicU64, u64)>,
    /// What answering LISTEN-family statements in a transaction block needs (None: session
    /// mode, or the client is pinned).
    pub listen: Option<listen::ListenCtx<'a>>,
    /// Keep a copy of the first request, for running it again elsewhere if the server fails
    /// it before any reply (a replica's read, not yet retried).
    pub keep_for_retry: bool,
}

/// The relay's state for one run.
struct Relay<'a> {
    client: &'a mut ClientStream,
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
    entry: &'a crate::runtime::ClientEntry,
    cancel: crate::backend::CancelTarget,
    /// When the running query and transaction began (only with their timeouts set).
    clocks: timeouts::Clocks,
    failed_checks: Option<(&'a AtomicU64, u64)>,
    listen: Option<listen::ListenCtx<'a>>,
    /// LISTEN-family statements of the open transaction block (None: nothing staged, the
    /// usual case: the end of a block is then not looked for).
    staged: Option<Box<crate::notify::Staged>>,
    /// Keep a copy of the first request for a retry (see `ClientState::keep_for_retry`).
    keep_for_retry: bool,
    /// That copy, once made: at the start of the general relay, or when the fast lane hands
    /// over (a lane that ends well needs none: the unit stays in `cbuf` until it knows).
    kept: Option<BytesMut>,
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
}

/// What a relay's deadline is for.
#[derive(Debug, Clone, Copy)]
enum Timer {
    /// `idle_transaction_timeout`.
    IdleInTransaction,
    /// `query_timeout` (or the grace after its cancel).
    Query,
    /// `transaction_timeout`.
    Transaction,
    /// The causal probe's reply.
    Probe,
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => crate::timers::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
