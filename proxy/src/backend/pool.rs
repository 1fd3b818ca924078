//! A server connection pool of one (database, user) on one node (`upstreams` holds them all).
//! Waiting is FIFO-fair: a tokio `Semaphore` (which queues waiters in arrival order) holds `pool_size` permits, and a connection is only
//! used or created under a permit, so a client that just released a connection cannot jump
//! ahead of parked waiters. Idle connections are checked for liveness on checkout instead of a
//! test query, and reaped by a background task.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use super::caps::{ConnectionCap, Slots};
use super::server::{BackendError, ServerConn, ServerLogin, ServerSummary};
use crate::config::{NodeAddr, PoolSettings};

/// ParameterStatus name/value pairs a server reported at login.
pub type ServerParams = Arc<[(String, String)]>;

/// How often the reaper looks at idle connections.
const REAP_INTERVAL: Duration = Duration::from_millis(500);

/// Identifies a pool: client-facing database and user names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolId {
    /// Database name as clients use it.
    pub database: String,
    /// User name as clients use it.
    pub user: String,
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.database, self.user)
    }
}

/// Why no server connection was handed out.
#[derive(Debug, Error)]
pub enum PoolError {
    /// Every connection stayed busy for `query_wait_timeout`.
    #[error("no server connection available in pool {pool} on {node} after waiting {waited:?} (pool_size = {size}, query_wait_timeout)")]
    WaitTimeout {
        /// The pool.
        pool: PoolId,
        /// The node.
        node: NodeAddr,
        /// How long the client waited.
        waited: Duration,
        /// The pool's size.
        size: u32,
    },
    /// A connection could not open within `query_wait_timeout`: the node has as many as
    /// `max_db_connections` or `max_user_connections` allows, all busy.
    #[error("no server connection available in pool {pool} after waiting {waited:?}: {cap} reached (query_wait_timeout)")]
    CapReached {
        /// The pool.
        pool: PoolId,
        /// The limit, its value, and whose it is.
        cap: String,
        /// How long the client waited.
        waited: Duration,
    },
    /// A new connection could not be made.
    #[error(transparent)]
    Connect(#[from] BackendError),
}

#[derive(Debug, Default)]
struct PoolState {
    /// Idle connections; most recently used at the back.
    idle: VecDeque<Box<ServerConn>>,
    /// Open connections, idle or checked out (never above `size`).
    open: u32,
    /// Checked-out connections, for SHOW SERVERS (bounded by `size`; a list, not a map: a
    /// short scan costs less than hashing on every checkout and release).
    active: Vec<ServerSummary>,
    /// Bumped by RECONNECT and retirement: connections checked out before are closed when
    /// released.
    epoch: u64,
    /// Replaced by a reload (or its database removed): nothing is pooled any more.
    retired: bool,
}

/// A server connection as SHOW SERVERS lists it.
#[derive(Debug, Clone, Copy)]
pub struct ServerInfo {
    /// Checked out (true) or idle.
    pub active: bool,
    /// Details.
    pub summary: ServerSummary,
}

/// A pool of server connections to one node.
#[derive(Debug)]
pub struct Pool {
    id: PoolId,
    node: NodeAddr,
    login: ServerLogin,
    settings: PoolSettings,
    /// Limits shared with other pools to the same node (database first, then user).
    caps: Box<[Arc<ConnectionCap>]>,
    permits: Arc<Semaphore>,
    state: Mutex<PoolState>,
    /// ParameterStatus values of the first server connection, shown to new clients.
    server_params: Mutex<Option<ServerParams>>,
}

/// A connection being opened, counted in `open`; uncounted on drop unless it opened.
struct Opening<'a> {
    pool: &'a Pool,
    opened: bool,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if !self.opened {
            self.pool.forget_one(None);
        }
    }
}

/// A checked-out server connection. `release` returns it; dropping it closes the connection.
#[derive(Debug)]
pub struct Checkout {
    /// Boxed: a checkout moves through several futures per transaction, and a pointer is
    /// cheaper to move than the connection.
    conn: Option<Box<ServerConn>>,
    pool: Arc<Pool>,
    /// The pool's epoch at checkout.
    epoch: u64,
    _permit: OwnedSemaphorePermit,
}

impl PoolState {
    /// Forgets a checked-out connection.
    fn remove_active(&mut self, pid: i32) {
        if let Some(i) = self.active.iter().position(|s| s.pid == pid) {
            self.active.swap_remove(i);
        }
    }
}

impl Checkout {
    /// The connection.
    pub fn conn(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("present until release")
    }

    /// Returns a clean (idle, ReadyForQuery 'I') connection to the pool.
    pub fn release(self) {
        self.release_at(Instant::now());
    }

    /// [`Checkout::release`] with the caller's clock reading of when the work ended.
    pub fn release_at(mut self, now: Instant) {
        self.put_back(now);
    }

    /// Returns the connection to the pool where it stands (its owner keeps the checkout,
    /// whose permit goes back to the pool when it is dropped, right after); the checkout
    /// holds no connection afterwards.
    pub fn put_back(&mut self, now: Instant) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self
            .pool
            .settings
            .server_lifetime
            .is_some_and(|l| conn.age_at(now) >= l)
        {
            debug!(pool = %self.pool.id, "server connection reached server_lifetime, closing");
            self.pool.forget_one(Some(conn.pid()));
            return;
        }
        conn.touch_at(now);
        let mut st = self.pool.lock();
        st.remove_active(conn.pid());
        if st.epoch != self.epoch || st.retired || self.pool.caps.iter().any(|c| c.wanted()) {
            // RECONNECT or a reload asked for fresh connections, or another pool waits for
            // the slot this one holds: close it.
            st.open = st.open.saturating_sub(1);
            drop(st);
            drop(conn);
            return;
        }
        st.idle.push_back(conn);
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.forget_one(Some(conn.pid()));
        }
    }
}

impl Pool {
    /// Creates a pool and its reaper task (which ends when the pool is dropped).
    pub fn new(
        id: PoolId,
        node: NodeAddr,
        login: ServerLogin,
        settings: PoolSettings,
        caps: Vec<Arc<ConnectionCap>>,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            permits: Arc::new(Semaphore::new(settings.size as usize)),
            id,
            node,
            login,
            settings,
            caps: caps.into(),
            state: Mutex::default(),
            server_params: Mutex::default(),
        });
        for cap in pool.caps.iter() {
            cap.join(&pool);
        }
        tokio::spawn(reap_loop(Arc::downgrade(&pool)));
        pool
    }

    /// The limits this pool shares with others.
    pub fn caps(&self) -> &[Arc<ConnectionCap>] {
        &self.caps
    }

    /// Closes the longest-idle connection (for a pool waiting under a shared cap); false if
    /// none is idle.
    pub(super) fn close_oldest_idle(&self) -> bool {
        let closed = {
            let mut st = self.lock();
            let c = st.idle.pop_front();
            if c.is_some() {
                st.open = st.open.saturating_sub(1);
            }
            c
        };
        if closed.is_some() {
            debug!(pool = %self.id, node = %self.node, "idle server connection closed for a pool waiting under a shared limit");
        }
        closed.is_some()
    }

    /// The pool's identity.
    pub fn id(&self) -> &PoolId {
        &self.id
    }

    /// The node this pool connects to.
    pub fn node(&self) -> &NodeAddr {
        &self.node
    }

    /// The pool's settings.
    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// How it logs in to its node.
    pub fn login(&self) -> &ServerLogin {
        &self.login
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget_one(&self, pid: Option<i32>) {
        let mut st = self.lock();
        st.open = st.open.saturating_sub(1);
        if let Some(pid) = pid {
            st.remove_active(pid);
        }
    }

    /// Closes every idle connection now and every checked-out one when it is released (admin
    /// RECONNECT): later transactions get fresh connections.
    pub fn reconnect(&self) {
        let closed: Vec<Box<ServerConn>> = {
            let mut st = self.lock();
            st.epoch += 1;
            let closed: Vec<Box<ServerConn>> = st.idle.drain(..).collect();
            st.open = st.open.saturating_sub(closed.len() as u32);
            closed
        };
        debug!(pool = %self.id, node = %self.node, closed = closed.len(), "reconnect: idle server connections closed");
    }

    /// Takes the pool out of service (a reload replaced it): idle connections close now,
    /// checked-out ones when released.
    pub fn retire(&self) {
        self.lock().retired = true;
        self.reconnect();
    }

    /// Whether a reload took the pool out of service.
    pub fn is_retired(&self) -> bool {
        self.lock().retired
    }

    /// Connections checked out now.
    pub fn active_connections(&self) -> u32 {
        self.lock().active.len() as u32
    }

    /// Every connection: checked out, then idle.
    pub fn servers(&self) -> Vec<ServerInfo> {
        let st = self.lock();
        st.active
            .iter()
            .map(|s| ServerInfo {
                active: true,
                summary: *s,
            })
            .chain(st.idle.iter().map(|c| ServerInfo {
                active: false,
                summary: c.summary(),
            }))
            .collect()
    }

    /// Idle connections in the pool.
    pub fn idle_connections(&self) -> u32 {
        self.lock().idle.len() as u32
    }

    /// Open connections (idle or in use).
    pub fn open_connections(&self) -> u32 {
        self.lock().open
    }

    /// A free permit and an idle live connection, when both are there now (no wait, no new
    /// connection): the common checkout, without the waiting one's future. None leaves the
    /// pool as it was, but for dead idle connections it found and closed.
    pub fn try_checkout(self: &Arc<Self>) -> Option<Checkout> {
        // Fairness as in `checkout`: a permit is free only when nobody waits.
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        loop {
            let _closed = {
                let mut st = self.lock();
                let mut c = st.idle.pop_back()?;
                if c.is_alive() {
                    st.active.push(c.summary());
                    let epoch = st.epoch;
                    return Some(Checkout {
                        conn: Some(c),
                        pool: self.clone(),
                        epoch,
                        _permit: permit,
                    });
                }
                st.open = st.open.saturating_sub(1);
                c
            };
            debug!(pool = %self.id, "idle server connection was closed by the server, discarding");
        }
    }

    /// Waits (FIFO, up to `query_wait_timeout`) for a permit, then reuses an idle connection or
    /// opens a new one.
    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout, PoolError> {
        let wait = self.settings.query_wait_timeout;
        // Read only when a wait is bounded by it (no clock read for a free permit and an idle
        // connection).
        let mut started = None;
        // A free permit is taken without arming a timer. Fairness holds: released permits go
        // to queued waiters first, so one is free only when nobody waits.
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => Ok(Ok(p)),
            Err(_) => {
                let now = started.insert(tokio::time::Instant::now());
                // Boxed: a timer is large, and only a checkout that queues needs one.
                let queued = self.permits.clone().acquire_owned();
                Box::pin(crate::timers::timeout_at(*now + wait, queued)).await
            }
        };
        let permit = match permit {
            Ok(Ok(p)) => p,
            _ => {
                return Err(PoolError::WaitTimeout {
                    pool: self.id.clone(),
                    node: self.node.clone(),
                    waited: wait,
                    size: self.settings.size,
                })
            }
        };
        loop {
            let (reuse, epoch) = {
                let mut st = self.lock();
                let reuse = match st.idle.pop_back().map(|mut c| (c.is_alive(), c)) {
                    Some((true, c)) => {
                        let s = c.summary();
                        st.active.push(s);
                        Some(Ok(c))
                    }
                    Some((false, c)) => {
                        st.open = st.open.saturating_sub(1);
                        Some(Err(c))
                    }
                    None => {
                        st.open += 1;
                        None
                    }
                };
                (reuse, st.epoch)
            };
            match reuse {
                Some(Ok(c)) => {
                    return Ok(Checkout {
                        conn: Some(c),
                        pool: self.clone(),
                        epoch,
                        _permit: permit,
                    })
                }
                Some(Err(_closed)) => {
                    debug!(pool = %self.id, "idle server connection was closed by the server, discarding");
                }
                None => {
                    // Counted open above: forgotten again unless it opens, also when this
                    // future is dropped mid-way (the client left, shutdown).
                    let mut opening = Opening {
                        pool: self,
                        opened: false,
                    };
                    let slots = if self.caps.is_empty() {
                        Slots::default()
                    } else {
                        let started = *started.get_or_insert_with(tokio::time::Instant::now);
                        match Slots::take(&self.caps, started + wait).await {
                            Ok(s) => s,
                            Err(cap) => {
                                return Err(PoolError::CapReached {
                                    pool: self.id.clone(),
                                    cap: cap.to_string(),
                                    waited: started.elapsed(),
                                });
                            }
                        }
                    };
                    // Boxed: login state is large and only needed when a connection is made.
                    let mut conn = match Box::pin(self.connect()).await {
                        Ok(c) => c,
                        Err(e) => return Err(e.into()),
                    };
                    opening.opened = true;
                    conn.hold(slots);
                    let s = conn.summary();
                    self.lock().active.push(s);
                    return Ok(Checkout {
                        conn: Some(conn),
                        pool: self.clone(),
                        epoch,
                        _permit: permit,
                    });
                }
            }
        }
    }

    async fn connect(&self) -> Result<Box<ServerConn>, BackendError> {
        let conn = ServerConn::connect(
            &self.node,
            &self.login,
            self.settings.server_connect_timeout,
        )
        .await?;
        debug!(pool = %self.id, server = %self.node, "opened server connection");
        let mut params = self.server_params.lock().unwrap_or_else(|p| p.into_inner());
        if params.is_none() {
            *params = Some(conn.params().into());
        }
        Ok(Box::new(conn))
    }

    /// ParameterStatus values to show new clients; connects once if none is known yet.
    pub async fn server_params(self: &Arc<Self>) -> Result<ServerParams, PoolError> {
        if let Some(p) = self.cached_params() {
            return Ok(p);
        }
        self.checkout().await?.release();
        Ok(self
            .cached_params()
            .unwrap_or_else(|| Arc::from(Vec::new())))
    }

    fn cached_params(&self) -> Option<ServerParams> {
        self.server_params
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Closes idle connections past `server_idle_timeout` or `server_lifetime` (keeping
    /// `min_pool_size`), then tops the pool up to `min_pool_size`.
    async fn maintain(self: &Arc<Self>) {
        let expired: Vec<Box<ServerConn>> = {
            let mut st = self.lock();
            let mut out = Vec::new();
            let s = &self.settings;
            let mut i = 0;
            while i < st.idle.len() {
                let above_min = st.open > s.min_size;
                let c = &mut st.idle[i];
                let too_old = s.server_lifetime.is_some_and(|l| c.age() >= l);
                let too_idle =
                    s.server_idle_timeout.is_some_and(|t| c.idle_for() >= t) && above_min;
                if too_old || too_idle || !c.is_alive() {
                    out.extend(st.idle.remove(i));
                    st.open -= 1;
                } else {
                    i += 1;
                }
            }
            out
        };
        if !expired.is_empty() {
            debug!(pool = %self.id, closed = expired.len(), "closed idle server connections");
        }
        drop(expired);
        while self.open_connections() < self.settings.min_size && !self.is_retired() {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                return;
            };
            // Kept open only where the shared limits have room now.
            let Some(slots) = Slots::try_take(&self.caps) else {
                return;
            };
            {
                let mut st = self.lock();
                if st.open >= self.settings.min_size {
                    return;
                }
                st.open += 1;
            }
            let epoch = self.lock().epoch;
            match self.connect().await {
                Ok(mut c) => Checkout {
                    conn: Some({
                        c.hold(slots);
                        c
                    }),
                    pool: self.clone(),
                    epoch,
                    _permit: permit,
                }
                .release(),
                Err(e) => {
                    self.forget_one(None);
                    warn!(pool = %self.id, error = %e, "cannot open min_pool_size connection");
                    return;
                }
            }
        }
    }
}

async fn reap_loop(pool: Weak<Pool>) {
    let mut tick = crate::timers::interval(REAP_INTERVAL);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.maintain().await;
    }
}
