//! pgtier-issued cancel keys: each client gets its own BackendKeyData, mapped here to the server
//! connection currently running its query (if any).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::RngExt;

use crate::backend::CancelTarget;
use crate::protocol::startup::CancelKey;

/// Which server, if any, a client's query is running on right now.
#[derive(Debug, Default)]
pub struct CancelSlot(Mutex<Option<CancelTarget>>);

impl CancelSlot {
    /// Records the server now serving the client (None when it has none).
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    fn get(&self) -> Option<CancelTarget> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// All live clients' cancel keys.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<CancelKey, Arc<CancelSlot>>>,
}

/// A registered key; unregisters on drop.
#[derive(Debug)]
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    /// The key given to the client.
    pub key: CancelKey,
    /// Where the client's query runs.
    pub slot: Arc<CancelSlot>,
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key);
    }
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CancelKey, Arc<CancelSlot>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issues a fresh random key for a new client.
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let slot = Arc::new(CancelSlot::default());
        let mut rng = rand::rng();
        let mut map = self.lock();
        let key = loop {
            let key = CancelKey {
                pid: rng.random_range(1..i32::MAX),
                secret: rng.random(),
            };
            if !map.contains_key(&key) {
                break key;
            }
        };
        map.insert(key, slot.clone());
        CancelHandle {
            registry: self.clone(),
            key,
            slot,
        }
    }

    /// Where a cancel with this key should go, if the client is running a query.
    pub fn target(&self, key: &CancelKey) -> Option<CancelTarget> {
        self.lock().get(key)?.get()
    }
}
