//! Subjects: `POST /subjects`, `GET /subjects`, `GET /subjects/{id}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;

use super::{page, text, Id, JsonBody, Page, Query, Written};
use crate::db::{Causal, Work};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// A subject tutors teach.
#[derive(Debug, Serialize, Deserialize)]
pub struct Subject {
    /// Id.
    pub id: i64,
    /// Unique name.
    pub name: String,
}

impl Subject {
    fn from_row(r: &Row) -> Subject {
        Subject {
            id: r.get(0),
            name: r.get(1),
        }
    }
}

/// Body of `POST /subjects`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSubject {
    /// 1..=100 characters, unique.
    pub name: String,
}

/// Query of `GET /subjects`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
    offset: Option<i64>,
}

/// `POST /subjects`: 201, or 409 when the name exists.
pub async fn create(
    State(st): State<AppState>,
    JsonBody(b): JsonBody<NewSubject>,
) -> ApiResult<Written<Subject>> {
    text("name", &b.name, 1, 100)?;
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Write, |c| {
            // A transaction of one statement: a failed BEGIN shows the insert never ran.
            let (tx, stmts) = c.begin(st.db.timeout()).await?;
            let s = stmts
                .get(&tx, "INSERT INTO subjects (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id, name")
                .await?;
            let row = tx
                .query_opt(&s, &[&b.name])
                .await?
                .ok_or_else(|| ApiError::Conflict(format!("subject {:?} exists", b.name)))?;
            tx.commit().await?;
            let lsn = st.db.causal_token(c).await;
            Ok(Written {
                status: StatusCode::CREATED,
                body: Subject::from_row(&row),
                lsn,
            })
        })
        })
        .await
}

/// `GET /subjects?limit&offset`, by name.
pub async fn list(
    State(st): State<AppState>,
    causal: Causal,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Subject>>> {
    let (limit, offset) = page(q.limit, q.offset)?;
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Read(&causal), |c| {
                let s = c
                    .stmt("SELECT id, name FROM subjects ORDER BY name, id LIMIT $1 OFFSET $2")
                    .await?;
                let rows = c.client.query(&s, &[&limit, &offset]).await?;
                let items = rows.iter().map(Subject::from_row).collect();
                Ok(Json(Page::new(items, limit, offset)))
            })
        })
        .await
}

/// `GET /subjects/{id}`.
pub async fn get_one(
    State(st): State<AppState>,
    causal: Causal,
    Id(id): Id,
) -> ApiResult<Json<Subject>> {
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Read(&causal), |c| {
                let s = c
                    .stmt("SELECT id, name FROM subjects WHERE id = $1")
                    .await?;
                let row = c
                    .client
                    .query_opt(&s, &[&id])
                    .await?
                    .ok_or_else(|| ApiError::NotFound(format!("subject {id} not found")))?;
                Ok(Json(Subject::from_row(&row)))
            })
        })
        .await
}
