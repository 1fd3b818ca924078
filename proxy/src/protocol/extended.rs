//! Reading and rebuilding the extended-protocol messages that carry statement names: Parse,
//! Bind, Describe and Close. Only the leading name fields are decoded; the rest of each body is
//! copied as is.

use bytes::{BufMut, BytesMut};

/// Splits a NUL-terminated string off the front of `b`: (string without NUL, rest).
pub fn split_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = super::find_nul(b)?;
    Some((&b[..nul], &b[nul + 1..]))
}

/// A Parse body: statement name, then the query and parameter types (kept as bytes).
#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Statement name ("" for the unnamed statement).
    pub name: &'a [u8],
    /// Query string (with its NUL) and parameter type OIDs.
    pub rest: &'a [u8],
}

/// Decodes a Parse body.
pub fn parse(body: &[u8]) -> Option<Parse<'_>> {
    let (name, rest) = split_cstr(body)?;
    split_cstr(rest)?;
    Some(Parse { name, rest })
}

/// A Bind body: portal, statement name, then formats and parameters (kept as bytes).
#[derive(Debug, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Portal name.
    pub portal: &'a [u8],
    /// Statement name.
    pub statement: &'a [u8],
    /// Everything after the statement name.
    pub rest: &'a [u8],
}

/// Decodes a Bind body.
pub fn bind(body: &[u8]) -> Option<Bind<'_>> {
    let (portal, rest) = split_cstr(body)?;
    let (statement, rest) = split_cstr(rest)?;
    Some(Bind {
        portal,
        statement,
        rest,
    })
}

/// Describe and Close bodies: 'S' (statement) or 'P' (portal), then a name.
pub fn target(body: &[u8]) -> Option<(u8, &[u8])> {
    let (&kind, rest) = body.split_first()?;
    let (name, _) = split_cstr(rest)?;
    matches!(kind, b'S' | b'P').then_some((kind, name))
}

fn frame(out: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum::<usize>() + 4;
    out.reserve(len + 1);
    out.put_u8(tag);
    out.put_u32(len as u32);
    for p in parts {
        out.put_slice(p);
    }
}

/// Writes a Parse message.
pub fn write_parse(out: &mut BytesMut, name: &[u8], rest: &[u8]) {
    frame(out, b'P', &[name, b"\0", rest]);
}

/// Writes a Bind message.
pub fn write_bind(out: &mut BytesMut, portal: &[u8], statement: &[u8], rest: &[u8]) {
    frame(out, b'B', &[portal, b"\0", statement, b"\0", rest]);
}

/// Writes a Describe ('D') or Close ('C') message.
pub fn write_target(out: &mut BytesMut, tag: u8, kind: u8, name: &[u8]) {
    frame(out, tag, &[&[kind], name, b"\0"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let p = parse(b"s1\0select $1\0\0\x01\0\0\0\x17").unwrap();
        assert_eq!(p.name, b"s1");
        let mut out = BytesMut::new();
        write_parse(&mut out, b"pgtier_1", p.rest);
        let again = parse(&out[5..]).unwrap();
        assert_eq!((again.name, again.rest), (&b"pgtier_1"[..], p.rest));

        let b = bind(b"\0s1\0\0\0\0\0\0\0").unwrap();
        assert_eq!((b.portal, b.statement), (&b""[..], &b"s1"[..]));
        out.clear();
        write_bind(&mut out, b.portal, b"x", b.rest);
        assert_eq!(bind(&out[5..]).unwrap().statement, b"x");

        assert_eq!(target(b"Ss1\0"), Some((b'S', &b"s1"[..])));
        assert_eq!(target(b"Xs1\0"), None);
        assert_eq!(parse(b"noterminator"), None);
    }
}
