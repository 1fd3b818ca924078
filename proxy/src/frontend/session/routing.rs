//! Where each unit of a client goes, checking out its server (after any admin PAUSE, counting
//! the pool wait), and the client's causal token when a write's position is unknown.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;

use tracing::{info, warn};

use crate::backend::checkout;
use crate::backend::checkout::Serving;

use crate::backend::pool::PoolError;
use crate::cluster::Lsn;
use crate::config::CausalScope;
use crate::frontend::relay::units::{Analysed, UnitContext};
use crate::metrics::ReasonLabel;
use crate::protocol::SqlState;
use crate::router::route::{Choice, DecidedBy, Route, Target, UnitInfo};
use crate::runtime::clients::ClientState;
use crate::shutdown::Phase;

use super::open::target_farewell;
use super::{Session, CAUSAL_PROBE_TIMEOUT, SHUTDOWN_MESSAGE};

impl Session {
    /// Where the unit at the start of `first` goes, and why, with the unit's analysis (None
    /// when nothing is routed).
    pub(super) fn target_of(&mut self, first: &[u8]) -> (Route, Option<Analysed>) {
        if !self.router().splits() || self.holds_server() {
            let route = Route {
                target: Target::Primary,
                by: DecidedBy::Default,
            };
            return (route, None);
        }
        if !self.router().rules().is_empty() {
            // The client's current application_name (SET tracks it) selects the rules that
            // apply; the relay's routing gate sees the same through `self.routing`.
            let app = self.params.application_name(&self.defaults);
            let user = &self.upstream.pools()[0].id().user;
            self.runtime
                .router
                .refresh_client(&mut self.routing, user, app);
        }
        if self.scope_kind == CausalScope::ApplicationName {
            let app = self.params.application_name(&self.defaults);
            self.scope = self.runtime.scopes.token(self.scope_kind, "", app);
        }
        // One atomic load: the latest commit of the client's scope, as of now.
        self.routing.shared = self.scope.as_ref().map_or(Lsn::ZERO, |s| s.get());
        let classifier = self.router().classifier();
        let (unit, analysed) = Analysed::of(
            first,
            self.limits().max_message,
            &UnitContext {
                classifier: &classifier,
                rules: self.router().rule_set(),
                statements: &self.statements,
                reported: &self.defaults,
                strings: self.params.string_syntax(self.default_strings),
            },
        );
        let info = if unit.len.is_some() {
            unit.info
        } else {
            UnitInfo::write()
        };
        (self.router().route(&info, &self.routing), Some(analysed))
    }

    /// Checks out a server for the unit at the start of `first`; returns it with the unit's
    /// analysis.
    pub(super) async fn serve_target(
        &mut self,
        first: &[u8],
    ) -> Result<(Serving, Option<Analysed>), &'static str> {
        let later = match self.route_now(first) {
            Ok(routed) => return Ok(routed),
            Err(later) => later,
        };
        let routed = match later {
            Later::Wait(routed) => routed,
            Later::Causal => {
                Box::pin(self.refresh_causal()).await?;
                let (mut route, analysed) = self.target_of(first);
                if self.causal_unknown {
                    route.target = Target::Primary;
                }
                match self.checkout_routed(route, analysed) {
                    Ok(routed) => return Ok(routed),
                    Err(routed) => routed,
                }
            }
        };
        self.serve_routed(*routed).await
    }

    /// Routes the unit at the start of `first` and checks out its server if one is free at
    /// once (the task's way and the lane loop's). Else what must come first.
    pub(super) fn route_now(&mut self, first: &[u8]) -> Result<(Serving, Option<Analysed>), Later> {
        let (route, analysed) = self.target_of(first);
        if self.causal_unknown && matches!(route.target, Target::Replica { .. }) {
            return Err(Later::Causal);
        }
        self.checkout_routed(route, analysed).map_err(Later::Wait)
    }

    /// A routed unit's checkout when a server is free at once; else the unit with the
    /// checkout begun for it.
    fn checkout_routed(
        &mut self,
        route: Route,
        analysed: Option<Analysed>,
    ) -> Result<(Serving, Option<Analysed>), Box<Routed>> {
        match self.checkout_now(route.target) {
            Ok(serving) => {
                self.note_route(&route, &serving);
                Ok((serving, analysed))
            }
            // Boxed: the wait is the rare way, and this result is returned by value.
            Err(asked) => Err(Box::new(Routed {
                route,
                analysed,
                asked,
            })),
        }
    }

    /// Checks out a server for a routed unit whose checkout did not find one at once.
    pub(super) async fn serve_routed(
        &mut self,
        routed: Routed,
    ) -> Result<(Serving, Option<Analysed>), &'static str> {
        let Routed {
            route,
            analysed,
            asked,
        } = routed;
        let serving = self.checkout_wait(route.target, asked).await?;
        self.note_route(&route, &serving);
        Ok((serving, analysed))
    }

    /// Records why a unit went where it went (metrics, the transaction's reason, the log).
    pub(super) fn note_route(&mut self, route: &Route, serving: &Serving) {
        if let Target::Replica { min_lsn, .. } = route.target {
            self.runtime.metrics.causal_read(
                serving.causal_wait,
                // The scope's token was the one the read had to see.
                !serving.on_replica
                    && min_lsn == self.routing.shared
                    && min_lsn > self.routing.causal.max(self.routing.min_lsn),
            );
        }
        self.reason = if !self.routes() {
            ReasonLabel::Unrouted
        } else if matches!(route.target, Target::Replica { .. }) && !serving.on_replica {
            ReasonLabel::Fallback
        } else {
            match route.by {
                DecidedBy::CertainWrite | DecidedBy::TooManyStatements => ReasonLabel::Write,
                DecidedBy::SessionState => ReasonLabel::SessionState,
                DecidedBy::Hint(_) => ReasonLabel::Hint,
                DecidedBy::RouteMode(_) => ReasonLabel::RouteMode,
                DecidedBy::Rule(_) => ReasonLabel::Rule,
                DecidedBy::Default => ReasonLabel::Classified,
            }
        };
        tracing::debug!(
            database = %self.database(),
            node = %self.upstream.node(serving.node).node(),
            replica = serving.on_replica,
            decided_by = ?route.by,
            reason = self.reason.as_str(),
            "routed"
        );
    }

    /// Learns the primary's current WAL position, when the one after the client's last write
    /// could not be read (any later position covers that write).
    pub(super) async fn refresh_causal(&mut self) -> Result<(), &'static str> {
        let mut serving = self.checkout(Target::Primary).await?;
        if let Some(lsn) = wal_insert_lsn(&mut serving).await {
            self.routing.causal = self.routing.causal.max(lsn);
            if let Some(scope) = &self.scope {
                scope.advance(lsn);
            }
            self.causal_unknown = false;
            serving.server.release();
        }
        Ok(())
    }

    pub(super) async fn checkout(&mut self, target: Target) -> Result<Serving, &'static str> {
        match self.checkout_now(target) {
            Ok(serving) => Ok(serving),
            Err(asked) => self.checkout_wait(target, asked).await,
        }
    }

    /// A checkout that takes an idle connection at once, without the waiting checkout's
    /// futures (they showed in profiles): most checkouts. Not while PAUSE holds clients.
    /// Else when it was asked for, and the replica choice it made, for [`Session::checkout_wait`].
    pub(super) fn checkout_now(&mut self, target: Target) -> Result<Serving, Asked> {
        let started = std::time::Instant::now();
        // One reading on the anchored clock serves SHOW CLIENTS and the replica affinity.
        let started_us = crate::clock::unix_micros_at(started);
        self.client.entry.set_waiting(started_us);
        let mut chosen = None;
        if !self.runtime.control.is_paused() {
            let prefer = self.routing.last_read.prefer(started_us);
            match checkout::server_now(
                &self.runtime.router,
                &self.upstream,
                target,
                prefer,
                started,
            ) {
                Ok(serving) => {
                    self.runtime.metrics.pool_wait(std::time::Duration::ZERO);
                    self.client.entry.set_state(ClientState::Active);
                    return Ok(serving);
                }
                Err(choice) => chosen = choice,
            }
        }
        Err(Asked {
            started,
            started_us,
            chosen,
        })
    }

    /// The checkout [`Session::checkout_now`] could not serve: after any PAUSE, waiting for
    /// the pool (and watching the client leave, and shutdown).
    pub(super) async fn checkout_wait(
        &mut self,
        target: Target,
        asked: Asked,
    ) -> Result<Serving, &'static str> {
        let Asked {
            started,
            started_us,
            chosen,
        } = asked;
        // Held across awaits that also borrow `self` (closing the client on failure).
        let upstream = self.upstream.clone();
        let runtime = self.runtime.clone();
        let entry = self.client.entry.clone();
        let wait = upstream.node(0).settings().query_wait_timeout;
        // When the checkout itself is asked for (after a PAUSE, if one held the client).
        let (mut asked, mut asked_us) = (started, started_us);
        if runtime.control.is_paused() {
            if !Box::pin(runtime.control.wait_resumed(wait)).await {
                entry.set_state(ClientState::Idle);
                let message = format!(
                    "pgtier: database \"{}\" is paused (admin PAUSE) and was not resumed within query_wait_timeout ({wait:?})",
                    self.database()
                );
                Box::pin(self.close(SqlState::TOO_MANY_CONNECTIONS, &message)).await;
                return Err("paused");
            }
            asked = std::time::Instant::now();
            asked_us = crate::clock::unix_micros_at(asked);
        }
        let got = {
            let mut checkout = pin!(checkout::server_for(
                &runtime.router,
                &upstream,
                upstream.database(),
                target,
                self.routing.last_read.prefer(asked_us),
                chosen,
                asked,
            ));
            // Only a checkout that has to wait listens for the client leaving (most checkouts
            // find a free server at once).
            let mut watching = true;
            let shutdown = &self.shutdown;
            let stream = &self.stream;
            // A checkout done at its first poll waited for nothing: it is dated `asked` (one
            // clock read per checkout); one that waited is dated when it ends.
            let mut first_poll = true;
            poll_fn(|cx| {
                if let Poll::Ready(mut r) = checkout.as_mut().poll(cx) {
                    if !std::mem::take(&mut first_poll) {
                        if let Ok(s) = r.as_mut() {
                            s.since = std::time::Instant::now();
                        }
                    }
                    return Poll::Ready(Waited::Got(r));
                }
                first_poll = false;
                // A client that left while queued gives up its place; what it sent never runs.
                if watching {
                    match stream.poll_departed(cx) {
                        Poll::Ready(true) => return Poll::Ready(Waited::ClientLeft),
                        Poll::Ready(false) => watching = false,
                        Poll::Pending => {}
                    }
                }
                shutdown
                    .poll_reached_or_poked(cx, Phase::Closing, None)
                    .map(|()| Waited::Shutdown)
            })
            .await
        };
        let result = match got {
            Waited::Got(Ok(c)) => Ok(c),
            Waited::ClientLeft => {
                info!(peer = %entry.peer, user = %self.user(), database = %self.database(), "client left while waiting for a server connection: its request is dropped");
                Err("client closed while waiting for a server")
            }
            Waited::Got(Err(e)) => {
                warn!(database = %self.database(), error = %e, "no server connection for client");
                if matches!(
                    e,
                    checkout::TargetError::Pool(PoolError::WaitTimeout { .. })
                ) {
                    self.log_holders();
                }
                self.runtime.metrics.error(e.sqlstate());
                Box::pin(target_farewell(&mut self.stream, &e)).await;
                Err("no server connection")
            }
            Waited::Shutdown => {
                Box::pin(self.close(SqlState::ADMIN_SHUTDOWN, SHUTDOWN_MESSAGE)).await;
                Err("shutdown")
            }
        };
        // A checkout carries its own clock reading: the pool wait ends there.
        let ended = result
            .as_ref()
            .map_or_else(|_| std::time::Instant::now(), |s| s.since);
        // Most checkouts wait for nothing: dated `started`, no subtraction.
        let waited = if ended == started {
            std::time::Duration::ZERO
        } else {
            ended.saturating_duration_since(started)
        };
        runtime.metrics.pool_wait(waited);
        entry.set_state(if result.is_ok() {
            ClientState::Active
        } else {
            ClientState::Idle
        });
        result
    }
}

/// A checkout [`Session::checkout_now`] could not serve at once.
pub(super) struct Asked {
    /// When it was asked for.
    started: std::time::Instant,
    /// The same, on the anchored clock.
    started_us: u64,
    /// The replica choice it made, which the wait must follow (see `checkout::server_now`).
    chosen: Option<Choice>,
}

/// What a unit needs before its checkout (see [`Session::route_now`]).
pub(super) enum Later {
    /// The primary's WAL position: a write's was not read, and the unit reads on a replica.
    Causal,
    /// A wait for a server (PAUSE, a busy pool, a new connection, a replica to ask).
    Wait(Box<Routed>),
}

/// A unit routed, whose checkout must wait.
pub(super) struct Routed {
    /// Where it goes, and why.
    pub route: Route,
    /// Its analysis.
    pub analysed: Option<Analysed>,
    /// The checkout begun for it.
    pub asked: Asked,
}

/// How many holders [`Session::log_holders`] names.
const HOLDERS_LOGGED: usize = 8;

impl Session {
    /// Logs the clients of this database and user that hold a server, longest first, after a
    /// checkout waited `query_wait_timeout` in vain: what kept the pool busy.
    fn log_holders(&self) {
        let me = &self.client.entry;
        let now = crate::clock::unix_micros();
        let mut holders: Vec<_> = self
            .proxy
            .client_registry()
            .all()
            .into_iter()
            .filter_map(|(_, e)| {
                let node = e.node()?;
                let (state, since) = e.state();
                (e.database == me.database && e.user == me.user).then_some((since, node, state, e))
            })
            .collect();
        holders.sort_by_key(|h| h.0);
        for (since, node, state, e) in holders.iter().take(HOLDERS_LOGGED) {
            let node = self.upstream.node(*node).node();
            let request_ms = now.saturating_sub(*since) / 1000;
            warn!(database = %self.database(), user = %self.user(), %node, holder = %e.peer, state = state.as_str(), request_ms, pinned = e.pinned(), "a server of the pool was held while a client waited for one");
        }
        if holders.len() > HOLDERS_LOGGED {
            warn!(database = %self.database(), user = %self.user(), more = holders.len() - HOLDERS_LOGGED, "more clients held servers of the pool");
        }
    }
}

/// The primary's WAL insert position (None if the query failed: the connection must then be
/// closed, not released).
async fn wal_insert_lsn(serving: &mut Serving) -> Option<Lsn> {
    let value = serving
        .server
        .conn()
        .query_value(
            "SELECT pg_catalog.pg_current_wal_insert_lsn()",
            CAUSAL_PROBE_TIMEOUT,
        )
        .await
        .ok()??;
    value.parse().ok()
}

/// How a wait for a server ended.
enum Waited<T> {
    /// The checkout's result.
    Got(T),
    /// The client closed its socket (or sent Terminate) meanwhile.
    ClientLeft,
    /// Shutdown reached its closing phase.
    Shutdown,
}
