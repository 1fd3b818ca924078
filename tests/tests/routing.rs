//! Read/write splitting through pgtier on a primary + 2 replicas: where each statement form
//! lands (checked with `pg_is_in_recovery()` and `inet_server_port()`), transaction stickiness,
//! hints, `SET pgtier.route`, and read-your-writes with a replica whose replay is paused.

use std::time::Duration;

use anyhow::Result;
use pgtier_kit::fixture::{connect, start_routing, ConfigBuilder};
use pgtier_kit::proxy::Pgtier;
use pgtier_kit::wire;
use pgtier_kit::Cluster;
use tokio_postgres::{Client, SimpleQueryMessage};

const USER: &str = "router";
const PW: &str = "router-pw";

async fn start(cluster: &Cluster, extra: &[&str]) -> Result<Pgtier> {
    start_routing(cluster, USER, PW, extra).await
}

/// (in recovery, server port) of the node that ran `sql` (which must return those two columns).
async fn where_ran(c: &Client, sql: &str) -> Result<(bool, u16)> {
    for m in c.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            let rec = r.get(0).unwrap_or("") == "t";
            let port = r.get(1).unwrap_or("0").parse()?;
            return Ok((rec, port));
        }
    }
    anyhow::bail!("no row from {sql}")
}

const WHERE: &str = "SELECT pg_is_in_recovery(), inet_server_port()";

fn replica_ports(cluster: &Cluster) -> Vec<u16> {
    cluster.replicas().iter().map(|r| r.port()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_spread_over_replicas_and_writes_reach_the_primary() -> Result<()> {
    let cluster = Cluster::start(2)?;
    let px = start(&cluster, &[]).await?;
    let c = connect(&px, USER, PW).await?;
    c.batch_execute("CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, v text)")
        .await?;
    // The client's own write must be replayed before its reads may use a replica.
    cluster.wait_replicas_caught_up()?;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let (rec, port) = where_ran(&c, WHERE).await?;
        assert!(rec, "a plain read ran on the primary (port {port})");
        assert!(replica_ports(&cluster).contains(&port));
        seen.insert(port);
    }
    // Least-outstanding choice with one client rotates or sticks; both replicas must be usable.
    let c2 = connect(&px, USER, PW).await?;
    let (a, b) = tokio::join!(
        where_ran(
            &c,
            "SELECT pg_is_in_recovery(), inet_server_port() FROM pg_sleep(0.2)"
        ),
        where_ran(
            &c2,
            "SELECT pg_is_in_recovery(), inet_server_port() FROM pg_sleep(0.2)"
        )
    );
    let (a, b) = (a?, b?);
    assert!(a.0 && b.0);
    seen.insert(a.1);
    seen.insert(b.1);
    assert_eq!(
        seen.len(),
        2,
        "two concurrent reads should use both replicas: {seen:?}"
    );
    // Writes.
    for sql in [
        "INSERT INTO items VALUES (1, 'a') ON CONFLICT DO NOTHING RETURNING pg_is_in_recovery(), inet_server_port()",
        "UPDATE items SET v = 'b' WHERE id = 1 RETURNING pg_is_in_recovery(), inet_server_port()",
        "WITH w AS (UPDATE items SET v = 'c' WHERE id = 1 RETURNING id) SELECT pg_is_in_recovery(), inet_server_port() FROM w",
        "SELECT pg_is_in_recovery(), inet_server_port() FROM items WHERE id = 1 FOR UPDATE",
        "SELECT pg_is_in_recovery(), inet_server_port() FROM items WHERE id = 1 FOR NO KEY UPDATE",
        "/* pgtier:primary */ SELECT pg_is_in_recovery(), inet_server_port()",
    ] {
        let (rec, port) = where_ran(&c, sql).await?;
        assert!(!rec, "{sql} ran on a replica");
        assert_eq!(port, cluster.primary().port(), "{sql}");
    }
    Ok(())
}

/// A new client of `px` reads on one of `cluster`'s replicas.
async fn a_new_client_reads_on_a_replica(cluster: &Cluster, px: &Pgtier) -> Result<()> {
    let c = connect(px, USER, PW).await?;
    let (rec, port) = where_ran(&c, WHERE).await?;
    assert!(rec && replica_ports(cluster).contains(&port), "{port}");
    Ok(())
}

/// A text that ends inside an escape string, right after its backslash, once made the
/// routing's literal normalizer slice past the text: a panic that closed the connection with
/// an internal error. Postgres' own syntax error must come back, and the session go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_ending_in_an_escaping_backslash_gets_postgres_syntax_error() -> Result<()> {
    let cluster = Cluster::start(2)?;
    let px = start(&cluster, &[]).await?;
    let c = connect(&px, USER, PW).await?;
    for sql in [
        "SELECT E'\\",
        "SELECT 1, E'ab\\",
        "SELECT 1 WHERE 'a' = E'\\",
    ] {
        // Simple protocol, then extended (an unnamed Parse of the same text).
        let err = c.simple_query(sql).await.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("42601"), "{sql}: {err}");
        let err = c.prepare(sql).await.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("42601"), "{sql}: {err}");
        // The session goes on (its next read may wait for or fall back to the primary: the
        // text, which did not parse, counted as a write for its causal token).
        where_ran(&c, WHERE).await?;
    }
    // The routing goes on too.
    a_new_client_reads_on_a_replica(&cluster, &px).await
}

/// A long chain of operators (`SELECT 1+1+...`: 70 KB on a tokio worker's stack, 600 KB on
/// the main thread's) once overflowed the stack of the routing's SQL analysis and aborted
/// pgtier, every client with it. It now goes to the primary unanalysed (too deep), Postgres
/// answers it, and pgtier goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_operator_chain_goes_to_the_primary_and_pgtier_lives_on() -> Result<()> {
    let cluster = Cluster::start(2)?;
    let px = start(&cluster, &[]).await?;
    let c = connect(&px, USER, PW).await?;
    for sql in [
        format!("SELECT 1{}", "+1".repeat(300_000)),
        format!("SELECT 1{}", " UNION ALL SELECT 1".repeat(100_000)),
    ] {
        // Postgres' own answer: the value, or its stack depth limit (54001).
        match c.simple_query(&sql).await {
            Ok(_) => {}
            Err(e) => assert_eq!(e.code().map(|c| c.code()), Some("54001"), "{e}"),
        }
        // The session goes on (its next read may wait for or fall back to the primary:
        // the chain counted as a write for its causal token).
        where_ran(&c, WHERE).await?;
    }
    // pgtier lived on.
    a_new_client_reads_on_a_replica(&cluster, &px).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_stay_on_one_server() -> Result<()> {
    let cluster = Cluster::start(2)?;
    let px = start(&cluster, &[]).await?;
    let c = connect(&px, USER, PW).await?;
    // A read-write transaction runs on the primary from its BEGIN.
    c.batch_execute("BEGIN").await?;
    for _ in 0..3 {
        let (rec, port) = where_ran(&c, WHERE).await?;
        assert!(!rec);
        assert_eq!(port, cluster.primary().port());
    }
    c.batch_execute("COMMIT").await?;
    // A read-only one may run on a replica, and stays on it.
    c.batch_execute("BEGIN READ ONLY").await?;
    let (rec, first) = where_ran(&c, WHERE).await?;
    assert!(rec, "BEGIN READ ONLY should go to a replica");
    for _ in 0..5 {
        assert_eq!(where_ran(&c, WHERE).await?, (true, first));
    }
    // A write inside it fails as Postgres would: read-only transaction (25006).
    let err = c
        .batch_execute("CREATE TABLE nope (a int)")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("25006"), "{err}");
    c.batch_execute("ROLLBACK").await?;
    // The session goes on normally.
    assert!(where_ran(&c, WHERE).await?.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_override_and_pgtier_statements() -> Result<()> {
    let cluster = Cluster::start(2)?;
    let px = start(&cluster, &[]).await?;
    let c = connect(&px, USER, PW).await?;
    c.batch_execute("SET pgtier.route = 'primary'").await?;
    assert!(!where_ran(&c, WHERE).await?.0, "route=primary");
    let show = c.simple_query("SHOW pgtier.route").await?;
    let value = show.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("primary"));
    c.batch_execute("RESET pgtier.route").await?;
    assert!(where_ran(&c, WHERE).await?.0, "route=auto again");
    let err = c
        .batch_execute("SET pgtier.route = 'sideways'")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"));
    let err = c
        .batch_execute("SET pgtier.min_lsn = 'garbage'")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"));
    // Not pinned by any of that: reads still spread.
    assert!(where_ran(&c, WHERE).await?.0);
    Ok(())
}

fn first_row_value(msgs: &[SimpleQueryMessage]) -> Option<String> {
    msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

/// 1000 autocommit INSERT-then-SELECT iterations with one replica's replay paused: no read may
/// miss its own write. Reports the share served by replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_with_a_paused_replica() -> Result<()> {
    let cluster = Cluster::start(2)?;
    // The kit runs with synchronous_commit off (fast set-up); the production default is on,
    // which ships each commit to the replicas at once.
    cluster
        .primary()
        .psql("ALTER SYSTEM SET synchronous_commit = on")?;
    cluster.primary().psql("SELECT pg_reload_conf()")?;
    let px = start(&cluster, &[]).await?;
    let c = connect(&px, USER, PW).await?;
    c.batch_execute("CREATE TABLE ryw (id int PRIMARY KEY)")
        .await?;
    cluster.wait_replicas_caught_up()?;
    cluster.replica(0).pause_replay()?;
    let insert = c.prepare("INSERT INTO ryw VALUES ($1)").await?;
    let select = c
        .prepare("SELECT count(*), pg_is_in_recovery() FROM ryw WHERE id = $1")
        .await?;
    let (mut stale, mut on_replica) = (0, 0);
    const N: i32 = 1000;
    for i in 0..N {
        c.execute(&insert, &[&i]).await?;
        let row = c.query_one(&select, &[&i]).await?;
        if row.get::<_, i64>(0) != 1 {
            stale += 1;
        }
        if row.get::<_, bool>(1) {
            on_replica += 1;
        }
    }
    cluster.replica(0).resume_replay()?;
    println!(
        "read-your-writes: {N} iterations, {stale} stale, {on_replica} reads on replicas ({:.0}%)",
        on_replica as f64 * 100.0 / N as f64
    );
    assert_eq!(stale, 0, "reads missed their own writes");
    assert!(
        on_replica > 0,
        "with a healthy replica, some reads after writes should land on it"
    );
    Ok(())
}

/// A token from one connection makes another connection's reads see that write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causal_token_crosses_connections() -> Result<()> {
    let cluster = Cluster::start(2)?;
    let px = start(&cluster, &[]).await?;
    let writer = connect(&px, USER, PW).await?;
    let reader = connect(&px, USER, PW).await?;
    writer
        .batch_execute("CREATE TABLE tokens (id int PRIMARY KEY)")
        .await?;
    cluster.wait_replicas_caught_up()?;
    assert_eq!(
        first_row_value(&writer.simple_query("SHOW pgtier.causal_lsn").await?).as_deref(),
        first_row_value(&writer.simple_query("SHOW pgtier.causal_lsn").await?).as_deref()
    );
    for r in cluster.replicas() {
        r.pause_replay()?;
    }
    writer
        .batch_execute("INSERT INTO tokens VALUES (7)")
        .await?;
    let token = first_row_value(&writer.simple_query("SHOW pgtier.causal_lsn").await?)
        .expect("a causal token after a write");
    assert_ne!(token, "0/0");
    // Without the token the reader may read a paused replica and miss the row; with it, never.
    reader
        .batch_execute(&format!("SET pgtier.min_lsn = '{token}'"))
        .await?;
    let row = reader
        .query_one(
            "SELECT count(*), pg_is_in_recovery() FROM tokens WHERE id = 7",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, i64>(0), 1, "the token's write must be visible");
    assert!(
        !row.get::<_, bool>(1),
        "every replica is paused: the primary must serve it"
    );
    // The comment form works per statement, too.
    let fresh = connect(&px, USER, PW).await?;
    let sql = format!(
        "/* pgtier:min_lsn={token} */ SELECT count(*)::int, pg_is_in_recovery() FROM tokens WHERE id = 7"
    );
    let row = fresh.query_one(sql.as_str(), &[]).await?;
    assert_eq!(row.get::<_, i32>(0), 1);
    for r in cluster.replicas() {
        r.resume_replay()?;
    }
    Ok(())
}

/// After a write transaction the client receives ParameterStatus `pgtier.causal_lsn`, before
/// the transaction's ReadyForQuery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causal_lsn_is_reported_as_parameter_status() -> Result<()> {
    let cluster = Cluster::start(2)?;
    cluster.create_trust_role("pgtier_trust")?;
    pgtier_kit::fixture::ensure_app_db(&cluster)?;
    cluster.ddl("app", "GRANT ALL ON SCHEMA public TO pgtier_trust")?;
    let px = ConfigBuilder::new(&cluster)
        .with_replicas(&cluster)
        .user("pgtier_trust", "auth = \"trust\"")
        .start()?;
    let (mut s, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app").await?;
    use tokio::io::AsyncWriteExt;
    s.write_all(&wire::query("CREATE TABLE ps (a int)")).await?;
    // Right before the ReadyForQuery that ends the write (tests/tests/causal_token.rs has more).
    let mut last = None;
    loop {
        let m = wire::read_msg_raw(&mut s, Duration::from_secs(10)).await?;
        if m.tag == b'Z' {
            break;
        }
        last = Some(m);
    }
    let status = last.expect("replies before ReadyForQuery");
    assert_eq!(
        status.tag, b'S',
        "expected ParameterStatus before ReadyForQuery"
    );
    let body = String::from_utf8_lossy(&status.body).to_string();
    assert!(body.starts_with("pgtier.causal_lsn\0"), "{body:?}");
    Ok(())
}

/// A pgtier on the shared cluster with a trust user, for raw-protocol pipelines; returns the
/// login socket once a replica serves reads.
async fn pipeline_client(
    cluster: &Cluster,
    table: &str,
) -> Result<(Pgtier, tokio::net::TcpStream)> {
    use tokio::io::AsyncWriteExt;
    cluster.create_trust_role("pgtier_trust")?;
    pgtier_kit::fixture::ensure_app_db(cluster)?;
    cluster.ddl("app", "GRANT ALL ON SCHEMA public TO pgtier_trust")?;
    let px = ConfigBuilder::new(cluster)
        .global("lag_check_interval = \"50ms\"")
        .with_replicas(cluster)
        .user("pgtier_trust", "auth = \"trust\"")
        .start()?;
    let (mut s, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app").await?;
    let create = format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (v int)");
    s.write_all(&wire::query(&create)).await?;
    let msgs = wire::read_until_ready(&mut s, Duration::from_secs(10)).await?;
    assert!(!wire::tags(&msgs).contains('E'), "{msgs:?}");
    cluster.wait_replicas_caught_up()?;
    Ok((px, s))
}

/// `(in recovery, port)` from the first DataRow of `msgs` (two text columns).
fn row_where(msgs: &[wire::Msg]) -> (bool, u16) {
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
    let mut at = 2;
    let mut col = || {
        let len = i32::from_be_bytes(row.body[at..at + 4].try_into().unwrap()) as usize;
        let v = String::from_utf8_lossy(&row.body[at + 4..at + 4 + len]).into_owned();
        at += 4 + len;
        v
    };
    let rec = col() == "t";
    (rec, col().parse().unwrap())
}

fn no_error(msgs: &[wire::Msg]) {
    if let Some(e) = msgs.iter().find(|m| m.tag == b'E') {
        panic!("error {:?}: {:?}", e.field(b'C'), e.field(b'M'));
    }
}

/// psycopg ends a pipeline with Sync then Flush, and its next pipeline (executemany) follows
/// without a Sync between rows: the lone Flush reached a replica on its own, and the INSERTs
/// after it were let through there as if they continued it (25006 read-only transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_pipelined_after_a_lone_flush_reaches_the_primary() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let cluster = Cluster::shared();
    let (_px, mut s) = pipeline_client(cluster, "pipelined_after_flush").await?;
    let limit = Duration::from_secs(10);
    // A read pipeline, ended by Sync (and the Flush psycopg sends after it).
    let read = [
        wire::parse("r", WHERE),
        wire::bind("r"),
        wire::execute(),
        wire::bind("r"),
        wire::execute(),
        wire::sync(),
    ];
    let msgs = wire::send_all(&mut s, &read, limit).await?;
    no_error(&msgs);
    let (rec, port) = row_where(&msgs);
    assert!(rec, "a pipelined read ran on the primary (port {port})");
    // The Flush arrives once the client has its replies: a unit of its own.
    s.write_all(&wire::message(b'H', b"")).await?;
    // executemany: one Parse, then Bind/Execute per row, one Sync.
    let insert = "INSERT INTO pipelined_after_flush SELECT 1 RETURNING pg_is_in_recovery(), inet_server_port()";
    let write = [
        wire::parse("w", insert),
        wire::bind("w"),
        wire::execute(),
        wire::bind("w"),
        wire::execute(),
        wire::sync(),
        wire::message(b'H', b""),
    ];
    let msgs = wire::send_all(&mut s, &write, limit).await?;
    no_error(&msgs);
    assert_eq!(
        row_where(&msgs),
        (false, cluster.primary().port()),
        "the INSERT did not run on the primary"
    );
    assert_eq!(wire::tags(&msgs).matches('C').count(), 2, "{msgs:?}");
    // And reads pipelined after that still use a replica once it has the rows.
    cluster.wait_replicas_caught_up()?;
    let count =
        "SELECT pg_is_in_recovery(), inet_server_port(), count(*) FROM pipelined_after_flush";
    let msgs = wire::send_all(
        &mut s,
        &[
            wire::parse("", count),
            wire::bind(""),
            wire::execute(),
            wire::sync(),
        ],
        limit,
    )
    .await?;
    no_error(&msgs);
    assert!(
        row_where(&msgs).0,
        "the read after the write ran on the primary"
    );
    Ok(())
}

/// A unit cut at a Flush (psycopg fetching mid-pipeline, asyncpg's Parse/Describe/Flush)
/// continues on its server up to Sync, and what follows the Flush is unknown when it is
/// routed: a write there must not find itself on a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_after_a_flush_in_the_same_pipeline_reaches_the_primary() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let cluster = Cluster::shared();
    let (_px, mut s) = pipeline_client(cluster, "written_after_flush").await?;
    let limit = Duration::from_secs(10);
    let head = [
        wire::parse("", WHERE),
        wire::bind(""),
        wire::execute(),
        wire::message(b'H', b""),
    ];
    s.write_all(&head.concat()).await?;
    // The client waits for the read's rows before it goes on.
    let mut first = Vec::new();
    while first.last().is_none_or(|m: &wire::Msg| m.tag != b'C') {
        first.push(wire::read_msg(&mut s, limit).await?);
        no_error(&first);
    }
    let insert = "INSERT INTO written_after_flush SELECT 1 RETURNING pg_is_in_recovery(), inet_server_port()";
    let rest = [
        wire::parse("", insert),
        wire::bind(""),
        wire::execute(),
        wire::sync(),
    ];
    let msgs = wire::send_all(&mut s, &rest, limit).await?;
    no_error(&msgs);
    assert_eq!(row_where(&msgs), (false, cluster.primary().port()));
    // The read before it ran on the same server, in the same implicit transaction.
    assert_eq!(row_where(&first), (false, cluster.primary().port()));
    Ok(())
}

/// A client's back-to-back reads stay on one replica (its server process has just run), unless
/// `replica_round_robin = true`, where equally loaded replicas take turns with every read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_reads_stay_on_one_replica_unless_round_robin() -> Result<()> {
    let cluster = Cluster::shared();
    cluster.create_trust_role("pgtier_trust")?;
    pgtier_kit::fixture::ensure_app_db(cluster)?;
    for round_robin in [false, true] {
        let px = ConfigBuilder::new(cluster)
            .global("lag_check_interval = \"50ms\"")
            .global(&format!("replica_round_robin = {round_robin}"))
            .with_replicas(cluster)
            .user("pgtier_trust", "auth = \"trust\"")
            .start()?;
        let c = both_replicas_read(cluster, &px).await?;
        let mut ports = Vec::new();
        for _ in 0..20 {
            let (rec, port) = where_ran(&c, WHERE).await?;
            assert!(rec, "a read ran on the primary (port {port})");
            ports.push(port);
        }
        let switches = ports.windows(2).filter(|w| w[0] != w[1]).count();
        eprintln!("replica_round_robin = {round_robin}: {switches} switches in {ports:?}");
        if round_robin {
            assert!(switches >= 15, "reads did not take turns: {ports:?}");
        } else {
            // A read delayed past the affinity window (a preempted client) may rotate.
            assert!(
                switches <= 3,
                "reads did not stay on one replica: {ports:?}"
            );
        }
    }
    Ok(())
}

/// Waits until both replicas serve reads through `px`: two concurrent slow reads land on
/// different replicas (the less loaded one takes the second); returns a third client.
async fn both_replicas_read(cluster: &Cluster, px: &Pgtier) -> Result<Client> {
    let dsn = format!(
        "host=127.0.0.1 port={} user=pgtier_trust dbname=app connect_timeout=10",
        px.port()
    );
    let (a, b) = (
        pgtier_kit::tls::connect(&dsn).await?,
        pgtier_kit::tls::connect(&dsn).await?,
    );
    let slow = "SELECT pg_is_in_recovery(), inet_server_port() FROM pg_sleep(0.05)";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (x, y) = tokio::join!(where_ran(&a, slow), where_ran(&b, slow));
        let (x, y) = (x?, y?);
        let ports = replica_ports(cluster);
        if x.0 && y.0 && x.1 != y.1 && ports.contains(&x.1) && ports.contains(&y.1) {
            return pgtier_kit::tls::connect(&dsn).await;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "both replicas did not serve reads within 10 s: {x:?} {y:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
