//! Students: `POST /students`, `GET /students`, `GET /students/{id}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;

use super::{page, text, Id, JsonBody, Page, Query, Written};
use crate::db::{Causal, Work};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// A student who books tutors.
#[derive(Debug, Serialize, Deserialize)]
pub struct Student {
    /// Id.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Unique e-mail address.
    pub email: String,
}

impl Student {
    fn from_row(r: &Row) -> Student {
        Student {
            id: r.get(0),
            name: r.get(1),
            email: r.get(2),
        }
    }
}

/// Body of `POST /students`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewStudent {
    /// 1..=200 characters.
    pub name: String,
    /// Contains '@'; unique.
    pub email: String,
}

/// Query of `GET /students`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
    offset: Option<i64>,
}

/// `POST /students`: 201, 409 when the e-mail is taken, 422 on bad fields.
pub async fn create(
    State(st): State<AppState>,
    JsonBody(b): JsonBody<NewStudent>,
) -> ApiResult<Written<Student>> {
    text("name", &b.name, 1, 200)?;
    text("email", &b.email, 3, 320)?;
    if !b.email.contains('@') || b.email.starts_with('@') {
        return Err(ApiError::Invalid("email must look like name@host".into()));
    }
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Write, |c| {
                // A transaction of one statement: a failed BEGIN shows the insert never ran.
                let (tx, stmts) = c.begin(st.db.timeout()).await?;
                let s = stmts
                    .get(
                        &tx,
                        "INSERT INTO students (name, email) VALUES ($1, $2) \
                     ON CONFLICT (email) DO NOTHING RETURNING id, name, email",
                    )
                    .await?;
                let row = tx
                    .query_opt(&s, &[&b.name, &b.email])
                    .await?
                    .ok_or_else(|| ApiError::Conflict(format!("email {:?} is taken", b.email)))?;
                tx.commit().await?;
                let lsn = st.db.causal_token(c).await;
                Ok(Written {
                    status: StatusCode::CREATED,
                    body: Student::from_row(&row),
                    lsn,
                })
            })
        })
        .await
}

/// `GET /students?limit&offset`, newest first.
pub async fn list(
    State(st): State<AppState>,
    causal: Causal,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Student>>> {
    let (limit, offset) = page(q.limit, q.offset)?;
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Read(&causal), |c| {
                let s = c
                    .stmt(
                        "SELECT id, name, email FROM students ORDER BY id DESC LIMIT $1 OFFSET $2",
                    )
                    .await?;
                let rows = c.client.query(&s, &[&limit, &offset]).await?;
                let items = rows.iter().map(Student::from_row).collect();
                Ok(Json(Page::new(items, limit, offset)))
            })
        })
        .await
}

/// `GET /students/{id}`.
pub async fn get_one(
    State(st): State<AppState>,
    causal: Causal,
    Id(id): Id,
) -> ApiResult<Json<Student>> {
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Read(&causal), |c| {
                let s = c
                    .stmt("SELECT id, name, email FROM students WHERE id = $1")
                    .await?;
                let row = c
                    .client
                    .query_opt(&s, &[&id])
                    .await?
                    .ok_or_else(|| ApiError::NotFound(format!("student {id} not found")))?;
                Ok(Json(Student::from_row(&row)))
            })
        })
        .await
}
