//! A blocking HTTP/1.1 GET for pgtier's endpoint (/metrics, /health, /ready): one request per
//! connection, read to the end (pgtier closes after answering).

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, Result};

/// GETs `path` from 127.0.0.1:`port`; returns the status code and the body.
pub fn get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    if let Err(e) = write!(s, "GET {path} HTTP/1.1\r\nHost: pgtier\r\n\r\n") {
        // A server that refuses an over-long head answers and closes before reading all of
        // it: the rest of the write fails, the answer may still be there to read.
        if !matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ) {
            return Err(e.into());
        }
    }
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no end of head")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Polls `path` every 20 ms until its status is `status` (up to `limit`); returns the last
/// answer.
pub fn wait_status(port: u16, path: &str, status: u16, limit: Duration) -> Result<(u16, String)> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let got = get(port, path)?;
        if got.0 == status || std::time::Instant::now() > deadline {
            return Ok(got);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
