//! Server-side names of prepared statements, decided by the statement's full text.
//!
//! A process-wide table maps each distinct Parse body (query text + parameter types) to a
//! name `pgtier_<n>`, where `n` comes from a counter that never repeats in the process: a name
//! is bound to exactly one text when it is made and never to another one, so no two different
//! texts can share a server-side name on any server connection, whatever the table forgets.
//! Clients preparing the same text get the same name and share the statement on a server.
//!
//! Bound: texts are counted in bytes (plus [`ENTRY_OVERHEAD`] each) against the global
//! `max_prepared_statement_bytes_total`. Past it, texts no client holds any more are dropped
//! (second-chance order, a bounded number looked at per new text); if that frees too little,
//! the new text gets a fresh name of its own without entering the table (correct, only not
//! shared across clients). A dropped text that comes back gets a fresh name too; servers still
//! holding the old one evict it as least recently used.
//!
//! The same object keeps the global charge of client statements (each client's named
//! statements count here for as long as the client holds them; see
//! `frontend::prepared::ClientStatements`). The table's lock is taken once per first Parse of
//! a text by a client, never on Bind.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;

/// Bookkeeping bytes counted per table entry besides the text (map slot, queue slot, name).
pub const ENTRY_OVERHEAD: usize = 64;
/// Entries looked at, at most, to make room for one new text.
const SWEEP_STEPS: usize = 64;
/// Default of `max_prepared_statement_bytes_total`, until a config sets it.
pub const DEFAULT_TOTAL_BYTES: usize = 256 * 1024 * 1024;

/// One statement text and its server-side name (shared by every client that prepared it).
#[derive(Debug)]
pub struct Text {
    /// The name used on servers.
    pub name: Arc<str>,
    /// Query string and parameter types, as in a client's Parse after the name.
    pub rest: Bytes,
}

/// The process-wide table of statement texts (see the module doc).
#[derive(Debug)]
pub struct StatementNames {
    table: Mutex<Table>,
    next: AtomicU64,
    /// Bytes of named statements all clients hold (each client's own count, summed).
    charged: AtomicUsize,
    limit: AtomicUsize,
}

#[derive(Debug, Default)]
struct Table {
    map: HashMap<Bytes, Arc<Text>>,
    /// Keys in second-chance order (front: looked at first when making room).
    order: VecDeque<Bytes>,
    bytes: usize,
}

static GLOBAL: LazyLock<StatementNames> =
    LazyLock::new(|| StatementNames::new(DEFAULT_TOTAL_BYTES));

impl StatementNames {
    /// The process's table.
    pub fn global() -> &'static StatementNames {
        &GLOBAL
    }

    /// An empty table bounded by `limit` bytes (tests; the process uses [`Self::global`]).
    pub fn new(limit: usize) -> StatementNames {
        StatementNames {
            table: Mutex::new(Table::default()),
            next: AtomicU64::new(1),
            charged: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
        }
    }

    /// Sets the global bound (config load and reload); it applies to the next statements.
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// The global bound in bytes.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// The text's shared entry, made (with a fresh name) if it has none.
    pub fn intern(&self, rest: &[u8]) -> Arc<Text> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(text) = t.map.get(rest) {
            return text.clone();
        }
        let text = Arc::new(Text {
            name: format!("pgtier_{}", self.next.fetch_add(1, Ordering::Relaxed)).into(),
            rest: Bytes::copy_from_slice(rest),
        });
        let cost = rest.len() + ENTRY_OVERHEAD;
        if t.make_room(cost, self.limit()) {
            t.bytes += cost;
            t.map.insert(text.rest.clone(), text.clone());
            t.order.push_back(text.rest.clone());
        }
        text
    }

    /// Counts `bytes` more of client statements if that stays within the bound.
    pub fn try_charge(&self, bytes: usize) -> bool {
        let limit = self.limit();
        self.charged
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                c.checked_add(bytes).filter(|&n| n <= limit)
            })
            .is_ok()
    }

    /// Counts `bytes` more whatever the bound (a statement given back to a client whose Close
    /// or DEALLOCATE the server did not run: the client still has it, as in Postgres).
    pub fn force_charge(&self, bytes: usize) {
        self.charged.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `bytes` less (a client dropped statements).
    pub fn release(&self, bytes: usize) {
        let _ = self
            .charged
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_sub(bytes))
            });
    }

    /// Bytes of named statements clients hold.
    pub fn charged(&self) -> usize {
        self.charged.load(Ordering::Relaxed)
    }

    /// Texts in the table and their bytes (with overhead).
    pub fn table_size(&self) -> (usize, usize) {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        (t.map.len(), t.bytes)
    }
}

impl Table {
    /// Drops texts no client holds until `cost` more fits under `limit`, looking at no more
    /// than [`SWEEP_STEPS`] entries; whether it fits.
    fn make_room(&mut self, cost: usize, limit: usize) -> bool {
        let mut steps = 0;
        while self.bytes + cost > limit && steps < SWEEP_STEPS {
            let Some(key) = self.order.pop_front() else {
                break;
            };
            steps += 1;
            // Only the table holds it: no client can get it again but through the table,
            // whose lock is held, so it is safe to forget.
            if self
                .map
                .get(&key)
                .is_some_and(|t| Arc::strong_count(t) == 1)
            {
                self.map.remove(&key);
                self.bytes -= key.len() + ENTRY_OVERHEAD;
            } else {
                self.order.push_back(key);
            }
        }
        self.bytes + cost <= limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_same_name_distinct_texts_distinct_names() {
        let names = StatementNames::new(1 << 20);
        let a = names.intern(b"select 1\0\0\0");
        let b = names.intern(b"select 1\0\0\0");
        let c = names.intern(b"select 2\0\0\0");
        // Same query, other parameter types: another statement.
        let d = names.intern(b"select $1\0\0\x01\0\0\0\x17");
        let e = names.intern(b"select $1\0\0\x01\0\0\0\x19");
        assert_eq!(a.name, b.name);
        assert!(Arc::ptr_eq(&a, &b));
        let all = [&a.name, &c.name, &d.name, &e.name];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert!(a.name.starts_with("pgtier_"));
        // Both were `pgtier_1e9808fd5e7c5f99_28` under the old fixed-key hash naming.
        let x = names.intern(b"SELECT '6076cfddba5d6719'\0\0\0");
        let y = names.intern(b"SELECT 'c880b7583b731de4'\0\0\0");
        assert_ne!(x.name, y.name);
    }

    #[test]
    fn many_distinct_texts_never_share_a_name() {
        // A small table that forgets constantly: names still never repeat, and a forgotten
        // text that comes back gets a new name (never one another text had).
        let names = StatementNames::new(4096);
        let mut seen: HashMap<Arc<str>, Vec<u8>> = HashMap::new();
        for round in 0..3 {
            for i in 0..2000 {
                let text = format!("select {i}\0\0\0").into_bytes();
                let t = names.intern(&text);
                if let Some(prev) = seen.insert(t.name.clone(), text.clone()) {
                    assert_eq!(prev, text, "round {round}: {} names two texts", t.name);
                }
            }
        }
        let (_, bytes) = names.table_size();
        assert!(bytes <= 4096);
    }

    #[test]
    fn texts_in_use_are_kept_and_the_bound_holds() {
        let cost = |s: &[u8]| s.len() + ENTRY_OVERHEAD;
        let held_text = b"select 'held'\0\0\0";
        let names = StatementNames::new(cost(held_text) + cost(b"select 1\0\0\0"));
        let held = names.intern(held_text);
        let one = names.intern(b"select 1\0\0\0");
        // Full, and both are in use: a third text gets a name of its own, outside the table.
        let other = names.intern(b"select 2\0\0\0");
        assert_eq!(names.table_size().0, 2);
        assert_ne!(other.name, names.intern(b"select 2\0\0\0").name);
        // Once `one` is no longer held it makes room; `held` stays shared.
        drop(one);
        let two = names.intern(b"select 2\0\0\0");
        assert_eq!(two.name, names.intern(b"select 2\0\0\0").name);
        assert_eq!(held.name, names.intern(held_text).name);
        assert_eq!(names.table_size().0, 2);
    }

    #[test]
    fn charges_stay_within_the_limit() {
        let names = StatementNames::new(100);
        assert!(names.try_charge(60));
        assert!(!names.try_charge(41));
        assert!(names.try_charge(40));
        names.release(50);
        assert_eq!(names.charged(), 50);
        names.force_charge(80);
        assert_eq!(names.charged(), 130);
        assert!(!names.try_charge(1));
    }
}
