//! The running proxy: shared state every client task sees (the current config snapshot,
//! pools, clients, metrics, admin state), live reload, and the shutdown sequence (drain, then
//! close). It points only down: the listeners and consoles above it take an `Arc<Proxy>`.

pub mod auth_lookup;
pub mod cancel_slot;
pub mod client_count;
pub mod clients;
mod limits;
pub mod peer_cancel;
mod reload;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::backend::cancel::{send_cancel, send_cancel_to_peer};
use crate::backend::{Pool, PoolId, Pools, Upstream};
use crate::config::{ConfigError, Database, Settings, User};
use crate::control::{Control, DbControl};
use crate::metrics::{DbMetrics, Metrics};
use crate::protocol::startup::CancelKey;
use crate::router::route::Router;
use crate::shutdown::{Phase, Shutdown, ShutdownWatch};
use crate::tls::ClientTls;

pub use client_count::{ClientCount, ClientGuard, OpenClient};
pub use clients::{ClientEntry, ClientRegistry, ClientState};
pub(crate) use limits::Limits;

/// Why a reload changed nothing.
#[derive(Debug, Error)]
pub enum ReloadError {
    /// pgtier was started without a config file.
    #[error("pgtier was not started with a config file: nothing to reload")]
    NoFile,
    /// The file cannot be read or is invalid (problems with line and column).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// How long a forwarded cancel may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// Cancels being forwarded to peers at once (more are dropped, with a warning).
const MAX_PEER_CANCELS: usize = 64;
/// After `shutdown_timeout`, how long clients get to receive their 57P01 before exit.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What one database runs with under one config snapshot.
#[derive(Debug)]
pub struct DbRuntime {
    /// TLS towards its servers (files as of this snapshot's load).
    pub server_tls: crate::tls::ServerTls,
    /// Routing (classifier, rules, topology).
    pub router: Arc<Router>,
    /// Limits its clients' relays apply.
    pub(crate) limits: Arc<Limits>,
    /// Its hot-path counters (kept across reloads).
    pub metrics: Arc<DbMetrics>,
    /// Its admin state (kept across reloads).
    pub control: Arc<DbControl>,
    /// Causal tokens shared by clients (kept across reloads).
    pub scopes: Arc<crate::router::scopes::DbScopes>,
    /// `auth_query` lookups for users pgtier has no entry for (None: `auth_user` unset).
    pub auth_lookup: Option<Arc<auth_lookup::AuthLookup>>,
}

/// One loaded config and everything built from it. Clients that started on a snapshot finish
/// their transaction on it; their next one uses the current snapshot.
#[derive(Debug)]
pub struct Snapshot {
    /// The settings.
    pub settings: Arc<Settings>,
    /// Bumped by every successful reload.
    pub generation: u64,
    /// Per database (by client-facing name).
    pub databases: HashMap<String, Arc<DbRuntime>>,
    /// Client-side TLS (None: disabled), built from `settings` with its files read then.
    pub client_tls: Option<Arc<ClientTls>>,
}

/// State shared by all client tasks.
#[derive(Debug)]
pub struct Proxy {
    current: ArcSwap<Snapshot>,
    /// `current.generation`, readable with one atomic load.
    generation: AtomicU64,
    pools: Pools,
    /// Server-connection limits shared between pools (max_db_connections, max_user_connections).
    caps: crate::backend::Caps,
    clients: Arc<ClientRegistry>,
    count: ClientCount,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
    control: Control,
    /// Causal scope tokens per database (kept across reloads).
    scopes: Arc<crate::router::scopes::ScopeRegistry>,
    /// Shared LISTEN connections and their clients, per database (kept across reloads).
    listeners: crate::notify::Listeners,
    /// The file reloads read (None: settings given directly, nothing to reload).
    config_path: Option<PathBuf>,
    /// One reload at a time.
    reloading: Mutex<()>,
    /// Applies a new `log_level` (set by the binary, which owns the log subscriber).
    log_level: OnceLock<LogLevelHook>,
    /// Slots for cancels being forwarded to peers.
    peer_cancels: tokio::sync::Semaphore,
}

/// Applies a `log_level` filter to the running log subscriber; Err: why it was not applied.
pub struct LogLevelHook(pub Box<SetLogLevel>);

/// What a [`LogLevelHook`] runs.
pub type SetLogLevel = dyn Fn(&str) -> Result<(), String> + Send + Sync;

impl std::fmt::Debug for LogLevelHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogLevelHook")
    }
}

impl Proxy {
    /// A proxy for these settings (nothing is listening yet). Starts each database's node
    /// monitors, so it must run inside a tokio runtime. `config_path` is what RELOAD and
    /// SIGHUP read. Err: a certificate, key or CA file cannot be used.
    pub fn new(
        settings: Settings,
        config_path: Option<PathBuf>,
    ) -> Result<Arc<Proxy>, ConfigError> {
        let file = config_path
            .as_deref()
            .map_or_else(|| "config".into(), |p| p.display().to_string());
        let tls = reload::server_tls(&settings, &file)?;
        let client_tls = reload::client_tls(&settings, &file)?;
        let metrics = Arc::new(Metrics::new());
        tokio::spawn(stats_period(Arc::downgrade(&metrics)));
        let control = Control::default();
        let scopes = Arc::new(crate::router::scopes::ScopeRegistry::default());
        let shutdown = Shutdown::default();
        let kept = reload::Kept {
            shutdown: &shutdown,
            metrics: &metrics,
            control: &control,
            scopes: &scopes,
        };
        let databases = reload::build_databases(&settings, &tls, None, &kept);
        let peer_id = settings.peering.id;
        Ok(Arc::new(Proxy {
            current: ArcSwap::from_pointee(Snapshot {
                settings: Arc::new(settings),
                generation: 0,
                databases,
                client_tls,
            }),
            generation: AtomicU64::new(0),
            pools: Pools::default(),
            caps: Default::default(),
            clients: Arc::new(ClientRegistry::new(peer_id)),
            count: ClientCount::default(),
            shutdown,
            listeners: crate::notify::Listeners::new(metrics.clone()),
            metrics,
            control,
            scopes,
            config_path,
            reloading: Mutex::new(()),
            log_level: OnceLock::new(),
            peer_cancels: tokio::sync::Semaphore::new(MAX_PEER_CANCELS),
        }))
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The current snapshot's generation (one atomic load: sessions compare it with theirs).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current settings.
    pub fn settings(&self) -> Arc<Settings> {
        self.current.load().settings.clone()
    }

    /// Sets what applies a reloaded `log_level` (once; later calls are ignored).
    pub fn set_log_level_hook(&self, hook: LogLevelHook) {
        let _ = self.log_level.set(hook);
    }

    /// Open client connections.
    pub fn clients(&self) -> &ClientCount {
        &self.count
    }

    /// Every logged-in client (cancel keys, SHOW CLIENTS).
    pub fn client_registry(&self) -> &Arc<ClientRegistry> {
        &self.clients
    }

    /// LISTEN/NOTIFY of transaction-mode clients.
    pub fn listeners(&self) -> &crate::notify::Listeners {
        &self.listeners
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Admin state (PAUSE, KILL, SHUTDOWN).
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Wakes idle clients so they look at admin state (KILL, RESUME).
    pub fn poke_clients(&self) {
        self.shutdown.poke();
    }

    /// The current shutdown phase.
    pub fn phase(&self) -> Phase {
        self.shutdown.watch().phase()
    }

    /// A handle to wait on shutdown phases.
    pub fn shutdown_watch(&self) -> ShutdownWatch {
        self.shutdown.watch()
    }

    /// The pools (one per node) of a (database, user) pair, under the current snapshot.
    pub fn upstream_for(&self, db: &Database, user: &User) -> Arc<Upstream> {
        let id = PoolId {
            database: db.name.clone(),
            user: user.name.clone(),
        };
        self.pools.get_or_create(id, |id| {
            // The snapshot's TLS for `db` (read at its load). A database no longer in the
            // current snapshot was removed by a reload a moment ago: its files are read again.
            let tls = match self.database(&db.name) {
                Some(rt) => rt.server_tls.clone(),
                None => crate::tls::ServerTls::new(&db.server_tls).unwrap_or_else(|e| {
                    crate::tls::ServerTls::failed(db.server_tls.mode, e.to_string())
                }),
            };
            let login = reload::server_login(db, user, &tls);
            let settings = db.pool_for(user);
            let pools = db
                .nodes()
                .iter()
                .map(|n| reload::new_pool(&self.caps, &id, &n.addr, &login, &settings))
                .collect();
            Arc::new(Upstream::new(pools))
        })
    }

    /// A database's runtime under the current snapshot (None: not configured).
    pub fn database(&self, name: &str) -> Option<Arc<DbRuntime>> {
        self.current.load().databases.get(name).cloned()
    }

    /// Every server pool.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools.all()
    }

    /// Every server-connection limit shared between pools.
    pub fn caps(&self) -> Vec<Arc<crate::backend::ConnectionCap>> {
        self.caps.all()
    }

    /// Every (database, user)'s pools.
    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.pools.upstreams()
    }

    /// Re-reads the config file and switches to it: unchanged pools keep their connections,
    /// changed or removed ones drain, routers are rebuilt where their settings changed. An
    /// invalid file changes nothing. Returns the keys that changed but need a restart.
    pub fn reload(&self) -> Result<Vec<&'static str>, ReloadError> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let Some(path) = &self.config_path else {
            return Err(ReloadError::NoFile);
        };
        // Certificates, keys and CAs are read again: new connections use them, established
        // ones keep theirs; a file that fails keeps the running ones.
        let loaded = crate::config::load_file(path).and_then(|s| {
            let file = path.display().to_string();
            let tls = reload::server_tls(&s, &file)?;
            let client_tls = reload::client_tls(&s, &file)?;
            Ok((s, tls, client_tls))
        });
        let (settings, tls, client_tls) = match loaded {
            Ok(s) => s,
            Err(e) => {
                self.metrics.reloads_failed.inc();
                warn!(error = %e, "reload rejected: the running config stays");
                return Err(ReloadError::Invalid(e));
            }
        };
        let old = self.current.load_full();
        let mut restart = reload::restart_required(&old.settings, &settings);
        if old.settings.raw.log_level != settings.raw.log_level {
            match self
                .log_level
                .get()
                .map(|hook| (hook.0)(&settings.raw.log_level))
            {
                Some(Ok(())) => {
                    info!(log_level = %settings.raw.log_level, "log level changed")
                }
                Some(Err(why)) => {
                    warn!(why, "log_level not applied");
                    restart.push("log_level");
                }
                None => restart.push("log_level"),
            }
        }
        let kept = reload::Kept {
            shutdown: &self.shutdown,
            metrics: &self.metrics,
            control: &self.control,
            scopes: &self.scopes,
        };
        let databases = reload::build_databases(&settings, &tls, Some(&old), &kept);
        reload::reconcile_pools(&self.pools, &self.caps, &settings, &tls);
        let generation = old.generation + 1;
        self.current.store(Arc::new(Snapshot {
            settings: Arc::new(settings),
            generation,
            databases,
            client_tls,
        }));
        self.generation.store(generation, Ordering::Release);
        self.metrics.reloads_ok.inc();
        if restart.is_empty() {
            info!(generation, "config reloaded");
        } else {
            warn!(generation, needs_restart = ?restart, "config reloaded; some changed keys only take effect after a restart");
        }
        Ok(restart)
    }

    /// Forwards a client's cancel request to the server running its query, if any; with
    /// peering on, a key issued by another peer goes to that peer (unknown peers: ignored).
    pub async fn forward_cancel(&self, key: CancelKey) {
        let key = match self.clients.peer_id() {
            None => key,
            Some(me) if peer_cancel::owner(&key) == me => peer_cancel::as_issued(&key),
            Some(_) => return self.forward_to_peer(key).await,
        };
        let Some(target) = self.clients.cancel_target(&key) else {
            debug!("cancel request for a client with no running query");
            return;
        };
        if let Err(e) = send_cancel(target, CANCEL_TIMEOUT).await {
            warn!(server = %target.addr, error = %e, "forwarding cancel failed");
        }
    }

    /// Sends a cancel to the peer whose key it is (bounded: at most `MAX_PEER_CANCELS` at
    /// once, each within `CANCEL_TIMEOUT`).
    async fn forward_to_peer(&self, key: CancelKey) {
        let owner = peer_cancel::owner(&key);
        if peer_cancel::ttl(&key) == 0 {
            warn!(
                peer = owner,
                "cancel request forwarded too many times (do the [peers] sections agree?): dropped"
            );
            return;
        }
        let Some(addr) = self.settings().peering.peers.get(&owner).cloned() else {
            debug!(peer = owner, "cancel request for an unknown peer: ignored");
            return;
        };
        let Ok(_slot) = self.peer_cancels.try_acquire() else {
            warn!(
                peer = owner,
                "too many cancel requests being forwarded to peers: dropped"
            );
            return;
        };
        let key = peer_cancel::forwarded(&key);
        match send_cancel_to_peer(&addr.host, addr.port, key, CANCEL_TIMEOUT).await {
            Ok(()) => debug!(peer = owner, %addr, "cancel request forwarded to its peer"),
            Err(e) => {
                warn!(peer = owner, %addr, error = %e, "forwarding a cancel to its peer failed")
            }
        }
    }

    /// Graceful shutdown: stop accepting, let clients go on for `shutdown_grace`, then let
    /// transactions finish up to `shutdown_timeout` while idle clients are closed (or until
    /// `hurry` resolves), then close every client with 57P01.
    pub async fn drain(&self, hurry: impl Future<Output = ()>) {
        self.shutdown.advance(Phase::Quiescing);
        let raw = &self.settings().raw;
        let (grace, limit) = (raw.shutdown_grace, raw.shutdown_timeout);
        let mut hurry = std::pin::pin!(hurry);
        let mut hurried = false;
        if !grace.is_zero() {
            info!(clients = self.count.get(), grace = ?grace, "stopped accepting: clients go on for shutdown_grace");
            tokio::select! {
                _ = self.until_no_clients(grace) => {}
                _ = &mut hurry => hurried = true,
            }
        }
        self.shutdown.advance(Phase::Draining);
        info!(clients = self.count.get(), timeout = ?limit, "draining");
        if hurried {
            info!("second signal: closing clients now");
        } else {
            tokio::select! {
                _ = self.until_no_clients(limit) => {}
                _ = &mut hurry => info!("second signal: closing clients now"),
            }
        }
        self.shutdown.advance(Phase::Closing);
        self.until_no_clients(CLOSE_GRACE).await;
        info!(remaining = self.count.get(), "shutdown complete");
    }

    async fn until_no_clients(&self, limit: Duration) {
        let _ = crate::timers::timeout(limit, async {
            while self.count.get() > 0 {
                crate::timers::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}

/// Samples the SHOW STATS averages every period while the metrics exist.
async fn stats_period(metrics: std::sync::Weak<Metrics>) {
    let mut tick = crate::timers::interval(crate::metrics::STATS_PERIOD);
    loop {
        tick.tick().await;
        let Some(m) = metrics.upgrade() else { return };
        m.tick_period();
    }
}
