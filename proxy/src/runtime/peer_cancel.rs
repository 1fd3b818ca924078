//! Cancel keys that name their pgtier process, so any peer can route a CancelRequest to the
//! process running the query (PgBouncer's `peer_id`). With peering on, a key issued by peer
//! `id` is laid out as:
//! - process id: `id << 16 | 16 random bits` (positive: `id` ≤ 16383);
//! - secret: `ttl << 30 | 30 random bits`, `ttl` issued as 3 and lowered by each forward, so
//!   peers whose `[peers]` disagree cannot bounce a cancel between them forever.
//!
//! With peering off, keys are random as before.

use rand::{Rng, RngExt};

use crate::protocol::startup::CancelKey;

/// The TTL a key is issued with (two bits).
const TTL_MAX: u32 = 3;
const TTL_SHIFT: u32 = 30;
const SECRET_BITS: u32 = (1 << TTL_SHIFT) - 1;

/// A fresh key for a client of peer `id` (None: peering off).
pub fn issue(id: Option<u16>, rng: &mut impl Rng) -> CancelKey {
    match id {
        None => CancelKey {
            pid: rng.random_range(1..i32::MAX),
            secret: rng.random(),
        },
        Some(id) => CancelKey {
            pid: (i32::from(id) << 16) | rng.random_range(0..=0xFFFF),
            secret: with_ttl(rng.random(), TTL_MAX),
        },
    }
}

/// The peer that issued `key`.
pub fn owner(key: &CancelKey) -> u16 {
    ((key.pid as u32) >> 16) as u16
}

/// Forwards left on `key`.
pub fn ttl(key: &CancelKey) -> u32 {
    (key.secret as u32) >> TTL_SHIFT
}

/// `key` as issued (its TTL restored): what the issuing process looks up.
pub fn as_issued(key: &CancelKey) -> CancelKey {
    CancelKey {
        pid: key.pid,
        secret: with_ttl(key.secret, TTL_MAX),
    }
}

/// `key` with one forward fewer left (call only when [`ttl`] > 0).
pub fn forwarded(key: &CancelKey) -> CancelKey {
    CancelKey {
        pid: key.pid,
        secret: with_ttl(key.secret, ttl(key).saturating_sub(1)),
    }
}

fn with_ttl(secret: i32, ttl: u32) -> i32 {
    (((secret as u32) & SECRET_BITS) | (ttl << TTL_SHIFT)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_peer_and_a_ttl() {
        let mut rng = rand::rng();
        for id in [1u16, 2, 255, 16383] {
            let k = issue(Some(id), &mut rng);
            assert!(k.pid > 0);
            assert_eq!((owner(&k), ttl(&k)), (id, 3));
            let f = forwarded(&k);
            assert_eq!((owner(&f), ttl(&f)), (id, 2));
            assert_eq!(as_issued(&forwarded(&f)), k);
            assert_eq!(ttl(&forwarded(&forwarded(&f))), 0);
        }
        let k = issue(None, &mut rng);
        assert!(k.pid > 0);
    }
}
