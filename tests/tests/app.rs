//! The bundled app (pgtier-app) end to end: the app runs in-process, talks to a real pgtier in
//! transaction mode in front of a real primary + replicas, and every endpoint and the booking
//! state machine are checked over HTTP (bad input: app_bad_input.rs; TLS to pgtier with
//! `sslmode=verify-full`: app_tls.rs; outages, read-your-writes and load: app_resilience.rs).

mod app_support;

use app_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_request_ids() {
    let (_app, h) = start_app().await;
    let r = h.get("/health").await.unwrap();
    assert_eq!(expect(&r, 200, "health")["status"], "ok");
    assert!(r.header("x-request-id").is_some());
    h.get("/nope").await.unwrap();
    let m = h.get("/metrics").await.unwrap();
    assert_eq!(m.status, 200);
    let text = m.text();
    assert!(
        text.contains(r#"app_http_requests_total{method="GET",route="/health",status="200"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(
        text.contains("app_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("app_db_pool_connections"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_students_tutors_and_availability() {
    let (_app, h) = start_app().await;
    // Subjects.
    let name = unique("Algebra");
    let r = h.post("/subjects", &json!({ "name": name })).await.unwrap();
    let s1 = expect(&r, 201, "create subject");
    assert_eq!(s1["name"], name.as_str());
    if let Some(l) = r.header("x-causal-lsn") {
        assert!(lsn_ok(l), "{l}");
    }
    let s1 = s1["id"].as_i64().unwrap();
    expect_error(
        &h.post("/subjects", &json!({ "name": name })).await.unwrap(),
        409,
        "dup subject",
    );
    let got = expect(
        &h.get(&format!("/subjects/{s1}")).await.unwrap(),
        200,
        "get subject",
    );
    assert_eq!(got["name"], name.as_str());
    let s2 = new_subject(&h).await;
    let page = expect(
        &h.get("/subjects?limit=1").await.unwrap(),
        200,
        "list subjects",
    );
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_offset"], 1);
    let ids = all_ids(&h, "/subjects").await;
    assert!(ids.contains(&s1) && ids.contains(&s2), "{ids:?}");

    // Students.
    let email = format!("{}@example.com", unique("kim"));
    let r = h
        .post("/students", &json!({ "name": "Kim", "email": email }))
        .await
        .unwrap();
    let st = expect(&r, 201, "create student")["id"].as_i64().unwrap();
    expect_error(
        &h.post("/students", &json!({ "name": "Kim2", "email": email }))
            .await
            .unwrap(),
        409,
        "dup email",
    );
    let got = expect(
        &h.get(&format!("/students/{st}")).await.unwrap(),
        200,
        "get student",
    );
    assert_eq!(got["email"], email.as_str());
    assert!(all_ids(&h, "/students").await.contains(&st));

    // Tutors: create, get, patch, filter by subject and rating.
    let r = h
        .post(
            "/tutors",
            &json!({ "name": "Grace", "bio": "compilers", "hourly_rate_cents": 5000, "subject_ids": [s1, s2, s1] }),
        )
        .await
        .unwrap();
    let t = expect(&r, 201, "create tutor");
    assert_eq!(t["subject_ids"], json!([s1.min(s2), s1.max(s2)]));
    assert_eq!(t["rating"], 0.0);
    let t = t["id"].as_i64().unwrap();
    let got = expect(
        &h.get(&format!("/tutors/{t}")).await.unwrap(),
        200,
        "get tutor",
    );
    assert_eq!(got["hourly_rate_cents"], 5000);
    let r = h
        .send(
            Method::PATCH,
            &format!("/tutors/{t}"),
            Some(&json!({ "hourly_rate_cents": 6000, "subject_ids": [s2] })),
            None,
        )
        .await
        .unwrap();
    let patched = expect(&r, 200, "patch tutor");
    assert_eq!(patched["hourly_rate_cents"], 6000);
    assert_eq!(patched["subject_ids"], json!([s2]));
    assert_eq!(patched["bio"], "compilers");
    let by_s2 = expect(
        &h.get(&format!("/tutors?subject_id={s2}")).await.unwrap(),
        200,
        "by s2",
    );
    assert!(by_s2["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == t));
    let by_s1 = expect(
        &h.get(&format!("/tutors?subject_id={s1}")).await.unwrap(),
        200,
        "by s1",
    );
    assert!(!by_s1["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == t));
    let rated = expect(
        &h.get("/tutors?min_rating=4.5&limit=100").await.unwrap(),
        200,
        "rated",
    );
    assert!(rated["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["rating"].as_f64().unwrap() >= 4.5));
    assert!(!rated["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == t));
    let cheap = expect(
        &h.get("/tutors?max_rate_cents=5999&limit=100")
            .await
            .unwrap(),
        200,
        "cheap",
    );
    assert!(!cheap["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == t));

    // Availability.
    let r = h
        .post(
            &format!("/tutors/{t}/availability"),
            &json!({ "starts_at": "2031-03-01T09:00:00+01:00", "ends_at": "2031-03-01T17:00:00Z" }),
        )
        .await
        .unwrap();
    let slot = expect(&r, 201, "availability");
    assert_eq!(slot["starts_at"], "2031-03-01T08:00:00Z");
    let list = expect(
        &h.get(&format!("/tutors/{t}/availability")).await.unwrap(),
        200,
        "slots",
    );
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["ends_at"], "2031-03-01T17:00:00Z");
    let reviews = expect(
        &h.get(&format!("/tutors/{t}/reviews")).await.unwrap(),
        200,
        "reviews",
    );
    assert_eq!(reviews["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booking_state_machine_and_reviews() {
    let (_app, h) = start_app().await;
    let subj = new_subject(&h).await;
    let tutor = new_tutor(&h, &[subj]).await;
    let student = new_student(&h).await;
    let (from, to) = ("2031-01-01T10:00:00Z", "2031-01-01T11:30:00Z");

    let r = book(&h, tutor, student, from, to).await;
    let b = expect(&r, 201, "book");
    assert_eq!(b["status"], "requested");
    assert_eq!(b["price_cents"], 6000); // 1.5 h at 40.00
    let id = b["id"].as_i64().unwrap();
    // The slot is taken while requested/confirmed; outside availability is 422.
    expect_error(
        &book(
            &h,
            tutor,
            student,
            "2031-01-01T11:00:00Z",
            "2031-01-01T12:00:00Z",
        )
        .await,
        409,
        "overlap",
    );
    expect_error(
        &book(
            &h,
            tutor,
            student,
            "2031-01-02T10:00:00Z",
            "2031-01-02T11:00:00Z",
        )
        .await,
        422,
        "unavailable",
    );
    expect_error(&book(&h, tutor, student, to, from).await, 422, "reversed");

    let post = |path: String| {
        let h = h.clone();
        async move { h.post(&path, &json!({})).await.unwrap() }
    };
    let review = |id: i64, rating: i64| {
        let h = h.clone();
        async move {
            h.post(
                &format!("/bookings/{id}/review"),
                &json!({ "rating": rating, "comment": "clear" }),
            )
            .await
            .unwrap()
        }
    };
    // requested: cannot complete, cannot be reviewed.
    expect_error(
        &post(format!("/bookings/{id}/complete")).await,
        409,
        "complete requested",
    );
    expect_error(&review(id, 5).await, 409, "review requested");
    let c = expect(
        &post(format!("/bookings/{id}/confirm")).await,
        200,
        "confirm",
    );
    assert_eq!(c["status"], "confirmed");
    expect_error(
        &post(format!("/bookings/{id}/confirm")).await,
        409,
        "confirm twice",
    );
    expect_error(&review(id, 5).await, 409, "review confirmed");
    let c = expect(
        &post(format!("/bookings/{id}/complete")).await,
        200,
        "complete",
    );
    assert_eq!(c["status"], "completed");
    let msg = expect_error(
        &post(format!("/bookings/{id}/cancel")).await,
        409,
        "cancel completed",
    );
    assert!(msg.contains("completed"), "{msg}");
    expect_error(&review(id, 6).await, 422, "rating 6");
    expect_error(&review(id, 0).await, 422, "rating 0");
    let rv = expect(&review(id, 4).await, 201, "review");
    assert_eq!(rv["review"]["rating"], 4);
    assert_eq!(rv["tutor_rating"], 4.0);
    assert_eq!(rv["tutor_review_count"], 1);
    expect_error(&review(id, 5).await, 409, "second review");
    let t = expect(
        &h.get(&format!("/tutors/{tutor}")).await.unwrap(),
        200,
        "tutor",
    );
    assert_eq!(t["rating"], 4.0);
    assert_eq!(t["review_count"], 1);
    let rl = expect(
        &h.get(&format!("/tutors/{tutor}/reviews")).await.unwrap(),
        200,
        "reviews",
    );
    assert_eq!(rl["items"][0]["booking_id"], id);
    // The completed booking no longer blocks the slot; a second booking gets cancelled.
    let b2 = expect(&book(&h, tutor, student, from, to).await, 201, "rebook")["id"]
        .as_i64()
        .unwrap();
    let c = expect(&post(format!("/bookings/{b2}/cancel")).await, 200, "cancel");
    assert_eq!(c["status"], "cancelled");
    expect_error(
        &post(format!("/bookings/{b2}/confirm")).await,
        409,
        "confirm cancelled",
    );
    expect_error(
        &post(format!("/bookings/{b2}/cancel")).await,
        409,
        "cancel twice",
    );
    expect_error(&review(b2, 3).await, 409, "review cancelled");
    // A second review raises the average in the same transaction as the insert.
    let b3 = expect(&book(&h, tutor, student, from, to).await, 201, "book 3")["id"]
        .as_i64()
        .unwrap();
    expect(
        &post(format!("/bookings/{b3}/confirm")).await,
        200,
        "confirm 3",
    );
    expect(
        &post(format!("/bookings/{b3}/complete")).await,
        200,
        "complete 3",
    );
    let rv = expect(&review(b3, 5).await, 201, "review 3");
    assert_eq!(rv["tutor_rating"], 4.5);
    let top = expect(
        &h.get(&format!("/tutors?subject_id={subj}&min_rating=4.5"))
            .await
            .unwrap(),
        200,
        "search",
    );
    assert_eq!(top["items"][0]["id"], tutor);
    // Unknown bookings are 404 for every transition.
    for p in ["confirm", "complete", "cancel"] {
        expect_error(&post(format!("/bookings/999999999/{p}")).await, 404, p);
    }
    expect_error(&review(999_999_999, 5).await, 404, "review unknown");
    // Listing and filters.
    let got = expect(
        &h.get(&format!("/bookings/{id}")).await.unwrap(),
        200,
        "get booking",
    );
    assert_eq!(got["status"], "completed");
    assert_eq!(got["starts_at"], from);
    let mine = expect(
        &h.get(&format!("/bookings?student_id={student}"))
            .await
            .unwrap(),
        200,
        "mine",
    );
    let ids: Vec<i64> = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [b3, b2, id]);
    let cancelled = expect(
        &h.get(&format!("/bookings?tutor_id={tutor}&status=cancelled"))
            .await
            .unwrap(),
        200,
        "cancelled",
    );
    assert_eq!(cancelled["items"].as_array().unwrap().len(), 1);
    assert_eq!(cancelled["items"][0]["id"], b2);
}
