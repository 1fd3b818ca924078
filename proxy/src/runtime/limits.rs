//! The limits a relay applies, read from the config for each database's clients.

use std::time::Duration;

use crate::backend::params::ExtraParams;
use crate::config::{PoolMode, PoolSettings, SessionStatePolicy};

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
    /// A query the server owes a reply to for this long is canceled (None: never).
    pub query_timeout: Option<Duration>,
    /// A transaction open this long ends the client's connection (None: never).
    pub transaction_timeout: Option<Duration>,
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
            query_timeout: db.pool.query_timeout,
            transaction_timeout: db.pool.transaction_timeout,
        }
    }

    /// These limits with what a user's pool settings override (pool mode, timeouts).
    pub fn for_pool(mut self, pool: &PoolSettings) -> Limits {
        self.mode = pool.mode;
        self.query_timeout = pool.query_timeout;
        self.transaction_timeout = pool.transaction_timeout;
        self
    }
}
