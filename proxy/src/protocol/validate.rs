//! Layout checks of frontend messages, done before any server sees them: a message whose fields
//! overrun (or underrun) its length would make Postgres answer 08P01, or close the connection
//! without a word (a length over its limit), which pgtier would take for a failed server.

use thiserror::Error;

/// Postgres' `PQ_SMALL_MESSAGE_LIMIT`: the largest length field (which counts itself) it accepts
/// for messages that carry no SQL or data; a longer one closes the connection.
pub const SMALL_MESSAGE_LIMIT: usize = 10_000;

/// Postgres' `PQ_LARGE_MESSAGE_LIMIT` (1 GB - 2), for the other messages (CopyData included).
pub const LARGE_MESSAGE_LIMIT: usize = 0x3fff_fffe;

/// A frontend message whose layout is wrong.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed {name} message: {what}")]
pub struct Malformed {
    /// The message's name.
    pub name: &'static str,
    /// What is wrong.
    pub what: &'static str,
}

/// The protocol name of a frontend message type.
fn name(tag: u8) -> &'static str {
    match tag {
        b'Q' => "Query",
        b'P' => "Parse",
        b'B' => "Bind",
        b'D' => "Describe",
        b'E' => "Execute",
        b'C' => "Close",
        b'H' => "Flush",
        b'S' => "Sync",
        b'X' => "Terminate",
        b'F' => "FunctionCall",
        b'd' => "CopyData",
        b'c' => "CopyDone",
        b'f' => "CopyFail",
        _ => "unknown",
    }
}

/// Whether Postgres reads messages of this type with its small length limit.
fn is_small(tag: u8) -> bool {
    matches!(tag, b'D' | b'E' | b'C' | b'H' | b'S' | b'X' | b'c' | b'f')
}

/// Checks a header's declared body length against what the type allows (before the body is
/// read: a Sync claiming 1 MB is refused at once).
pub fn check_length(tag: u8, body_len: usize) -> Result<(), Malformed> {
    let fixed_empty = matches!(tag, b'H' | b'S' | b'X' | b'c');
    if fixed_empty && body_len != 0 {
        return Err(Malformed {
            name: name(tag),
            what: "its length must be 4",
        });
    }
    if is_small(tag) && body_len + 4 > SMALL_MESSAGE_LIMIT {
        return Err(Malformed {
            name: name(tag),
            what: "longer than Postgres accepts for this message type (10000 bytes)",
        });
    }
    if body_len + 4 > LARGE_MESSAGE_LIMIT {
        return Err(Malformed {
            name: name(tag),
            what: "longer than Postgres accepts for any message (1 GB)",
        });
    }
    Ok(())
}

/// Checks that a whole message's fields fill its body exactly. CopyData carries anything.
pub fn check(tag: u8, body: &[u8]) -> Result<(), Malformed> {
    check_length(tag, body.len())?;
    let bad = |what| Malformed {
        name: name(tag),
        what,
    };
    let mut r = Reader(body);
    match tag {
        b'Q' | b'f' => r.cstr().ok_or(bad("its string is not NUL-terminated"))?,
        b'P' => {
            r.cstr().ok_or(bad("statement name not NUL-terminated"))?;
            r.cstr().ok_or(bad("query not NUL-terminated"))?;
            let n = r.u16().ok_or(bad("no parameter type count"))?;
            r.skip(4 * usize::from(n))
                .ok_or(bad("fewer parameter types than its count"))?;
        }
        b'B' => {
            r.cstr().ok_or(bad("portal name not NUL-terminated"))?;
            r.cstr().ok_or(bad("statement name not NUL-terminated"))?;
            r.formats().ok_or(bad("parameter formats overrun it"))?;
            r.values().ok_or(bad("parameter values overrun it"))?;
            r.formats().ok_or(bad("result formats overrun it"))?;
        }
        b'D' | b'C' => {
            let kind = r.u8().ok_or(bad("no 'S' or 'P'"))?;
            if !matches!(kind, b'S' | b'P') {
                return Err(bad("the target type is neither 'S' nor 'P'"));
            }
            r.cstr().ok_or(bad("name not NUL-terminated"))?;
        }
        b'E' => {
            r.cstr().ok_or(bad("portal name not NUL-terminated"))?;
            r.skip(4).ok_or(bad("no row limit"))?;
        }
        b'F' => {
            r.skip(4).ok_or(bad("no function OID"))?;
            r.formats().ok_or(bad("argument formats overrun it"))?;
            r.values().ok_or(bad("arguments overrun it"))?;
            r.skip(2).ok_or(bad("no result format"))?;
        }
        // CopyData carries anything; the fixed ones were checked above.
        _ => return Ok(()),
    }
    if !r.0.is_empty() {
        return Err(bad("bytes left over after its last field"));
    }
    Ok(())
}

/// Reads fields off the front of a body; None when one overruns it.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn skip(&mut self, n: usize) -> Option<()> {
        self.0 = self.0.get(n..)?;
        Some(())
    }

    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        let (b, rest) = self.0.split_first_chunk::<2>()?;
        self.0 = rest;
        Some(u16::from_be_bytes(*b))
    }

    fn i32(&mut self) -> Option<i32> {
        let (b, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(i32::from_be_bytes(*b))
    }

    fn cstr(&mut self) -> Option<()> {
        let nul = super::find_nul(self.0)?;
        self.0 = &self.0[nul + 1..];
        Some(())
    }

    /// A count (int16) and that many format codes (int16).
    fn formats(&mut self) -> Option<()> {
        let n = self.u16()?;
        self.skip(2 * usize::from(n))
    }

    /// A count (int16) and that many values: an int32 length (-1: NULL), then its bytes.
    fn values(&mut self) -> Option<()> {
        for _ in 0..self.u16()? {
            match self.i32()? {
                -1 => {}
                n => self.skip(usize::try_from(n).ok()?)?,
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(tag: u8, body: &[u8]) -> bool {
        check(tag, body).is_ok()
    }

    #[test]
    fn fixed_messages_must_be_empty() {
        for tag in [b'S', b'H', b'X', b'c'] {
            assert!(ok(tag, b""));
            assert!(!ok(tag, b"\0"));
            assert!(check_length(tag, 65_532).is_err());
        }
    }

    #[test]
    fn small_messages_have_postgres_limit() {
        let long = vec![b'a'; SMALL_MESSAGE_LIMIT];
        let mut body = b"S".to_vec();
        body.extend(&long);
        body.push(0);
        assert!(!ok(b'D', &body));
        assert!(ok(b'D', b"Sname\0"));
        // Query and Parse carry SQL: no small limit.
        let mut q = long.clone();
        q.push(0);
        assert!(ok(b'Q', &q));
    }

    #[test]
    fn strings_must_end_the_message_exactly() {
        assert!(ok(b'Q', b"SELECT 1\0"));
        assert!(!ok(b'Q', b"SELECT 1"));
        assert!(!ok(b'Q', b"SELECT 1\0junk"));
        assert!(!ok(b'Q', b""));
        assert!(ok(b'f', b"oops\0"));
        assert!(!ok(b'C', b"Xname\0"));
        assert!(!ok(b'D', b"S"));
        assert!(ok(b'E', b"\0\0\0\0\0"));
        assert!(!ok(b'E', b"\0\0\0"));
    }

    #[test]
    fn counted_fields_may_not_overrun() {
        assert!(ok(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17"));
        assert!(!ok(b'P', b"s1\0SELECT $1\0\0\x02\0\0\0\x17"));
        assert!(!ok(b'P', b"s1\0SELECT $1\0"));
        // Bind: portal, statement, 1 format, 2 values (one NULL), 0 result formats.
        let bind = b"\0s1\0\0\x01\0\x01\0\x02\0\0\0\x02ab\xff\xff\xff\xff\0\0";
        assert!(ok(b'B', bind));
        assert!(!ok(b'B', &bind[..bind.len() - 1]));
        let mut longer = bind.to_vec();
        longer.push(0);
        assert!(!ok(b'B', &longer));
        // A value length below -1, or past the end.
        assert!(!ok(b'B', b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0"));
        assert!(!ok(b'B', b"\0\0\0\0\0\x01\x7f\xff\xff\xff\0\0"));
        // FunctionCall: oid, 0 formats, 1 argument of 1 byte, result format.
        assert!(ok(b'F', b"\0\0\0\x10\0\0\0\x01\0\0\0\x01x\0\0"));
        assert!(!ok(b'F', b"\0\0\0\x10\0\0\0\x01\0\0\0\x09x\0\0"));
        assert!(ok(b'd', b"anything"));
        assert!(check_length(b'd', LARGE_MESSAGE_LIMIT - 4).is_ok());
        assert!(check_length(b'd', LARGE_MESSAGE_LIMIT).is_err());
    }
}
