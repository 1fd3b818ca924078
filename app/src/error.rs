//! `ApiError`: every failure a handler can return, and its HTTP response
//! (`{"error": "..."}`, plus `request_id` on 5xx).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio_postgres::error::SqlState;

tokio::task_local! {
    /// The id of the request being served (set by the request middleware).
    pub static REQUEST_ID: String;
}

/// Header carrying the request id on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A handler failure; converts into a JSON error response.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed input (JSON syntax, query string, header).
    #[error("{0}")]
    BadRequest(String),
    /// 404: the resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the current state (e.g. an invalid booking transition).
    #[error("{0}")]
    Conflict(String),
    /// 415: the body is not `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed input with a value out of range.
    #[error("{0}")]
    Invalid(String),
    /// 503: the database did not answer in time or cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A database error, mapped by SQLSTATE.
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// Anything else: 500.
    #[error("{0}")]
    Internal(String),
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// The HTTP status this error maps to.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Db(e) => match e.code() {
                Some(c) if *c == SqlState::UNIQUE_VIOLATION => StatusCode::CONFLICT,
                Some(c)
                    if *c == SqlState::FOREIGN_KEY_VIOLATION
                        || *c == SqlState::CHECK_VIOLATION
                        || *c == SqlState::NOT_NULL_VIOLATION
                        || c.code().starts_with("22") =>
                {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                Some(c)
                    if *c == SqlState::QUERY_CANCELED
                        || *c == SqlState::T_R_SERIALIZATION_FAILURE
                        || *c == SqlState::T_R_DEADLOCK_DETECTED
                        || *c == SqlState::ADMIN_SHUTDOWN
                        || *c == SqlState::CANNOT_CONNECT_NOW
                        || *c == SqlState::TOO_MANY_CONNECTIONS
                        || c.code().starts_with("08") =>
                {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                Some(_) => StatusCode::INTERNAL_SERVER_ERROR,
                // No SQLSTATE: the connection broke or could not be made.
                None => StatusCode::SERVICE_UNAVAILABLE,
            },
        }
    }

    fn public_message(&self) -> String {
        match self {
            ApiError::Db(e) => match e.as_db_error() {
                // Constraint and data errors tell the client what was wrong with its input.
                Some(d) if self.status().is_client_error() => d.message().to_owned(),
                _ if self.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    "database unavailable".to_owned()
                }
                _ => "database error".to_owned(),
            },
            ApiError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }
}

/// The current request's id, or "-" outside a request.
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.clone())
        .unwrap_or_else(|_| "-".to_owned())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = serde_json::json!({ "error": self.public_message() });
        if status.is_server_error() {
            let id = request_id();
            tracing::error!(request_id = %id, status = status.as_u16(), error = ?self, "request failed");
            body["request_id"] = serde_json::Value::String(id.clone());
            let mut resp = (status, Json(body)).into_response();
            if let Ok(v) = HeaderValue::from_str(&id) {
                resp.headers_mut().insert(REQUEST_ID_HEADER, v);
            }
            return resp;
        }
        (status, Json(body)).into_response()
    }
}

impl From<bb8::RunError<tokio_postgres::Error>> for ApiError {
    fn from(e: bb8::RunError<tokio_postgres::Error>) -> Self {
        match e {
            bb8::RunError::User(e) => ApiError::Db(e),
            bb8::RunError::TimedOut => {
                ApiError::Unavailable("timed out waiting for a database connection".into())
            }
        }
    }
}
