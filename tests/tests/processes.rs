//! Several pgtier processes on one host (issue 21): with `so_reuseport = true` they share the
//! client port and the kernel spreads clients between them; with cancel peering (`peer_id`,
//! `peer_listen`, `[peers]`) a cancel reaching either process cancels the query wherever it runs.

use std::time::Duration;

use pgtier_kit::fixture::{connect, scram_role, ConfigBuilder};
use pgtier_kit::{free_port, wire, Cluster, Pgtier};
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(20);

fn cluster() -> &'static Cluster {
    let c = Cluster::shared();
    scram_role(c, "multi", "multi-pw").unwrap();
    c.create_trust_role("pgtier_trust").unwrap();
    c
}

fn builder() -> ConfigBuilder {
    ConfigBuilder::new(cluster())
        .global("so_reuseport = true")
        .global("shutdown_timeout = \"20s\"")
        .user("multi", "password = \"multi-pw\"")
        .user("pgtier_trust", "auth = \"trust\"")
        .database("pool_size = 4")
}

/// Starts a pgtier on `port` (maybe shared) with its own HTTP endpoint `mport`, and waits
/// until this very process listens (another may already answer on the port).
fn start_on(b: &ConfigBuilder, port: u16, mport: u16) -> Pgtier {
    let b = b
        .clone()
        .global(&format!("metrics_listen = \"127.0.0.1:{mport}\""));
    Pgtier::start_sharing(port, &b.render(port)).unwrap()
}

/// Client connections this process has now (its `/metrics`).
fn clients_of(mport: u16) -> u64 {
    let (status, body) = pgtier_kit::http::get(mport, "/metrics").unwrap();
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with("pgtier_client_connections{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap() as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_port_and_both_serve_clients() {
    let port = free_port().unwrap();
    let (ma, mb) = (free_port().unwrap(), free_port().unwrap());
    let b = builder();
    let _a = start_on(&b, port, ma);
    let _bb = start_on(&b, port, mb);
    // 40 clients: each process gets some (all on one: probability 2^-39).
    let mut clients = Vec::new();
    for _ in 0..40 {
        let c = connect(&_a, "multi", "multi-pw").await.unwrap();
        let row = c.query_one("SELECT 1 + 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 2);
        clients.push(c);
    }
    let (na, nb) = (clients_of(ma), clients_of(mb));
    assert_eq!(na + nb, 40, "a {na}, b {nb}");
    assert!(na > 0 && nb > 0, "a {na}, b {nb}");

    // Without so_reuseport the address is taken: a third process cannot start.
    let mport = free_port().unwrap();
    let text = builder()
        .global(&format!("metrics_listen = \"127.0.0.1:{mport}\""))
        .render(port)
        .replace("so_reuseport = true", "so_reuseport = false");
    // `start` waits for the process itself to listen (not its peers): it reports the exit.
    let err = match Pgtier::start(port, &text) {
        Ok(mut px) => panic!(
            "a third process listened: {:?}\n{}",
            px.wait_exit(LIMIT),
            px.log()
        ),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("pgtier exited (exit status: ") && !err.contains("exit status: 0)"),
        "{err}"
    );
    assert!(err.contains("Address already in use"), "{err}");
}

/// A CancelRequest packet for (pid, secret).
fn cancel_packet(pid: i32, secret: i32) -> Vec<u8> {
    let mut p = 16u32.to_be_bytes().to_vec();
    p.extend(80_877_102u32.to_be_bytes());
    p.extend(pid.to_be_bytes());
    p.extend(secret.to_be_bytes());
    p
}

/// Sends a CancelRequest to `addr` and waits for pgtier to close the connection.
async fn send_cancel(addr: &str, pid: i32, secret: i32) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&cancel_packet(pid, secret)).await.unwrap();
    assert!(wire::closed_within(&mut s, LIMIT).await);
}

/// Waits until `sql` runs on the primary (pg_stat_activity).
async fn until_running(sql: &str) {
    let pg = cluster().primary().connect("app").await.unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let n: i64 = pg
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = $1",
                &[&sql],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{sql} never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Logs in through `addr`, starts `sql`, sends its cancel key to `cancel_to(pid)` and expects
/// the query to end with 57014 and the session to go on.
async fn cancel_through(addr: &str, sql: &str, cancel_to: impl Fn(u16) -> String) -> u16 {
    let (mut s, msgs) = wire::login_trust(addr, "pgtier_trust", "app")
        .await
        .unwrap();
    let k = msgs.iter().find(|m| m.tag == b'K').expect("BackendKeyData");
    let pid = i32::from_be_bytes(k.body[0..4].try_into().unwrap());
    let secret = i32::from_be_bytes(k.body[4..8].try_into().unwrap());
    let owner = (pid >> 16) as u16;
    s.write_all(&wire::query(sql)).await.unwrap();
    until_running(sql).await;
    send_cancel(&cancel_to(owner), pid, secret).await;
    let r = wire::read_until_ready(&mut s, Duration::from_secs(5))
        .await
        .unwrap();
    let e = r.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(e.field(b'C').as_deref(), Some("57014"), "{r:?}");
    s.write_all(&wire::query("SELECT 1")).await.unwrap();
    let r = wire::read_until_ready(&mut s, LIMIT).await.unwrap();
    assert_eq!(wire::first_value(&r), "1");
    owner
}

/// Two processes on one shared port, peers of each other (`peer_id` 1 and 2, each with its own
/// `peer_listen`): the shared port, the peer ports and the processes.
fn two_peers() -> (u16, [u16; 2], Vec<Pgtier>) {
    let port = free_port().unwrap();
    let peer_ports = [free_port().unwrap(), free_port().unwrap()];
    let peers = format!(
        "[peers]\n1 = \"127.0.0.1:{}\"\n2 = \"127.0.0.1:{}\"",
        peer_ports[0], peer_ports[1]
    );
    let mut procs = Vec::new();
    for (i, peer_port) in peer_ports.iter().enumerate() {
        let b = builder()
            .global(&format!("peer_id = {}", i + 1))
            .global(&format!("peer_listen = \"127.0.0.1:{peer_port}\""))
            // After every other key: [peers] is a table.
            .database(&peers);
        procs.push(start_on(&b, port, free_port().unwrap()));
    }
    (port, peer_ports, procs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_another_process_reaches_the_query() {
    let (port, peer_ports, procs) = two_peers();
    let shared = format!("127.0.0.1:{port}");
    let other = |owner: u16| {
        assert!(owner == 1 || owner == 2, "key of peer {owner}");
        format!("127.0.0.1:{}", peer_ports[2 - owner as usize])
    };
    // Clients land on either process; each cancel goes to the process that did not issue the
    // key, which forwards it. Until both processes have issued one (2^-19 to miss; with 10
    // tries, 2^-9, all ten landed on one process once in CI).
    let mut owners = std::collections::HashSet::new();
    for i in 0..20 {
        let sql = format!("SELECT pg_sleep(30 + {i})");
        owners.insert(cancel_through(&shared, &sql, other).await);
        if owners.len() == 2 {
            break;
        }
    }
    assert_eq!(owners.len(), 2, "all clients landed on one process");
    // Through the shared port: whichever process gets it, the query is cancelled.
    for i in 0..4 {
        let sql = format!("SELECT pg_sleep(40 + {i})");
        cancel_through(&shared, &sql, |_| shared.clone()).await;
    }
    // A key of a peer nobody knows is ignored; pgtier goes on.
    send_cancel(&shared, (99 << 16) | 5, 1234).await;
    send_cancel(
        &format!("127.0.0.1:{}", peer_ports[0]),
        (99 << 16) | 5,
        1234,
    )
    .await;
    let c = connect(&procs[0], "multi", "multi-pw").await.unwrap();
    assert_eq!(
        c.query_one("SELECT 2", &[]).await.unwrap().get::<_, i32>(0),
        2
    );
}

/// A process that is shutting down still takes cancels on its `peer_listen` (its listener on
/// the shared port is closed): a cancel sent to the other process for a query of a transaction
/// still finishing on the draining one reaches it; a login there is refused (57P03).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_process_still_takes_cancels_from_its_peers() {
    let (port, peer_ports, mut procs) = two_peers();
    let (mut s, msgs) = wire::login_trust(&format!("127.0.0.1:{port}"), "pgtier_trust", "app")
        .await
        .unwrap();
    let k = msgs.iter().find(|m| m.tag == b'K').expect("BackendKeyData");
    let pid = i32::from_be_bytes(k.body[0..4].try_into().unwrap());
    let secret = i32::from_be_bytes(k.body[4..8].try_into().unwrap());
    let owner = (pid >> 16) as usize;
    assert!(owner == 1 || owner == 2, "key of peer {owner}");
    let sql = "SELECT pg_sleep(31)";
    s.write_all(&wire::query("BEGIN")).await.unwrap();
    wire::read_until_ready(&mut s, LIMIT).await.unwrap();
    s.write_all(&wire::query(sql)).await.unwrap();
    until_running(sql).await;
    // The process running it shuts down: it waits for the transaction (shutdown_timeout 20 s).
    let draining = &mut procs[owner - 1];
    draining.signal(libc::SIGTERM);
    let log = draining.wait_for_log("draining", LIMIT);
    assert!(log.contains("draining"), "{log}");
    let own_peer_addr = format!("127.0.0.1:{}", peer_ports[owner - 1]);
    let mut login = tokio::net::TcpStream::connect(&own_peer_addr)
        .await
        .unwrap();
    login
        .write_all(&wire::startup_packet(
            0,
            &[("user", "pgtier_trust"), ("database", "app")],
        ))
        .await
        .unwrap();
    let (code, _) = wire::expect_fatal(&mut login, LIMIT).await.unwrap();
    assert_eq!(code, "57P03");
    // The cancel goes to the other process, which forwards it to the draining one.
    send_cancel(&format!("127.0.0.1:{}", peer_ports[2 - owner]), pid, secret).await;
    let r = wire::read_until_ready(&mut s, Duration::from_secs(5))
        .await
        .unwrap();
    let e = r.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(e.field(b'C').as_deref(), Some("57014"), "{r:?}");
    s.write_all(&wire::query("ROLLBACK")).await.unwrap();
    let (code, _) = wire::expect_fatal(&mut s, LIMIT).await.unwrap_or_default();
    assert!(code.is_empty() || code == "57P01", "{code}");
    let status = procs[owner - 1].wait_exit(LIMIT).expect("still running");
    assert!(status.success(), "{status}");
}

/// (rows counted, port of the node that answered) of `sql` on `c`.
async fn read(c: &tokio_postgres::Client, sql: String) -> (i64, u16) {
    let r = c.query_one(&sql, &[]).await.unwrap();
    (r.get::<_, i64>(0), r.get::<_, i32>(1) as u16)
}

/// The causal token travels with the application: a write through process A, its token given
/// to process B (`SET pgtier.min_lsn` or the comment form), and B's read never misses it,
/// with one of the two replicas paused and kept in the read rotation (no lag limit). Without
/// the token B reads stale from the paused replica (the control: the set-up can catch it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_one_process_keeps_reads_through_another_fresh() {
    let cluster = Cluster::start(2).unwrap();
    pgtier_kit::fixture::ensure_app_db(&cluster).unwrap();
    cluster.create_trust_role("pgtier_trust").unwrap();
    cluster
        .ddl(
            "app",
            "CREATE TABLE handoff (id int PRIMARY KEY); GRANT ALL ON handoff TO pgtier_trust",
        )
        .unwrap();
    cluster.wait_replicas_caught_up().unwrap();
    let b = ConfigBuilder::new(&cluster)
        .global("lag_check_interval = \"50ms\"")
        .global("max_replica_lag = 0")
        .global("max_replica_lag_bytes = 0")
        // The control connection must not share the token connection's tokens.
        .global("causal_scope = \"connection\"")
        // The control's back-to-back reads must take turns between the replicas to reach the
        // paused one (by default they would stay on the one they started on).
        .global("replica_round_robin = true")
        .with_replicas(&cluster)
        .user("pgtier_trust", "auth = \"trust\"");
    let pa = b.start().unwrap();
    let pb = b.start().unwrap();
    let dsn = |px: &Pgtier| {
        format!(
            "host=127.0.0.1 port={} user=pgtier_trust dbname=app connect_timeout=10",
            px.port()
        )
    };
    let a = pgtier_kit::tls::connect(&dsn(&pa)).await.unwrap();
    let reader = pgtier_kit::tls::connect(&dsn(&pb)).await.unwrap();
    let control = pgtier_kit::tls::connect(&dsn(&pb)).await.unwrap();
    pgtier_kit::fixture::replica_in_rotation(&pb, "pgtier_trust", "")
        .await
        .unwrap();
    cluster.replica(0).pause_replay().unwrap();
    let paused_port = cluster.replica(0).port();

    let (mut stale_without, mut on_replica_with) = (0, 0);
    for id in 0..100 {
        a.batch_execute(&format!("INSERT INTO handoff VALUES ({id})"))
            .await
            .unwrap();
        let token = pgtier_kit::fixture::simple_rows(&a, "SHOW pgtier.causal_lsn").await[0]
            .get(0)
            .unwrap()
            .to_owned();
        let q = format!("SELECT count(*), inet_server_port() FROM handoff WHERE id = {id}");
        // Control: without the token, B may pick the paused replica.
        let (n, _) = read(&control, q.clone()).await;
        stale_without += usize::from(n == 0);
        // With it (both forms), never stale.
        let (n, port) = read(&reader, format!("/* pgtier:min_lsn={token} */ {q}")).await;
        assert_eq!(
            n, 1,
            "stale read through B with the token (comment form), row {id}"
        );
        assert_ne!(port, paused_port);
        reader
            .batch_execute(&format!("SET pgtier.min_lsn = '{token}'"))
            .await
            .unwrap();
        let (n, port) = read(&reader, q).await;
        assert_eq!(
            n, 1,
            "stale read through B after SET pgtier.min_lsn, row {id}"
        );
        on_replica_with += usize::from(port == cluster.replica(1).port());
    }
    cluster.replica(0).resume_replay().unwrap();
    eprintln!("without the token: {stale_without}/100 stale; with it: 0 stale, {on_replica_with}/100 on the live replica");
    assert!(
        stale_without > 0,
        "the control never read stale: the test proves nothing"
    );
    assert!(
        on_replica_with > 0,
        "with the token every read fell back to the primary"
    );
}
