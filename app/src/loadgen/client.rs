//! A small HTTP/1.1 JSON client (hyper-util, pooled keep-alive connections), used by the load
//! generator and the end-to-end tests.

use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
pub use hyper::Method;
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// One HTTP answer, body read in full.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Raw body.
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client for one base URL such as `http://127.0.0.1:8080`.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    timeout: Duration,
}

impl Http {
    /// A client for `base` with a 30 s limit per request.
    pub fn new(base: &str) -> Http {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(conn);
        Http {
            client,
            base: base.trim_end_matches('/').to_owned(),
            timeout: Duration::from_secs(30),
        }
    }

    /// Sends a request with an optional body (sent as `content_type`) and extra headers.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<Resp> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{}", self.base, path));
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, HeaderValue::from_str(ct)?);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        let fut = async {
            let resp = self.client.request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(Resp {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .with_context(|| format!("{method} {path}: no answer within {:?}", self.timeout))?
            .with_context(|| format!("{method} {path}"))
    }

    /// A JSON request; `causal` becomes the `X-Causal-Lsn` header.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        causal: Option<&str>,
    ) -> Result<Resp> {
        let mut headers = Vec::new();
        if let Some(c) = causal {
            headers.push(("x-causal-lsn", c));
        }
        match body {
            Some(b) => {
                let bytes = serde_json::to_vec(b)?;
                self.raw(method, path, Some("application/json"), bytes, &headers)
                    .await
            }
            None => self.raw(method, path, None, Vec::new(), &headers).await,
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Resp> {
        self.send(Method::GET, path, None, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Resp> {
        self.send(Method::POST, path, Some(body), None).await
    }
}
