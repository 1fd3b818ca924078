//! Network faults between pgtier and its nodes, injected by the kit's [`FaultProxy`]: a replica
//! that goes silent under a read loop, and a primary whose connection is reset mid-transaction.

use std::time::{Duration, Instant};

use anyhow::Result;
use pgtier_kit::fixture::read_node;
use pgtier_kit::fixture::{connect, scram_role, ConfigBuilder};
use pgtier_kit::{wire, Cluster, FaultProxy};
use tokio::io::AsyncWriteExt;
use tokio_postgres::Client;

const USER: &str = "faults";
const PW: &str = "faults-pw";

/// pgtier's bound on a connect to a node that does not answer (set in the configs below).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest any single read may take while a replica is silent: the connect bound, a retry
/// elsewhere and a loaded 2-core CI machine's scheduling.
const READ_BOUND: Duration = Duration::from_secs(3);

/// One read, failing if it takes longer than [`READ_BOUND`].
async fn bounded_read(c: &Client) -> Result<(u16, bool)> {
    let start = Instant::now();
    match tokio::time::timeout(READ_BOUND, read_node(c)).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!("a read waited {:?} (bound {READ_BOUND:?})", start.elapsed()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_replica_leaves_the_reads_and_rejoins() -> Result<()> {
    let cluster = Cluster::shared();
    scram_role(cluster, USER, PW)?;
    let silent = FaultProxy::start(&cluster.replica(0).addr()).await?;
    let other = FaultProxy::start(&cluster.replica(1).addr()).await?;
    let silent_port = cluster.replica(0).port();
    let px = ConfigBuilder::new(cluster)
        .global("lag_check_interval = \"50ms\"")
        // The one read loop reads back to back and must reach both replicas: ties take turns.
        .global("replica_round_robin = true")
        .global(&format!(
            "server_connect_timeout = \"{}ms\"",
            CONNECT_TIMEOUT.as_millis()
        ))
        .database(&format!(
            "replicas = [\"{}\", \"{}\"]",
            silent.addr(),
            other.addr()
        ))
        .user(USER, &format!("password = \"{PW}\""))
        .start()?;
    // A read loop runs in its own task through the whole outage; the test follows its first
    // reads and checks at the end that none failed.
    let reader = connect(&px, USER, PW).await?;
    let (tx, mut served) = tokio::sync::mpsc::unbounded_channel::<(u16, Instant, Duration)>();
    let reads = tokio::spawn(async move {
        loop {
            let t = Instant::now();
            let (port, _) = read_node(&reader).await?;
            if tx.send((port, t, t.elapsed())).is_err() {
                return Ok::<_, anyhow::Error>(());
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (port, _, _) = served
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("the read loop ended"))?;
        if port == silent_port {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "replica 0 never served a read");
    }

    silent.blackhole();
    let blackholed = Instant::now();
    // The monitor's check of the silent node times out and bans it, within the check bound
    // (server_connect_timeout) and a lag-check interval, with room for a loaded machine.
    let banned = format!("node={} role=Unknown state=Banned", silent.addr());
    while !px.log().lines().any(|l| l.contains(&banned)) {
        anyhow::ensure!(
            blackholed.elapsed() < READ_BOUND,
            "the blackholed replica was not banned within {READ_BOUND:?}\n{}",
            px.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // From then on reads leave it: a new client's reads all go elsewhere, each bounded. The
    // outage lasts longer than the bound, so a read left waiting on the silent node shows.
    let fresh = connect(&px, USER, PW).await?;
    let mut i = 0;
    while i < 50 || blackholed.elapsed() < READ_BOUND + Duration::from_secs(1) {
        i += 1;
        let (port, in_recovery) = bounded_read(&fresh)
            .await
            .map_err(|e| anyhow::anyhow!("read {i}: {e}\n{}", px.log()))?;
        assert_ne!(port, silent_port, "read {i} reached the banned replica");
        assert!(
            in_recovery,
            "read {i} went to the primary with a healthy replica left"
        );
    }

    silent.pass();
    let passed = Instant::now();
    while bounded_read(&fresh).await?.0 != silent_port {
        anyhow::ensure!(
            passed.elapsed() < Duration::from_secs(10),
            "replica 0 did not rejoin within 10 s of answering again\n{}",
            px.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The loop's reads all succeed, each within the bound: one sent to the node as it went
    // silent is given up when the node's check fails (nothing of it reached the client) and
    // runs again on the other replica. Wait for a loop read that started after the rejoin.
    let mut longest = Duration::ZERO;
    let mut count = 0;
    let rejoined = Instant::now();
    loop {
        let (_, started, took) = served
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("the read loop ended"))?;
        longest = longest.max(took);
        count += 1;
        if started > rejoined {
            break;
        }
    }
    println!("read loop: {count} reads after replica 0 first served, the longest took {longest:?}");
    assert!(
        longest < READ_BOUND,
        "a loop read waited {longest:?} (bound {READ_BOUND:?})\n{}",
        px.log()
    );
    drop(served);
    reads.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_reset_mid_transaction_fails_the_commit_and_nothing_is_retried() -> Result<()> {
    const TABLE: &str = "fault_reset_rows";
    let cluster = Cluster::shared();
    scram_role(cluster, USER, PW)?;
    let primary = FaultProxy::start(&cluster.primary().addr()).await?;
    let px = ConfigBuilder::new(cluster)
        .primary(&primary.addr())
        .global(&format!(
            "server_connect_timeout = \"{}ms\"",
            CONNECT_TIMEOUT.as_millis()
        ))
        .user(USER, &format!("password = \"{PW}\"\nauth = \"trust\""))
        .start()?;
    let direct_count = || -> Result<i64> {
        Ok(cluster
            .primary()
            .psql_db("app", &format!("SELECT count(*) FROM {TABLE}"))?
            .trim()
            .parse()?)
    };
    // The raw protocol client sees exactly what pgtier sends, also an error sent while the
    // client is idle in the transaction (a driver may drop that one).
    let setup = connect(&px, USER, PW).await?;
    setup
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id int)"
        ))
        .await?;
    drop(setup);
    let (mut c, _) = wire::login_trust(&px.addr(), USER, "app").await?;
    for sql in [
        "BEGIN".to_owned(),
        format!("INSERT INTO {TABLE} VALUES (1)"),
    ] {
        let msgs = wire::send_all(&mut c, &[wire::query(&sql)], Duration::from_secs(10)).await?;
        anyhow::ensure!(!msgs.iter().any(|m| m.tag == b'E'), "{sql} failed");
    }

    primary.reset();
    // Postgres itself saw the reset: the backend holding the open transaction is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = cluster.primary().psql_db(
            "app",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = '{USER}' \
                 AND state LIKE 'idle in transaction%'"
            ),
        )?;
        if open.trim() == "0" {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the transaction's backend outlived the reset by 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // COMMIT may fail to send (pgtier may have closed the client already): what pgtier sent
    // is read either way.
    let _ = c.write_all(&wire::query("COMMIT")).await;
    let mut replies = Vec::new();
    while let Ok(m) = wire::read_msg(&mut c, Duration::from_secs(5)).await {
        replies.push(m);
    }
    println!("COMMIT after the reset: {}", wire::tags(&replies));
    assert!(
        !replies.iter().any(|m| m.tag == b'C'),
        "COMMIT completed after the reset"
    );
    let codes: Vec<String> = replies
        .iter()
        .filter(|m| m.tag == b'E')
        .filter_map(|m| m.field(b'C'))
        .collect();
    assert_eq!(codes, ["08006"], "errors after the reset: {replies:?}");
    assert_eq!(
        direct_count()?,
        0,
        "the reset transaction's row was committed"
    );

    primary.pass();
    // The next client is served once the proxy passes again (pgtier may first need to notice
    // the primary is back, so poll with a deadline).
    let deadline = Instant::now() + Duration::from_secs(10);
    let next = loop {
        match connect(&px, USER, PW).await {
            Ok(n) => match n.simple_query("SELECT 1").await {
                Ok(_) => break n,
                Err(e) => anyhow::ensure!(Instant::now() < deadline, "not served: {e}"),
            },
            Err(e) => anyhow::ensure!(Instant::now() < deadline, "no login: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    next.batch_execute(&format!("INSERT INTO {TABLE} VALUES (2)"))
        .await?;
    // Exactly the new row: the failed write was never replayed on the fresh connection.
    assert_eq!(
        cluster
            .primary()
            .psql_db(
                "app",
                &format!("SELECT string_agg(id::text, ',') FROM {TABLE}")
            )?
            .trim(),
        "2"
    );
    Ok(())
}

/// An echo server for the proxy's own test: it returns whatever it reads.
async fn echo_server() -> Result<(String, tokio::task::JoinHandle<()>)> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?.to_string();
    let h = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok((addr, h))
}

/// Writes `b"ping"` and reads up to 4 bytes back within `limit`: the bytes, or the error.
async fn ping(s: &mut tokio::net::TcpStream, limit: Duration) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"ping").await?;
    let mut buf = vec![0u8; 4];
    let mut got = 0;
    while got < 4 {
        match tokio::time::timeout(limit, s.read(&mut buf[got..])).await {
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
            Ok(Ok(0)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(Ok(n)) => got += n,
            Ok(Err(e)) => return Err(e),
        }
    }
    Ok(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_proxy_limits_bandwidth_and_closes_the_nodes_side() -> Result<()> {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;
    let (echo, server) = echo_server().await?;
    let fp = FaultProxy::start(&echo).await?;
    let mut a = TcpStream::connect(fp.addr()).await?;
    assert_eq!(ping(&mut a, Duration::from_secs(5)).await?, b"ping", "pass");

    // 64 KiB through a 128 KiB/s limit: at least half a second each way (a lower bound only:
    // a loaded machine may take longer), and the bytes unchanged.
    fp.bandwidth(128 * 1024);
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let t = Instant::now();
    {
        let (mut r, mut w) = a.split();
        let mut got = vec![0u8; data.len()];
        let (wrote, read) = tokio::join!(
            w.write_all(&data),
            tokio::time::timeout(Duration::from_secs(30), r.read_exact(&mut got))
        );
        wrote?;
        read??;
        assert!(got == data, "bandwidth: the bytes changed");
    }
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "64 KiB at 128 KiB/s took only {:?}",
        t.elapsed()
    );

    // The node closes its side: the client reads the end of the stream without having
    // written anything, and may still write (its half stays open).
    fp.pass();
    assert_eq!(ping(&mut a, Duration::from_secs(5)).await?, b"ping");
    fp.half_close();
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), a.read(&mut byte)).await??;
    assert_eq!(n, 0, "half-close of an open connection");
    a.write_all(b"more").await?;
    // A new connection is closed the same way as soon as it opens.
    let mut b = TcpStream::connect(fp.addr()).await?;
    let n = tokio::time::timeout(Duration::from_secs(5), b.read(&mut byte)).await??;
    assert_eq!(n, 0, "half-close of a new connection");

    fp.pass();
    let mut c = TcpStream::connect(fp.addr()).await?;
    assert_eq!(
        ping(&mut c, Duration::from_secs(5)).await?,
        b"ping",
        "pass again"
    );
    drop(fp);
    server.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_proxy_applies_each_mode_and_closes_everything_when_dropped() -> Result<()> {
    use std::io::ErrorKind;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;
    let (echo, server) = echo_server().await?;
    let fp = FaultProxy::start(&echo).await?;
    let short = Duration::from_millis(300);
    let mut a = TcpStream::connect(fp.addr()).await?;
    assert_eq!(ping(&mut a, short).await?, b"ping", "pass");

    fp.latency(Duration::from_millis(200));
    let t = Instant::now();
    assert_eq!(ping(&mut a, Duration::from_secs(5)).await?, b"ping");
    // 200 ms each way.
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "latency: {:?}",
        t.elapsed()
    );

    fp.blackhole();
    // Silence is the fault: no answer, yet no close, on the old and on a new connection.
    assert_eq!(
        ping(&mut a, short).await.unwrap_err().kind(),
        ErrorKind::TimedOut
    );
    let mut b = TcpStream::connect(fp.addr()).await?;
    assert_eq!(
        ping(&mut b, short).await.unwrap_err().kind(),
        ErrorKind::TimedOut
    );
    fp.pass();
    // What was held is delivered once the mode passes again: the echo of the ping that timed
    // out, then that of this one (read too, or it would answer the next ping early).
    assert_eq!(ping(&mut b, Duration::from_secs(5)).await?, b"ping");
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), b.read_exact(&mut echo)).await??;
    assert_eq!(&echo, b"ping");

    fp.refuse();
    let mut c = TcpStream::connect(fp.addr()).await?;
    // Closed at once (FIN): a read sees the end without writing anything (data written to a
    // closed socket would draw an RST instead).
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut byte)).await??;
    assert_eq!(n, 0, "refuse");
    // Existing connections keep going while new ones are refused.
    assert_eq!(ping(&mut b, Duration::from_secs(5)).await?, b"ping");

    fp.reset();
    let e = ping(&mut b, Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        "reset of an existing connection: {e:?}"
    );
    // The RST can come so fast that the connect itself reports it.
    let e = match TcpStream::connect(fp.addr()).await {
        Err(e) => e,
        Ok(mut d) => ping(&mut d, Duration::from_secs(5)).await.unwrap_err(),
    };
    assert!(
        matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        "reset of a new connection: {e:?}"
    );
    // Every connection task has ended: none is left holding sockets.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fp.open_connections() != 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} connections still open after the reset",
            fp.open_connections()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    fp.pass();
    let mut f = TcpStream::connect(fp.addr()).await?;
    assert_eq!(ping(&mut f, Duration::from_secs(5)).await?, b"ping");
    let addr = fp.addr();
    drop(fp);
    // Dropped: its connections close and nothing listens any more.
    let e = ping(&mut f, Duration::from_secs(5)).await.unwrap_err();
    assert_ne!(
        e.kind(),
        ErrorKind::TimedOut,
        "a connection outlived the proxy"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(&addr).await.is_ok() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the proxy still listens after drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop((a, c));
    server.abort();
    Ok(())
}
