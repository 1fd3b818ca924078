//! A bounded, sharded cache of classifications by statement text: the text with its literals
//! normalized (`SELECT ... WHERE aid = 0` for every `aid`), or the exact text when a literal
//! in it could change the verdict (see [`normalize_literals`]). The two kinds of key are
//! kept apart (a normalized key never matches an exact one).
//!
//! Only what the statement's words decide is cached (class, reason, tables); hints live in
//! comments, which normalized keys leave out, so the classifier reads them from each text.
//!
//! Texts are hashed once with a fast keyed hash (random seed per cache, so clients cannot
//! aim collisions at one bucket); the hash picks a shard and is the map key, and the full
//! text is compared on lookup. Each shard is a `Mutex<HashMap>` held for a lookup or an
//! insert only; when a shard is full, an arbitrary entry (the first in the map's iteration
//! order, which is effectively random) is evicted. A generation number invalidates all
//! entries at once when the function knowledge changes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::sql::normalize::{normalize_literals, Literal};

use super::{Class, Reason};

/// Texts longer than this are never cached (they are rare and costly to hash and keep).
pub const MAX_CACHED_TEXT: usize = 16 * 1024;

const SHARDS: usize = 16;

/// The map's hasher: keys are already well-mixed keyed hashes.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What is cached per key: everything the classification takes from the statement's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cached {
    pub class: Class,
    pub reason: Reason,
    pub tables: Arc<[String]>,
    /// See `Classification::may_pin`.
    pub may_pin: bool,
}

/// A cache key: a statement's text with its literals normalized, or its exact text.
#[derive(Debug, Clone, Copy)]
pub(super) struct Key<'a> {
    text: &'a [u8],
    normalized: bool,
}

impl<'a> Key<'a> {
    /// The key of `sql`, normalized into `buf` when its literals cannot change its verdict
    /// (the literals replaced are listed in `literals`, which is left empty otherwise).
    pub fn of(sql: &'a [u8], buf: &'a mut Vec<u8>, literals: &mut Vec<Literal>) -> Key<'a> {
        literals.clear();
        if sql.len() <= MAX_CACHED_TEXT && normalize_literals(sql, buf, literals) {
            Key {
                text: buf,
                normalized: true,
            }
        } else {
            Key {
                text: sql,
                normalized: false,
            }
        }
    }

    /// The exact text as a key (tests).
    #[cfg(test)]
    pub fn exact(text: &'a [u8]) -> Key<'a> {
        Key {
            text,
            normalized: false,
        }
    }

    /// Whether the literals were normalized.
    pub fn is_normalized(&self) -> bool {
        self.normalized
    }

    fn hash(&self, seed: u64) -> u64 {
        // A different seed per kind: a normalized key and an exact text with the same bytes
        // are different keys.
        hash(seed ^ u64::from(self.normalized), self.text)
    }
}

struct Entry {
    text: Box<[u8]>,
    normalized: bool,
    generation: u64,
    value: Cached,
}

type Shard = HashMap<u64, Entry, BuildHasherDefault<IdHasher>>;

pub(super) struct Cache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    seed: u64,
    generation: AtomicU64,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("shards", &self.shards.len())
            .field("per_shard", &self.per_shard)
            .field("len", &self.len())
            .finish()
    }
}

impl Cache {
    /// A cache of at most `capacity` entries (0 disables it).
    pub fn new(capacity: usize) -> Cache {
        let shards = if capacity >= SHARDS * 4 { SHARDS } else { 1 };
        let per_shard = capacity / shards;
        let seed = crate::keyed_hash::random_seed();
        Cache {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard,
            seed,
            generation: AtomicU64::new(0),
        }
    }

    fn shard(&self, h: u64) -> MutexGuard<'_, Shard> {
        let s = &self.shards[(h >> 32) as usize % self.shards.len()];
        // A panic while holding the lock cannot leave a map half-updated in a way that
        // matters here: recover the guard.
        s.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current generation, to pass back to `insert` (captured before classifying).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn get(&self, key: Key<'_>) -> Option<Cached> {
        if self.per_shard == 0 || key.text.len() > MAX_CACHED_TEXT {
            return None;
        }
        let h = key.hash(self.seed);
        let gen = self.generation();
        let shard = self.shard(h);
        match shard.get(&h) {
            Some(e)
                if e.generation == gen
                    && e.normalized == key.normalized
                    && *e.text == *key.text =>
            {
                Some(e.value.clone())
            }
            _ => None,
        }
    }

    pub fn insert(&self, key: Key<'_>, value: Cached, generation: u64) {
        if self.per_shard == 0
            || key.text.len() > MAX_CACHED_TEXT
            || generation != self.generation()
        {
            return;
        }
        let h = key.hash(self.seed);
        let mut shard = self.shard(h);
        if shard.len() >= self.per_shard && !shard.contains_key(&h) {
            if let Some(&victim) = shard.keys().next() {
                shard.remove(&victim);
            }
        }
        shard.insert(
            h,
            Entry {
                text: key.text.into(),
                normalized: key.normalized,
                generation,
                value,
            },
        );
    }

    /// Drops every entry and makes in-flight inserts of older generations no-ops.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for s in self.shards.iter() {
            s.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// The most entries the cache holds.
    pub fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }
}

pub(super) use crate::keyed_hash::hash;

#[cfg(test)]
mod tests {
    use super::*;

    fn value(class: Class) -> Cached {
        Cached {
            class,
            reason: Reason::ReadOnly,
            tables: Arc::from(Vec::new()),
            may_pin: false,
        }
    }

    fn k(text: &[u8]) -> Key<'_> {
        Key::exact(text)
    }

    #[test]
    fn bounded_and_exact() {
        let c = Cache::new(100);
        for i in 0..1000 {
            let t = format!("SELECT {i}");
            c.insert(k(t.as_bytes()), value(Class::Read), c.generation());
        }
        assert!(c.len() <= 100, "{}", c.len());
        assert!(c.capacity() <= 100);
        c.insert(k(b"SELECT x"), value(Class::Write), c.generation());
        assert_eq!(c.get(k(b"SELECT x")).unwrap().class, Class::Write);
        assert!(c.get(k(b"SELECT y")).is_none());
        let long = vec![b'x'; MAX_CACHED_TEXT + 1];
        c.insert(k(&long), value(Class::Read), c.generation());
        assert!(c.get(k(&long)).is_none());
    }

    #[test]
    fn clear_invalidates_in_flight_inserts() {
        let c = Cache::new(10);
        let gen = c.generation();
        c.insert(k(b"a"), value(Class::Read), gen);
        c.clear();
        assert_eq!(c.len(), 0);
        c.insert(k(b"b"), value(Class::Read), gen); // classified before the clear
        assert!(c.get(k(b"b")).is_none());
        let zero = Cache::new(0);
        zero.insert(k(b"a"), value(Class::Read), zero.generation());
        assert!(zero.get(k(b"a")).is_none());
    }
}
