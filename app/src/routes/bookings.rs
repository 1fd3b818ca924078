//! Bookings and reviews: `POST/GET /bookings`, `GET /bookings/{id}`, the state machine
//! (`requested -> confirmed -> completed`, `requested|confirmed -> cancelled`; anything else
//! is 409), `POST /bookings/{id}/review` and `GET /tutors/{id}/reviews`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;

use super::{page, text, Id, JsonBody, Page, Query, Written};
use crate::db::{Causal, Work};
use crate::error::{ApiError, ApiResult};
use crate::{iso, AppState};

/// Longest booking, in hours.
pub const MAX_HOURS: f64 = 8.0;

/// A booking of a tutor by a student.
#[derive(Debug, Serialize, Deserialize)]
pub struct Booking {
    /// Id.
    pub id: i64,
    /// Tutor id.
    pub tutor_id: i64,
    /// Student id.
    pub student_id: i64,
    /// Start (RFC 3339).
    pub starts_at: String,
    /// End (RFC 3339).
    pub ends_at: String,
    /// requested, confirmed, completed or cancelled.
    pub status: String,
    /// Price at the tutor's rate when booked.
    pub price_cents: i64,
}

macro_rules! booking_cols {
    () => {
        concat!(
            "id, tutor_id, student_id, ",
            iso!("starts_at"),
            ", ",
            iso!("ends_at"),
            ", status, price_cents"
        )
    };
}

impl Booking {
    fn from_row(r: &Row) -> Booking {
        Booking {
            id: r.get(0),
            tutor_id: r.get(1),
            student_id: r.get(2),
            starts_at: r.get(3),
            ends_at: r.get(4),
            status: r.get(5),
            price_cents: r.get(6),
        }
    }
}

/// Body of `POST /bookings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBooking {
    /// Tutor id.
    pub tutor_id: i64,
    /// Student id.
    pub student_id: i64,
    /// Start, RFC 3339.
    pub starts_at: String,
    /// End, RFC 3339; within one of the tutor's availability windows, at most MAX_HOURS later.
    pub ends_at: String,
}

/// Query of `GET /bookings`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    student_id: Option<i64>,
    tutor_id: Option<i64>,
    status: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// A review of a completed booking.
#[derive(Debug, Serialize, Deserialize)]
pub struct Review {
    /// Id.
    pub id: i64,
    /// The reviewed booking.
    pub booking_id: i64,
    /// Tutor id.
    pub tutor_id: i64,
    /// Student id.
    pub student_id: i64,
    /// 1..=5.
    pub rating: i16,
    /// Free text.
    pub comment: String,
}

impl Review {
    fn from_row(r: &Row) -> Review {
        Review {
            id: r.get(0),
            booking_id: r.get(1),
            tutor_id: r.get(2),
            student_id: r.get(3),
            rating: r.get(4),
            comment: r.get(5),
        }
    }
}

/// Body of `POST /bookings/{id}/review`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewReview {
    /// 1..=5.
    pub rating: i64,
    /// Up to 2000 characters.
    #[serde(default)]
    pub comment: String,
}

/// `POST /bookings/{id}/review` answer: the review and the tutor's new rating.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reviewed {
    /// The stored review.
    pub review: Review,
    /// The tutor's average rating after it.
    pub tutor_rating: f64,
    /// The tutor's review count after it.
    pub tutor_review_count: i32,
}

/// Query of `GET /tutors/{id}/reviews`.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    limit: Option<i64>,
    offset: Option<i64>,
}

const STATUSES: [&str; 4] = ["requested", "confirmed", "completed", "cancelled"];

/// `POST /bookings`: 201 `requested`; 404 unknown tutor/student; 422 outside the tutor's
/// availability or bad times; 409 overlapping another active booking of the tutor.
pub async fn create(
    State(st): State<AppState>,
    JsonBody(b): JsonBody<NewBooking>,
) -> ApiResult<Written<Booking>> {
    text("starts_at", &b.starts_at, 1, 64)?;
    text("ends_at", &b.ends_at, 1, 64)?;
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Write, |c| {
            let (tx, stmts) = c.begin(st.db.timeout()).await?;
            // Locking the tutor row serialises this tutor's bookings (the overlap check).
            let s = stmts
                .get(
                    &tx,
                    "SELECT t.hourly_rate_cents, \
                       EXISTS (SELECT 1 FROM students WHERE id = $2), \
                       extract(epoch FROM $4::text::timestamptz - $3::text::timestamptz)::float8, \
                       EXISTS (SELECT 1 FROM availability a WHERE a.tutor_id = t.id \
                               AND a.starts_at <= $3::text::timestamptz AND a.ends_at >= $4::text::timestamptz), \
                       EXISTS (SELECT 1 FROM bookings k WHERE k.tutor_id = t.id \
                               AND k.status IN ('requested', 'confirmed') \
                               AND k.starts_at < $4::text::timestamptz AND k.ends_at > $3::text::timestamptz) \
                     FROM tutors t WHERE t.id = $1 FOR UPDATE OF t",
                )
                .await?;
            let row = tx
                .query_opt(&s, &[&b.tutor_id, &b.student_id, &b.starts_at, &b.ends_at])
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("tutor {} not found", b.tutor_id)))?;
            let (rate, student, secs, available, overlap): (i32, bool, f64, bool, bool) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            if !student {
                return Err(ApiError::NotFound(format!("student {} not found", b.student_id)));
            }
            if secs <= 0.0 || secs > MAX_HOURS * 3600.0 {
                return Err(ApiError::Invalid(format!(
                    "ends_at must be after starts_at, by at most {MAX_HOURS} hours"
                )));
            }
            if !available {
                return Err(ApiError::Invalid(
                    "the tutor is not available at that time".into(),
                ));
            }
            if overlap {
                return Err(ApiError::Conflict(
                    "the tutor already has a booking at that time".into(),
                ));
            }
            let price = (f64::from(rate) * secs / 3600.0).round() as i64;
            let s = stmts
                .get(
                    &tx,
                    concat!(
                        "INSERT INTO bookings (tutor_id, student_id, starts_at, ends_at, price_cents) \
                         VALUES ($1, $2, $3::text::timestamptz, $4::text::timestamptz, $5) RETURNING ",
                        booking_cols!()
                    ),
                )
                .await?;
            let row = tx
                .query_one(&s, &[&b.tutor_id, &b.student_id, &b.starts_at, &b.ends_at, &price])
                .await?;
            tx.commit().await?;
            let lsn = st.db.causal_token(c).await;
            Ok(Written {
                status: StatusCode::CREATED,
                body: Booking::from_row(&row),
                lsn,
            })
        })
        })
        .await
}

/// `GET /bookings/{id}`.
pub async fn get_one(
    State(st): State<AppState>,
    causal: Causal,
    Id(id): Id,
) -> ApiResult<Json<Booking>> {
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Read(&causal), |c| {
                let s = c
                    .stmt(concat!(
                        "SELECT ",
                        booking_cols!(),
                        " FROM bookings WHERE id = $1"
                    ))
                    .await?;
                let row = c
                    .client
                    .query_opt(&s, &[&id])
                    .await?
                    .ok_or_else(|| ApiError::NotFound(format!("booking {id} not found")))?;
                Ok(Json(Booking::from_row(&row)))
            })
        })
        .await
}

/// `GET /bookings?student_id&tutor_id&status&limit&offset`, newest first.
pub async fn list(
    State(st): State<AppState>,
    causal: Causal,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Page<Booking>>> {
    let (limit, offset) = page(q.limit, q.offset)?;
    if let Some(s) = &q.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "status must be one of {}",
                STATUSES.join(", ")
            )));
        }
    }
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Read(&causal), |c| {
                let s = c
                    .stmt(concat!(
                        "SELECT ",
                        booking_cols!(),
                        " FROM bookings WHERE ($1::int8 IS NULL OR student_id = $1) \
                     AND ($2::int8 IS NULL OR tutor_id = $2) AND ($3::text IS NULL OR status = $3) \
                     ORDER BY id DESC LIMIT $4 OFFSET $5"
                    ))
                    .await?;
                let rows = c
                    .client
                    .query(
                        &s,
                        &[&q.student_id, &q.tutor_id, &q.status, &limit, &offset],
                    )
                    .await?;
                let items = rows.iter().map(Booking::from_row).collect();
                Ok(Json(Page::new(items, limit, offset)))
            })
        })
        .await
}

/// Moves booking `id` to `to` if its status is one of `from`; else 409 (or 404).
async fn transition(
    st: &AppState,
    id: i64,
    from: &'static [&'static str],
    to: &'static str,
) -> ApiResult<Written<Booking>> {
    let from: Vec<&str> = from.to_vec();
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Write, |c| {
                // In a transaction: a failed BEGIN shows the update never ran.
                let (tx, stmts) = c.begin(st.db.timeout()).await?;
                let s = stmts
                    .get(
                        &tx,
                        concat!(
                            "UPDATE bookings SET status = $2, updated_at = now() \
                         WHERE id = $1 AND status = ANY($3) RETURNING ",
                            booking_cols!()
                        ),
                    )
                    .await?;
                let row = tx.query_opt(&s, &[&id, &to, &from]).await?;
                let Some(row) = row else {
                    let s = stmts
                        .get(&tx, "SELECT status FROM bookings WHERE id = $1")
                        .await?;
                    return match tx.query_opt(&s, &[&id]).await? {
                        None => Err(ApiError::NotFound(format!("booking {id} not found"))),
                        Some(r) => {
                            let status: String = r.get(0);
                            Err(ApiError::Conflict(format!(
                                "booking {id} is {status}: it cannot become {to}"
                            )))
                        }
                    };
                };
                tx.commit().await?;
                let lsn = st.db.causal_token(c).await;
                Ok(Written {
                    status: StatusCode::OK,
                    body: Booking::from_row(&row),
                    lsn,
                })
            })
        })
        .await
}

/// `POST /bookings/{id}/confirm`: requested -> confirmed.
pub async fn confirm(State(st): State<AppState>, Id(id): Id) -> ApiResult<Written<Booking>> {
    transition(&st, id, &["requested"], "confirmed").await
}

/// `POST /bookings/{id}/complete`: confirmed -> completed.
pub async fn complete(State(st): State<AppState>, Id(id): Id) -> ApiResult<Written<Booking>> {
    transition(&st, id, &["confirmed"], "completed").await
}

/// `POST /bookings/{id}/cancel`: requested or confirmed -> cancelled.
pub async fn cancel(State(st): State<AppState>, Id(id): Id) -> ApiResult<Written<Booking>> {
    transition(&st, id, &["requested", "confirmed"], "cancelled").await
}

/// `POST /bookings/{id}/review`: 201; the tutor's rating is updated in the same transaction.
/// 409 unless the booking is completed and not yet reviewed; 422 rating not in 1..=5.
pub async fn review(
    State(st): State<AppState>,
    Id(id): Id,
    JsonBody(b): JsonBody<NewReview>,
) -> ApiResult<Written<Reviewed>> {
    if !(1..=5).contains(&b.rating) {
        return Err(ApiError::Invalid("rating must be between 1 and 5".into()));
    }
    let rating = b.rating as i16;
    text("comment", &b.comment, 0, 2000)?;
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Write, |c| {
                let (tx, stmts) = c.begin(st.db.timeout()).await?;
                let s = stmts
                    .get(&tx, "SELECT status FROM bookings WHERE id = $1 FOR UPDATE")
                    .await?;
                let status: String = tx
                    .query_opt(&s, &[&id])
                    .await?
                    .ok_or_else(|| ApiError::NotFound(format!("booking {id} not found")))?
                    .get(0);
                if status != "completed" {
                    return Err(ApiError::Conflict(format!(
                        "booking {id} is {status}: only completed bookings can be reviewed"
                    )));
                }
                let s = stmts
                    .get(
                        &tx,
                        "INSERT INTO reviews (booking_id, tutor_id, student_id, rating, comment) \
                     SELECT id, tutor_id, student_id, $2, $3 FROM bookings WHERE id = $1 \
                     ON CONFLICT (booking_id) DO NOTHING \
                     RETURNING id, booking_id, tutor_id, student_id, rating, comment",
                    )
                    .await?;
                let row = tx
                    .query_opt(&s, &[&id, &rating, &b.comment])
                    .await?
                    .ok_or_else(|| {
                        ApiError::Conflict(format!("booking {id} is already reviewed"))
                    })?;
                let review = Review::from_row(&row);
                let s = stmts
                    .get(
                        &tx,
                        "UPDATE tutors SET review_count = review_count + 1, \
                     rating_sum = rating_sum + $2, \
                     rating = (rating_sum + $2)::float8 / (review_count + 1) \
                     WHERE id = $1 RETURNING rating, review_count",
                    )
                    .await?;
                let t = tx
                    .query_one(&s, &[&review.tutor_id, &i64::from(rating)])
                    .await?;
                let (tutor_rating, tutor_review_count) = (t.get(0), t.get(1));
                tx.commit().await?;
                let lsn = st.db.causal_token(c).await;
                Ok(Written {
                    status: StatusCode::CREATED,
                    body: Reviewed {
                        review,
                        tutor_rating,
                        tutor_review_count,
                    },
                    lsn,
                })
            })
        })
        .await
}

/// `GET /tutors/{id}/reviews?limit&offset`, newest first; 404 unknown tutor.
pub async fn list_reviews(
    State(st): State<AppState>,
    causal: Causal,
    Id(id): Id,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<Review>>> {
    let (limit, offset) = page(q.limit, q.offset)?;
    st.db
        .timed(async {
            crate::db_run!(&st.db, Work::Read(&causal), |c| {
                let s = c
                .stmt(
                    "SELECT id, booking_id, tutor_id, student_id, rating, comment FROM reviews \
                     WHERE tutor_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
                )
                .await?;
                let rows = c.client.query(&s, &[&id, &limit, &offset]).await?;
                if rows.is_empty() {
                    super::tutors::ensure_tutor(c, id).await?;
                }
                let items = rows.iter().map(Review::from_row).collect();
                Ok(Json(Page::new(items, limit, offset)))
            })
        })
        .await
}
