//! The cross-connection causal token (ParameterStatus `pgtier.causal_lsn`) arrives *before*
//! the ReadyForQuery that ends a write transaction, so a driver that reads up to ReadyForQuery
//! and then asks for the parameter gets this write's token: raw protocol (simple, extended,
//! explicit blocks, COPY, pipelined units), and real drivers (psycopg 3 and libpq's
//! PQparameterStatus through ctypes, tests/python/causal_token.py).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pgtier_kit::fixture::{ensure_app_db, ConfigBuilder};
use pgtier_kit::wire::{self, Msg, CAUSAL_LSN_STATUS};
use pgtier_kit::{Cluster, Pgtier};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const USER: &str = "pgtier_trust";
const LIMIT: Duration = Duration::from_secs(10);

/// pgtier routing to the shared cluster's 2 replicas, for trust user `pgtier_trust`; a fresh
/// table `name (a int)`.
fn start(table: &str) -> Result<(&'static Cluster, Pgtier)> {
    let cluster = Cluster::shared();
    cluster.create_trust_role(USER)?;
    ensure_app_db(cluster)?;
    cluster.ddl("app", &format!("GRANT ALL ON SCHEMA public TO {USER}"))?;
    cluster.ddl(
        "app",
        &format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (a int); GRANT ALL ON {table} TO {USER}"),
    )?;
    let px = ConfigBuilder::new(cluster)
        .global("lag_check_interval = \"50ms\"")
        .with_replicas(cluster)
        .user(USER, "auth = \"trust\"")
        .start()?;
    Ok((cluster, px))
}

/// A WAL position as a number.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.trim().split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// Every message up to ReadyForQuery, the token's ParameterStatus included.
async fn until_ready(s: &mut TcpStream) -> Result<Vec<Msg>> {
    let mut out = Vec::new();
    loop {
        let m = wire::read_msg_raw(s, LIMIT).await?;
        let done = m.tag == b'Z';
        out.push(m);
        if done {
            return Ok(out);
        }
    }
}

/// Sends `parts` in one write; the replies up to ReadyForQuery.
async fn send(s: &mut TcpStream, parts: &[Vec<u8>]) -> Result<Vec<Msg>> {
    s.write_all(&parts.concat()).await?;
    until_ready(s).await
}

fn is_token(m: &Msg) -> bool {
    m.tag == b'S' && m.body.starts_with(CAUSAL_LSN_STATUS)
}

/// The token sent with these replies: it must be the message right before ReadyForQuery.
fn token(msgs: &[Msg]) -> Option<u64> {
    let at = msgs.iter().position(is_token)?;
    assert_eq!(
        at + 2,
        msgs.len(),
        "the token must come right before ReadyForQuery: {}",
        wire::tags(msgs)
    );
    let value = &msgs[at].body[CAUSAL_LSN_STATUS.len()..];
    Some(lsn(
        std::str::from_utf8(value.strip_suffix(&[0]).unwrap()).unwrap()
    ))
}

fn status(msgs: &[Msg]) -> u8 {
    msgs.last().expect("replies").body[0]
}

/// The primary's insert position now (read directly, not through pgtier).
fn primary_lsn(cluster: &Cluster) -> Result<u64> {
    Ok(lsn(&cluster
        .primary()
        .psql("SELECT pg_current_wal_insert_lsn()")?))
}

/// Checks a write's replies: the token came before ReadyForQuery 'I', is past the position the
/// write returned (its commit record comes later), at most the primary's position now, and past
/// the previous token.
fn check_write(cluster: &Cluster, msgs: &[Msg], previous: &mut u64, what: &str) -> Result<()> {
    ensure!(status(msgs) == b'I', "{what}: {}", wire::tags(msgs));
    let t = token(msgs).with_context(|| {
        format!(
            "{what}: no token before ReadyForQuery: {}",
            wire::tags(msgs)
        )
    })?;
    let returned = lsn(&wire::first_value(msgs));
    ensure!(
        t > returned,
        "{what}: token {t:X} not past the write's position {returned:X}"
    );
    let now = primary_lsn(cluster)?;
    ensure!(
        t <= now,
        "{what}: token {t:X} past the primary's position {now:X}"
    );
    ensure!(
        t > *previous,
        "{what}: token {t:X} did not advance from {previous:X}"
    );
    *previous = t;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_comes_before_ready_for_query_simple_extended_and_commit() -> Result<()> {
    let (cluster, px) = start("ct_basic")?;
    let (mut s, _) = wire::login_trust(&px.addr(), USER, "app").await?;
    let insert = "INSERT INTO ct_basic VALUES (1) RETURNING pg_current_wal_insert_lsn()::text";
    let mut last = 0;
    for i in 0..3 {
        let msgs = send(&mut s, &[wire::query(insert)]).await?;
        check_write(cluster, &msgs, &mut last, &format!("autocommit INSERT {i}"))?;
    }
    for i in 0..3 {
        let msgs = send(
            &mut s,
            &[
                wire::parse("", insert),
                wire::bind(""),
                wire::execute(),
                wire::sync(),
            ],
        )
        .await?;
        check_write(cluster, &msgs, &mut last, &format!("extended INSERT {i}"))?;
    }
    // An explicit block: the token comes with the COMMIT, never inside the block.
    let begin = send(&mut s, &[wire::query("BEGIN")]).await?;
    assert_eq!((status(&begin), token(&begin)), (b'T', None));
    let mut msgs = send(&mut s, &[wire::query(insert)]).await?;
    assert_eq!((status(&msgs), token(&msgs)), (b'T', None));
    let commit = send(&mut s, &[wire::query("COMMIT")]).await?;
    msgs.pop();
    msgs.extend(commit);
    check_write(cluster, &msgs, &mut last, "BEGIN; INSERT; COMMIT")?;
    // The same in one Query string, and over the extended protocol.
    let multi = format!("BEGIN; {insert}; COMMIT");
    let msgs = send(&mut s, &[wire::query(&multi)]).await?;
    check_write(
        cluster,
        &msgs,
        &mut last,
        "one string BEGIN; INSERT; COMMIT",
    )?;
    let msgs = send(
        &mut s,
        &[
            wire::parse("", "BEGIN"),
            wire::bind(""),
            wire::execute(),
            wire::parse("", insert),
            wire::bind(""),
            wire::execute(),
            wire::parse("", "COMMIT"),
            wire::bind(""),
            wire::execute(),
            wire::sync(),
        ],
    )
    .await?;
    check_write(cluster, &msgs, &mut last, "extended BEGIN; INSERT; COMMIT")?;
    // Reads move nothing and hold nothing, on the primary or a replica.
    for sql in ["/* pgtier:primary */ SELECT 1", "SELECT 1"] {
        let msgs = send(&mut s, &[wire::query(sql)]).await?;
        assert_eq!(token(&msgs), None, "{sql}: {}", wire::tags(&msgs));
    }
    // SHOW agrees with the last token.
    let msgs = send(&mut s, &[wire::query("SHOW pgtier.causal_lsn")]).await?;
    assert_eq!(lsn(&wire::first_value(&msgs)), last);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_probe_inside_a_block_and_errors_reach_the_client_unchanged() -> Result<()> {
    let (cluster, px) = start("ct_blocks")?;
    let (mut s, _) = wire::login_trust(&px.addr(), USER, "app").await?;
    // A write, then (same batch) a block left open: a probe after the BEGIN would be the
    // block's first query, and SET TRANSACTION would then fail with 25001.
    s.write_all(
        &[
            wire::query("INSERT INTO ct_blocks VALUES (1)"),
            wire::query("BEGIN"),
        ]
        .concat(),
    )
    .await?;
    let msgs = until_ready(&mut s).await?;
    assert_eq!(wire::tags(&msgs), "CZ");
    let msgs = until_ready(&mut s).await?;
    assert_eq!(
        (status(&msgs), token(&msgs)),
        (b'T', None),
        "{}",
        wire::tags(&msgs)
    );
    let msgs = send(
        &mut s,
        &[wire::query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")],
    )
    .await?;
    assert_eq!(
        wire::tags(&msgs),
        "CZ",
        "{:?}",
        msgs.first().and_then(|m| m.field(b'M'))
    );
    let msgs = send(
        &mut s,
        &[wire::query(
            "INSERT INTO ct_blocks VALUES (2) RETURNING pg_current_wal_insert_lsn()::text",
        )],
    )
    .await?;
    assert_eq!(status(&msgs), b'T');
    let mut commit = send(&mut s, &[wire::query("COMMIT")]).await?;
    let mut with_row = msgs[..msgs.len() - 1].to_vec();
    with_row.append(&mut commit);
    check_write(cluster, &with_row, &mut 0, "COMMIT after a block left open")?;
    // A block that fails: the client sees Postgres' error once and ReadyForQuery 'E', nothing
    // else of pgtier's.
    let msgs = send(
        &mut s,
        &[wire::query(
            "BEGIN; INSERT INTO ct_blocks VALUES (3); SELECT 1/0; COMMIT",
        )],
    )
    .await?;
    assert_eq!(wire::tags(&msgs), "CCEZ");
    assert_eq!(msgs[2].field(b'C').as_deref(), Some("22012"));
    assert_eq!(status(&msgs), b'E');
    let msgs = send(&mut s, &[wire::query("SELECT 1")]).await?;
    assert_eq!(msgs[0].field(b'C').as_deref(), Some("25P02"));
    assert_eq!(wire::tags(&msgs), "EZ");
    let msgs = send(&mut s, &[wire::query("ROLLBACK")]).await?;
    assert_eq!(status(&msgs), b'I');
    // An autocommit write that fails is an error, unchanged, with ReadyForQuery 'I'.
    let msgs = send(&mut s, &[wire::query("INSERT INTO ct_blocks VALUES (1/0)")]).await?;
    assert_eq!(msgs[0].field(b'C').as_deref(), Some("22012"));
    assert_eq!(status(&msgs), b'I');
    let count = cluster
        .primary()
        .psql_db("app", "SELECT count(*) FROM ct_blocks")?;
    assert_eq!(count, "2");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_and_pipelined_units_get_the_token_before_their_last_ready_for_query() -> Result<()> {
    let (cluster, px) = start("ct_copy")?;
    let (mut s, _) = wire::login_trust(&px.addr(), USER, "app").await?;
    // COPY FROM STDIN cannot carry the probe behind it: the ReadyForQuery waits for it instead.
    let before = primary_lsn(cluster)?;
    s.write_all(&wire::query("COPY ct_copy FROM STDIN")).await?;
    let g = wire::read_msg_raw(&mut s, LIMIT).await?;
    assert_eq!(g.tag, b'G');
    let msgs = send(
        &mut s,
        &[wire::message(b'd', b"5\n6\n"), wire::message(b'c', b"")],
    )
    .await?;
    assert_eq!(wire::tags(&msgs), "CSZ");
    let t = token(&msgs).expect("a token");
    assert!(t > before && t <= primary_lsn(cluster)?);
    // Two writes in one batch: one probe behind both, the token before the last ReadyForQuery.
    let insert = "INSERT INTO ct_copy VALUES (7) RETURNING pg_current_wal_insert_lsn()::text";
    let mut msgs = send(&mut s, &[wire::query(insert), wire::query(insert)]).await?;
    msgs.extend(until_ready(&mut s).await?);
    assert_eq!(wire::tags(&msgs), "TDCZTDCSZ");
    let mut previous = t;
    check_write(
        cluster,
        &msgs[4..],
        &mut previous,
        "second of two pipelined INSERTs",
    )?;
    assert_eq!(
        cluster
            .primary()
            .psql_db("app", "SELECT count(*) FROM ct_copy")?,
        "4"
    );
    Ok(())
}

/// Runs tests/python/causal_token.py for `driver` against pgtier; returns its output.
fn run_script(table: &str, driver: &str) -> String {
    let (_cluster, px) = start(table).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/causal_token.py");
    let out = Command::new("timeout")
        .args(["-s", "KILL", "120", "python3"])
        .arg(&script)
        .args([
            "127.0.0.1",
            &px.port().to_string(),
            USER,
            "app",
            table,
            driver,
        ])
        .env("PYTHONUNBUFFERED", "1")
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("causal_token OK"),
        "causal_token.py {driver} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("{stdout}");
    stdout
}

/// psycopg 3: `conn.info.parameter_status` (and `pgconn.parameter_status`, libpq's
/// PQparameterStatus) right after each write gives its new token.
#[test]
fn psycopg_reads_the_new_token_after_each_write() {
    run_script("ct_psycopg", "psycopg");
}

/// libpq itself (the system's libpq.so.5 through ctypes): PQexec, then PQparameterStatus.
#[test]
fn libpq_pqparameterstatus_reads_the_new_token_after_each_write() {
    run_script("ct_libpq", "libpq");
}

/// Every message up to the `n`th ReadyForQuery.
async fn until_ready_n(s: &mut TcpStream, n: usize) -> Result<Vec<Msg>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.extend(until_ready(s).await?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgtier_statements_pipelined_after_a_write_are_answered_by_pgtier() -> Result<()> {
    let (cluster, px) = start("ct_pipelined_show")?;
    let (mut s, _) = wire::login_trust(&px.addr(), USER, "app").await?;
    // A write and, in the same packet, SHOW pgtier.causal_lsn: the SHOW reaches the relay that
    // runs the write (and its causal probe). It used to go on to Postgres (42704: unrecognized
    // parameter); pgtier answers it, after the write, with the write's token.
    for (i, write) in [
        vec![wire::query("INSERT INTO ct_pipelined_show VALUES (1)")],
        vec![
            wire::parse("", "INSERT INTO ct_pipelined_show VALUES (2)"),
            wire::bind(""),
            wire::execute(),
            wire::sync(),
        ],
    ]
    .into_iter()
    .enumerate()
    {
        let mut parts = write;
        parts.push(wire::query("SHOW pgtier.causal_lsn"));
        parts.push(wire::query("SELECT 1"));
        let bytes: Vec<u8> = parts.concat();
        s.write_all(&bytes).await?;
        let wrote = until_ready(&mut s).await?;
        let msgs = until_ready_n(&mut s, 2).await?;
        ensure!(
            !wrote.iter().chain(&msgs).any(|m| m.tag == b'E'),
            "write {i}: an error: {} {}",
            wire::tags(&wrote),
            wire::tags(&msgs)
        );
        let token = token(&wrote).context("no token after the write")?;
        let shown: Vec<&Msg> = msgs.iter().filter(|m| m.tag == b'D').collect();
        ensure!(shown.len() == 2, "write {i}: {}", wire::tags(&msgs));
        let value = wire::first_value(&msgs);
        ensure!(
            lsn(&value) == token,
            "write {i}: SHOW pgtier.causal_lsn said {value}, the token is {token:X}"
        );
        ensure!(lsn(&value) <= primary_lsn(cluster)?, "write {i}: {value}");
    }
    // SET pgtier.min_lsn pipelined after a write is pgtier's too (Postgres would have taken
    // it as a setting of its own and the token would be lost).
    let far = "FF/0";
    let parts = [
        wire::query("INSERT INTO ct_pipelined_show VALUES (3)"),
        wire::query(&format!("SET pgtier.min_lsn = '{far}'")),
        wire::query("SHOW pgtier.min_lsn"),
    ]
    .concat();
    s.write_all(&parts).await?;
    let msgs = until_ready_n(&mut s, 3).await?;
    ensure!(
        !msgs.iter().any(|m| m.tag == b'E'),
        "SET pgtier.min_lsn: {}",
        wire::tags(&msgs)
    );
    let value = wire::first_value(&msgs[msgs.iter().position(|m| m.tag == b'D').unwrap()..]);
    ensure!(value == far, "SHOW pgtier.min_lsn said {value}");
    Ok(())
}
