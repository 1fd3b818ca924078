//! A replica that comes back after a long outage rejoins the read rotation within about a
//! second of accepting connections, however long it was away (the monitor's retry backoff
//! once grew to 5 s, leaving reads with the primary alone for seconds), also when it did not
//! answer at all meanwhile (a connect attempt hanging then must not delay the rejoin).

use std::time::{Duration, Instant};

use anyhow::Result;
use pgtier_kit::fixture::read_node;
use pgtier_kit::fixture::{connect, scram_role, start_routing, ConfigBuilder};
use pgtier_kit::{Cluster, FaultProxy};
use tokio_postgres::Client;

const USER: &str = "rejoin";
const PW: &str = "rejoin-pw";

/// Longer than the old backoff needed to reach its 5 s cap (0.1 + 0.2 + ... + 3.2 s = 6.3 s).
const OUTAGE: Duration = Duration::from_secs(8);
/// Rejoin allowance: the 1 s (0.2-0.8 s measured here) with room for a CI machine
/// running tests in parallel on 2 cores (the old 5 s backoff fails it, see the rounds below).
const REJOIN: Duration = Duration::from_millis(2000);

/// Reads through pgtier until one reaches `port`; how long that took (None after `limit`).
async fn first_read_on(c: &Client, port: u16, limit: Duration) -> Result<Option<Duration>> {
    let start = Instant::now();
    while start.elapsed() < limit {
        let (p, in_recovery) = read_node(c).await?;
        if p == port {
            anyhow::ensure!(in_recovery, "port {port} is not in recovery");
            return Ok(Some(start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_back_after_a_long_outage_rejoins_within_a_second() -> Result<()> {
    let cluster = Cluster::start(2)?;
    let px = start_routing(&cluster, USER, PW, &[]).await?;
    let replica = cluster.replica(0);
    let port = replica.port();
    let reader = connect(&px, USER, PW).await?;
    assert!(
        first_read_on(&reader, port, Duration::from_secs(10))
            .await?
            .is_some(),
        "replica 0 never served a read"
    );
    // Three rounds: an old-style 5 s backoff retries within the allowance by chance in about
    // 2 of 5 rounds, in all three in about 1 of 16 runs.
    for round in 0..3 {
        replica.stop_immediate()?;
        // The outage itself is what is under test: long enough for any backoff to grow.
        tokio::time::sleep(OUTAGE).await;
        replica.start()?;
        // Measured from the first direct connection that succeeds.
        let deadline = Instant::now() + Duration::from_secs(30);
        let direct = loop {
            match replica.connect("postgres").await {
                Ok(c) => break c,
                Err(e) => {
                    anyhow::ensure!(Instant::now() < deadline, "replica not back: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let took = first_read_on(&reader, port, Duration::from_secs(10)).await?;
        drop(direct);
        println!("round {round}: first read on the restarted replica after {took:?}");
        let took = took.unwrap_or_else(|| {
            panic!(
                "round {round}: no read reached the restarted replica within 10 s\n{}",
                px.log()
            )
        });
        assert!(
            took <= REJOIN,
            "round {round}: the restarted replica served its first read {took:?} after it accepted connections (allowed {REJOIN:?})"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_did_not_answer_rejoins_within_a_second() -> Result<()> {
    let cluster = Cluster::start(1)?;
    scram_role(&cluster, USER, PW)?;
    let port = cluster.replica(0).port();
    let gate = FaultProxy::start(&cluster.replica(0).addr()).await?;
    let addr = gate.addr();
    // server_connect_timeout stays at its 15 s default: a connect to a silent node hangs that
    // long.
    let px = ConfigBuilder::new(&cluster)
        .global("lag_check_interval = \"50ms\"")
        .database(&format!("replicas = [\"{addr}\"]"))
        .user(USER, &format!("password = \"{PW}\""))
        .start()?;
    let reader = connect(&px, USER, PW).await?;
    assert!(
        first_read_on(&reader, port, Duration::from_secs(10))
            .await?
            .is_some(),
        "the replica never served a read"
    );
    // A node gone silent: the connections it had are lost, new ones are never answered.
    gate.reset();
    gate.blackhole();
    // Out of the rotation once its monitor noticed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_node(&reader).await?.0 == port {
        anyhow::ensure!(Instant::now() < deadline, "still in rotation while silent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The outage is what is under test: the monitor's connects hang meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    gate.pass();
    // Measured from the first connection through the forwarder that logs in.
    let dsn = format!(
        "host=127.0.0.1 port={} user={USER} password={PW} dbname=app connect_timeout=10",
        gate.port()
    );
    let (direct, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(conn);
    let took = first_read_on(&reader, port, Duration::from_secs(20)).await?;
    drop(direct);
    conn.abort();
    println!("first read on the answering-again replica after {took:?}");
    let took =
        took.unwrap_or_else(|| panic!("no read reached the replica within 20 s\n{}", px.log()));
    assert!(
        took <= REJOIN,
        "the replica served its first read {took:?} after it answered again (allowed {REJOIN:?})"
    );
    Ok(())
}
