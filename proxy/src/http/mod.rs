//! The HTTP endpoint for Prometheus and orchestrators, served with hyper (HTTP/1.1 only):
//! `GET /metrics` (text exposition format), `GET /health` (200 while the process runs) and
//! `GET /ready` (200 when pgtier should get new clients, else 503 with the reason; see
//! `health`). One request per connection, read with a header-size cap and a timeout; at most
//! `MAX_CONCURRENT` connections are served at once (more wait in the accept queue).

mod health;
mod scrape;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::runtime::Proxy;

pub use health::not_ready;

/// Largest request head read (hyper's minimum buffer; a larger head gets 431).
const MAX_REQUEST: usize = 8 * 1024;
/// Limit on reading a request and writing the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once (more wait in the accept queue).
const MAX_CONCURRENT: usize = 16;

const TEXT: &str = "text/plain; charset=utf-8";
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves requests until the process ends.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                crate::timers::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(answer(&proxy, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(crate::timers::HyperTimer)
                .header_read_timeout(REQUEST_TIMEOUT)
                .max_buf_size(MAX_REQUEST)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match crate::timers::timeout(REQUEST_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, error = %e, "HTTP request failed"),
                Err(_) => debug!(%peer, "HTTP request timed out"),
            }
        });
    }
}

/// The answer to one request.
fn answer(proxy: &Proxy, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => response(StatusCode::OK, EXPOSITION, scrape::render(proxy)),
        "/health" => response(StatusCode::OK, TEXT, "ok\n".into()),
        "/ready" => match not_ready(proxy) {
            None => response(StatusCode::OK, TEXT, "ready\n".into()),
            Some(why) => response(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
        },
        "/" => response(
            StatusCode::OK,
            TEXT,
            "pgtier: /metrics, /health, /ready\n".into(),
        ),
        _ => response(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
