//! Statement classification: may this SQL text run on a replica (`Class::Read`) or must it run
//! on the primary (`Class::Write`)? Anything not provably read-only is `Write`.
//!
//! How a text is classified:
//! 1. [`fast`]: the lexer reads each statement's first words. Writes (INSERT, DDL, COPY
//!    FROM, CALL, DO, ...) and session/transaction commands are decided here in
//!    nanoseconds; a text with any write is a write. It also scans for locking clauses.
//! 2. Texts with SELECT / WITH / VALUES / EXPLAIN / DECLARE / `COPY (query)` / `(`...
//!    statements are looked up in a bounded [`cache`] by their text with the literals
//!    normalized (so `... WHERE id = 1` and `... WHERE id = 2` share one entry and the parser
//!    runs once for both; texts where a literal could matter are keyed exactly), and on a miss go to
//!    [`deep`]: sqlparser, checking locking clauses, writable CTEs, SELECT INTO,
//!    EXPLAIN ANALYZE and function calls against the [`FunctionTable`].
//! 3. [`hints`]: `pgtier:` comments set `hint` / `min_lsn` (never the class).
//!
//! Before all that, every text is matched against the thread's [`memo`] of recent texts: the
//! same text with other literals (`... WHERE aid = 7` after `... WHERE aid = 3`) gets the
//! remembered classification after a few byte comparisons.

mod builtins;
mod cache;
mod deep;
mod fast;
mod functions;
mod hints;
mod memo;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::cluster::Lsn;
use crate::sql::normalize::Literal;
use crate::sql::session_state::may_pin;
pub use cache::MAX_CACHED_TEXT;
pub use functions::{Call, FunctionTable, Volatility, PG_PROC_QUERY};

/// Where a statement may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Provably read-only: a replica may run it.
    Read,
    /// Writes, or not provably read-only: the primary only.
    Write,
}

/// Why a statement got its class (for `SHOW ROUTE` and debug logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A read-only query (SELECT/WITH/VALUES/TABLE without writes).
    ReadOnly,
    /// A statement that changes data or schema.
    WriteStatement,
    /// Not recognised: the primary is the safe side.
    NotProvablyReadOnly,
    /// `BEGIN READ ONLY` / `START TRANSACTION READ ONLY`.
    ReadOnlyTransaction,
    /// `BEGIN` / `START TRANSACTION` (read-write): explicit transactions use the primary.
    TransactionStart,
    /// COMMIT, ROLLBACK, END, ABORT, SAVEPOINT, RELEASE.
    TransactionControl,
    /// SET, RESET, SHOW, DEALLOCATE, DISCARD: no data changes.
    SessionCommand,
    /// FETCH, MOVE, CLOSE.
    CursorOperation,
    /// `COPY table TO STDOUT` or `COPY (read-only query) TO STDOUT`.
    CopyTo,
    /// `COPY ... FROM`.
    CopyFrom,
    /// `COPY ... TO` a server file or program.
    CopyToServer,
    /// `FOR UPDATE` / `FOR NO KEY UPDATE` / `FOR SHARE` / `FOR KEY SHARE`.
    LockingClause,
    /// INSERT/UPDATE/DELETE/MERGE nested in a query (writable CTE).
    WritableCte,
    /// `SELECT ... INTO new_table`.
    SelectInto,
    /// A call of a function that writes (built-in list, `write_functions`) or that pgtier does
    /// not know.
    WriteFunction,
    /// A call of a function `pg_proc` lists as VOLATILE that is not a known writer: not
    /// provably read-only (still `Class::Write`), but a routing rule may send it to a replica.
    VolatileFunction,
    /// EXPLAIN without ANALYZE (runs nothing).
    Explain,
    /// EXPLAIN ANALYZE of a statement that is not read-only.
    ExplainAnalyze,
    /// EXECUTE of a prepared statement whose text is not known here.
    Execute,
    /// sqlparser could not parse the text.
    ParseError,
    /// Nesting deeper than the parser's recursion limit.
    TooDeep,
    /// The text is not valid UTF-8 and the fast path could not decide it.
    InvalidUtf8,
    /// Only comments or whitespace.
    Empty,
}

impl Reason {
    /// A short description for people.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::ReadOnly => "read-only query",
            Reason::WriteStatement => "statement that changes data or schema",
            Reason::NotProvablyReadOnly => "statement not known to be read-only",
            Reason::ReadOnlyTransaction => "read-only transaction (BEGIN READ ONLY)",
            Reason::TransactionStart => "explicit read-write transaction (BEGIN)",
            Reason::TransactionControl => "transaction control (COMMIT/ROLLBACK/SAVEPOINT)",
            Reason::SessionCommand => "session command (SET/SHOW/RESET/DISCARD/DEALLOCATE)",
            Reason::CursorOperation => "cursor operation (FETCH/MOVE/CLOSE)",
            Reason::CopyTo => "COPY ... TO STDOUT of a read-only source",
            Reason::CopyFrom => "COPY ... FROM (loads data)",
            Reason::CopyToServer => "COPY ... TO a server file or program",
            Reason::LockingClause => "locking clause (FOR UPDATE/SHARE)",
            Reason::WritableCte => "data-modifying statement inside a query (writable CTE)",
            Reason::SelectInto => "SELECT INTO (creates a table)",
            Reason::WriteFunction => "call of a function that writes or is not known",
            Reason::VolatileFunction => "call of a VOLATILE function not known to write",
            Reason::Explain => "EXPLAIN without ANALYZE (does not execute)",
            Reason::ExplainAnalyze => "EXPLAIN ANALYZE of a statement that writes",
            Reason::Execute => "EXECUTE of a prepared statement",
            Reason::ParseError => "could not be parsed (the primary is the safe side)",
            Reason::TooDeep => "nested too deeply to analyse",
            Reason::InvalidUtf8 => "not valid UTF-8",
            Reason::Empty => "empty query",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A routing hint from a comment: `/* pgtier:primary */` or `/* pgtier:replica */`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// Run on the primary.
    Primary,
    /// Run on a replica if one is eligible (ignored for writes).
    Replica,
}

/// What pgtier knows about one statement text (cached by text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// Read or write.
    pub class: Class,
    /// Why.
    pub reason: Reason,
    /// A routing hint comment, if any. For texts decided as writes by the fast path only
    /// comments before the first token are read.
    pub hint: Option<Hint>,
    /// `/* pgtier:min_lsn=X/Y */`: the read must see at least this WAL position.
    pub min_lsn: Option<Lsn>,
    /// Tables the statement touches, lower-cased, as written (`payments`, `billing.payments`).
    pub tables: Arc<[String]>,
    /// A `pgtier:` comment that was malformed and ignored (what was wrong).
    pub bad_hint: Option<&'static str>,
    /// The text has a word that may leave session state (`sql::session_state::may_pin`, read
    /// with standard strings): when false, the session-state lexer need not run on it.
    pub may_pin: bool,
}

/// Cache counters (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Deep-path texts answered from the cache.
    pub hits: u64,
    /// Of the hits and misses, those keyed with their literals normalized.
    pub normalized: u64,
    /// Deep-path texts parsed and then cached.
    pub misses: u64,
    /// Deep-path texts parsed but too long to cache.
    pub uncached: u64,
    /// Entries now in the cache.
    pub entries: usize,
}

/// Classifies statement texts, caching results (bounded). `Send + Sync`: share it via `Arc`.
#[derive(Debug)]
pub struct Classifier {
    /// Tells this classifier's entries in the per-thread [`memo`] from other classifiers'.
    id: u64,
    funcs: ArcSwap<FunctionTable>,
    cache: cache::Cache,
    hits: AtomicU64,
    normalized: AtomicU64,
    misses: AtomicU64,
    uncached: AtomicU64,
}

/// Per-thread buffers of the last cache key computed: no allocation per statement.
struct Scratch {
    /// The normalized key (at most `MAX_CACHED_TEXT` bytes).
    key: Vec<u8>,
    /// The literals normalizing replaced (empty when the key is the exact text).
    literals: Vec<Literal>,
    /// Whether `key` was normalized.
    normalized: bool,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch { key: Vec::new(), literals: Vec::new(), normalized: false })
    };
}

/// Source of [`Classifier`] ids.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Classifier {
    /// A classifier using `funcs`, caching up to `cache_capacity` statement texts.
    pub fn new(funcs: FunctionTable, cache_capacity: usize) -> Classifier {
        Classifier {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            funcs: ArcSwap::from_pointee(funcs),
            cache: cache::Cache::new(cache_capacity),
            hits: AtomicU64::new(0),
            normalized: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            uncached: AtomicU64::new(0),
        }
    }

    /// The function knowledge in use.
    pub fn functions(&self) -> Arc<FunctionTable> {
        self.funcs.load_full()
    }

    /// Replaces the function knowledge (e.g. after reading `pg_proc`) and empties the cache,
    /// whose entries were decided with the old knowledge.
    pub fn set_functions(&self, funcs: FunctionTable) {
        self.funcs.store(Arc::new(funcs));
        self.cache.clear();
    }

    /// Entries in the cache.
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// The most entries the cache holds.
    pub fn cache_capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// Cache counters.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            normalized: self.normalized.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            uncached: self.uncached.load(Ordering::Relaxed),
            entries: self.cache.len(),
        }
    }

    /// Classifies `sql` (one Query or Parse string, possibly several statements).
    pub fn classify(&self, sql: &[u8]) -> Classification {
        if self.cache.capacity() == 0 || sql.len() > memo::MAX_MEMO_TEXT {
            return self.classify_text(sql, fast::first_needs_deep(sql));
        }
        let generation = self.cache.generation();
        if let Some((hit, counted)) = memo::recall(self.id, generation, sql) {
            match counted {
                memo::Counted::No => {}
                memo::Counted::Hit => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                }
                memo::Counted::NormalizedHit => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    self.normalized.fetch_add(1, Ordering::Relaxed);
                }
            }
            return hit;
        }
        let looked_up = fast::first_needs_deep(sql);
        let c = self.classify_text(sql, looked_up);
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            // A looked-up text's cache key (made first thing) left its literals; the fast
            // path's texts are normalized here, once per new shape.
            if !looked_up {
                let key = cache::Key::of(sql, &mut s.key, &mut s.literals);
                s.normalized = key.is_normalized();
            }
            let counted = match (looked_up, s.normalized) {
                (false, _) => memo::Counted::No,
                (true, false) => memo::Counted::Hit,
                (true, true) => memo::Counted::NormalizedHit,
            };
            memo::remember(self.id, generation, sql, &s.literals, counted, &c);
        });
        c
    }

    /// [`Classifier::classify`] without the memo; `looked_up`: a text the cache is searched for
    /// first.
    fn classify_text(&self, sql: &[u8], looked_up: bool) -> Classification {
        if looked_up {
            if let Some(hit) = self.cached(sql) {
                return hit;
            }
        }
        let scan = fast::scan(sql);
        let (class, reason) = match scan.verdict {
            fast::Verdict::Write(r) => {
                let h = hints::parse(sql, true);
                return build(Class::Write, r, h, Arc::from(scan.tables), may_pin(sql));
            }
            fast::Verdict::Read(r) => (Class::Read, r),
            fast::Verdict::Empty => (Class::Read, Reason::Empty),
            fast::Verdict::Deep => {
                if !looked_up {
                    if let Some(hit) = self.cached(sql) {
                        return hit;
                    }
                }
                return self.classify_deep(sql, scan.tables);
            }
        };
        build(
            class,
            reason,
            hints::parse(sql, false),
            Arc::from(scan.tables),
            may_pin(sql),
        )
    }

    /// `sql`'s classification from the cache, with the hints of its own comments.
    fn cached(&self, sql: &[u8]) -> Option<Classification> {
        if self.cache.capacity() == 0 || sql.len() > MAX_CACHED_TEXT {
            return None;
        }
        let hit = SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            let key = cache::Key::of(sql, &mut s.key, &mut s.literals);
            s.normalized = key.is_normalized();
            let hit = self.cache.get(key)?;
            if key.is_normalized() {
                self.normalized.fetch_add(1, Ordering::Relaxed);
            }
            Some(hit)
        })?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(build(
            hit.class,
            hit.reason,
            hints::parse(sql, false),
            hit.tables,
            hit.may_pin,
        ))
    }

    fn classify_deep(&self, sql: &[u8], mut tables: Vec<String>) -> Classification {
        let generation = self.cache.generation();
        let (class, reason) = match std::str::from_utf8(sql) {
            Err(_) => (Class::Write, Reason::InvalidUtf8),
            Ok(text) => {
                let funcs = self.funcs.load();
                let deep = deep::check(text, &funcs);
                for t in deep.tables {
                    if !tables.contains(&t) {
                        tables.push(t);
                    }
                }
                (deep.class, deep.reason)
            }
        };
        let tables: Arc<[String]> = Arc::from(tables);
        // Texts that share a key differ only in literals and comments, which the
        // session-state lexer skips: one text's answer holds for all of them.
        let may_pin = may_pin(sql);
        if sql.len() <= MAX_CACHED_TEXT && self.cache.capacity() > 0 {
            self.misses.fetch_add(1, Ordering::Relaxed);
            let value = cache::Cached {
                class,
                reason,
                tables: tables.clone(),
                may_pin,
            };
            SCRATCH.with(|s| {
                let s = &mut *s.borrow_mut();
                let key = cache::Key::of(sql, &mut s.key, &mut s.literals);
                s.normalized = key.is_normalized();
                if key.is_normalized() {
                    self.normalized.fetch_add(1, Ordering::Relaxed);
                }
                self.cache.insert(key, value, generation);
            });
        } else {
            self.uncached.fetch_add(1, Ordering::Relaxed);
        }
        build(class, reason, hints::parse(sql, false), tables, may_pin)
    }
}

fn build(
    class: Class,
    reason: Reason,
    h: hints::Hints,
    tables: Arc<[String]>,
    may_pin: bool,
) -> Classification {
    Classification {
        class,
        reason,
        hint: h.hint,
        min_lsn: h.min_lsn,
        tables,
        bad_hint: h.bad_hint,
        may_pin,
    }
}

#[cfg(test)]
mod tests;
