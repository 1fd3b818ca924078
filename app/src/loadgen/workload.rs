//! One virtual user: a student who searches and views tutors, lists their bookings, books,
//! moves bookings through their states and reviews them (about 80% reads, 20% writes),
//! carrying the causal token of their last write into their reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::json;

use super::client::Http;
use super::seed::World;
use super::stats::{rfc3339_hours_after_2030, Rng};

/// The operations, in report order.
pub const OPS: [&str; 9] = [
    "search_tutors",
    "view_tutor",
    "list_bookings",
    "view_booking",
    "book",
    "confirm",
    "complete",
    "review",
    "cancel",
];

/// Counters shared by every user and the progress printer.
#[derive(Default)]
pub struct Shared {
    /// Requests finished.
    pub requests: AtomicU64,
    /// Failures: transport errors, 5xx, unexpected 4xx, stale reads.
    pub errors: AtomicU64,
    /// Expected conflicts (409 from a race on a booking's state or slot).
    pub conflicts: AtomicU64,
    /// Reads that did not see the user's own committed write.
    pub stale_reads: AtomicU64,
    /// Latencies (µs) of the current progress window.
    pub window: Mutex<Vec<u32>>,
    /// Next booking slot (hours after 2030-01-01), unique per run.
    pub slot: AtomicU64,
    /// The first few error descriptions.
    pub first_errors: Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut v = self.first_errors.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < 10 {
            v.push(what);
        }
    }
}

/// What one user measured: latencies (µs) per operation index of [`OPS`].
pub type UserResult = Vec<Vec<u32>>;

struct User {
    http: Http,
    world: Arc<World>,
    shared: Arc<Shared>,
    rng: Rng,
    student: i64,
    causal: Option<String>,
    requested: Vec<i64>,
    confirmed: Vec<i64>,
    completed: Vec<i64>,
    mine: Vec<i64>,
    check: Option<i64>,
    lat: UserResult,
}

/// Runs user `n` until `deadline`, pacing to `interval` per request when given.
pub async fn run_user(
    n: usize,
    http: Http,
    world: Arc<World>,
    shared: Arc<Shared>,
    deadline: Instant,
    interval: Option<Duration>,
) -> UserResult {
    let mut u = User {
        http,
        student: world.students[n % world.students.len()],
        world,
        shared,
        rng: Rng::new(0xC0FFEE ^ ((n as u64 + 1) * 7919)),
        causal: None,
        requested: Vec::new(),
        confirmed: Vec::new(),
        completed: Vec::new(),
        mine: Vec::new(),
        check: None,
        lat: vec![Vec::new(); OPS.len()],
    };
    let mut next = Instant::now();
    if let Some(iv) = interval {
        // Spread the users' first requests over one interval.
        next += iv.mul_f64(u.rng.below(1000) as f64 / 1000.0);
    }
    while Instant::now() < deadline {
        if let Some(iv) = interval {
            tokio::time::sleep_until(next.into()).await;
            next += iv;
            if Instant::now() > next + Duration::from_secs(1) {
                next = Instant::now(); // too far behind: do not burst to catch up
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        u.step().await;
    }
    u.lat
}

fn trim(v: &mut Vec<i64>) {
    if v.len() > 50 {
        v.remove(0);
    }
}

impl User {
    async fn step(&mut self) {
        let roll = self.rng.below(100);
        if let Some(id) = self.check.take() {
            // Read-your-writes: the booking this user just created must be visible.
            return self.view_booking(id, true).await;
        }
        match roll {
            0..=34 => self.search().await,
            35..=59 => self.view_tutor().await,
            60..=71 => self.list_bookings().await,
            72..=79 => match self.mine.last().copied() {
                Some(id) => self.view_booking(id, false).await,
                None => self.view_tutor().await,
            },
            80..=87 => self.book().await,
            88..=91 => self.advance(5).await,
            92..=94 => self.advance(6).await,
            95..=97 => self.advance(7).await,
            _ => self.advance(8).await,
        }
    }

    async fn call(
        &mut self,
        op: usize,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Option<(u16, serde_json::Value)> {
        let t = Instant::now();
        let causal = if method == Method::GET {
            self.causal.clone()
        } else {
            None
        };
        let r = self
            .http
            .send(method.clone(), path, body.as_ref(), causal.as_deref())
            .await;
        let us = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        self.lat[op].push(us);
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        self.shared
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(us);
        match r {
            Err(e) => {
                self.shared.error(format!("{method} {path}: {e:#}"));
                None
            }
            Ok(r) => {
                if let Some(l) = r.header("x-causal-lsn") {
                    self.causal = Some(l.to_owned());
                }
                match r.status {
                    200 | 201 => Some((r.status, r.json())),
                    409 if op >= 4 => {
                        self.shared.conflicts.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    s => {
                        self.shared
                            .error(format!("{method} {path}: HTTP {s} {}", r.text()));
                        None
                    }
                }
            }
        }
    }

    async fn search(&mut self) {
        let subject = *self.rng.pick(&self.world.subjects);
        let min = [0.0, 0.0, 1.0, 3.0, 4.0][self.rng.below(5)];
        let path = format!("/tutors?subject_id={subject}&min_rating={min}&limit=20");
        self.call(0, Method::GET, &path, None).await;
    }

    async fn view_tutor(&mut self) {
        let t = *self.rng.pick(&self.world.tutors);
        self.call(1, Method::GET, &format!("/tutors/{t}"), None)
            .await;
    }

    async fn list_bookings(&mut self) {
        let path = format!("/bookings?student_id={}&limit=20", self.student);
        self.call(2, Method::GET, &path, None).await;
    }

    async fn view_booking(&mut self, id: i64, must_exist: bool) {
        let t = Instant::now();
        let causal = self.causal.clone();
        let path = format!("/bookings/{id}");
        let r = self
            .http
            .send(Method::GET, &path, None, causal.as_deref())
            .await;
        let us = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        self.lat[3].push(us);
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        self.shared
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(us);
        match r {
            Ok(r) if r.status == 200 => {}
            Ok(r) if r.status == 404 && must_exist => {
                self.shared.stale_reads.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .error(format!("stale read: GET {path} after creating it: 404"));
            }
            Ok(r) => self
                .shared
                .error(format!("GET {path}: HTTP {} {}", r.status, r.text())),
            Err(e) => self.shared.error(format!("GET {path}: {e:#}")),
        }
    }

    async fn book(&mut self) {
        let tutor = *self.rng.pick(&self.world.tutors);
        let slot = self.shared.slot.fetch_add(1, Ordering::Relaxed) % (9 * 365 * 24);
        let body = json!({
            "tutor_id": tutor,
            "student_id": self.student,
            "starts_at": rfc3339_hours_after_2030(slot),
            "ends_at": rfc3339_hours_after_2030(slot + 1),
        });
        if let Some((_, b)) = self.call(4, Method::POST, "/bookings", Some(body)).await {
            if let Some(id) = b["id"].as_i64() {
                self.requested.push(id);
                self.mine.push(id);
                trim(&mut self.requested);
                trim(&mut self.mine);
                self.check = Some(id);
            }
        }
    }

    /// op 5 confirm, 6 complete, 7 review, 8 cancel; falls back to an earlier step (or a
    /// booking) when the user has no booking in the needed state.
    async fn advance(&mut self, op: usize) {
        let op = match op {
            7 if self.completed.is_empty() => 6,
            _ => op,
        };
        let op = match op {
            6 if self.confirmed.is_empty() => 5,
            _ => op,
        };
        if (op == 5 || op == 8) && self.requested.is_empty() {
            return self.book().await;
        }
        let (list, path, body) = match op {
            5 => (&mut self.requested, "confirm", None),
            6 => (&mut self.confirmed, "complete", None),
            7 => (
                &mut self.completed,
                "review",
                Some(json!({ "rating": 1 + (self.rng.below(5) as i64), "comment": "great" })),
            ),
            _ => (&mut self.requested, "cancel", None),
        };
        let i = self.rng.below(list.len());
        let id = list.swap_remove(i);
        let ok = self
            .call(op, Method::POST, &format!("/bookings/{id}/{path}"), body)
            .await
            .is_some();
        if ok {
            match op {
                5 => {
                    self.confirmed.push(id);
                    trim(&mut self.confirmed);
                }
                6 => {
                    self.completed.push(id);
                    trim(&mut self.completed);
                }
                _ => {}
            }
        }
    }
}
