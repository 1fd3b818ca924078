//! HTTP routes, one file per resource, and the extractors they share (JSON body, query,
//! path and the `X-Causal-Lsn` header, all rejecting with `{"error": ...}` bodies).

pub mod bookings;
pub mod health;
pub mod students;
pub mod subjects;
pub mod tutors;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::db::{valid_lsn, Causal};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Header carrying the causal token (an LSN) to and from clients.
pub const CAUSAL_HEADER: &str = "x-causal-lsn";

/// Largest page a listing returns.
pub const MAX_LIMIT: i64 = 100;
/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 20;
/// Largest `offset` accepted.
pub const MAX_OFFSET: i64 = 100_000;

/// All routes, without state.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health::health))
        .route("/metrics", get(crate::metrics::metrics_handler))
        .route("/subjects", get(subjects::list).post(subjects::create))
        .route("/subjects/{id}", get(subjects::get_one))
        .route("/tutors", get(tutors::list).post(tutors::create))
        .route("/tutors/{id}", get(tutors::get_one).patch(tutors::update))
        .route(
            "/tutors/{id}/availability",
            get(tutors::list_availability).post(tutors::add_availability),
        )
        .route("/tutors/{id}/reviews", get(bookings::list_reviews))
        .route("/students", get(students::list).post(students::create))
        .route("/students/{id}", get(students::get_one))
        .route("/bookings", get(bookings::list).post(bookings::create))
        .route("/bookings/{id}", get(bookings::get_one))
        .route("/bookings/{id}/confirm", post(bookings::confirm))
        .route("/bookings/{id}/complete", post(bookings::complete))
        .route("/bookings/{id}/cancel", post(bookings::cancel))
        .route("/bookings/{id}/review", post(bookings::review))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> Response {
    let body = serde_json::json!({ "error": "method not allowed" });
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

/// A JSON request body; malformed JSON is 400, wrong types or missing fields 422, a missing
/// `Content-Type: application/json` 415.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::Invalid(e.body_text())),
            Err(JsonRejection::MissingJsonContentType(e)) => {
                Err(ApiError::UnsupportedMediaType(e.body_text()))
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// A query string; anything unparsable is 400.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// A numeric id from the path; anything else is 400.
pub struct Id(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        raw.parse::<i64>()
            .ok()
            .filter(|v| *v > 0)
            .map(Id)
            .ok_or_else(|| ApiError::BadRequest(format!("invalid id {raw:?}")))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Causal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(v) = parts.headers.get(CAUSAL_HEADER) else {
            return Ok(Causal(None));
        };
        let s = v.to_str().unwrap_or("").trim();
        if !valid_lsn(s) {
            return Err(ApiError::BadRequest(
                "X-Causal-Lsn must be an LSN like 0/16B3740".into(),
            ));
        }
        Ok(Causal(Some(s.to_owned())))
    }
}

/// The response to a write: status, JSON body and, when pgtier gave one, `X-Causal-Lsn`.
pub struct Written<T> {
    /// Usually 200 or 201.
    pub status: StatusCode,
    /// The JSON body.
    pub body: T,
    /// The client's causal token after the write.
    pub lsn: Option<String>,
}

impl<T: Serialize> IntoResponse for Written<T> {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body)).into_response();
        if let Some(v) = self.lsn.and_then(|l| HeaderValue::from_str(&l).ok()) {
            resp.headers_mut().insert(CAUSAL_HEADER, v);
        }
        resp
    }
}

/// `limit` and `offset` validated against the bounds above.
pub fn page(limit: Option<i64>, offset: Option<i64>) -> ApiResult<(i64, i64)> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let offset = offset.unwrap_or(0);
    if !(0..=MAX_OFFSET).contains(&offset) {
        return Err(ApiError::BadRequest(format!(
            "offset must be between 0 and {MAX_OFFSET}"
        )));
    }
    Ok((limit, offset))
}

/// One page of a listing.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// The limit used.
    pub limit: i64,
    /// The offset used.
    pub offset: i64,
    /// The offset of the next page, if this one was full.
    pub next_offset: Option<i64>,
}

impl<T> Page<T> {
    /// Wraps `items` fetched with `limit` and `offset`.
    pub fn new(items: Vec<T>, limit: i64, offset: i64) -> Page<T> {
        let next_offset = (items.len() as i64 == limit).then_some(offset + limit);
        Page {
            items,
            limit,
            offset,
            next_offset,
        }
    }
}

/// Checks a text field's length in characters.
pub fn text(field: &str, v: &str, min: usize, max: usize) -> ApiResult<()> {
    let n = v.chars().count();
    if n < min || n > max {
        return Err(ApiError::Invalid(format!(
            "{field} must have {min} to {max} characters"
        )));
    }
    Ok(())
}

/// A timestamp rendered as RFC 3339 UTC text by Postgres (so no date crate is needed).
#[macro_export]
macro_rules! iso {
    ($col:literal) => {
        concat!(
            "to_char(",
            $col,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
        )
    };
}
