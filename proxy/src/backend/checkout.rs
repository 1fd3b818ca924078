//! Checking out a server for one unit of work, where the router sends it: a replica that is
//! known (or, asked, proves) to have replayed the client's causal token, else the primary.

use std::time::Duration;

use thiserror::Error;
use tracing::{debug, warn};

use crate::backend::{BackendError, Checkout, PoolError, Upstream};
use crate::cluster::{InFlight, Lsn, Topology};
use crate::protocol::SqlState;
use crate::router::route::{Choice, Router, Target};

/// Longest wait for a replica to report its replay position.
const REPLAY_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// A server checked out for one transaction.
#[derive(Debug)]
pub(crate) struct Serving {
    /// The connection.
    pub server: Checkout,
    /// Node id.
    pub node: usize,
    /// The node is a replica.
    pub on_replica: bool,
    /// When it was checked out (the pool wait ends and the run's timing starts here): when it
    /// was asked for if the checkout did not wait.
    pub since: std::time::Instant,
    /// How long a replica was asked for its replay position before this checkout (a read
    /// that had to wait for the client's causal token; None: no wait).
    pub causal_wait: Option<Duration>,
    /// Counts the request against the node while it runs.
    _in_flight: InFlight,
}

/// Why no server was checked out.
#[derive(Debug, Error)]
pub(crate) enum TargetError {
    /// The pool could not give a connection.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// No node is known to accept writes.
    #[error("pgtier: no primary is available for database \"{database}\" (waited {waited:?}, primary_wait_timeout)")]
    NoPrimary {
        /// The database.
        database: String,
        /// How long the client waited.
        waited: Duration,
    },
}

impl TargetError {
    /// The SQLSTATE the client gets (a server's own refusal is passed on with its code).
    pub(crate) fn sqlstate(&self) -> &str {
        match self {
            TargetError::Pool(PoolError::Connect(BackendError::Refused { code, .. })) => code,
            TargetError::Pool(PoolError::WaitTimeout { .. } | PoolError::CapReached { .. }) => {
                SqlState::TOO_MANY_CONNECTIONS.0
            }
            TargetError::Pool(PoolError::Connect(_)) => SqlState::CANNOT_CONNECT.0,
            TargetError::NoPrimary { .. } => SqlState::NO_PRIMARY.0,
        }
    }
}

/// [`server_for`] when it needs no wait: the chosen node's pool has a free permit and an idle
/// connection now (a replica known to have replayed the token, or the known primary). Else
/// the replica choice it made, which [`server_for`] must follow (a choice takes a turn of the
/// replicas' rotation: choosing again would skip a replica whose pool has no idle connection).
pub(crate) fn server_now(
    router: &Router,
    upstream: &Upstream,
    target: Target,
    prefer: Option<usize>,
    asked: std::time::Instant,
) -> Result<Serving, Option<Choice>> {
    let mut chosen = None;
    if let Target::Replica { min_lsn, limits } = target {
        let choice = router.choose(min_lsn, limits.as_ref(), prefer);
        match choice {
            Choice::Node(i) => {
                return match upstream.node(i).try_checkout() {
                    Some(server) => Ok(serving(router, server, i, true, asked)),
                    None => Err(Some(choice)),
                };
            }
            Choice::Check(_) => return Err(Some(choice)),
            Choice::Primary => chosen = Some(choice),
        }
    }
    let Some(i) = router.topology().primary_now() else {
        return Err(chosen);
    };
    match upstream.node(i).try_checkout() {
        Some(server) => Ok(serving(router, server, i, false, asked)),
        None => Err(chosen),
    }
}

/// Checks out a server for `target`; a read takes replica `prefer` when it is as good as the
/// best (see `Router::choose`), or follows `chosen`, the choice [`server_now`] made for it.
/// `asked`: when the checkout was asked for, the serving's `since` (a caller whose checkout
/// had to wait sets it anew).
pub(crate) async fn server_for(
    router: &Router,
    upstream: &Upstream,
    database: &str,
    target: Target,
    prefer: Option<usize>,
    mut chosen: Option<Choice>,
    asked: std::time::Instant,
) -> Result<Serving, TargetError> {
    let mut causal_wait = None;
    if let Target::Replica { min_lsn, limits } = target {
        // One retry on another replica if the first refuses (not preferring the one that did).
        let mut prefer = prefer.filter(|_| chosen.is_none());
        for _ in 0..2 {
            let choice = chosen
                .take()
                .unwrap_or_else(|| router.choose(min_lsn, limits.as_ref(), prefer.take()));
            match choice {
                Choice::Primary => break,
                Choice::Node(i) => match upstream.node(i).checkout().await {
                    Ok(server) => return Ok(serving(router, server, i, true, asked)),
                    Err(e) => failed(router, upstream, i, &e),
                },
                Choice::Check(i) => match upstream.node(i).checkout().await {
                    Ok(mut server) => {
                        let wait = router.settings().causal_read_wait;
                        let check_started = std::time::Instant::now();
                        // Boxed: its state (a query on the replica) is large, and only a read
                        // whose token the replica may not have replayed needs it.
                        let replayed =
                            Box::pin(caught_up(&mut server, router.topology(), i, min_lsn, wait))
                                .await;
                        causal_wait = Some(check_started.elapsed());
                        match replayed {
                            Some(lsn) if lsn >= min_lsn => {
                                let mut s = serving(router, server, i, true, asked);
                                s.causal_wait = causal_wait;
                                return Ok(s);
                            }
                            Some(lsn) => {
                                debug!(node = %upstream.node(i).node(), replayed = %lsn, wanted = %min_lsn, "replica behind the client's causal token: reading from the primary");
                                server.release();
                            }
                            // Not in recovery any more, or the check failed: not this one.
                            None => drop(server),
                        }
                        break;
                    }
                    Err(e) => failed(router, upstream, i, &e),
                },
            }
        }
    }
    let waited = router.settings().primary_wait_timeout;
    let Some(i) = router.topology().wait_for_primary(waited).await else {
        return Err(TargetError::NoPrimary {
            database: database.to_owned(),
            waited,
        });
    };
    match upstream.node(i).checkout().await {
        Ok(server) => {
            let mut s = serving(router, server, i, false, asked);
            s.causal_wait = causal_wait;
            Ok(s)
        }
        Err(e) => {
            if matches!(e, PoolError::Connect(_)) {
                router.topology().report_failure(i);
            }
            Err(e.into())
        }
    }
}

fn serving(
    router: &Router,
    server: Checkout,
    node: usize,
    on_replica: bool,
    since: std::time::Instant,
) -> Serving {
    Serving {
        server,
        node,
        on_replica,
        since,
        causal_wait: None,
        _in_flight: router.topology().begin(node),
    }
}

fn failed(router: &Router, upstream: &Upstream, node: usize, e: &PoolError) {
    warn!(node = %upstream.node(node).node(), error = %e, "replica unavailable, trying elsewhere");
    if matches!(e, PoolError::Connect(_)) {
        router.topology().report_failure(node);
    }
}

/// Asks replica `node` how far it has replayed, again every millisecond for up to `wait` while
/// it is behind `min_lsn`; returns the last answer (None: not in recovery, or the check
/// failed). Between its questions a read also wakes when another read's check (the clients of
/// a causal scope wait for the same token) or the monitor learns the replica is far enough.
async fn caught_up(
    server: &mut Checkout,
    topology: &Topology,
    node: usize,
    min_lsn: Lsn,
    wait: Duration,
) -> Option<Lsn> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let lsn = replayed(server).await?;
        // Every answer raises the replica's known position (and wakes other waiting reads).
        topology.observe_replay(node, lsn);
        let now = tokio::time::Instant::now();
        if lsn >= min_lsn || now >= deadline {
            return Some(lsn);
        }
        let pause = (deadline - now).min(Duration::from_millis(1));
        if let Some(known) = topology.wait_replay(node, min_lsn, pause).await {
            return Some(known);
        }
    }
}

/// Asks a replica connection how far it has replayed (None: not in recovery, or failed).
async fn replayed(server: &mut Checkout) -> Option<Lsn> {
    server
        .conn()
        .query_value("SELECT pg_last_wal_replay_lsn()", REPLAY_CHECK_TIMEOUT)
        .await
        .ok()
        .flatten()?
        .parse()
        .ok()
}
