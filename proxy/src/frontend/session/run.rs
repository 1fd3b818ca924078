//! One relay run on a server connection, and what its end means: release, retry a read
//! elsewhere, or close the client with the right error.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use tracing::{info, warn};

use crate::backend::checkout::Serving;
use crate::backend::params;
use crate::backend::{CancelTarget, Upstream};
use crate::config::PoolMode;
use crate::frontend::farewell::farewell_now;
use crate::frontend::relay;
use crate::frontend::relay::fast::{Lane, LaneIo, LaneUnit};
use crate::frontend::relay::observe;
use crate::frontend::relay::observe::{Measured, Observer};
use crate::frontend::relay::units::Analysed;
use crate::frontend::relay::Outcome;
use crate::metrics::{PeerLabel, RoleLabel};
use crate::protocol::SqlState;
use crate::runtime::clients::{ClientEntry, ClientState};
use crate::runtime::DbRuntime;
use crate::shutdown::Phase;

use super::{Ran, Session, CANCEL_TIMEOUT, DISCARD_TIMEOUT, KILL_MESSAGE, SHUTDOWN_MESSAGE};

/// A run on a server, from its start to its end: what its end needs.
pub(super) struct Run {
    /// The server.
    pub serving: Serving,
    /// The client's database.
    pub runtime: Arc<DbRuntime>,
    /// The client's pools.
    pub upstream: Arc<Upstream>,
    entry: Arc<ClientEntry>,
    cancel: CancelTarget,
    /// The client was pinned before the run (a pin during it is logged at its end).
    was_pinned: bool,
    /// The run's writes move the client's causal token.
    track_writes: bool,
    role: RoleLabel,
    /// What the run measured so far.
    pub measured: Measured,
    /// The node's failed health checks when the run began.
    failures_seen: u64,
    /// Keep a copy of the first request for running it again elsewhere.
    retry: bool,
    /// The first unit's analysis (None when nothing is routed).
    analysed: Option<Analysed>,
}

/// Who and where, for the slow-query log of a run on `node`.
pub(super) fn observed(upstream: &Upstream, node: usize) -> observe::Context<'_> {
    observe::Context {
        database: upstream.database(),
        user: &upstream.id().user,
        node: upstream.node(node).node(),
    }
}

impl Session {
    /// Starts a run on `serving` (SHOW CLIENTS and cancels see the server from here).
    /// `retry`: keep a copy of the first request for running it again elsewhere (the relay
    /// makes it only when it may be needed).
    pub(super) fn begin_run(
        &mut self,
        mut serving: Serving,
        retry: bool,
        analysed: Option<Analysed>,
    ) -> Run {
        let entry = self.client.entry.clone();
        let cancel = serving.server.conn().cancel_target();
        entry.set_server(Some((cancel, serving.node)));
        let runtime = self.runtime.clone();
        // A pinned or session-mode client reads on its own server, but its writes still
        // advance the token of a shared causal scope, which its peers' reads wait for.
        let track_writes =
            runtime.router.splits() && (!self.holds_server() || self.scope.is_some());
        let role = if serving.on_replica {
            RoleLabel::Replica
        } else {
            RoleLabel::Primary
        };
        let upstream = self.upstream.clone();
        let measured = Measured::new(role, serving.since, runtime.limits.slow_query);
        // A health check that fails from now on concerns this run (the lane hands it over).
        let failures_seen = runtime
            .router
            .topology()
            .failures(serving.node)
            .load(Ordering::Acquire);
        Run {
            serving,
            runtime,
            upstream,
            entry,
            cancel,
            was_pinned: self.pinned.is_some(),
            track_writes,
            role,
            measured,
            failures_seen,
            retry,
            analysed,
        }
    }

    /// Relays on `serving` until its transaction ends (see [`Session::begin_run`]).
    pub(super) async fn run_on(
        &mut self,
        serving: Serving,
        mut first: BytesMut,
        retry: bool,
        analysed: Option<Analysed>,
    ) -> Result<Ran, &'static str> {
        let mut run = self.begin_run(serving, retry, analysed);
        // The common unit runs in the fast lane, before any relay state is built.
        let lane = match self.lane_of(&mut run.serving, run.analysed.as_ref(), &first) {
            Some(unit) => {
                let lane = relay::fast::lane(
                    LaneIo {
                        client: &mut self.stream,
                        server: &mut run.serving.server.conn().io(),
                        cbuf: &mut first,
                        statements: &mut self.statements,
                        measured: &mut run.measured,
                        metrics: &run.runtime.metrics,
                        context: observed(&run.upstream, run.serving.node),
                        limits: &run.runtime.limits,
                    },
                    unit,
                    &self.shutdown,
                )
                .await;
                Some(lane)
            }
            None => None,
        };
        self.end_run(run, first, lane).await
    }

    /// What a lane that ended without the relay leaves: the run's end.
    pub(super) fn lane_end(
        &self,
        run: &mut Run,
        first: &mut BytesMut,
        outcome: Outcome,
        retryable: bool,
    ) -> relay::RunEnd {
        let measured = &run.measured;
        relay::RunEnd {
            outcome,
            retry: (retryable && run.retry).then(|| std::mem::take(first)),
            leftover: std::mem::take(first),
            causal: self.routing.causal,
            causal_learned: false,
            causal_uncovered: false,
            retryable,
            tally: measured.tally,
            last_reply: measured.last_reply,
        }
    }

    /// Ends the run after the fast lane (`lane`: how it left; None: it did not take the unit):
    /// the general relay runs the rest if the lane handed it over, then what the end means for
    /// client and server.
    pub(super) async fn end_run(
        &mut self,
        mut run: Run,
        mut first: BytesMut,
        lane: Option<Lane>,
    ) -> Result<Ran, &'static str> {
        let (lane_end, resume) = match lane {
            Some(Lane::Answered) => (Some((Outcome::Idle, false)), None),
            Some(Lane::Ended { outcome, retryable }) => (Some((outcome, retryable)), None),
            Some(Lane::HandOver(r)) => (None, Some(r)),
            None => (None, None),
        };
        let mut end = match lane_end {
            Some((outcome, retryable)) => self.lane_end(&mut run, &mut first, outcome, retryable),
            None => {
                // The relay measures the rest of the run (its end carries the measurements).
                let placeholder = Measured::new(run.role, run.serving.since, None);
                let measured = std::mem::replace(&mut run.measured, placeholder);
                let observer = Observer::new(
                    &run.runtime.metrics,
                    observed(&run.upstream, run.serving.node),
                    measured,
                );
                let runtime = &*run.runtime;
                let upstream = &run.upstream;
                let classifier = runtime.router.classifier();
                let track_sequences = !self.holds_server();
                let kills_seen = self.kills_seen;
                let killed = || runtime.control.kills() != kills_seen;
                // Only called at a LISTEN in a transaction block.
                let listen_source =
                    || super::listen::listen_source(&self.proxy, &runtime.router, upstream);
                let answers_listen = !self.holds_server();
                let failures = runtime.router.topology().failures(run.serving.node);
                // Not boxed: the copy into a box of its own cost more than the allocation of a
                // transaction's future it would make smaller.
                relay::run(
                    &mut self.stream,
                    relay::ClientState {
                        statements: &mut self.statements,
                        params: &mut self.params,
                        defaults: &self.defaults,
                        pinned: &mut self.pinned,
                        classifier: &classifier,
                        rules: runtime.router.rule_set(),
                        routing: self.routing,
                        on_replica: run.serving.on_replica,
                        track_writes: run.track_writes,
                        track_sequences,
                        report_causal: runtime.router.settings().report_causal_lsn,
                        observer,
                        killed: &killed,
                        entry: &run.entry,
                        cancel: run.cancel,
                        scope: self.scope.as_ref(),
                        analysed: run.analysed.take(),
                        failed_checks: Some((failures, run.failures_seen)),
                        listen: answers_listen.then(|| relay::listen::ListenCtx {
                            listeners: self.proxy.listeners(),
                            slot: &mut self.listening,
                            source: &listen_source,
                        }),
                        keep_for_retry: run.retry,
                    },
                    run.serving.server.conn().io(),
                    first,
                    runtime.limits.for_pool(upstream.settings()),
                    &self.shutdown,
                    resume,
                )
                .await
            }
        };
        self.account(&run, &mut end);
        self.conclude(run, end).await
    }

    /// Records the end of a run: the client off its server (SHOW CLIENTS), the transaction's
    /// metrics, a new pin, the causal token.
    pub(super) fn account(&mut self, run: &Run, end: &mut relay::RunEnd) {
        let entry = &run.entry;
        entry.set_server(None);
        // The last reply's clock reading ends the transaction (and dates the release).
        let ended = *end.last_reply.get_or_insert_with(std::time::Instant::now);
        run.runtime.metrics.transaction(
            run.role,
            self.reason,
            &end.tally,
            ended.saturating_duration_since(run.serving.since),
        );
        if let (Some(reason), false) = (self.pinned, run.was_pinned) {
            entry.set_pinned();
            self.proxy
                .metrics()
                .pins
                .with_label_values(&[self.database()])
                .inc();
            info!(peer = %entry.peer, user = %self.user(), reason, "client pinned to its server connection until it disconnects");
        }
        if !self.holds_server() {
            entry.set_state(ClientState::Idle);
        }
        if run.track_writes && !run.serving.on_replica {
            self.note_causal(end);
        }
    }

    /// Returns the server of a run that ended idle (not during shutdown); the client bytes it
    /// left, if any, are routed anew. The run is over then (its server taken out of it).
    pub(super) fn release_idle(
        &mut self,
        serving: &mut Serving,
        end: relay::RunEnd,
    ) -> Option<BytesMut> {
        let ended = end.last_reply.unwrap_or(serving.since);
        if serving.on_replica {
            self.routing
                .last_read
                .note(serving.node, crate::clock::unix_micros_at(ended));
        }
        serving.server.put_back(ended);
        if end.leftover.is_empty() {
            crate::frontend::relay::buffers::give(end.leftover);
            return None;
        }
        Some(end.leftover)
    }

    /// What a run's end means for client and server.
    async fn conclude(&mut self, run: Run, end: relay::RunEnd) -> Result<Ran, &'static str> {
        let Run {
            mut serving,
            runtime,
            upstream,
            entry,
            ..
        } = run;
        let (code, message, reason) = match end.outcome {
            Outcome::Idle => {
                if self.shutdown.phase() < Phase::Draining {
                    return Ok(Ran::Done(self.release_idle(&mut serving, end)));
                }
                Box::pin(self.give_back(serving)).await;
                Box::pin(self.close(SqlState::ADMIN_SHUTDOWN, SHUTDOWN_MESSAGE)).await;
                return Err("shutdown");
            }
            Outcome::ProbeLost { failed } => {
                // The client has all its replies; only the server is in doubt (closed here).
                warn!(database = %self.database(), node = %self.upstream.node(serving.node).node(), "no reply to the causal probe after a write transaction: closing the server connection");
                if failed {
                    self.router().topology().report_failure(serving.node);
                }
                drop(serving);
                return Ok(Ran::Done((!end.leftover.is_empty()).then_some(end.leftover)));
            }
            Outcome::ClientGone { server_clean } => {
                if server_clean {
                    Box::pin(self.give_back(serving)).await;
                }
                return Err("client closed");
            }
            Outcome::ServerEndedClient(code) => {
                // Closed, not banned: the client caused it, and has the server's error.
                info!(database = %self.database(), node = %self.upstream.node(serving.node).node(), code, "the server ended the session over what the client did: client closed, node not banned");
                drop(serving);
                return Err("ended by the server (client's doing)");
            }
            Outcome::ClientViolation(v) => {
                drop(serving);
                Box::pin(self.violation(v)).await;
                return Err("protocol violation");
            }
            Outcome::ServerGone(e) => {
                warn!(database = %self.database(), node = %self.upstream.node(serving.node).node(), error = %e, retryable = end.retryable, on_replica = serving.on_replica, "server connection lost");
                self.router().topology().report_failure(serving.node);
                match end.retry {
                    Some(again) if serving.on_replica && end.retryable => {
                        info!(database = %self.database(), "read failed on a replica before any reply: retrying it once elsewhere");
                        return Ok(Ran::RetryRead(again));
                    }
                    _ if serving.on_replica && end.retryable => (
                        SqlState::CONNECTION_FAILURE,
                        "pgtier: server connection lost: the read failed on two servers before any reply (it is not retried again)",
                        "server connection lost (read failed twice)",
                    ),
                    _ => (
                        SqlState::CONNECTION_FAILURE,
                        "pgtier: server connection lost",
                        "server connection lost",
                    ),
                }
            }
            Outcome::ClientStalled { at_boundary } => {
                // Abandoned mid-result: the server is closed, never returned (its backend
                // sees the connection reset and ends).
                drop(serving);
                let limit = runtime.limits.client_write_timeout;
                runtime.metrics.write_timeout(PeerLabel::Client);
                warn!(peer = %entry.peer, user = %self.user(), database = %self.database(), ?limit, "client accepted no data for client_write_timeout: closing it and the server connection it held");
                if at_boundary {
                    let message = format!("pgtier: client accepted no data for client_write_timeout ({limit:?})");
                    runtime.metrics.error(SqlState::CONNECTION_FAILURE.0);
                    farewell_now(&mut self.stream, SqlState::CONNECTION_FAILURE, &message);
                }
                return Err("client_write_timeout");
            }
            Outcome::ServerStalled => {
                let limit = runtime.limits.server_write_timeout;
                let node = self.upstream.node(serving.node).node().to_owned();
                // The server may be running a statement (it reads no more until that ends):
                // cancel it, then close the connection.
                let target = serving.server.conn().cancel_target();
                drop(serving);
                tokio::spawn(crate::backend::cancel::send_cancel(target, CANCEL_TIMEOUT));
                runtime.metrics.write_timeout(PeerLabel::Server);
                warn!(peer = %entry.peer, database = %self.database(), %node, ?limit, "server accepted no data for server_write_timeout: closing the server connection and its client");
                let message = format!("pgtier: server {node} accepted no data for server_write_timeout ({limit:?}); connection closed");
                Box::pin(self.close(SqlState::CONNECTION_FAILURE, &message)).await;
                return Err("server_write_timeout");
            }
            Outcome::QueryTimeout => {
                let node = self.upstream.node(serving.node).node().to_owned();
                drop(serving);
                let limit = upstream.settings().query_timeout.unwrap_or_default();
                warn!(peer = %entry.peer, user = %self.user(), database = %self.database(), %node, ?limit, "query_timeout: the server did not answer the cancel; closing the server connection and its client");
                let message = format!("pgtier: query canceled after query_timeout ({limit:?}), and server {node} did not answer the cancel within {:?}; connection closed", relay::CANCEL_GRACE);
                Box::pin(self.close(SqlState::QUERY_CANCELED, &message)).await;
                return Err("query_timeout");
            }
            Outcome::TransactionTimeout => {
                let limit = upstream.settings().transaction_timeout.unwrap_or_default();
                info!(peer = %entry.peer, user = %self.user(), database = %self.database(), ?limit, "transaction_timeout: closing the client and its server connection (the transaction does not commit)");
                drop(serving);
                let message = format!("terminating connection due to transaction timeout (transaction_timeout = {limit:?})");
                Box::pin(self.close(SqlState::TRANSACTION_TIMEOUT, &message)).await;
                return Err("transaction_timeout");
            }
            Outcome::IdleInTransaction => (
                SqlState::IDLE_IN_TRANSACTION_TIMEOUT,
                "terminating connection due to idle-in-transaction timeout (idle_transaction_timeout)",
                "idle_transaction_timeout",
            ),
            Outcome::Shutdown => (SqlState::ADMIN_SHUTDOWN, SHUTDOWN_MESSAGE, "shutdown"),
            Outcome::Killed => (SqlState::ADMIN_SHUTDOWN, KILL_MESSAGE, "admin KILL"),
            Outcome::SyncFailed(code, message) => {
                // Postgres refuses such a value at startup; the client gets the same, late.
                drop(serving);
                warn!(database = %self.database(), %code, %message, "a session parameter of the client was rejected by the server");
                // The server's reason (its message names the parameter): a bad value, an
                // unknown parameter, one Postgres takes only at backend start (55P02).
                let text = format!("invalid session parameter (from the startup packet or SET): {message}");
                Box::pin(self.close(SqlState::of_parameter_error(&code), &text)).await;
                return Err("invalid session parameter");
            }
        };
        // A server in an unknown state is closed, never returned (dropping the checkout does).
        drop(serving);
        Box::pin(self.close(code, message)).await;
        Err(reason)
    }

    /// How the unit in `first` runs in the fast lane on `server`, if it does: one plain read in
    /// transaction mode, not pinned, no query or transaction timeout to watch, and nothing of
    /// pgtier's to send before it (no parameter to bring in line, no sequence state to clear,
    /// a named statement prepared on this server already).
    pub(super) fn lane_of(
        &self,
        serving: &mut Serving,
        analysed: Option<&Analysed>,
        first: &[u8],
    ) -> Option<LaneUnit> {
        // The pool's settings are what `Limits::for_pool` takes these three from.
        let pool = self.upstream.settings();
        if pool.mode != PoolMode::Transaction
            || self.pinned.is_some()
            || pool.query_timeout.is_some()
            || pool.transaction_timeout.is_some()
        {
            return None;
        }
        let unit = relay::fast::lane_unit(first, analysed, &self.statements)?;
        let io = serving.server.conn().io();
        // A named statement this server has not prepared yet: the relay prepares it.
        if let LaneUnit::Named(stmt) = &unit {
            if !io.statements.touch(&stmt.server_name) {
                return None;
            }
        }
        // `agree` is the cheap answer; the same values in another order need the full look.
        let fits = !*io.sequences_dirty
            && (params::agree(&self.params, io.changed)
                || params::sync_statements(
                    &self.defaults,
                    &self.params,
                    io.login_params,
                    io.changed,
                )
                .is_none());
        fits.then_some(unit)
    }

    /// The client's causal token after a run on the primary: moved by the probes that
    /// succeeded; unknown while a write is not covered by one (the next replica read asks).
    fn note_causal(&mut self, end: &relay::RunEnd) {
        self.routing.causal = self.routing.causal.max(end.causal);
        if end.causal_uncovered {
            self.causal_unknown = true;
        } else if end.causal_learned {
            // A later position covers every earlier write.
            self.causal_unknown = false;
        }
    }

    /// Returns a clean server at the end of the session; one that held session state (session
    /// mode, or a pinned client) is reset with DISCARD ALL first, or closed if that fails.
    pub(super) async fn give_back(&mut self, mut serving: Serving) {
        if !self.holds_server() || serving.server.conn().discard_all(DISCARD_TIMEOUT).await {
            serving.server.release();
        }
    }
}
