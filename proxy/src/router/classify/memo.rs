//! A per-thread memo of the texts classified last and where their literals are. A text that
//! differs from a remembered one only inside those literals (`... WHERE aid = 7` after
//! `... WHERE aid = 3`) has the same cache key, so it gets the remembered classification
//! after a few byte comparisons ([`same_shape`]), without the normalizing pass, the hash and
//! the shared cache's lock. Applications repeat a handful of statement shapes with new
//! literals (pgbench, ORMs with inlined values), so most texts are answered here.
//!
//! Comments are compared byte for byte like everything outside the literals, so the hints
//! they carry (kept in the remembered classification) are the text's own.
//!
//! Bounds: [`SETS`] x [`WAYS`] entries per thread (64), each text at most [`MAX_MEMO_TEXT`]
//! bytes with at most [`MAX_LITERALS`] literals: under 100 KiB per runtime thread. An entry
//! holds only for the classifier and the cache generation it was decided under (new function
//! knowledge makes every entry stale, as it empties the cache).

use std::cell::RefCell;

use crate::sql::normalize::{same_shape, Literal};

use super::Classification;

/// Sets per thread, picked by the text's stem; each holds [`WAYS`] entries, most recently
/// used first.
const SETS: usize = 16;
/// Entries per set.
const WAYS: usize = 4;
/// Longer texts are not remembered (the shared cache still holds them).
pub(super) const MAX_MEMO_TEXT: usize = 1024;
/// Texts with more literals are not remembered (a long IN list compares slowly).
const MAX_LITERALS: usize = 32;
/// The most bytes of a text's start that pick its set.
const STEM: usize = 16;

struct Entry {
    /// The classifier that decided it ([`super::Classifier`]'s id).
    owner: u64,
    generation: u64,
    text: Vec<u8>,
    literals: Vec<Literal>,
    value: Classification,
    /// How a recall counts in the cache counters.
    counted: Counted,
}

/// How a recall counts in the classifier's cache counters: as the cache hit it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Counted {
    /// Not at all: a fast-path text (never looked up in the cache).
    No,
    /// A hit.
    Hit,
    /// A hit by normalized key.
    NormalizedHit,
}

thread_local! {
    static MEMO: RefCell<Vec<Option<Entry>>> = const { RefCell::new(Vec::new()) };
}

/// The entries of `text`'s set, allocated on first use.
fn set<'m>(memo: &'m mut Vec<Option<Entry>>, text: &[u8]) -> &'m mut [Option<Entry>] {
    if memo.is_empty() {
        memo.resize_with(SETS * WAYS, || None);
    }
    let s = set_of(text) * WAYS;
    &mut memo[s..s + WAYS]
}

/// The set of `text`: a hash of its bytes up to the first digit or quote (where a literal
/// could start), at most [`STEM`]. Two texts of the same shape are equal up to there.
fn set_of(text: &[u8]) -> usize {
    let stem = &text[..text.len().min(STEM)];
    (super::cache::hash(0, &stem[..stem_end(stem)]) >> 7) as usize % SETS
}

/// Where the first digit or quote of `stem` (at most 16 bytes) is, else its length: eight
/// bytes at a time (this runs for every routed statement).
fn stem_end(stem: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    debug_assert!(stem.len() <= STEM);
    for (i, chunk) in stem.chunks(8).enumerate() {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        let x = u64::from_le_bytes(w);
        // Per byte, no carry between bytes: bit 7 set where the low seven bits reach '0'
        // (0x30) and where they reach ':' (0x3a); bytes of 0x80 and above are no digits.
        let low = x & LOW7;
        let digit = (low + (0x80 - 0x30) * ONES) & !(low + (0x80 - 0x3a) * ONES) & !x & HIGH;
        // Bit 7 set where the byte is a quote (its xor with '\'' is zero).
        let q = x ^ (u64::from(b'\'') * ONES);
        let quote = !(((q & LOW7) + LOW7) | q) & HIGH;
        // The zero padding past the text is neither.
        let found = digit | quote;
        if found != 0 {
            return 8 * i + (found.trailing_zeros() / 8) as usize;
        }
    }
    stem.len()
}

/// The classification remembered for a text of `sql`'s shape, decided by classifier `owner`
/// under cache `generation`, and how it counts.
pub(super) fn recall(owner: u64, generation: u64, sql: &[u8]) -> Option<(Classification, Counted)> {
    if sql.len() > MAX_MEMO_TEXT {
        return None;
    }
    MEMO.with(|memo| {
        let mut memo = memo.borrow_mut();
        let set = set(&mut memo, sql);
        let way = set.iter().position(|e| {
            e.as_ref().is_some_and(|e| {
                e.owner == owner
                    && e.generation == generation
                    && same_shape(&e.text, &e.literals, sql)
            })
        })?;
        set[..=way].rotate_right(1);
        let e = set[0].as_ref()?;
        Some((e.value.clone(), e.counted))
    })
}

/// Remembers `value` for `sql`, whose normalized key replaced `literals` (none: keyed
/// exactly).
pub(super) fn remember(
    owner: u64,
    generation: u64,
    sql: &[u8],
    literals: &[Literal],
    counted: Counted,
    value: &Classification,
) {
    if sql.len() > MAX_MEMO_TEXT || literals.len() > MAX_LITERALS {
        return;
    }
    MEMO.with(|memo| {
        let mut memo = memo.borrow_mut();
        let set = set(&mut memo, sql);
        // The least recently used entry goes, and its buffers are reused.
        set.rotate_right(1);
        match &mut set[0] {
            Some(e) => {
                e.owner = owner;
                e.generation = generation;
                e.text.clear();
                e.text.extend_from_slice(sql);
                e.literals.clear();
                e.literals.extend_from_slice(literals);
                e.value = value.clone();
                e.counted = counted;
            }
            slot @ None => {
                *slot = Some(Entry {
                    owner,
                    generation,
                    text: sql.to_vec(),
                    literals: literals.to_vec(),
                    value: value.clone(),
                    counted,
                })
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use crate::test_rng::Rng;

    /// The word-at-a-time scan finds what a byte-at-a-time one does, for every byte value.
    #[test]
    fn stem_end_agrees_with_a_byte_scan() {
        let reference = |stem: &[u8]| {
            stem.iter()
                .position(|&b| b.is_ascii_digit() || b == b'\'')
                .unwrap_or(stem.len())
        };
        let mut rng = Rng(0x5eed_5e75);
        let bytes: Vec<u8> = (0..=255).collect();
        for _ in 0..200_000 {
            let len = rng.below(super::STEM + 1);
            let stem: Vec<u8> = (0..len)
                .map(|_| match rng.below(4) {
                    0 => bytes[rng.below(256)],
                    1 => b"09'/:\x80\xb0\xa7"[rng.below(8)],
                    _ => b"SELECT abc_FROM "[rng.below(16)],
                })
                .collect();
            assert_eq!(super::stem_end(&stem), reference(&stem), "{stem:?}");
        }
        assert_eq!(super::stem_end(b"SELECT abalance "), 16);
        assert_eq!(super::stem_end(b"SELECT 1"), 7);
        assert_eq!(super::stem_end(b"SELECT x FROM t'"), 15);
    }
}
