//! pgtier-app: a tutoring-marketplace HTTP JSON API (subjects, tutors, students,
//! availability, bookings, reviews) that reaches Postgres only through pgtier, plus a load
//! generator (`loadgen`). Start it in-process with [`serve`].

pub mod config;
pub mod db;
pub mod error;
pub mod loadgen;
pub mod metrics;
pub mod routes;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::Config;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// What [`AppState`] holds.
pub struct Inner {
    /// Settings.
    pub config: Config,
    /// The pool.
    pub db: db::Db,
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    next_id: AtomicU64,
    id_prefix: String,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// State for `config` (the pool connects lazily).
    pub fn new(config: Config) -> anyhow::Result<AppState> {
        let db = db::Db::new(&config)?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id());
        Ok(AppState(Arc::new(Inner {
            config,
            db,
            metrics: metrics::Metrics::new(),
            next_id: AtomicU64::new(1),
            id_prefix: format!("{:08x}", (seed ^ (seed >> 32)) as u32),
        })))
    }

    /// A new request id, unique within this process and unlikely to repeat across restarts.
    pub fn next_request_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.id_prefix)
    }
}

/// The full axum application for `state`.
pub fn app(state: AppState) -> axum::Router {
    routes::router()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// A running server: its address; dropping it (or [`AppHandle::shutdown`]) stops it.
pub struct AppHandle {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl AppHandle {
    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the server task.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await??;
        }
        Ok(())
    }

    /// Waits until the server stops (after a shutdown signal).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        if let Some(t) = self.task.take() {
            t.await??;
        }
        Ok(())
    }
}

impl Drop for AppHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Applies migrations (waiting up to 30 s for the database), binds `config.listen` and serves
/// on a tokio task.
pub async fn serve(config: Config) -> anyhow::Result<AppHandle> {
    serve_until(config, std::future::pending()).await
}

/// Like [`serve`], also stopping gracefully when `signal` completes.
pub async fn serve_until(
    config: Config,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<AppHandle> {
    let state = AppState::new(config.clone())?;
    if config.migrate {
        let applied = state.db.migrate(Duration::from_secs(30)).await?;
        tracing::info!(?applied, "schema up to date");
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let app = app(state);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = rx => {}
                    _ = signal => {}
                }
            })
            .await
    });
    tracing::info!(%addr, "pgtier-app listening");
    Ok(AppHandle {
        addr,
        shutdown: Some(tx),
        task: Some(task),
    })
}
