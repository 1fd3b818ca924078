//! Repeating a request's database work whose connection was lost, as real pools do, but only
//! when the work cannot have written: a pgtier that restarts closes idle clients (and the
//! others after their transaction), and a close still on its way when the app sends its first
//! statement fails that statement without running it. Reads are repeated; a write transaction
//! only when it failed at its BEGIN. A write is never repeated.

use std::sync::atomic::Ordering;

use tokio_postgres::error::SqlState;

use super::{Causal, Db, DbConn, Stage};
use crate::error::{ApiError, ApiResult};

/// Attempts of one request's work in all (each on another connection).
const ATTEMPTS: u32 = 3;

/// What a request's database work does, which decides when it may be repeated.
#[derive(Debug, Clone, Copy)]
pub enum Work<'a> {
    /// Reads only, seeing at least the client's causal token: repeating them changes nothing.
    Read(&'a Causal),
    /// One transaction begun with [`super::Conn::begin`] before anything else: repeated only
    /// if the connection was lost before its BEGIN was answered.
    Write,
}

/// Whether `e` says the connection is gone (closed, reset, or pgtier/Postgres shutting it
/// down or refusing it), as opposed to an error of the statement itself.
pub(crate) fn lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(c) => {
            *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || c.code().starts_with("08")
        }
        // No SQLSTATE: an I/O error on the socket.
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// Runs a request's database work `$body` with `$c` a `&mut DbConn` checked out for `$work`
/// (for [`Work::Read`] with the client's causal token set, see [`Db::read`]); when its
/// connection was lost before the work could have written (see [`Work`]), runs it again on
/// another connection, at most `ATTEMPTS` times in all. Evaluates to the work's `ApiResult`;
/// a `return` in `$body` ends one attempt. Bound it with [`Db::timed`].
///
/// A macro, not a function taking an async closure: the future of such a closure borrowing
/// the connection cannot be shown `Send` to axum (rustc's higher-ranked auto-trait limits).
#[macro_export]
macro_rules! db_run {
    ($db:expr, $work:expr, |$c:ident| $body:expr) => {{
        let db: &$crate::db::Db = $db;
        let work: $crate::db::Work<'_> = $work;
        let mut attempt = 1;
        loop {
            let (result, wrote) = match db.checkout(work).await {
                // Nothing of the work was sent yet.
                Err(e) => (Err(e), false),
                Ok(mut conn) => {
                    let result: $crate::error::ApiResult<_> = {
                        let $c = &mut conn;
                        async { $body }.await
                    };
                    (result, db.may_have_written(work, &conn))
                }
            };
            if let Some(done) = db.settle(result, wrote, &mut attempt) {
                break done;
            }
        }
    }};
}

impl Db {
    /// A connection for `work` (see [`db_run!`](crate::db_run)).
    pub async fn checkout(&self, work: Work<'_>) -> ApiResult<DbConn<'_>> {
        match work {
            Work::Read(causal) => self.read(causal).await,
            Work::Write => self.conn().await,
        }
    }

    /// Whether the work done on `c` may have written: write work counts as written unless it
    /// failed at its BEGIN (work that failed before calling `begin` is not taken on trust).
    pub fn may_have_written(&self, work: Work<'_>, c: &DbConn<'_>) -> bool {
        matches!(work, Work::Write) && c.stage != Stage::Beginning
    }

    /// The outcome of one attempt: `Some` when it is final, `None` when the work is to be
    /// run again (its connection was lost, it cannot have written, attempts are left).
    pub fn settle<T>(
        &self,
        result: ApiResult<T>,
        wrote: bool,
        attempt: &mut u32,
    ) -> Option<ApiResult<T>> {
        let err = match result {
            Ok(v) => return Some(Ok(v)),
            Err(e) => e,
        };
        let repeatable = !wrote && matches!(&err, ApiError::Db(e) if lost(e));
        if !repeatable || *attempt >= ATTEMPTS {
            return Some(Err(err));
        }
        *attempt += 1;
        self.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error = %err, attempt = *attempt, "connection lost before the work could write: repeating it on another connection");
        None
    }

    /// Requests whose work was repeated on another connection so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokio-postgres error of a connection whose peer went away during its startup.
    async fn closed_error() -> tokio_postgres::Error {
        let (ours, theirs) = tokio::io::duplex(64);
        drop(theirs);
        tokio_postgres::Config::new()
            .user("u")
            .connect_raw(ours, tokio_postgres::NoTls)
            .await
            .err()
            .expect("no peer: the connection fails")
    }

    fn db() -> Db {
        let cfg = crate::config::Config::new("postgres://u:p@127.0.0.1:1/db".to_owned());
        Db::new(&cfg).unwrap()
    }

    #[tokio::test]
    async fn only_lost_connections_without_writes_are_run_again_and_attempts_are_bounded() {
        let e = closed_error().await;
        assert!(lost(&e), "{e:?}");
        let db = db();
        let mut attempt = 1;
        // Lost, nothing written: again, until the attempts run out.
        for n in 1..ATTEMPTS {
            let r: ApiResult<()> = Err(ApiError::Db(closed_error().await));
            assert!(db.settle(r, false, &mut attempt).is_none());
            assert_eq!(db.retries(), u64::from(n));
        }
        let r: ApiResult<()> = Err(ApiError::Db(closed_error().await));
        assert!(matches!(db.settle(r, false, &mut attempt), Some(Err(_))));
        // Lost after a write may have been sent: final at once.
        let mut attempt = 1;
        let r: ApiResult<()> = Err(ApiError::Db(closed_error().await));
        assert!(db.settle(r, true, &mut attempt).is_some());
        // Not a lost connection: final; success: final.
        let r: ApiResult<()> = Err(ApiError::Conflict("taken".into()));
        assert!(db.settle(r, false, &mut attempt).is_some());
        assert!(matches!(db.settle(Ok(7), false, &mut attempt), Some(Ok(7))));
        assert_eq!(db.retries(), u64::from(ATTEMPTS - 1));
    }
}
