//! pgtier-issued cancel keys: each client gets its own BackendKeyData (see `clients`), mapped
//! to the server connection currently running its query (if any).

use std::sync::Mutex;

use crate::backend::CancelTarget;

/// Which server, if any, a client's query is running on right now.
#[derive(Debug, Default)]
pub struct CancelSlot(Mutex<Option<CancelTarget>>);

impl CancelSlot {
    /// Records the server now serving the client (None when it has none).
    pub fn set(&self, target: Option<CancelTarget>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }

    pub(crate) fn get(&self) -> Option<CancelTarget> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
