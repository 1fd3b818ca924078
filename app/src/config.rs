//! Settings from the environment: one database setting (`DATABASE_URL`) and a few app knobs.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Connection string for pgtier (`postgres://user:pw@host:port/db` or `key=value` form),
    /// with libpq's TLS parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`; see
    /// [`crate::tls`]).
    pub database_url: String,
    /// Address the HTTP server binds (`APP_LISTEN`, default 127.0.0.1:8080; port 0 picks one).
    pub listen: SocketAddr,
    /// Database connections in the pool (`APP_POOL_SIZE`, default 20).
    pub pool_size: u32,
    /// Limit on every database wait: getting a connection, one query, one transaction
    /// (`APP_DB_TIMEOUT_MS`, default 5000).
    pub db_timeout: Duration,
    /// Limit on the `/health` check (`APP_HEALTH_TIMEOUT_MS`, default 2000).
    pub health_timeout: Duration,
    /// Apply embedded migrations at start (`APP_MIGRATE`, default true).
    pub migrate: bool,
    /// Carry causal tokens: `X-Causal-Lsn` on write responses, `SET pgtier.min_lsn` for reads
    /// that send it (`APP_CAUSAL_TOKENS`, default true). Off, the app relies on pgtier's
    /// `causal_scope` alone.
    pub causal_tokens: bool,
}

impl Config {
    /// A config for `database_url` with every other setting at its default.
    pub fn new(database_url: impl Into<String>) -> Config {
        Config {
            database_url: database_url.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            pool_size: 20,
            db_timeout: Duration::from_secs(5),
            health_timeout: Duration::from_secs(2),
            migrate: true,
            causal_tokens: true,
        }
    }

    /// Reads `DATABASE_URL` (required) and the optional `APP_*` variables.
    pub fn from_env() -> Result<Config> {
        let url = std::env::var("DATABASE_URL")
            .context("DATABASE_URL is not set (it must point at pgtier)")?;
        let mut c = Config::new(url);
        if let Some(v) = var("APP_LISTEN") {
            c.listen = v
                .parse()
                .with_context(|| format!("APP_LISTEN={v:?} is not HOST:PORT"))?;
        }
        if let Some(v) = var("APP_POOL_SIZE") {
            c.pool_size = v
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("APP_POOL_SIZE={v:?} is not a positive integer"))?;
        }
        if let Some(v) = var("APP_DB_TIMEOUT_MS") {
            c.db_timeout = millis("APP_DB_TIMEOUT_MS", &v)?;
        }
        if let Some(v) = var("APP_HEALTH_TIMEOUT_MS") {
            c.health_timeout = millis("APP_HEALTH_TIMEOUT_MS", &v)?;
        }
        if let Some(v) = var("APP_MIGRATE") {
            c.migrate = !matches!(v.as_str(), "0" | "false" | "no" | "off");
        }
        if let Some(v) = var("APP_CAUSAL_TOKENS") {
            c.causal_tokens = !matches!(v.as_str(), "0" | "false" | "no" | "off");
        }
        Ok(c)
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn millis(name: &str, v: &str) -> Result<Duration> {
    v.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .map(Duration::from_millis)
        .with_context(|| format!("{name}={v:?} is not a positive number of milliseconds"))
}
