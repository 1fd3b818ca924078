//! The bundled app given bad input over HTTP: every refusal is a JSON 4xx with an error.

mod app_support;

use app_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_json_4xx() {
    let (_app, h) = start_app().await;
    let raw = |m: Method, path: &'static str, ct: Option<&'static str>, body: &'static str| {
        let h = h.clone();
        async move {
            h.raw(m, path, ct, body.as_bytes().to_vec(), &[])
                .await
                .unwrap()
        }
    };
    let json_ct = Some("application/json");
    // POST /subjects bodies: content type, body, status, case.
    let subjects: [(Option<&'static str>, &'static str, u16, &str); 6] = [
        (json_ct, "{\"name\": ", 400, "malformed"),
        (None, "{\"name\": \"x\"}", 415, "no content type"),
        (json_ct, "{\"name\": 5}", 422, "wrong type"),
        (json_ct, "{}", 422, "missing field"),
        (json_ct, "{\"name\": \"\"}", 422, "empty name"),
        (json_ct, "{\"name\": \"a\", \"x\": 1}", 422, "unknown field"),
    ];
    for (ct, body, status, what) in subjects {
        expect_error(
            &raw(Method::POST, "/subjects", ct, body).await,
            status,
            what,
        );
    }
    let tutor = |rate: i64| json!({ "name": "T", "hourly_rate_cents": rate });
    expect_error(
        &h.post("/tutors", &tutor(-1)).await.unwrap(),
        422,
        "negative rate",
    );
    expect_error(
        &h.post("/tutors", &tutor(10_000_001)).await.unwrap(),
        422,
        "huge rate",
    );
    let bad_subject = json!({ "name": "T", "hourly_rate_cents": 1, "subject_ids": [999_999_999] });
    expect_error(
        &h.post("/tutors", &bad_subject).await.unwrap(),
        422,
        "unknown subject",
    );
    expect_error(
        &h.post("/students", &json!({ "name": "n", "email": "nope" }))
            .await
            .unwrap(),
        422,
        "email",
    );
    for q in [
        "limit=101",
        "limit=0",
        "limit=-1",
        "offset=-1",
        "limit=abc",
        "min_rating=7",
        "min_rating=-1",
        "subject_id=x",
    ] {
        expect_error(&h.get(&format!("/tutors?{q}")).await.unwrap(), 400, q);
    }
    expect_error(
        &h.get("/bookings?status=lost").await.unwrap(),
        400,
        "status filter",
    );
    for p in [
        "/tutors/999999999",
        "/students/999999999",
        "/subjects/999999999",
        "/bookings/999999999",
        "/tutors/999999999/availability",
        "/tutors/999999999/reviews",
        "/no/such/route",
    ] {
        expect_error(&h.get(p).await.unwrap(), 404, p);
    }
    expect_error(&h.get("/tutors/abc").await.unwrap(), 400, "non-numeric id");
    expect_error(&h.get("/tutors/-3").await.unwrap(), 400, "negative id");
    let r = h
        .raw(Method::DELETE, "/tutors", None, Vec::new(), &[])
        .await
        .unwrap();
    expect_error(&r, 405, "method");
    let slot = json!({ "starts_at": "2031-01-01T10:00:00Z", "ends_at": "2031-01-01T11:00:00Z" });
    expect_error(
        &h.post("/tutors/999999999/availability", &slot)
            .await
            .unwrap(),
        404,
        "slot unknown tutor",
    );
    let t = new_tutor(&h, &[]).await;
    let bad_time = json!({ "starts_at": "yesterday-ish", "ends_at": "2031-01-01T11:00:00Z" });
    expect_error(
        &h.post(&format!("/tutors/{t}/availability"), &bad_time)
            .await
            .unwrap(),
        422,
        "bad time",
    );
    let reversed =
        json!({ "starts_at": "2031-01-01T11:00:00Z", "ends_at": "2031-01-01T10:00:00Z" });
    expect_error(
        &h.post(&format!("/tutors/{t}/availability"), &reversed)
            .await
            .unwrap(),
        422,
        "reversed slot",
    );
    let s = new_student(&h).await;
    expect_error(
        &book(
            &h,
            999_999_999,
            s,
            "2031-01-01T10:00:00Z",
            "2031-01-01T11:00:00Z",
        )
        .await,
        404,
        "unknown tutor",
    );
    expect_error(
        &book(
            &h,
            t,
            999_999_999,
            "2031-01-01T10:00:00Z",
            "2031-01-01T11:00:00Z",
        )
        .await,
        404,
        "unknown student",
    );
    expect_error(
        &book(&h, t, s, "2031-01-01T08:00:00Z", "2031-01-01T19:00:00Z").await,
        422,
        "too long",
    );
    let r = h
        .send(
            Method::PATCH,
            "/tutors/999999999",
            Some(&json!({ "bio": "x" })),
            None,
        )
        .await
        .unwrap();
    expect_error(&r, 404, "patch unknown");
    let r = h
        .send(
            Method::PATCH,
            &format!("/tutors/{t}"),
            Some(&json!({ "hourly_rate_cents": -5 })),
            None,
        )
        .await
        .unwrap();
    expect_error(&r, 422, "patch negative rate");
    for bad in ["nonsense", "0/", "1/2/3", "0/1'; DROP TABLE tutors; --"] {
        let r = h
            .send(Method::GET, "/subjects", None, Some(bad))
            .await
            .unwrap();
        expect_error(&r, 400, bad);
    }
}
