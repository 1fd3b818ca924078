//! Primary faults during writes: `pg_terminate_backend` of the server a client is using in the
//! middle of its transaction, and the primary going silent (blackholed by the kit's
//! [`FaultProxy`]) under a write with `query_timeout` set.

use std::time::{Duration, Instant};

use anyhow::Result;
use pgtier_kit::fixture::{connect, read_node, scram_role, server_connections, ConfigBuilder};
use pgtier_kit::{wire, Cluster, FaultProxy};
use tokio::io::AsyncWriteExt;

const PW: &str = "fault-primary-pw";

/// The error code and message of a failed tokio-postgres call ("none" and the error text if
/// the server sent no error).
fn pg_error(e: &tokio_postgres::Error) -> (String, String) {
    e.as_db_error()
        .map(|e| (e.code().code().to_owned(), e.message().to_owned()))
        .unwrap_or_else(|| ("none".into(), e.to_string()))
}

/// The ids in `table` on the primary, in order, comma-separated ("" when empty).
fn ids(cluster: &Cluster, table: &str) -> Result<String> {
    Ok(cluster
        .primary()
        .psql_db(
            "app",
            &format!("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM {table}"),
        )?
        .trim()
        .to_owned())
}

/// Backend pids of `user`'s client connections on the primary in state `state` (LIKE pattern).
fn backends(cluster: &Cluster, user: &str, state: &str) -> Result<Vec<i32>> {
    let out = cluster.primary().psql(&format!(
        "SELECT pid FROM pg_stat_activity WHERE usename = '{user}' \
         AND backend_type = 'client backend' AND state LIKE '{state}' ORDER BY pid"
    ))?;
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(l.trim().parse()?))
        .collect()
}

/// Polls `backends(user, state)` until `want` holds; fails after 10 s.
async fn wait_backends(
    cluster: &Cluster,
    user: &str,
    state: &str,
    what: &str,
    want: impl Fn(&[i32]) -> bool,
) -> Result<Vec<i32>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = backends(cluster, user, state)?;
        if want(&pids) {
            return Ok(pids);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not within 10 s ({pids:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_terminated_mid_transaction_fails_its_client_only() -> Result<()> {
    const USER: &str = "fault_term";
    const TABLE: &str = "fault_term_rows";
    const POOL: i64 = 2;
    let cluster = Cluster::shared();
    scram_role(cluster, USER, PW)?;
    let px = ConfigBuilder::new(cluster)
        .global(&format!("pool_size = {POOL}"))
        .user(USER, &format!("password = \"{PW}\"\nauth = \"trust\""))
        .start()?;
    let setup = connect(&px, USER, PW).await?;
    setup
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id int)"
        ))
        .await?;
    drop(setup);

    // 1. A client idle in its transaction (raw protocol: it sees every byte pgtier sends, also
    // what arrives while it sends nothing).
    let (mut c, _) = wire::login_trust(&px.addr(), USER, "app").await?;
    for sql in [
        "BEGIN".to_owned(),
        format!("INSERT INTO {TABLE} VALUES (1)"),
    ] {
        let msgs = wire::send_all(&mut c, &[wire::query(&sql)], Duration::from_secs(10)).await?;
        anyhow::ensure!(!msgs.iter().any(|m| m.tag == b'E'), "{sql} failed");
    }
    let held = wait_backends(
        cluster,
        USER,
        "idle in transaction%",
        "the open transaction",
        |p| p.len() == 1,
    )
    .await?[0];
    assert_eq!(
        cluster
            .primary()
            .psql(&format!("SELECT pg_terminate_backend({held})"))?,
        "t"
    );
    // Postgres' FATAL reaches the client as it is, then pgtier ends the connection with its own
    // 08006 (the server connection is gone); nothing more. A COMMIT sent now cannot complete.
    let _ = c.write_all(&wire::query("COMMIT")).await;
    let mut replies = Vec::new();
    while let Ok(m) = wire::read_msg(&mut c, Duration::from_secs(5)).await {
        replies.push(m);
    }
    let errors: Vec<(String, String)> = replies
        .iter()
        .filter(|m| m.tag == b'E')
        .map(|m| {
            (
                m.field(b'C').unwrap_or_default(),
                m.field(b'M').unwrap_or_default(),
            )
        })
        .collect();
    println!(
        "after pg_terminate_backend: {} {errors:?}",
        wire::tags(&replies)
    );
    assert!(
        !replies.iter().any(|m| m.tag == b'C'),
        "COMMIT completed: {errors:?}"
    );
    let codes: Vec<&str> = errors.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(codes, ["57P01", "08006"], "{errors:?}");
    assert!(
        errors[0]
            .1
            .contains("terminating connection due to administrator command"),
        "{errors:?}"
    );
    assert!(
        wire::closed_within(&mut c, Duration::from_secs(5)).await,
        "client not closed"
    );
    assert_eq!(
        ids(cluster, TABLE)?,
        "",
        "the terminated transaction's row was committed"
    );

    // 2. A client whose statement is running when its backend is terminated: a driver sees
    // Postgres' 57P01 as the statement's error, and the connection is closed.
    let d = connect(&px, USER, PW).await?;
    d.batch_execute(&format!("BEGIN; INSERT INTO {TABLE} VALUES (2)"))
        .await?;
    let sleeping = tokio::spawn(async move {
        let r = d.simple_query("SELECT pg_sleep(30)").await;
        (r.map(drop), d)
    });
    let busy = wait_backends(cluster, USER, "active", "the running statement", |p| {
        p.len() == 1
    })
    .await?[0];
    let started = Instant::now();
    cluster
        .primary()
        .psql(&format!("SELECT pg_terminate_backend({busy})"))?;
    let (r, d) = tokio::time::timeout(Duration::from_secs(10), sleeping).await??;
    let (code, message) = pg_error(&r.expect_err("pg_sleep survived its backend"));
    assert_eq!(code, "57P01", "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        d.simple_query("SELECT 1").await.is_err(),
        "the client went on"
    );
    assert_eq!(
        ids(cluster, TABLE)?,
        "",
        "the terminated transaction's row was committed"
    );
    wait_backends(cluster, USER, "%", "terminated backends gone", |p| {
        !p.contains(&held) && !p.contains(&busy)
    })
    .await?;

    // 3. The next 50 clients, 10 at a time on a pool of 2, each get a clean session: not in a
    // transaction (now() is the statement's own time), not aborted, not on a terminated
    // backend, and right results.
    let mut next = tokio::task::JoinSet::new();
    for batch in 0..5i32 {
        for i in 0..10 {
            let n = batch * 10 + i;
            let c = connect(&px, USER, PW).await?;
            next.spawn(async move {
                // A simple query: now() is the transaction's start, so it equals the
                // statement's own time only outside an earlier-opened transaction.
                let rows = c
                    .simple_query(&format!(
                        "SELECT now() = statement_timestamp(), pg_backend_pid(), \
                         (SELECT count(*) FROM {TABLE})"
                    ))
                    .await?;
                let Some(row) = rows.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                    _ => None,
                }) else {
                    anyhow::bail!("client {n}: no row");
                };
                let fresh = row.get(0) == Some("t");
                let pid: i32 = row.get(1).unwrap_or("0").parse()?;
                let rows: i64 = row.get(2).unwrap_or("-1").parse()?;
                // The extended protocol, with a parameter.
                let sum: i32 = c.query_one("SELECT $1::int + 1", &[&n]).await?.get(0);
                // A transaction of its own works too.
                c.batch_execute(&format!(
                    "BEGIN; INSERT INTO {TABLE} VALUES ({}); COMMIT",
                    100 + n
                ))
                .await?;
                Ok::<_, anyhow::Error>((n, fresh, pid, rows, sum))
            });
        }
        while let Some(done) = next.join_next().await {
            let (n, fresh, pid, rows, sum) = done??;
            assert!(fresh, "client {n} started inside a transaction");
            assert!(
                pid != held && pid != busy,
                "client {n} got a terminated backend"
            );
            assert!(rows >= i64::from(batch * 10), "client {n}: {rows} rows");
            assert_eq!(sum, n + 1, "client {n}");
        }
    }
    let want: Vec<String> = (100..150).map(|i| i.to_string()).collect();
    assert_eq!(ids(cluster, TABLE)?, want.join(","));
    let servers = server_connections(cluster, USER)?;
    assert!(
        servers <= POOL,
        "{servers} server connections for a pool of {POOL}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_silent_primary_fails_within_query_timeout_and_is_never_retried() -> Result<()>
{
    const USER: &str = "fault_silent";
    const TABLE: &str = "fault_silent_rows";
    let cluster = Cluster::shared();
    scram_role(cluster, USER, PW)?;
    let primary = FaultProxy::start(&cluster.primary().addr()).await?;
    let px = ConfigBuilder::new(cluster)
        .primary(&primary.addr())
        .global("query_timeout = \"300ms\"")
        .global("server_connect_timeout = \"500ms\"")
        .global("lag_check_interval = \"50ms\"")
        .user(USER, &format!("password = \"{PW}\""))
        .start()?;
    let setup = connect(&px, USER, PW).await?;
    setup
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id int)"
        ))
        .await?;
    drop(setup);
    // The bound: query_timeout, then 5 s for the server to answer pgtier's cancel (it cannot:
    // the cancel's connection is swallowed too), with room for a loaded machine.
    let bound = Duration::from_millis(300) + Duration::from_secs(5) + Duration::from_secs(3);

    // One write while the primary is silent; `after` is what the network does when it heals.
    let silent_write = |id: i32| {
        let px = &px;
        let primary = &primary;
        async move {
            let c = connect(px, USER, PW).await?;
            c.simple_query("SELECT 1").await?;
            primary.blackhole();
            let started = Instant::now();
            let e = c
                .batch_execute(&format!("INSERT INTO {TABLE} VALUES ({id})"))
                .await
                .expect_err("a write to a silent primary succeeded");
            let waited = started.elapsed();
            let (code, message) = pg_error(&e);
            println!("write {id} to the silent primary: {code} after {waited:?}: {message}");
            assert_eq!(code, "57014", "{message}");
            assert!(message.contains("query_timeout"), "{message}");
            assert!(message.contains("did not answer the cancel"), "{message}");
            assert!(waited < bound, "the write waited {waited:?}");
            assert!(
                c.simple_query("SELECT 1").await.is_err(),
                "the client went on"
            );
            Ok::<_, anyhow::Error>(())
        }
    };
    // Writes work again once the primary answers (pgtier may first have to see it back).
    let write_again = |id: i32| {
        let px = &px;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let r = match connect(px, USER, PW).await {
                    Ok(c) => c
                        .batch_execute(&format!("INSERT INTO {TABLE} VALUES ({id})"))
                        .await
                        .map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) => return Ok::<_, anyhow::Error>(()),
                    Err(e) => anyhow::ensure!(
                        Instant::now() < deadline,
                        "no write served 20 s after the primary answered again: {e:#}\n{}",
                        px.log()
                    ),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // 1. The partition ends with the connections lost (a middlebox dropped their state): what
    // the silent primary never received is gone. pgtier never sends the write again: its row
    // is not there after recovery.
    silent_write(1).await?;
    primary.reset();
    let deadline = Instant::now() + Duration::from_secs(10);
    while primary.open_connections() != 0 {
        anyhow::ensure!(Instant::now() < deadline, "the reset left connections open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    primary.pass();
    write_again(2).await?;
    assert_eq!(ids(cluster, TABLE)?, "2", "the failed write was retried");

    // 2. The partition ends with the connections intact: the bytes held in the network are
    // delivered late, so the failed write may still take effect (its outcome is unknown to
    // the client, as with any server that stops answering), but at most once.
    silent_write(3).await?;
    primary.pass();
    write_again(4).await?;
    let got = ids(cluster, TABLE)?;
    assert!(got == "2,4" || got == "2,3,4", "rows after recovery: {got}");
    println!(
        "the write held in the network: {}",
        if got == "2,3,4" {
            "applied late, once"
        } else {
            "lost"
        }
    );
    Ok(())
}

/// Writes `id` through a new client until it succeeds; fails after 10 s.
async fn write_when_back(px: &pgtier_kit::Pgtier, user: &str, table: &str, id: i32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = match connect(px, user, PW).await {
            Ok(c) => c
                .batch_execute(&format!("INSERT INTO {table} VALUES ({id})"))
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) => anyhow::ensure!(
                Instant::now() < deadline,
                "no write served 10 s after the primary came back: {e:#}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until one is served by a replica (the monitors have admitted them and, for a client
/// with a causal token, a replica has replayed it); fails after 10 s.
async fn until_replica_read(c: &tokio_postgres::Client) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !read_node(c).await?.1 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no read reached a replica in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_is_down_fails_writes_at_once_while_replicas_serve_reads() -> Result<()> {
    const USER: &str = "fault_down";
    const TABLE: &str = "fault_down_rows";
    let cluster = Cluster::shared();
    scram_role(cluster, USER, PW)?;
    let primary = FaultProxy::start(&cluster.primary().addr()).await?;
    let px = ConfigBuilder::new(cluster)
        .primary(&primary.addr())
        .with_replicas(cluster)
        .global("server_connect_timeout = \"500ms\"")
        .global("lag_check_interval = \"50ms\"")
        .user(USER, &format!("password = \"{PW}\""))
        .start()?;
    let setup = connect(&px, USER, PW).await?;
    setup
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id int)"
        ))
        .await?;
    let reader = connect(&px, USER, PW).await?;
    let writer = connect(&px, USER, PW).await?;
    writer
        .batch_execute(&format!("INSERT INTO {TABLE} VALUES (1)"))
        .await?;
    // The replicas have replayed the user's writes (its causal scope's token), so reads may
    // go to them.
    cluster.wait_replicas_caught_up()?;
    until_replica_read(&reader).await?;

    // 1. The primary goes down: its connections are reset, new ones too (as a crashed host's
    // are); the pool's idle connections to it are dead. A write fails at once with 08001
    // (FATAL: the client is closed), and is not retried.
    primary.reset();
    // The proxy has reset every connection it held (the pool's idle ones too): a write then
    // cannot find a pooled connection that has not seen its reset yet (08006, a race).
    let deadline = Instant::now() + Duration::from_secs(5);
    while primary.open_connections() > 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the fault proxy kept connections open"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let e = writer
        .batch_execute(&format!("INSERT INTO {TABLE} VALUES (2)"))
        .await
        .expect_err("a write succeeded with the primary down");
    let waited = started.elapsed();
    let (code, message) = pg_error(&e);
    println!("write with the primary down: {code} after {waited:?}: {message}");
    assert_eq!(code, "08001", "{message}");
    assert!(message.contains("cannot connect to server"), "{message}");
    assert!(
        waited < Duration::from_secs(3),
        "the write waited {waited:?}"
    );
    assert!(
        writer.simple_query("SELECT 1").await.is_err(),
        "the client went on"
    );
    // Reads are served by the replicas meanwhile, without an error.
    for i in 0..50 {
        let (port, in_recovery) = read_node(&reader)
            .await
            .map_err(|e| anyhow::anyhow!("read {i} with the primary down: {e:#}"))?;
        assert!(in_recovery, "read {i} served by {port}, not a replica");
    }
    primary.pass();
    write_when_back(&px, USER, TABLE, 3).await?;
    assert_eq!(ids(cluster, TABLE)?, "1,3", "the failed write was retried");

    // 2. A read that must see a write no replica has replayed goes to the primary (never a
    // stale read): with the primary down it fails like a write, 08001.
    let causal = connect(&px, USER, PW).await?;
    until_replica_read(&causal).await?;
    for r in cluster.replicas() {
        r.pause_replay()?;
    }
    let paused = async {
        causal
            .batch_execute(&format!("INSERT INTO {TABLE} VALUES (4)"))
            .await?;
        primary.reset();
        let e = read_node(&causal)
            .await
            .expect_err("a read of an unreplayed write was served with the primary down");
        let (code, message) = pg_error(e.downcast_ref::<tokio_postgres::Error>().unwrap());
        println!("read of an unreplayed write with the primary down: {code}: {message}");
        assert_eq!(code, "08001", "{message}");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    for r in cluster.replicas() {
        r.resume_replay()?;
    }
    paused?;
    primary.pass();
    write_when_back(&px, USER, TABLE, 5).await?;
    assert_eq!(ids(cluster, TABLE)?, "1,3,4,5");
    Ok(())
}
