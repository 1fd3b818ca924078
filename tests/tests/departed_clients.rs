//! A client that leaves while it waits for a server (pool exhausted): pgtier notices the
//! closed socket, drops the client from the queue and never runs what it sent. Found by the
//! fuzzer (issue 16): under load, fuzz connections stayed open on pgtier's side long after the
//! client's end.

use std::time::{Duration, Instant};

use pgtier_kit::fixture::{admin_console, cl_waiting, ensure_app_db, ConfigBuilder};
use pgtier_kit::{wire, Cluster, Pgtier};
use tokio::io::AsyncWriteExt;

const USER: &str = "pgtier_trust";
const ADMIN: &str = "departed_admin";
const LIMIT: Duration = Duration::from_secs(10);

/// pgtier's sockets on its listen port in state `state` (/proc net/tcp: 01 established,
/// 08 CLOSE_WAIT: the peer closed and pgtier has not).
fn sockets_in_state(px: &Pgtier, state: &str) -> usize {
    let port = format!(":{:04X}", px.port());
    std::fs::read_to_string(format!("/proc/{}/net/tcp", px.pid()))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&port) && f[3] == state
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_while_queued_is_dropped_and_its_statement_never_runs() {
    let c = Cluster::shared();
    ensure_app_db(c).unwrap();
    c.create_trust_role(USER).unwrap();
    c.ddl(
        "app",
        &format!(
            "CREATE TABLE IF NOT EXISTS departed (n int); GRANT ALL ON departed TO {USER}; \
             DELETE FROM departed"
        ),
    )
    .unwrap();
    let px = ConfigBuilder::new(c)
        .global("pool_size = 1")
        .global("query_wait_timeout = \"60s\"")
        .global(&format!("admin_users = [\"{ADMIN}\"]"))
        .user(USER, "auth = \"trust\"")
        .user(ADMIN, "auth = \"trust\"")
        .start()
        .unwrap();
    let admin = admin_console(&px, ADMIN, "unused").await;
    // A holds the only server in a transaction.
    let (mut a, _) = wire::login_trust(&px.addr(), USER, "app").await.unwrap();
    a.write_all(&wire::query("BEGIN")).await.unwrap();
    wire::read_until_ready(&mut a, LIMIT).await.unwrap();
    // B's INSERT queues for it; then B goes away.
    let (mut b, _) = wire::login_trust(&px.addr(), USER, "app").await.unwrap();
    b.write_all(&wire::query("INSERT INTO departed VALUES (1)"))
        .await
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    while cl_waiting(&admin).await != 1 {
        assert!(Instant::now() < deadline, "B never queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(b);
    // pgtier closes B's side within a second or two (it is in CLOSE_WAIT until then) and no
    // longer counts it as waiting.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (close_wait, waiting) = (sockets_in_state(&px, "08"), cl_waiting(&admin).await);
        if close_wait == 0 && waiting == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "3 s after the queued client left: {close_wait} socket(s) in CLOSE_WAIT, \
             cl_waiting = {waiting}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A finishes; its next statement is served after anything still queued (FIFO), so by
    // then B's INSERT would have run.
    a.write_all(&wire::query("COMMIT")).await.unwrap();
    wire::read_until_ready(&mut a, LIMIT).await.unwrap();
    a.write_all(&wire::query("SELECT count(*) FROM departed"))
        .await
        .unwrap();
    let r = wire::read_until_ready(&mut a, LIMIT).await.unwrap();
    assert_eq!(
        wire::first_value(&r),
        "0",
        "the INSERT of a client that had left was committed"
    );
}
