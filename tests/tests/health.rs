//! `/health` and `/ready` on `metrics_listen`: ready while a primary is known for every
//! database and pgtier is not draining; 503 with the reason otherwise (a banned primary, a
//! database whose nodes never answered, SIGTERM, admin SHUTDOWN). `/health` stays 200 until
//! the process exits.

use std::time::Duration;

use pgtier_kit::fixture::{admin_console, simple_rows, ConfigBuilder};
use pgtier_kit::http::{get, wait_status};
use pgtier_kit::{free_port, wire, Cluster, Pgtier};
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(10);

fn cluster() -> &'static Cluster {
    let c = Cluster::shared();
    pgtier_kit::fixture::ensure_app_db(c).unwrap();
    c.create_trust_role("pgtier_trust").unwrap();
    c
}

/// pgtier with an admin user and the HTTP endpoint on `mport`.
fn start(mport: u16, extra_db: &str) -> Pgtier {
    ConfigBuilder::new(cluster())
        .global(&format!("metrics_listen = \"127.0.0.1:{mport}\""))
        .global("admin_users = [\"admin\"]")
        .global("shutdown_timeout = \"20s\"")
        .global("lag_check_interval = \"50ms\"")
        .user("admin", "password = \"admin-pw\"")
        .user("pgtier_trust", "auth = \"trust\"")
        .database(extra_db)
        .start()
        .unwrap()
}

/// A client inside a transaction: it keeps a draining pgtier alive until it commits.
async fn in_transaction(px: &Pgtier) -> tokio::net::TcpStream {
    let (mut s, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    s.write_all(&wire::query("BEGIN; SELECT 1")).await.unwrap();
    let r = wire::read_until_ready(&mut s, LIMIT).await.unwrap();
    assert_eq!(r.last().unwrap().body, b"T");
    s
}

/// Commits and expects the process to exit.
async fn commit_and_exit(px: &mut Pgtier, mut s: tokio::net::TcpStream) {
    s.write_all(&wire::query("COMMIT")).await.unwrap();
    wire::read_until_ready(&mut s, LIMIT).await.unwrap();
    assert!(
        px.wait_exit(LIMIT).is_some(),
        "still running:\n{}",
        px.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_primary_and_sigterm_drain() {
    let mport = free_port().unwrap();
    let mut px = start(mport, "");
    assert_eq!(get(mport, "/health").unwrap(), (200, "ok\n".into()));
    assert_eq!(get(mport, "/ready").unwrap(), (200, "ready\n".into()));
    assert_eq!(get(mport, "/nope").unwrap().0, 404);
    // /metrics is unchanged: the text format, with pgtier's series.
    let (status, body) = get(mport, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("pgtier_info{"), "{body}");

    // An administrator bans the primary: no primary is known, so not ready; UNBAN: ready.
    let adm = admin_console(&px, "admin", "admin-pw").await;
    let primary = cluster().primary().addr();
    simple_rows(&adm, &format!("BAN {primary}")).await;
    let (status, body) = wait_status(mport, "/ready", 503, LIMIT).unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, "no primary known for database app\n");
    simple_rows(&adm, &format!("UNBAN {primary}")).await;
    assert_eq!(wait_status(mport, "/ready", 200, LIMIT).unwrap().0, 200);

    // SIGTERM with a transaction running: draining, so not ready, but alive.
    let busy = in_transaction(&px).await;
    px.signal(libc::SIGTERM);
    let (status, body) = wait_status(mport, "/ready", 503, LIMIT).unwrap();
    assert_eq!((status, body.as_str()), (503, "draining: shutting down\n"));
    assert_eq!(get(mport, "/health").unwrap().0, 200);
    commit_and_exit(&mut px, busy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_during_admin_shutdown() {
    let mport = free_port().unwrap();
    let mut px = start(mport, "");
    assert_eq!(get(mport, "/ready").unwrap().0, 200);
    let busy = in_transaction(&px).await;
    let adm = admin_console(&px, "admin", "admin-pw").await;
    simple_rows(&adm, "SHUTDOWN").await;
    let (status, body) = wait_status(mport, "/ready", 503, LIMIT).unwrap();
    assert_eq!((status, body.as_str()), (503, "draining: shutting down\n"));
    assert_eq!(get(mport, "/health").unwrap().0, 200);
    commit_and_exit(&mut px, busy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_while_a_database_has_no_primary() {
    // A second database whose only node (role discovered) never answers: no primary.
    let dead = free_port().unwrap();
    let mport = free_port().unwrap();
    let px = start(
        mport,
        &format!("[databases.other]\nnodes = [\"127.0.0.1:{dead}\"]"),
    );
    let (status, body) = get(mport, "/ready").unwrap();
    assert_eq!(
        (status, body.as_str()),
        (503, "no primary known for database other\n")
    );
    // The database with a primary still serves.
    let (mut s, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    s.write_all(&wire::query("SELECT 1")).await.unwrap();
    wire::read_until_ready(&mut s, LIMIT).await.unwrap();
    // A request head over the size cap is refused, not read forever.
    let long = format!("/ready?{}", "x".repeat(16 * 1024));
    // pgtier answers 431 and closes without reading the rest: the client's write, or its read
    // of the answer, may see the reset instead.
    match get(mport, &long) {
        Ok((status, _)) => assert_eq!(status, 431),
        Err(e) => {
            let kind = e.downcast_ref::<std::io::Error>().map(|e| e.kind());
            assert!(
                matches!(
                    kind,
                    Some(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
                ),
                "an over-long request head was neither refused with 431 nor reset: {e:#}"
            );
        }
    }
}
