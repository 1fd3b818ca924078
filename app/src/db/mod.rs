//! The database side: a bb8 pool of tokio-postgres connections to pgtier with a per-connection
//! prepared-statement cache and a fair gate, embedded migrations, the causal-token helpers
//! (`SHOW pgtier.causal_lsn` after writes, `SET pgtier.min_lsn` before reads), and (in
//! `retry`) the safe repetition of a request's work whose connection was lost.

mod retry;

pub use retry::Work;

use std::collections::HashMap;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, SimpleQueryMessage, Statement, Transaction};

use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::tls::Connector;

/// Embedded schema migrations: (version, name, SQL), applied in order.
pub const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "init", include_str!("../../migrations/0001_init.sql"))];

/// Key of the transaction-level advisory lock that serialises concurrent migrations.
const MIGRATION_LOCK: i64 = 0x7067_7469_6572; // "pgtier"

/// How long the app stops asking pgtier for causal tokens after it said it has none.
const CAUSAL_RETRY: Duration = Duration::from_secs(30);

/// bb8 manager: connects with tokio-postgres (plain or TLS, from DATABASE_URL's `sslmode`) and
/// gives each connection a statement cache.
#[derive(Debug)]
pub struct Manager {
    config: tokio_postgres::Config,
    connector: Connector,
}

/// Prepared statements of one connection, by SQL text.
#[derive(Default)]
pub struct Stmts(HashMap<&'static str, Statement>);

impl Stmts {
    /// The prepared statement for `sql`, preparing it on first use.
    pub async fn get<C: GenericClient>(
        &mut self,
        client: &C,
        sql: &'static str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.0.get(sql) {
            return Ok(s.clone());
        }
        let s = client.prepare(sql).await?;
        self.0.insert(sql, s.clone());
        Ok(s)
    }
}

/// A pooled connection: the client plus its statement cache.
pub struct Conn {
    /// The tokio-postgres client (talking to pgtier).
    pub client: Client,
    /// Its prepared statements.
    pub stmts: Stmts,
    /// How far the current request's transaction got (reset at each checkout).
    stage: Stage,
}

/// How far a request's transaction got on its connection: what tells [`crate::db_run!`] whether
/// work that failed may have written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Nothing sent by [`Conn::begin`].
    Fresh,
    /// BEGIN (and the SET LOCAL after it) sent, not both answered: nothing written yet.
    Beginning,
    /// The transaction is open: statements after this may write.
    Begun,
}

impl Conn {
    /// The cached prepared statement for `sql`.
    pub async fn stmt(&mut self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        self.stmts.get(&self.client, sql).await
    }

    /// Starts a transaction with a server-side `statement_timeout` (SET LOCAL: no session
    /// state, so pgtier does not pin); returns it with the statement cache.
    pub async fn begin(
        &mut self,
        timeout: Duration,
    ) -> Result<(Transaction<'_>, &mut Stmts), tokio_postgres::Error> {
        self.stage = Stage::Beginning;
        let tx = self.client.transaction().await?;
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            timeout.as_millis()
        ))
        .await?;
        self.stage = Stage::Begun;
        Ok((tx, &mut self.stmts))
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = tokio_postgres::Error;

    async fn connect(&self) -> Result<Conn, tokio_postgres::Error> {
        Ok(Conn {
            client: self.connector.connect(&self.config).await?,
            stmts: Stmts::default(),
            stage: Stage::Fresh,
        })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), tokio_postgres::Error> {
        conn.client.simple_query("").await.map(drop)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.client.is_closed()
    }
}

/// Logs why a connection to pgtier could not be made (bb8 would otherwise report only its own
/// timeout to the waiting request: a refused TLS certificate must be visible to an operator).
/// tokio-postgres' messages carry no password.
#[derive(Debug, Clone, Copy)]
struct LogConnectErrors;

impl bb8::ErrorSink<tokio_postgres::Error> for LogConnectErrors {
    fn sink(&self, error: tokio_postgres::Error) {
        let mut why = error.to_string();
        let mut cause = std::error::Error::source(&error);
        while let Some(c) = cause {
            why = format!("{why}: {c}");
            cause = c.source();
        }
        tracing::warn!(error = %why, "connecting to the database failed");
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<tokio_postgres::Error>> {
        Box::new(*self)
    }
}

/// A connection lent to one request, with its place in the fair queue.
pub struct DbConn<'a> {
    conn: bb8::PooledConnection<'a, Manager>,
    _permit: SemaphorePermit<'a>,
}

impl Deref for DbConn<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl DerefMut for DbConn<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

/// Whether pgtier answers `SHOW pgtier.causal_lsn`.
const CAUSAL_UNKNOWN: u64 = 0;
const CAUSAL_SUPPORTED: u64 = 1;

/// The pool and everything needed to use it safely.
pub struct Db {
    pool: bb8::Pool<Manager>,
    /// bb8 0.9 lets a releasing task jump the queue; this FIFO semaphore keeps waiting fair.
    gate: Semaphore,
    timeout: Duration,
    started: Instant,
    /// CAUSAL_UNKNOWN, CAUSAL_SUPPORTED, or 2 + milliseconds since `started` until which
    /// pgtier is taken not to support causal tokens.
    causal: AtomicU64,
    /// `Config::causal_tokens`.
    carry_tokens: bool,
    /// `Config::pool_size`.
    pool_size: u32,
    /// Requests whose work was repeated on a fresh connection (see [`crate::db_run!`]).
    retries: AtomicU64,
}

/// A client's causal token: an LSN `X/Y` (hex) from the `X-Causal-Lsn` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Causal(pub Option<String>);

/// Whether `s` is an LSN in Postgres' text form: `hex/hex`, each 1..=8 digits.
pub fn valid_lsn(s: &str) -> bool {
    let ok = |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
    matches!(s.split_once('/'), Some((a, b)) if ok(a) && ok(b))
}

impl Db {
    /// Builds the pool (lazily connecting: the database may come up later).
    pub fn new(cfg: &Config) -> anyhow::Result<Db> {
        let (mut config, connector) = crate::tls::parse(&cfg.database_url)
            .map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(cfg.db_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("pgtier-app");
        }
        let pool = bb8::Pool::builder()
            .max_size(cfg.pool_size)
            .min_idle(None)
            .connection_timeout(cfg.db_timeout)
            .test_on_check_out(false)
            // A failed connect (reset by a listener closing for a restart, or refused with
            // 57P03 by a process draining) is made again (bb8 backs off from 200 ms) within
            // connection_timeout: without it bb8 leaves the request waiting for it until the
            // timeout unless another connection frees up.
            .retry_connection(true)
            .error_sink(Box::new(LogConnectErrors))
            .build_unchecked(Manager { config, connector });
        Ok(Db {
            pool,
            gate: Semaphore::new(cfg.pool_size as usize),
            timeout: cfg.db_timeout,
            started: Instant::now(),
            causal: AtomicU64::new(CAUSAL_UNKNOWN),
            carry_tokens: cfg.causal_tokens,
            pool_size: cfg.pool_size,
            retries: AtomicU64::new(0),
        })
    }

    /// The limit on one request's database work.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Connections open and idle, for /metrics.
    pub fn pool_state(&self) -> (u32, u32) {
        let s = self.pool.state();
        (s.connections, s.idle_connections)
    }

    /// Runs `fut` (a request's database work) with the database timeout.
    pub async fn timed<T>(&self, fut: impl Future<Output = ApiResult<T>>) -> ApiResult<T> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .unwrap_or_else(|_| Err(ApiError::Unavailable("database timed out".into())))
    }

    /// A connection for writes (or reads that need no causal token).
    pub async fn conn(&self) -> ApiResult<DbConn<'_>> {
        let permit = self
            .gate
            .acquire()
            .await
            .map_err(|_| ApiError::Unavailable("pool closed".into()))?;
        let mut conn = self.pool.get().await?;
        // A connection pgtier closed (a restarting pgtier closes idle clients, and the others
        // after their transaction, so that they reconnect to another process) is discarded (bb8
        // drops it when handed back: has_broken) and a fresh one taken, at most the pool's size
        // times. A close still on its way is not seen here: `db_run!` repeats work that failed
        // that way when it cannot have written.
        for _ in 0..self.pool_size {
            if !conn.client.is_closed() {
                break;
            }
            drop(conn);
            conn = self.pool.get().await?;
        }
        conn.stage = Stage::Fresh;
        Ok(DbConn {
            conn,
            _permit: permit,
        })
    }

    /// A connection whose reads see at least the client's causal token (when pgtier supports
    /// tokens: `SET pgtier.min_lsn` is a session setting Postgres itself would keep, so it is
    /// only sent to a pgtier that answered `SHOW pgtier.causal_lsn`).
    pub async fn read(&self, causal: &Causal) -> ApiResult<DbConn<'_>> {
        let mut c = self.conn().await?;
        if let Some(lsn) = causal.0.as_ref().filter(|_| self.carry_tokens) {
            if self.causal_supported(&mut c).await {
                c.client
                    .simple_query(&format!("SET pgtier.min_lsn = '{lsn}'"))
                    .await?;
            } else {
                tracing::debug!(%lsn, "pgtier has no causal tokens; X-Causal-Lsn ignored");
            }
        }
        Ok(c)
    }

    /// After a committed write on `c`: the client's causal token from pgtier, if it has one.
    pub async fn causal_token(&self, c: &mut Conn) -> Option<String> {
        if !self.carry_tokens || !self.may_ask() {
            return None;
        }
        match self.ask_token(c).await {
            Ok(token) => token,
            // A draining pgtier closes a client right after its transaction, which may be
            // before the question got there: the token went with the connection.
            Err(e) => {
                tracing::debug!(error = %e, "connection lost before SHOW pgtier.causal_lsn: asking the primary");
                self.primary_lsn(c).await
            }
        }
    }

    /// The primary's current WAL position, asked on a new connection put in `c`'s place (so
    /// the pool gets a live one back): a token at or past the commit whose own token was lost.
    /// pgtier sends `pg_current_wal_lsn()` to the primary (it fails on a standby).
    async fn primary_lsn(&self, c: &mut Conn) -> Option<String> {
        match self.pool.dedicated_connection().await {
            Ok(fresh) => *c = fresh,
            Err(e) => {
                tracing::warn!(error = %e, "no connection to ask the primary's WAL position");
                return None;
            }
        }
        let msgs = match c
            .client
            .simple_query("SELECT pg_current_wal_lsn()::text")
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "asking the primary's WAL position failed");
                return None;
            }
        };
        msgs.iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .filter(|v| valid_lsn(v))
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn may_ask(&self) -> bool {
        match self.causal.load(Ordering::Relaxed) {
            CAUSAL_UNKNOWN | CAUSAL_SUPPORTED => true,
            until => self.now_ms() + 2 >= until,
        }
    }

    async fn causal_supported(&self, c: &mut Conn) -> bool {
        match self.causal.load(Ordering::Relaxed) {
            CAUSAL_SUPPORTED => true,
            _ if !self.may_ask() => false,
            _ => matches!(self.ask_token(c).await, Ok(Some(_))),
        }
    }

    /// `SHOW pgtier.causal_lsn` on `c`: the token, `None` when pgtier has none, an error only
    /// when the connection was lost.
    async fn ask_token(&self, c: &mut Conn) -> Result<Option<String>, tokio_postgres::Error> {
        Ok(
            match c.client.simple_query("SHOW pgtier.causal_lsn").await {
                Ok(msgs) => {
                    let v = msgs.iter().find_map(|m| match m {
                        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                        _ => None,
                    });
                    match v {
                        Some(v) if valid_lsn(&v) => {
                            self.causal.store(CAUSAL_SUPPORTED, Ordering::Relaxed);
                            Some(v)
                        }
                        other => {
                            tracing::warn!(value = ?other, "SHOW pgtier.causal_lsn: not an LSN");
                            None
                        }
                    }
                }
                Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {
                    tracing::debug!(error = %e, "pgtier does not report causal tokens (yet)");
                    let until = self.now_ms() + CAUSAL_RETRY.as_millis() as u64 + 2;
                    self.causal.store(until, Ordering::Relaxed);
                    None
                }
                Err(e) if retry::lost(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "SHOW pgtier.causal_lsn failed");
                    None
                }
            },
        )
    }

    /// Applies the embedded migrations, retrying connection failures until `deadline`.
    pub async fn migrate(&self, wait: Duration) -> anyhow::Result<Vec<i32>> {
        let deadline = Instant::now() + wait;
        loop {
            let attempt = async {
                let mut c = self.pool.get().await?;
                migrate(&mut c.client).await.map_err(bb8::RunError::User)
            };
            match attempt.await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let retriable = match &e {
                        bb8::RunError::TimedOut => true,
                        bb8::RunError::User(e) => e.as_db_error().is_none(),
                    };
                    if !retriable || Instant::now() >= deadline {
                        return Err(anyhow::anyhow!("applying migrations: {e}"));
                    }
                    tracing::warn!(error = %e, "database not reachable yet; retrying migrations");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// Applies the missing migrations in one transaction holding a transaction-level advisory
/// lock (a session-level lock would pin the connection in pgtier's transaction pooling).
/// Returns the versions applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '60s'; SELECT pg_advisory_xact_lock({MIGRATION_LOCK}); \
         CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, \
         name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        tracing::info!(version, name, "migration applied");
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::valid_lsn;

    #[test]
    fn lsn_syntax() {
        for ok in ["0/16B3740", "FFFFFFFF/0", "a/b"] {
            assert!(valid_lsn(ok), "{ok}");
        }
        for bad in [
            "",
            "/",
            "0/",
            "1/2/3",
            "0/16B3740'; DROP",
            "123456789/0",
            "g/1",
        ] {
            assert!(!valid_lsn(bad), "{bad}");
        }
    }
}
