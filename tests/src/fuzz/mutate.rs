//! Structure-aware mutations of client message streams: each mutation knows where the tag,
//! the length and the body of a message are, so it can break one of them and keep the rest
//! of the stream valid (or splice, drop, repeat and reorder whole messages).

use super::gen::{stray, Rng};

/// Integers that find off-by-one and sign bugs in length and count fields.
const INTERESTING32: &[i32] = &[
    0,
    1,
    -1,
    3,
    4,
    5,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x10000,
    0x7fff_ffff,
    i32::MIN,
    1 << 20,
    (1 << 20) + 1,
    64 << 20,
];

/// Bytes that are tags, terminators or sign bits.
const INTERESTING8: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'Q', b'P', b'S', b'X', b'd', b'c', b'$',
];

/// Mutates one message in place (never removes it; `messages` mutations do that).
pub fn message(rng: &mut Rng, m: &mut Vec<u8>) {
    if m.len() < 5 {
        m.push(rng.next_u64() as u8);
        return;
    }
    match rng.below(10) {
        // The tag.
        0 => m[0] = *rng.pick(INTERESTING8),
        // The length: an interesting value, or off by a little.
        1 => {
            let len = if rng.chance(50) {
                *rng.pick(INTERESTING32)
            } else {
                (m.len() as i32 - 1) + rng.below(9) as i32 - 4
            };
            m[1..5].copy_from_slice(&len.to_be_bytes());
        }
        // A body byte.
        2 | 3 => {
            let i = 5 + rng.below(m.len() - 5);
            if i < m.len() {
                m[i] = if rng.chance(50) {
                    *rng.pick(INTERESTING8)
                } else {
                    m[i] ^ (1 << rng.below(8))
                };
            }
        }
        // An int16 or int32 in the body (counts, lengths, format codes).
        4 | 5 => {
            if m.len() > 7 {
                let i = 5 + rng.below(m.len() - 6);
                let v = *rng.pick(INTERESTING32);
                if rng.chance(50) || i + 4 > m.len() {
                    m[i..i + 2].copy_from_slice(&(v as i16).to_be_bytes());
                } else {
                    m[i..i + 4].copy_from_slice(&v.to_be_bytes());
                }
            }
        }
        // Cut the body short, and say so in the length (or not).
        6 => {
            let keep = 5 + rng.below(m.len() - 5);
            m.truncate(keep);
            if rng.chance(70) {
                let len = (keep - 1) as u32;
                m[1..5].copy_from_slice(&len.to_be_bytes());
            }
        }
        // Drop every NUL (unterminated strings), fixing the length.
        7 => {
            let body: Vec<u8> = m[5..].iter().copied().filter(|&b| b != 0).collect();
            m.truncate(5);
            m.extend(body);
            let len = (m.len() - 1) as u32;
            m[1..5].copy_from_slice(&len.to_be_bytes());
        }
        // Grow the body with junk or a repeated slice, fixing the length.
        8 => {
            let n = 1 + rng.below(64);
            if rng.chance(50) {
                for _ in 0..n {
                    m.push(rng.next_u64() as u8);
                }
            } else {
                let from = 5 + rng.below(m.len() - 5);
                let slice = m[from..].to_vec();
                for _ in 0..1 + rng.below(8) {
                    m.extend_from_slice(&slice);
                }
            }
            let len = (m.len() - 1) as u32;
            m[1..5].copy_from_slice(&len.to_be_bytes());
        }
        // A header that promises a large body that never comes in full.
        _ => {
            let len = 1 + rng.below(2 << 20) as u32;
            m[1..5].copy_from_slice(&len.to_be_bytes());
        }
    }
}

/// Applies 1..=`max` mutations to a list of messages: whole-message edits (drop, repeat,
/// swap, insert a stray message) or [`message`] on one of them.
pub fn messages(rng: &mut Rng, msgs: &mut Vec<Vec<u8>>, max: usize) {
    for _ in 0..1 + rng.below(max) {
        if msgs.is_empty() {
            msgs.push(stray(rng));
            continue;
        }
        let i = rng.below(msgs.len());
        match rng.below(8) {
            0 => {
                msgs.remove(i);
            }
            1 => {
                let m = msgs[i].clone();
                for _ in 0..1 + rng.below(3) {
                    msgs.insert(i, m.clone());
                }
            }
            2 => {
                let j = rng.below(msgs.len());
                msgs.swap(i, j);
            }
            3 => msgs.insert(i, stray(rng)),
            _ => message(rng, &mut msgs[i]),
        }
    }
}

/// Mutates a startup-phase packet (StartupMessage, SSLRequest, CancelRequest, SASL
/// responses): the length, the code, a byte, a cut, or junk after it.
pub fn packet(rng: &mut Rng, p: &mut Vec<u8>) {
    if p.len() < 8 {
        p.push(rng.next_u64() as u8);
        return;
    }
    match rng.below(6) {
        0 => {
            let len = *rng.pick(INTERESTING32);
            p[0..4].copy_from_slice(&len.to_be_bytes());
        }
        1 => {
            // The protocol version or request code: another major/minor, or a known code.
            let codes = [
                0x0003_0000u32,
                0x0003_0002,
                0x0003_0063,
                0x0002_0000,
                80_877_102,
                80_877_103,
                80_877_104,
                0x1234_5678,
            ];
            p[4..8].copy_from_slice(&rng.pick(&codes).to_be_bytes());
        }
        2 | 3 => {
            let i = rng.below(p.len());
            p[i] = if rng.chance(50) {
                *rng.pick(INTERESTING8)
            } else {
                p[i] ^ (1 << rng.below(8))
            };
        }
        4 => {
            let keep = rng.below(p.len());
            p.truncate(keep);
        }
        _ => {
            for _ in 0..1 + rng.below(32) {
                p.push(rng.next_u64() as u8);
            }
        }
    }
}

/// Splits `bytes` into write chunks: usually one, sometimes many small ones (a client whose
/// messages arrive a few bytes at a time).
pub fn chunks(rng: &mut Rng, bytes: Vec<u8>) -> Vec<Vec<u8>> {
    if bytes.len() < 2 || rng.chance(70) {
        return vec![bytes];
    }
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let n = (1 + rng.below(16)).min(rest.len());
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    out
}
