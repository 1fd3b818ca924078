//! `auth_query`: the secret of a client user pgtier has no entry for, read from the database
//! (PgBouncer's meaning). One lookup connection per database, to the current primary, as
//! `auth_user`; results cached by name with a TTL (a shorter one for "no such user") and a
//! bound; at most `MAX_LOOKUPS` lookups in flight; each bounded by `server_connect_timeout`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::Semaphore;

use crate::config::{AuthQuerySettings, Database};
use crate::router::route::Router;
use crate::tls::ServerTls;

/// Lookups in flight at once per database (others wait, within the same time bound).
const MAX_LOOKUPS: usize = 4;

/// Why a lookup could not answer (the client gets 08001).
#[derive(Debug, Error)]
pub enum LookupError {
    /// No primary is known (it is down, or failing over).
    #[error("auth_query: no primary is known for database \"{0}\"")]
    NoPrimary(String),
    /// Connecting or querying failed.
    #[error("auth_query on {addr}: {reason}")]
    Failed {
        /// The primary's address.
        addr: String,
        /// What failed (tokio-postgres' message, never a secret).
        reason: String,
    },
    /// It took longer than `server_connect_timeout`.
    #[error("auth_query: no answer within {0:?} (server_connect_timeout)")]
    Timeout(Duration),
}

/// The lookup of one database.
pub struct AuthLookup {
    settings: AuthQuerySettings,
    database: String,
    dbname: String,
    router: Arc<Router>,
    nodes: Vec<crate::config::NodeAddr>,
    tls: ServerTls,
    timeout: Duration,
    /// Name → (when looked up, the secret or None for "no such user").
    cache: Mutex<HashMap<String, (Instant, Option<String>)>>,
    permits: Semaphore,
    /// The lookup connection and the node it is on.
    conn: tokio::sync::Mutex<Option<(usize, tokio_postgres::Client)>>,
}

impl std::fmt::Debug for AuthLookup {
    // Never the cached secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLookup")
            .field("database", &self.database)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AuthLookup {
    /// The lookup for `db` (its nodes, its router's view of the primary, its server TLS).
    pub fn new(
        settings: &AuthQuerySettings,
        db: &Database,
        router: Arc<Router>,
        tls: ServerTls,
    ) -> AuthLookup {
        AuthLookup {
            settings: settings.clone(),
            database: db.name.clone(),
            dbname: settings.dbname.clone().unwrap_or_else(|| db.dbname.clone()),
            router,
            nodes: db.nodes().iter().map(|n| n.addr.clone()).collect(),
            tls,
            timeout: db.pool.server_connect_timeout,
            cache: Mutex::default(),
            permits: Semaphore::new(MAX_LOOKUPS),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// The secret of `user` (None: no such user, or no secret), from the cache or the primary.
    pub async fn secret(&self, user: &str) -> Result<Option<String>, LookupError> {
        if let Some(hit) = self.cached(user) {
            return Ok(hit);
        }
        crate::timers::timeout(self.timeout, self.look_up(user))
            .await
            .unwrap_or(Err(LookupError::Timeout(self.timeout)))
    }

    fn cached(&self, user: &str) -> Option<Option<String>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (at, secret) = cache.get(user)?;
        let ttl = if secret.is_some() {
            self.settings.ttl
        } else {
            self.settings.negative_ttl
        };
        (at.elapsed() < ttl).then(|| secret.clone())
    }

    async fn look_up(&self, user: &str) -> Result<Option<String>, LookupError> {
        let _permit = self.permits.acquire().await.ok();
        // Another login may have looked it up while this one waited.
        if let Some(hit) = self.cached(user) {
            return Ok(hit);
        }
        // Right after a start or during a failover the primary may not be known yet: wait for
        // it (the whole lookup is bounded by `server_connect_timeout`).
        let primary = self
            .router
            .topology()
            .wait_for_primary(self.timeout)
            .await
            .ok_or_else(|| LookupError::NoPrimary(self.database.clone()))?;
        let addr = self
            .nodes
            .get(primary)
            .map(|a| a.to_string())
            .unwrap_or_default();
        let failed = |e: tokio_postgres::Error| LookupError::Failed {
            addr: addr.clone(),
            reason: e.to_string(),
        };
        let mut conn = self.conn.lock().await;
        if !matches!(&*conn, Some((node, c)) if *node == primary && !c.is_closed()) {
            *conn = None;
            *conn = Some((primary, self.connect(primary).await.map_err(failed)?));
        }
        let Some((_, client)) = conn.as_ref() else {
            return Err(LookupError::NoPrimary(self.database.clone()));
        };
        let row = match client.query_opt(&self.settings.query, &[&user]).await {
            Ok(row) => row,
            Err(e) => {
                // The connection may be what failed: the next lookup makes a new one.
                *conn = None;
                return Err(failed(e));
            }
        };
        drop(conn);
        let secret = row.and_then(|r| r.try_get::<_, Option<String>>(1).ok().flatten());
        self.remember(user, secret.clone());
        Ok(secret)
    }

    fn remember(&self, user: &str, secret: Option<String>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.settings.cache_size && !cache.contains_key(user) {
            let longest = self.settings.ttl.max(self.settings.negative_ttl);
            cache.retain(|_, (at, _)| at.elapsed() < longest);
            if cache.len() >= self.settings.cache_size {
                // Still full of live entries: drop one (it is looked up again when needed).
                if let Some(k) = cache.keys().next().cloned() {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(user.to_owned(), (Instant::now(), secret));
    }

    async fn connect(&self, node: usize) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let addr = &self.nodes[node];
        let mut pg = tokio_postgres::Config::new();
        pg.host(&addr.host)
            .port(addr.port)
            .user(&self.settings.user)
            .dbname(&self.dbname)
            .application_name("pgtier-auth-query")
            .ssl_mode(self.tls.postgres_mode());
        if let Some(pw) = &self.settings.password {
            pg.password(pw.as_bytes());
        }
        crate::tls::connector::connect_postgres(&pg, self.tls.postgres_connector()).await
    }
}
