//! Server-connection limits shared by several pools on one node: `max_db_connections` (a
//! database's pools, across its users) and `max_user_connections` (a user's pools, across
//! databases). Each open server connection holds one slot of every cap its pool is under, and
//! gives it back when it closes (the slots live in the connection). A pool that needs a slot
//! and finds none closes an idle connection of a pool under the same cap (as PgBouncer evicts
//! one), then waits in FIFO order until the caller's deadline; while anybody waits, released
//! connections are closed instead of pooled, so that their slots go to the waiters.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::pool::Pool;
use crate::config::NodeAddr;

/// What a cap counts the connections of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapScope {
    /// One database's pools (`max_db_connections`).
    Database,
    /// One user's pools (`max_user_connections`).
    User,
}

impl CapScope {
    /// The config key that sets it.
    pub fn key(self) -> &'static str {
        match self {
            CapScope::Database => "max_db_connections",
            CapScope::User => "max_user_connections",
        }
    }
}

/// A limit on the server connections of several pools to one node.
#[derive(Debug)]
pub struct ConnectionCap {
    scope: CapScope,
    /// The database or user name.
    name: String,
    node: NodeAddr,
    max: u32,
    /// One permit per connection that may still open.
    slots: Arc<Semaphore>,
    /// Pools waiting for a slot.
    waiting: AtomicUsize,
    /// The pools under the cap (idle connections to close for a waiter). Bounded by the pools
    /// that exist: dead entries are dropped whenever one joins.
    members: Mutex<Vec<Weak<Pool>>>,
}

/// The slots an open server connection holds (given back when it is dropped).
#[derive(Debug, Default)]
pub struct Slots {
    /// Held for their `Drop`, which gives the slots back.
    _held: Vec<OwnedSemaphorePermit>,
}

impl fmt::Display for ConnectionCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.scope {
            CapScope::Database => "database",
            CapScope::User => "user",
        };
        write!(
            f,
            "{} = {} for {what} \"{}\" on {}",
            self.scope.key(),
            self.max,
            self.name,
            self.node
        )
    }
}

impl ConnectionCap {
    /// Whether a pool waits for a slot (a released connection is closed, not pooled).
    pub fn wanted(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// Connections holding a slot.
    pub fn open(&self) -> u32 {
        self.max
            .saturating_sub(u32::try_from(self.slots.available_permits()).unwrap_or(u32::MAX))
    }

    /// The limit.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// What it limits.
    pub fn scope(&self) -> CapScope {
        self.scope
    }

    /// Adds a pool to those whose idle connections may be closed for a waiter.
    pub(super) fn join(&self, pool: &Arc<Pool>) {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.retain(|w| w.strong_count() > 0);
        members.push(Arc::downgrade(pool));
    }

    /// A slot, closing an idle connection of a pool under the cap if none is free, else
    /// waiting until `deadline` (None: the deadline passed).
    pub(super) async fn take(&self, deadline: Instant) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Some(p);
        }
        // Counted before looking for idle connections: a connection released after the look
        // sees the waiter and closes instead of going idle.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let got = async {
            if self.close_an_idle_one() {
                if let Ok(p) = self.slots.clone().try_acquire_owned() {
                    return Some(p);
                }
            }
            crate::timers::timeout_at(deadline, self.slots.clone().acquire_owned())
                .await
                .ok()?
                .ok()
        }
        .await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        got
    }

    /// Closes the longest-idle connection of one pool under the cap; false if none is idle.
    fn close_an_idle_one(&self) -> bool {
        let members: Vec<Arc<Pool>> = self
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        members.iter().any(|p| p.close_oldest_idle())
    }
}

impl Slots {
    /// Takes a slot of each cap in order (always the same order: database, then user, so two
    /// pools cannot each hold the slot the other waits for); None names the cap that had
    /// none before `deadline`.
    pub(super) async fn take(
        caps: &[Arc<ConnectionCap>],
        deadline: Instant,
    ) -> Result<Slots, Arc<ConnectionCap>> {
        let mut held = Vec::with_capacity(caps.len());
        for cap in caps {
            match cap.take(deadline).await {
                Some(p) => held.push(p),
                None => return Err(cap.clone()),
            }
        }
        Ok(Slots { _held: held })
    }

    /// A slot of each cap if all are free now (for `min_pool_size`, which never waits or
    /// evicts).
    pub(super) fn try_take(caps: &[Arc<ConnectionCap>]) -> Option<Slots> {
        caps.iter()
            .map(|c| c.slots.clone().try_acquire_owned().ok())
            .collect::<Option<Vec<_>>>()
            .map(|held| Slots { _held: held })
    }
}

/// A cap's identity: scope, database or user name, node, limit.
type CapKey = (CapScope, String, NodeAddr, u32);

/// Every cap in use, by scope, name, node and limit (a reload that changes a limit gets a new
/// cap; the pools it replaces drain under the old one).
#[derive(Debug, Default)]
pub struct Caps {
    map: Mutex<HashMap<CapKey, Weak<ConnectionCap>>>,
}

impl Caps {
    /// The cap of `name` on `node` with limit `max`, created if no pool holds it.
    pub fn get(
        &self,
        scope: CapScope,
        name: &str,
        node: &NodeAddr,
        max: u32,
    ) -> Arc<ConnectionCap> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let key = (scope, name.to_owned(), node.clone(), max);
        if let Some(cap) = map.get(&key).and_then(Weak::upgrade) {
            return cap;
        }
        // Bounded by the pools alive: caps nobody holds any more are dropped here.
        map.retain(|_, w| w.strong_count() > 0);
        let cap = Arc::new(ConnectionCap {
            scope,
            name: name.to_owned(),
            node: node.clone(),
            max,
            slots: Arc::new(Semaphore::new(max as usize)),
            waiting: AtomicUsize::new(0),
            members: Mutex::default(),
        });
        map.insert(key, Arc::downgrade(&cap));
        cap
    }

    /// Every cap in use.
    pub fn all(&self) -> Vec<Arc<ConnectionCap>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }
}
