//! Prometheus metrics: request counts and latency histograms by route and status, pool gauges,
//! database work repeated after a lost connection.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::error::{REQUEST_ID, REQUEST_ID_HEADER};
use crate::AppState;

/// The app's metric families.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pool_connections: IntGauge,
    pool_idle: IntGauge,
    db_retries: IntCounter,
}

impl Metrics {
    /// Registers every family in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("app_http_requests_total", "HTTP requests served"),
            &["method", "route", "status"],
        )
        .expect("metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("app_http_request_duration_seconds", "HTTP request latency")
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            &["method", "route", "status"],
        )
        .expect("metric");
        let pool_connections =
            IntGauge::new("app_db_pool_connections", "Open database connections").expect("metric");
        let pool_idle = IntGauge::new("app_db_pool_idle_connections", "Idle database connections")
            .expect("metric");
        let db_retries = IntCounter::new(
            "app_db_retries_total",
            "Requests whose database work was run again on another connection (the first was lost before it could write)",
        )
        .expect("metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(pool_connections.clone()),
            Box::new(pool_idle.clone()),
            Box::new(db_retries.clone()),
        ] {
            registry.register(c).expect("register metric");
        }
        Metrics {
            registry,
            requests,
            latency,
            pool_connections,
            pool_idle,
            db_retries,
        }
    }

    /// Records one finished request.
    pub fn observe(&self, method: &str, route: &str, status: u16, secs: f64) {
        let status = status.to_string();
        let labels = [method, route, status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.latency.with_label_values(&labels).observe(secs);
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self, pool: (u32, u32), db_retries: u64) -> String {
        self.pool_connections.set(i64::from(pool.0));
        self.pool_idle.set(i64::from(pool.1));
        // The count lives in `Db` (which knows no metrics): catch up with it.
        self.db_retries
            .inc_by(db_retries.saturating_sub(self.db_retries.get()));
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// `GET /metrics`.
pub async fn metrics_handler(State(st): State<AppState>) -> Response {
    let text = st.metrics.render(st.db.pool_state(), st.db.retries());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}

/// Middleware: assigns the request id (header and task-local), times the request and counts it.
pub async fn track(State(st): State<AppState>, req: Request<Body>, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let id = st.next_request_id();
    let mut resp = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let status = resp.status();
    st.metrics.observe(
        &method,
        &route,
        status.as_u16(),
        start.elapsed().as_secs_f64(),
    );
    if status == StatusCode::INTERNAL_SERVER_ERROR || status == StatusCode::SERVICE_UNAVAILABLE {
        tracing::debug!(request_id = %id, %route, status = status.as_u16(), "server error response");
    }
    resp
}
