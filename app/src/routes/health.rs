//! `GET /health`: the database answers through pgtier within the health timeout.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::AppState;

/// 200 `{"status":"ok"}` when `SELECT 1` through pgtier succeeds in time, else 503.
pub async fn health(State(st): State<AppState>) -> Response {
    let check = async {
        let c = st.db.conn().await.map_err(|e| e.to_string())?;
        c.client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    let result = match tokio::time::timeout(st.config.health_timeout, check).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "database did not answer within {} ms",
            st.config.health_timeout.as_millis()
        )),
    };
    match result {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "status": "unavailable", "error": e })),
            )
                .into_response()
        }
    }
}
