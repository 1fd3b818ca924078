//! The pools of every (database, user): one [`Upstream`] per pair, holding one [`Pool`] per
//! node of the database, created on first use and replaced or retired by reloads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::pool::{Pool, PoolId};
use crate::config::PoolSettings;

/// Every (database, user)'s pools, created on first use.
#[derive(Debug, Default)]
pub struct Pools {
    map: Mutex<HashMap<PoolId, Arc<Upstream>>>,
}

impl Pools {
    /// The pools for `id`, created by `make` if they do not exist yet.
    pub fn get_or_create(
        &self,
        id: PoolId,
        make: impl FnOnce(PoolId) -> Arc<Upstream>,
    ) -> Arc<Upstream> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.clone()).or_insert_with(|| make(id)).clone()
    }

    /// Every (database, user)'s pools.
    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Replaces (Some) or removes (None) the pools of `id` (on reload); the caller retires
    /// pools no longer used.
    pub fn set(&self, id: PoolId, upstream: Option<Arc<Upstream>>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match upstream {
            Some(u) => map.insert(id, u),
            None => map.remove(&id),
        };
    }

    /// Every pool.
    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flat_map(|u| u.pools().iter().cloned())
            .collect()
    }
}

/// The pools of one (database, user): one per node of the database, by node id.
#[derive(Debug)]
pub struct Upstream {
    pools: Box<[Arc<Pool>]>,
}

impl Upstream {
    /// Pools by node id.
    pub fn new(pools: Vec<Arc<Pool>>) -> Upstream {
        Upstream {
            pools: pools.into(),
        }
    }

    /// The client-facing database name.
    pub fn database(&self) -> &str {
        &self.pools[0].id().database
    }

    /// The pools' identity.
    pub fn id(&self) -> &PoolId {
        self.pools[0].id()
    }

    /// The pools' settings (the same for every node).
    pub fn settings(&self) -> &PoolSettings {
        self.pools[0].settings()
    }

    /// The pool of node `node`.
    pub fn node(&self, node: usize) -> &Arc<Pool> {
        &self.pools[node]
    }

    /// Every node's pool.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }
}
