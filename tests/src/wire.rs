//! A minimal raw wire-protocol client for tests that must send what real drivers never would
//! (malformed packets, unknown message types, oversized messages) and read exact replies.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One backend message: type byte and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Message type.
    pub tag: u8,
    /// Body after the length.
    pub body: Vec<u8>,
}

impl Msg {
    /// For ErrorResponse/NoticeResponse: the value of one field ('C' = SQLSTATE, 'M' = message).
    pub fn field(&self, code: u8) -> Option<String> {
        let mut rest = &self.body[..];
        while let Some((&f, tail)) = rest.split_first() {
            if f == 0 {
                break;
            }
            let nul = tail.iter().position(|&b| b == 0)?;
            if f == code {
                return Some(String::from_utf8_lossy(&tail[..nul]).into_owned());
            }
            rest = &tail[nul + 1..];
        }
        None
    }
}

/// Encodes a StartupMessage for protocol 3.`minor` with the given parameters.
pub fn startup_packet(minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = ((3u32 << 16) | minor as u32).to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend(body);
    p
}

/// Encodes a regular frontend message.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Encodes a simple Query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// The ParameterStatus pgtier sends after each write transaction (read-your-writes token).
pub const CAUSAL_LSN_STATUS: &[u8] = b"pgtier.causal_lsn\0";

/// A Parse of `sql` as statement `name` (no parameter types).
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = format!("{name}\0{sql}\0").into_bytes();
    b.extend(0i16.to_be_bytes());
    message(b'P', &b)
}

/// A Bind of `statement` to the unnamed portal, with no parameters, text results.
pub fn bind(statement: &str) -> Vec<u8> {
    let mut b = format!("\0{statement}\0").into_bytes();
    b.extend(0i16.to_be_bytes()); // parameter formats
    b.extend(0i16.to_be_bytes()); // parameters
    b.extend(0i16.to_be_bytes()); // result formats
    message(b'B', &b)
}

/// A Describe of the portal `name`.
pub fn describe_portal(name: &str) -> Vec<u8> {
    message(b'D', format!("P{name}\0").as_bytes())
}

/// An Execute of the unnamed portal, all rows.
pub fn execute() -> Vec<u8> {
    message(b'E', b"\0\0\0\0\0")
}

/// A Sync.
pub fn sync() -> Vec<u8> {
    message(b'S', b"")
}

/// A Close of statement `name`.
pub fn close_statement(name: &str) -> Vec<u8> {
    message(b'C', format!("S{name}\0").as_bytes())
}

/// Sends the messages in one write and reads the replies up to ReadyForQuery.
pub async fn send_all(s: &mut TcpStream, parts: &[Vec<u8>], limit: Duration) -> Result<Vec<Msg>> {
    s.write_all(&parts.concat()).await?;
    read_until_ready(s, limit).await
}

/// Reads one backend message, failing after `limit`. Skips pgtier's `pgtier.causal_lsn`
/// ParameterStatus (tests of other behaviour expect exact message sequences; `read_msg_raw`
/// sees it).
pub async fn read_msg(s: &mut TcpStream, limit: Duration) -> Result<Msg> {
    loop {
        let m = read_msg_raw(s, limit).await?;
        if !(m.tag == b'S' && m.body.starts_with(CAUSAL_LSN_STATUS)) {
            return Ok(m);
        }
    }
}

/// Reads one backend message, whatever it is, failing after `limit`.
pub async fn read_msg_raw(s: &mut TcpStream, limit: Duration) -> Result<Msg> {
    tokio::time::timeout(limit, async {
        let tag = s.read_u8().await?;
        let len = s.read_u32().await? as usize;
        anyhow::ensure!(len >= 4, "bad length {len}");
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).await?;
        Ok(Msg { tag, body })
    })
    .await
    .context("timed out reading a message")?
}

/// Reads messages until ReadyForQuery (inclusive) or an ErrorResponse if `stop_on_error`.
pub async fn read_until_ready(s: &mut TcpStream, limit: Duration) -> Result<Vec<Msg>> {
    let mut out = Vec::new();
    loop {
        let m = read_msg(s, limit).await?;
        let done = m.tag == b'Z';
        out.push(m);
        if done {
            return Ok(out);
        }
    }
}

/// Connects and logs in as a `trust` user (no password), returning the socket at ReadyForQuery
/// and the login messages (ParameterStatus, BackendKeyData...).
pub async fn login_trust(addr: &str, user: &str, db: &str) -> Result<(TcpStream, Vec<Msg>)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(&startup_packet(0, &[("user", user), ("database", db)]))
        .await?;
    let msgs = read_until_ready(&mut s, Duration::from_secs(10)).await?;
    if let Some(e) = msgs.iter().find(|m| m.tag == b'E') {
        bail!("login failed: {:?} {:?}", e.field(b'C'), e.field(b'M'));
    }
    Ok((s, msgs))
}

/// Reads until the peer closes; returns the first ErrorResponse seen (SQLSTATE, message).
pub async fn expect_fatal(s: &mut TcpStream, limit: Duration) -> Result<(String, String)> {
    let m = read_msg(s, limit).await?;
    if m.tag != b'E' {
        bail!("expected ErrorResponse, got {:?}", m.tag as char);
    }
    let code = m.field(b'C').unwrap_or_default();
    let msg = m.field(b'M').unwrap_or_default();
    Ok((code, msg))
}

/// True if the peer closes the connection within `limit` (reads return EOF).
pub async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// The type bytes of `msgs`, e.g. "12DCZ".
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// The first column of the first DataRow in `msgs`, as text.
pub fn first_value(msgs: &[Msg]) -> String {
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
    let len = i32::from_be_bytes(row.body[2..6].try_into().expect("4 bytes")) as usize;
    String::from_utf8_lossy(&row.body[6..6 + len]).into_owned()
}
