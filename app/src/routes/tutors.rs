//! Tutors and their availability: `POST/GET /tutors`, `GET/PATCH /tutors/{id}`,
//! `POST/GET /tutors/{id}/availability`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio_postgres::{GenericClient, Row};

use super::{page, text, Id, JsonBody, Page, Query, Written};
use crate::db::{Causal, Stmts, Work};
use crate::error::{ApiError, ApiResult};
use crate::{iso, AppState};

/// Highest hourly rate accepted, in cents.
pub const MAX_RATE_CENTS: i32 = 1_000_000;
/// Most subjects one tutor may list.
pub const MAX_SUBJECTS: usize = 20;

/// A tutor's public profile.
#[derive(Debug, Serialize, Deserialize)]
pub struct Tutor {
    /// Id.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Free text.
    pub bio: String,
    /// Price of one hour, in cents.
    pub hourly_rate_cents: i32,
    /// Average review rating (0 before the first review).
    pub rating: f64,
    /// Number of reviews.
    pub review_count: i32,
    /// Subjects taught.
    pub subject_ids: Vec<i64>,
}

impl Tutor {
    fn from_row(r: &Row) -> Tutor {
        Tutor {
            id: r.get(0),
            name: r.get(1),
            bio: r.get(2),
            hourly_rate_cents: r.get(3),
            rating: r.get(4),
            review_count: r.get(5),
            subject_ids: r.get(6),
        }
    }
}

/// Body of `POST /tutors`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTutor {
    /// 1..=200 characters.
    pub name: String,
    /// Up to 2000 characters.
    #[serde(default)]
    pub bio: String,
    /// 0..=MAX_RATE_CENTS.
    pub hourly_rate_cents: i64,
    /// Existing subject ids, at most MAX_SUBJECTS.
    #[serde(default)]
    pub subject_ids: Vec<i64>,
}

/// Body of `PATCH /tutors/{id}`: any subset of the fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TutorPatch {
    name: Option<String>,
    bio: Option<String>,
    hourly_rate_cents: Option<i64>,
    subject_ids: Option<Vec<i64>>,
}

/// Query of `GET /tutors`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    subject_id: Option<i64>,
    min_rating: Option<f64>,
    max_rate_cents: Option<i32>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// A window in which a tutor can be booked.
#[derive(Debug, Serialize, Deserialize)]
pub struct Slot {
    /// Id.
    pub id: i64,
    /// Tutor id.
    pub tutor_id: i64,
    /// Start (RFC 3339).
    pub starts_at: String,
    /// End (RFC 3339).
    pub ends_at: String,
}

/// Body of `POST /tutors/{id}/availability`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSlot {
    /// Start, RFC 3339.
    pub starts_at: String,
    /// End, RFC 3339, after the start.
    pub ends_at: String,
}

/// Query of `GET /tutors/{id}/availability`.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    limit: Option<i64>,
    offset: Option<i64>,
}

fn rate(v: i64) -> ApiResult<i32> {
    if !(0..=i64::from(MAX_RATE_CENTS)).contains(&v) {
        return Err(ApiError::Invalid(format!(
            "hourly_rate_cents must be between 0 and {MAX_RATE_CENTS}"
        )));
    }
    Ok(v as i32)
}

fn subjects(ids: &[i64]) -> ApiResult<Vec<i64>> {
    if ids.len() > MAX_SUBJECTS {
        return Err(ApiError::Invalid(format!(
            "at most {MAX_SUBJECTS} subject_ids"
        )));
    }
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// Replaces a tutor's subjects; 422 when one does not exist.
async fn set_subjects<C: GenericClient>(
    tx: &C,
    stmts: &mut Stmts,
    tutor: i64,
    ids: &[i64],
) -> ApiResult<()> {
    let s = stmts
        .get(tx, "SELECT count(*) FROM subjects WHERE id = ANY($1)")
        .await?;
    let known: i64 = tx.query_one(&s, &[&ids]).await?.get(0);
    if known != ids.len() as i64 {
        return Err(ApiError::Invalid(
            "unknown subject id in subject_ids".into(),
        ));
    }
    let s = stmts
        .get(tx, "DELETE FROM tutor_subjects WHERE tutor_id = $1")
        .await?;
    tx.execute(&s, &[&tutor]).await?;
    let s = stmts
        .get(
            tx,
            "INSERT INTO tutor_subjects (tutor_id, subject_id) SELECT $1, unnest($2::int8[])",
        )
        .await?;
    tx.execute(&s, &[&tutor, &ids]).await?;
    Ok(())
}

async fn fetch<C: GenericClient>(c: &C, stmts: &mut Stmts, id: i64) -> ApiResult<Tutor> {
    let s = stmts.get(c, TUTOR_BY_ID).await?;
    let row = c
        .query_opt(&s, &[&id])
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("tutor {id} not found")))?;
    Ok(Tutor::from_row(&row))
}

const TUTOR_BY_ID: &str =
    "SELECT t.id, t.name, t.bio, t.hourly_rate_cents, t.rating, t.review_count, \
     ARRAY(SELECT ts.subject_id FROM tutor_subjects ts WHERE ts.tutor_id = t.id ORDER BY 1) \
     FROM tutors t WHERE t.id = $1";

/// `POST /tutors`: 201 with the profile.
pub async fn create(
    State(st): State<AppState>,
    JsonBody(b): JsonBody<NewTutor>,
) -> ApiResult<Written<Tutor>> {
    text("name", &b.name, 1, 200)?;
    text("bio", &b.bio, 0, 2000)?;
    let rate = rate(b.hourly_rate_cents)?;
    let ids = subjects(&b.subject_ids)?;
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Write, |c| {
            let (tx, stmts) = c.begin(st.db.timeout()).await?;
            let s = stmts
                .get(
                    &tx,
                    "INSERT INTO tutors (name, bio, hourly_rate_cents) VALUES ($1, $2, $3) RETURNING id",
                )
                .await?;
            let id: i64 = tx.query_one(&s, &[&b.name, &b.bio, &rate]).await?.get(0);
            if !ids.is_empty() {
                set_subjects(&tx, stmts, id, &ids).await?;
            }
            let tutor = fetch(&tx, stmts, id).await?;
            tx.commit().await?;
            let lsn = st.db.causal_token(c).await;
            Ok(Written {
                status: StatusCode::CREATED,
                body: tutor,
                lsn,
            })
        })
        })
        .await
}

/// `PATCH /tutors/{id}`: updates the given fields; 404 for an unknown tutor.
pub async fn update(
    State(st): State<AppState>,
    Id(id): Id,
    JsonBody(b): JsonBody<TutorPatch>,
) -> ApiResult<Written<Tutor>> {
    if let Some(n) = &b.name {
        text("name", n, 1, 200)?;
    }
    if let Some(bio) = &b.bio {
        text("bio", bio, 0, 2000)?;
    }
    let rate = b.hourly_rate_cents.map(rate).transpose()?;
    let ids = b.subject_ids.as_deref().map(subjects).transpose()?;
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Write, |c| {
            let (tx, stmts) = c.begin(st.db.timeout()).await?;
            let s = stmts
                .get(
                    &tx,
                    "UPDATE tutors SET name = coalesce($2, name), bio = coalesce($3, bio), \
                     hourly_rate_cents = coalesce($4, hourly_rate_cents) WHERE id = $1 RETURNING id",
                )
                .await?;
            tx.query_opt(&s, &[&id, &b.name, &b.bio, &rate])
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("tutor {id} not found")))?;
            if let Some(ids) = &ids {
                set_subjects(&tx, stmts, id, ids).await?;
            }
            let tutor = fetch(&tx, stmts, id).await?;
            tx.commit().await?;
            let lsn = st.db.causal_token(c).await;
            Ok(Written {
                status: StatusCode::OK,
                body: tutor,
                lsn,
            })
        })
        })
        .await
}

/// `GET /tutors?subject_id&min_rating&max_rate_cents&limit&offset`, best rated first.
pub async fn list(
    State(st): State<AppState>,
    causal: Causal,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Tutor>>> {
    let (limit, offset) = page(q.limit, q.offset)?;
    let min_rating = q.min_rating.unwrap_or(0.0);
    if !(0.0..=5.0).contains(&min_rating) {
        return Err(ApiError::BadRequest(
            "min_rating must be between 0 and 5".into(),
        ));
    }
    if q.max_rate_cents.is_some_and(|r| r < 0) {
        return Err(ApiError::BadRequest("max_rate_cents must be >= 0".into()));
    }
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Read(&causal), |c| {
            let s = c
                .stmt(
                    "SELECT t.id, t.name, t.bio, t.hourly_rate_cents, t.rating, t.review_count, \
                     ARRAY(SELECT ts.subject_id FROM tutor_subjects ts WHERE ts.tutor_id = t.id ORDER BY 1) \
                     FROM tutors t \
                     WHERE ($1::int8 IS NULL OR EXISTS (SELECT 1 FROM tutor_subjects x \
                            WHERE x.tutor_id = t.id AND x.subject_id = $1)) \
                       AND t.rating >= $2::float8 \
                       AND ($3::int4 IS NULL OR t.hourly_rate_cents <= $3) \
                     ORDER BY t.rating DESC, t.id LIMIT $4 OFFSET $5",
                )
                .await?;
            let rows = c
                .client
                .query(
                    &s,
                    &[&q.subject_id, &min_rating, &q.max_rate_cents, &limit, &offset],
                )
                .await?;
            let items = rows.iter().map(Tutor::from_row).collect();
            Ok(Json(Page::new(items, limit, offset)))
        })
        })
        .await
}

/// `GET /tutors/{id}`.
pub async fn get_one(
    State(st): State<AppState>,
    causal: Causal,
    Id(id): Id,
) -> ApiResult<Json<Tutor>> {
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Read(&causal), |c| {
                let conn = &mut **c;
                Ok(Json(fetch(&conn.client, &mut conn.stmts, id).await?))
            })
        })
        .await
}

/// `POST /tutors/{id}/availability`: 201; 404 unknown tutor; 422 bad times.
pub async fn add_availability(
    State(st): State<AppState>,
    Id(id): Id,
    JsonBody(b): JsonBody<NewSlot>,
) -> ApiResult<Written<Slot>> {
    text("starts_at", &b.starts_at, 1, 64)?;
    text("ends_at", &b.ends_at, 1, 64)?;
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Write, |c| {
            // A transaction of one statement: a failed BEGIN shows the insert never ran.
            let (tx, stmts) = c.begin(st.db.timeout()).await?;
            let s = stmts
                .get(
                    &tx,
                    concat!(
                        "INSERT INTO availability (tutor_id, starts_at, ends_at) \
                         SELECT t.id, $2::text::timestamptz, $3::text::timestamptz FROM tutors t WHERE t.id = $1 \
                         RETURNING id, tutor_id, ",
                        iso!("starts_at"),
                        ", ",
                        iso!("ends_at")
                    ),
                )
                .await?;
            let row = tx
                .query_opt(&s, &[&id, &b.starts_at, &b.ends_at])
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("tutor {id} not found")))?;
            tx.commit().await?;
            let lsn = st.db.causal_token(c).await;
            Ok(Written {
                status: StatusCode::CREATED,
                body: slot(&row),
                lsn,
            })
        })
        })
        .await
}

fn slot(r: &Row) -> Slot {
    Slot {
        id: r.get(0),
        tutor_id: r.get(1),
        starts_at: r.get(2),
        ends_at: r.get(3),
    }
}

/// `GET /tutors/{id}/availability?limit&offset`, by start time; 404 unknown tutor.
pub async fn list_availability(
    State(st): State<AppState>,
    causal: Causal,
    Id(id): Id,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<Slot>>> {
    let (limit, offset) = page(q.limit, q.offset)?;
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Read(&causal), |c| {
            let s = c
                .stmt(concat!(
                    "SELECT id, tutor_id, ",
                    iso!("starts_at"),
                    ", ",
                    iso!("ends_at"),
                    " FROM availability WHERE tutor_id = $1 ORDER BY starts_at, id LIMIT $2 OFFSET $3"
                ))
                .await?;
            let rows = c.client.query(&s, &[&id, &limit, &offset]).await?;
            if rows.is_empty() {
                ensure_tutor(c, id).await?;
            }
            let items = rows.iter().map(slot).collect();
            Ok(Json(Page::new(items, limit, offset)))
        })
        })
        .await
}

/// 404 unless tutor `id` exists.
pub async fn ensure_tutor(c: &mut crate::db::Conn, id: i64) -> ApiResult<()> {
    let s = c.stmt("SELECT 1 FROM tutors WHERE id = $1").await?;
    match c.client.query_opt(&s, &[&id]).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound(format!("tutor {id} not found"))),
    }
}
