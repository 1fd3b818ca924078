//! A minimal HTTP/1.1 endpoint for Prometheus: `GET /metrics` answers the text exposition
//! format, anything else 404. Each request is read with a size cap and a timeout, answered,
//! and the connection closed (scrapers send one request per connection or reconnect).

mod scrape;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::runtime::Proxy;

/// Largest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// Limit on reading a request and writing the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes served at once (more wait in the accept queue).
const MAX_CONCURRENT: usize = 16;

/// Serves scrapes until the process ends.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if tokio::time::timeout(REQUEST_TIMEOUT, answer(&proxy, stream))
                .await
                .is_err()
            {
                debug!(%peer, "metrics request timed out");
            }
        });
    }
}

async fn answer(proxy: &Proxy, mut stream: TcpStream) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > MAX_REQUEST {
            let _ = stream
                .write_all(&response(
                    "431 Request Header Fields Too Large",
                    "text/plain",
                    b"",
                ))
                .await;
            return;
        }
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    let path = path.split(|&b| b == b'?').next().unwrap_or(&[]);
    let reply = match (method, path) {
        (b"GET", b"/metrics") => {
            let body = scrape::render(proxy);
            response(
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                body.as_bytes(),
            )
        }
        (b"GET", b"/") => response(
            "200 OK",
            "text/plain; charset=utf-8",
            b"pgtier: metrics at /metrics\n",
        ),
        (b"GET", _) => response("404 Not Found", "text/plain", b"not found\n"),
        _ => response("405 Method Not Allowed", "text/plain", b"GET only\n"),
    };
    let _ = stream.write_all(&reply).await;
    let _ = stream.shutdown().await;
}

fn response(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}
