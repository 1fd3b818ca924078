//! What the app test binaries share: the kit cluster with the app's role, pgtier in front of
//! it, an in-process app server with its HTTP client, and request helpers.
// Shared by the app test binaries, each using part of it.
#![allow(dead_code, unused_imports)]

pub use std::sync::OnceLock;
pub use std::time::{Duration, Instant};

pub use pgtier_app::loadgen::client::Method;
pub use pgtier_app::loadgen::client::{Http, Resp};
pub use pgtier_app::{AppHandle, Config};
pub use pgtier_kit::fixture::{scram_role, ConfigBuilder};
pub use pgtier_kit::{Cluster, Pgtier, SUPERUSER, SUPERUSER_PASSWORD};
pub use serde_json::{json, Value};

pub const USER: &str = "tutor_app";

pub fn cluster() -> &'static Cluster {
    static SETUP: OnceLock<()> = OnceLock::new();
    let c = Cluster::shared();
    SETUP.get_or_init(|| scram_role(c, USER, USER).unwrap());
    c
}

/// pgtier in transaction mode over `c`, replicas listed.
pub fn pgtier_for(c: &Cluster, user: &str) -> Pgtier {
    let replicas: Vec<String> = c
        .replicas()
        .iter()
        .map(|r| format!("\"{}\"", r.addr()))
        .collect();
    ConfigBuilder::new(c)
        .global("pool_mode = \"transaction\"")
        .user(user, &format!("password = \"{user}\""))
        .database(&format!("replicas = [{}]", replicas.join(", ")))
        .database("pool_size = 10")
        .start()
        .unwrap()
}

pub fn shared_pgtier() -> &'static Pgtier {
    static PX: OnceLock<Pgtier> = OnceLock::new();
    PX.get_or_init(|| pgtier_for(cluster(), USER))
}

/// The app's config for pgtier `px`: plain text, or with `PGTIER_TEST_TLS=1` (pgtier then has
/// the kit's certificate) TLS with `sslmode=verify-full` against the kit's CA.
pub fn app_config(px: &Pgtier, user: &str) -> Config {
    let tls = if pgtier_kit::tls::test_tls() {
        let (ca, _) = pgtier_kit::tls::kit_certs();
        format!(
            "&sslmode=verify-full&sslrootcert={}",
            ca.ca_file().display()
        )
    } else {
        String::new()
    };
    let mut cfg = Config::new(format!(
        "postgres://{user}:{user}@127.0.0.1:{}/app?connect_timeout=5{tls}",
        px.port()
    ));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.pool_size = 8;
    cfg.db_timeout = Duration::from_secs(3);
    cfg.health_timeout = Duration::from_secs(1);
    cfg
}

/// The app on a free port, against the shared cluster's pgtier.
pub async fn start_app() -> (AppHandle, Http) {
    let px = tokio::task::block_in_place(shared_pgtier);
    let app = pgtier_app::serve(app_config(px, USER)).await.unwrap();
    let http = Http::new(&app.url());
    (app, http)
}

/// Asserts the status (printing the body on failure) and returns the JSON body.
pub fn expect(r: &Resp, status: u16, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    r.json()
}

/// Asserts a 4xx/5xx with a JSON `{"error": "..."}` body.
pub fn expect_error(r: &Resp, status: u16, what: &str) -> String {
    let body = expect(r, status, what);
    let msg = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error in {body}"));
    assert!(!msg.is_empty(), "{what}");
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{what}: {:?}",
        r.headers
    );
    msg.to_owned()
}

pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{t:x}-{n}")
}

pub fn lsn_ok(s: &str) -> bool {
    pgtier_app::db::valid_lsn(s)
}

pub async fn new_subject(h: &Http) -> i64 {
    let r = h
        .post("/subjects", &json!({ "name": unique("subj") }))
        .await
        .unwrap();
    expect(&r, 201, "subject")["id"].as_i64().unwrap()
}

pub async fn new_student(h: &Http) -> i64 {
    let r = h
        .post(
            "/students",
            &json!({ "name": "Sam", "email": format!("{}@example.com", unique("s")) }),
        )
        .await
        .unwrap();
    expect(&r, 201, "student")["id"].as_i64().unwrap()
}

pub async fn new_tutor(h: &Http, subjects: &[i64]) -> i64 {
    let r = h
        .post(
            "/tutors",
            &json!({ "name": "Ada", "bio": "maths", "hourly_rate_cents": 4000, "subject_ids": subjects }),
        )
        .await
        .unwrap();
    let t = expect(&r, 201, "tutor")["id"].as_i64().unwrap();
    let r = h
        .post(
            &format!("/tutors/{t}/availability"),
            &json!({ "starts_at": "2031-01-01T08:00:00Z", "ends_at": "2031-01-01T20:00:00Z" }),
        )
        .await
        .unwrap();
    expect(&r, 201, "availability");
    t
}

/// Every id of a listing, following `next_offset` (other tests add rows concurrently).
pub async fn all_ids(h: &Http, path: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut offset = 0;
    loop {
        let r = h
            .get(&format!("{path}?limit=100&offset={offset}"))
            .await
            .unwrap();
        let page = expect(&r, 200, path);
        ids.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["id"].as_i64().unwrap()),
        );
        match page["next_offset"].as_i64() {
            Some(n) => offset = n,
            None => return ids,
        }
    }
}

pub async fn book(h: &Http, tutor: i64, student: i64, from: &str, to: &str) -> Resp {
    h.post(
        "/bookings",
        &json!({ "tutor_id": tutor, "student_id": student, "starts_at": from, "ends_at": to }),
    )
    .await
    .unwrap()
}

/// Direct connection strings of every node's `app` database (primary first), as superuser:
/// the load generator reads pg_stat_database through them.
pub fn node_dsns(c: &Cluster) -> Vec<String> {
    std::iter::once(c.primary())
        .chain(c.replicas())
        .map(|n| {
            format!(
                "host=127.0.0.1 port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname=app",
                n.port()
            )
        })
        .collect()
}
