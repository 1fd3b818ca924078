//! The running proxy: shared state every client task sees, startup of the listener, and the
//! shutdown sequence (drain, then close).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::backend::{cancel::send_cancel, Pool, PoolId, Pools, ServerLogin, Upstream};
use crate::cluster::{ConfiguredRole, Topology};
use crate::config::{Database, Settings, User};
use crate::frontend::{self, CancelRegistry, ClientCount, Limits};
use crate::protocol::startup::CancelKey;
use crate::router::classify::FunctionTable;
use crate::router::route::Router;
use crate::shutdown::{Phase, Shutdown, ShutdownWatch};

/// How long a forwarded cancel may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// After `shutdown_timeout`, how long clients get to receive their 57P01 before exit.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// State shared by all client tasks.
#[derive(Debug)]
pub struct Proxy {
    settings: Arc<Settings>,
    pools: Pools,
    /// Routing per database (by client-facing name).
    routers: HashMap<String, Arc<Router>>,
    /// Client limits per database, shared by its sessions.
    client_limits: HashMap<String, Arc<Limits>>,
    cancels: Arc<CancelRegistry>,
    clients: ClientCount,
    shutdown: Shutdown,
}

impl Proxy {
    /// A proxy for these settings (nothing is listening yet). Starts each database's node
    /// monitors, so it must run inside a tokio runtime.
    pub fn new(settings: Settings) -> Arc<Proxy> {
        let routers = settings
            .databases
            .values()
            .map(|db| {
                // A lone configured primary needs no monitor (nothing to route between): no
                // extra server connection, as with PgBouncer.
                let watch = db.nodes().iter().any(|n| n.role != ConfiguredRole::Primary);
                let topology = if watch {
                    Topology::start(db.cluster.clone())
                } else {
                    Topology::unmonitored(db.cluster.clone())
                };
                let functions = FunctionTable::builtin().with_overrides(
                    &settings.raw.write_functions,
                    &settings.raw.read_only_functions,
                );
                let router = Arc::new(Router::new(
                    topology,
                    db.routing.clone(),
                    functions,
                    settings.raw.classify_cache_size as usize,
                    watch,
                ));
                router.learn_functions();
                (db.name.clone(), router)
            })
            .collect();
        let client_limits = settings
            .databases
            .values()
            .map(|db| (db.name.clone(), Arc::new(Limits::of(&settings, db))))
            .collect();
        Arc::new(Proxy {
            routers,
            client_limits,
            settings: Arc::new(settings),
            pools: Pools::default(),
            cancels: Arc::default(),
            clients: ClientCount::default(),
            shutdown: Shutdown::default(),
        })
    }

    /// The current settings.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.clone()
    }

    /// Open client connections.
    pub fn clients(&self) -> &ClientCount {
        &self.clients
    }

    /// The cancel-key registry.
    pub fn cancels(&self) -> &Arc<CancelRegistry> {
        &self.cancels
    }

    /// The current shutdown phase.
    pub fn phase(&self) -> Phase {
        self.shutdown.watch().phase()
    }

    /// A handle to wait on shutdown phases.
    pub fn shutdown_watch(&self) -> ShutdownWatch {
        self.shutdown.watch()
    }

    /// The pools (one per node) of a (database, user) pair, and the database's router.
    pub fn upstream_for(&self, db: &Database, user: &User) -> (Arc<Upstream>, Arc<Router>) {
        let id = PoolId {
            database: db.name.clone(),
            user: user.name.clone(),
        };
        let upstream = self.pools.get_or_create(id, |id| {
            let login = ServerLogin {
                user: user.server_user.clone(),
                password: user.server_password.clone(),
                dbname: db.dbname.clone(),
                max_prepared_statements: db.pool.max_prepared_statements,
            };
            let pools = db
                .nodes()
                .iter()
                .map(|n| Pool::new(id.clone(), n.addr.clone(), login.clone(), db.pool.clone()))
                .collect();
            Arc::new(Upstream::new(pools))
        });
        (upstream, self.routers[&db.name].clone())
    }

    /// The settings, borrowed.
    pub fn settings_ref(&self) -> &Settings {
        &self.settings
    }

    /// The router of a configured database.
    pub fn router(&self, database: &str) -> &Arc<Router> {
        &self.routers[database]
    }

    /// Every server pool.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools.all()
    }

    /// The limits of a database's clients.
    pub(crate) fn client_limits(&self, database: &str) -> Arc<Limits> {
        self.client_limits[database].clone()
    }

    /// Forwards a client's cancel request to the server running its query, if any.
    pub async fn forward_cancel(&self, key: CancelKey) {
        let Some(target) = self.cancels.target(&key) else {
            debug!("cancel request for a client with no running query");
            return;
        };
        if let Err(e) = send_cancel(target, CANCEL_TIMEOUT).await {
            warn!(server = %target.addr, error = %e, "forwarding cancel failed");
        }
    }

    /// Graceful shutdown: stop accepting, let transactions finish up to `shutdown_timeout`
    /// (or until `hurry` resolves), then close every client with 57P01.
    pub async fn drain(&self, hurry: impl Future<Output = ()>) {
        self.shutdown.advance(Phase::Draining);
        let limit = self.settings.raw.shutdown_timeout;
        info!(clients = self.clients.get(), timeout = ?limit, "draining");
        tokio::select! {
            _ = self.until_no_clients(limit) => {}
            _ = hurry => info!("second signal: closing clients now"),
        }
        self.shutdown.advance(Phase::Closing);
        self.until_no_clients(CLOSE_GRACE).await;
        info!(remaining = self.clients.get(), "shutdown complete");
    }

    async fn until_no_clients(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            while self.clients.get() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}

/// Binds the listener and serves until SIGTERM or SIGINT, then shuts down gracefully
/// (a second signal skips the wait for running transactions).
pub async fn run(settings: Settings) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let listener = TcpListener::bind(settings.listen).await?;
    info!(listen = %settings.listen, "pgtier listening");
    let proxy = Proxy::new(settings);
    tokio::spawn(frontend::serve(proxy.clone(), listener));
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    let again = async {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    };
    proxy.drain(again).await;
    Ok(())
}
