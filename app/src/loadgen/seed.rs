//! Seeding through the API: subjects (reused when present), then this run's tutors (with a
//! long availability window) and students.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::client::{Http, Resp};
use super::stats::Rng;

/// Subjects the seed keeps (names "Subject 1".."Subject N").
pub const SUBJECTS: usize = 20;

/// Ids the workload draws from.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// Subject ids.
    pub subjects: Vec<i64>,
    /// Tutor ids (each available 2030-01-01..2040-01-01).
    pub tutors: Vec<i64>,
    /// Student ids.
    pub students: Vec<i64>,
}

fn id(r: &Resp, what: &str) -> Result<i64> {
    if r.status != 201 {
        bail!("creating {what}: HTTP {} {}", r.status, r.text());
    }
    r.json()["id"]
        .as_i64()
        .with_context(|| format!("creating {what}: no id in {}", r.text()))
}

async fn subjects(http: &Http) -> Result<Vec<i64>> {
    let list = http.get("/subjects?limit=100").await?;
    let mut have: Vec<(String, i64)> = list.json()["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["name"].as_str()?.to_owned(), s["id"].as_i64()?)))
        .collect();
    for i in 1..=SUBJECTS {
        let name = format!("Subject {i}");
        if have.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let r = http.post("/subjects", &json!({ "name": name })).await?;
        if r.status == 409 {
            continue; // created concurrently; picked up below
        }
        have.push((name, id(&r, "a subject")?));
    }
    if have.len() < SUBJECTS {
        let list = http.get("/subjects?limit=100").await?;
        have = list.json()["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s["name"].as_str()?.to_owned(), s["id"].as_i64()?)))
            .collect();
    }
    Ok(have.into_iter().map(|(_, id)| id).collect())
}

/// Runs `make(i)` for i in 0..n on `workers` tasks; returns the ids in order.
async fn parallel<F, Fut>(n: usize, workers: usize, make: F) -> Result<Vec<i64>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<i64>> + Send,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let (make, next) = (make.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(out);
                }
                out.push((i, make(i).await?));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    Ok(all.into_iter().map(|(_, id)| id).collect())
}

/// Creates the world for run `run` (a tag that keeps e-mails unique across runs).
pub async fn seed(http: &Http, run: &str, tutors: usize, students: usize) -> Result<World> {
    let subjects = subjects(http).await?;
    let subj = Arc::new(subjects.clone());
    let h = http.clone();
    let tag = run.to_owned();
    let tutor_ids = parallel(tutors, 8, move |i| {
        let (h, subj, tag) = (h.clone(), subj.clone(), tag.clone());
        async move {
            let mut rng = Rng::new(i as u64 + 7);
            let picked: Vec<i64> = (0..3).map(|_| *rng.pick(&subj)).collect();
            let body: Value = json!({
                "name": format!("Tutor {tag}-{i}"),
                "bio": "Patient, structured, exam-focused.",
                "hourly_rate_cents": 2000 + rng.below(8000) as i64,
                "subject_ids": picked,
            });
            let t = id(&h.post("/tutors", &body).await?, "a tutor")?;
            let slot =
                json!({ "starts_at": "2030-01-01T00:00:00Z", "ends_at": "2040-01-01T00:00:00Z" });
            let r = h.post(&format!("/tutors/{t}/availability"), &slot).await?;
            id(&r, "availability")?;
            Ok(t)
        }
    })
    .await?;
    let h = http.clone();
    let tag = run.to_owned();
    let student_ids = parallel(students, 8, move |i| {
        let (h, tag) = (h.clone(), tag.clone());
        async move {
            let body = json!({
                "name": format!("Student {tag}-{i}"),
                "email": format!("student-{tag}-{i}@loadgen.example"),
            });
            id(&h.post("/students", &body).await?, "a student")
        }
    })
    .await?;
    Ok(World {
        subjects,
        tutors: tutor_ids,
        students: student_ids,
    })
}
