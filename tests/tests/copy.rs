//! COPY through pgtier in transaction mode: FROM STDIN and TO STDOUT round trips in text, csv
//! and binary (tokio-postgres, extended protocol) and through simple queries (psql style),
//! and CopyFail. Large results are in `streaming.rs`.

use std::pin::pin;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use pgtier_kit::wire::{first_value, tags};
use pgtier_kit::{wire, Pgtier};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::Client;

mod support;

use support::{client, raw, send, start, LIMIT};
const ROWS: i64 = 20_000;

fn copy_data(data: &[u8]) -> Vec<u8> {
    wire::message(b'd', data)
}

fn copy_done() -> Vec<u8> {
    wire::message(b'c', b"")
}

fn copy_fail(reason: &str) -> Vec<u8> {
    wire::message(b'f', format!("{reason}\0").as_bytes())
}

fn sync() -> Vec<u8> {
    wire::message(b'S', b"")
}

fn parse_unnamed(sql: &str) -> Vec<u8> {
    let mut b = format!("\0{sql}\0").into_bytes();
    b.extend(0i16.to_be_bytes());
    wire::message(b'P', &b)
}

fn parse_named(name: &str, sql: &str) -> Vec<u8> {
    let mut b = format!("{name}\0{sql}\0").into_bytes();
    b.extend(0i16.to_be_bytes());
    wire::message(b'P', &b)
}

fn bind_named(statement: &str) -> Vec<u8> {
    let mut b = format!("\0{statement}\0").into_bytes();
    b.extend([0, 0, 0, 0, 0, 0]);
    wire::message(b'B', &b)
}

fn close_statement(name: &str) -> Vec<u8> {
    wire::message(b'C', format!("S{name}\0").as_bytes())
}

fn bind_unnamed() -> Vec<u8> {
    wire::message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0])
}

fn execute() -> Vec<u8> {
    wire::message(b'E', b"\0\0\0\0\0")
}

fn command_tag(msgs: &[wire::Msg]) -> Option<String> {
    let m = msgs.iter().find(|m| m.tag == b'C')?;
    Some(String::from_utf8_lossy(m.body.strip_suffix(b"\0").unwrap_or(&m.body)).into_owned())
}

/// Reads messages up to and including the first one tagged `tag`.
async fn read_through(s: &mut TcpStream, tag: u8) -> Vec<wire::Msg> {
    let mut out = Vec::new();
    loop {
        let m = wire::read_msg(s, LIMIT).await.unwrap();
        let done = m.tag == tag;
        assert!(
            m.tag != b'E' || tag == b'E',
            "error: {:?} {:?}",
            m.field(b'C'),
            m.field(b'M')
        );
        out.push(m);
        if done {
            return out;
        }
    }
}

async fn copy_out(c: &Client, sql: &str) -> Vec<u8> {
    let mut stream = pin!(c.copy_out(sql).await.unwrap());
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// COPY FROM STDIN with `data` cut in pieces that do not line up with rows.
async fn copy_in(c: &Client, sql: &str, data: &[u8]) -> u64 {
    let mut sink = pin!(c.copy_in::<_, Bytes>(sql).await.unwrap());
    for piece in data.chunks(7919) {
        sink.send(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    sink.finish().await.unwrap()
}

/// Every server of the pool is free again: `n` clients each hold one in a transaction at once.
async fn pool_is_whole(px: &Pgtier, n: usize) {
    let mut held = Vec::new();
    let mut pids = std::collections::HashSet::new();
    for _ in 0..n {
        let c = client(px).await;
        c.batch_execute("BEGIN").await.unwrap();
        let pid: i32 = tokio::time::timeout(LIMIT, c.query_one("SELECT pg_backend_pid()", &[]))
            .await
            .expect("a server of the pool is still held after COPY")
            .unwrap()
            .get(0);
        pids.insert(pid);
        held.push(c);
    }
    assert_eq!(pids.len(), n, "each client holds its own server");
    for c in &held {
        c.batch_execute("COMMIT").await.unwrap();
    }
}

/// Creates `{prefix}_src` with ROWS rows of awkward values (NULLs, tabs, newlines, quotes,
/// backslashes, `\.`, non-ASCII, bytea, arrays, jsonb) and empty `{prefix}_text`, `_csv`,
/// `_binary` with the same columns.
async fn create_source(c: &Client, prefix: &str) {
    c.batch_execute(&format!(
        "DROP TABLE IF EXISTS {prefix}_src, {prefix}_text, {prefix}_csv, {prefix}_binary;
         CREATE TABLE {prefix}_src (id int8 PRIMARY KEY, t text, n float8, b bytea,
                                    ts timestamptz, j jsonb, a int4[]);
         INSERT INTO {prefix}_src
         SELECT i,
                CASE i % 6 WHEN 0 THEN NULL
                           WHEN 1 THEN E'tab\\there'
                           WHEN 2 THEN E'line\\nbreak, \"quoted\", back\\\\slash; semi'
                           WHEN 3 THEN 'ünïcödé € 𝄞'
                           WHEN 4 THEN '\\.'
                           ELSE repeat('x', i % 300) END,
                CASE WHEN i % 7 = 0 THEN NULL ELSE i / 3.0 END,
                decode(md5(i::text), 'hex'),
                '2024-01-01 00:00:00+00'::timestamptz + i * interval '1 minute 1.5 seconds',
                jsonb_build_object('i', i, 's', 'a,b\"c'),
                ARRAY[i, -i, NULL]
         FROM generate_series(1, {ROWS}) i;
         CREATE TABLE {prefix}_text (LIKE {prefix}_src);
         CREATE TABLE {prefix}_csv (LIKE {prefix}_src);
         CREATE TABLE {prefix}_binary (LIKE {prefix}_src);"
    ))
    .await
    .unwrap();
}

fn check_copy_out(fmt: &str, out: &[u8]) {
    match fmt {
        "text" => assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), ROWS as usize),
        "csv" => assert!(out.starts_with(b"1,tab\there,"), "csv starts with row 1"),
        _ => assert!(out.starts_with(b"PGCOPY\n\xff\r\n\0"), "binary header"),
    }
}

/// Postgres compares the copy with its source: no row differs.
async fn rows_differing(c: &Client, prefix: &str, fmt: &str) -> i64 {
    c.query_one(
        &format!(
            "SELECT count(*) FROM {prefix}_src s FULL JOIN {prefix}_{fmt} d ON s.id = d.id
             WHERE s IS DISTINCT FROM d"
        ),
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// COPY TO STDOUT in a simple query: the CopyData bodies, concatenated.
async fn raw_copy_out(s: &mut TcpStream, sql: &str) -> Vec<u8> {
    s.write_all(&wire::query(sql)).await.unwrap();
    let mut out = Vec::new();
    let mut tags = String::new();
    loop {
        let m = wire::read_msg(s, LIMIT).await.unwrap();
        assert_ne!(m.tag, b'E', "{:?}", m.field(b'M'));
        if m.tag == b'd' {
            out.extend_from_slice(&m.body);
        } else {
            tags.push(m.tag as char);
        }
        if m.tag == b'Z' {
            break;
        }
    }
    assert_eq!(tags, "HcCZ");
    out
}

/// COPY FROM STDIN in a simple query, `data` cut in CopyData pieces that do not line up with
/// rows; returns the command tag.
async fn raw_copy_in(s: &mut TcpStream, sql: &str, data: &[u8]) -> String {
    s.write_all(&wire::query(sql)).await.unwrap();
    read_through(s, b'G').await;
    let mut batch = Vec::new();
    for piece in data.chunks(7919) {
        batch.extend(copy_data(piece));
        if batch.len() > 64 << 10 {
            s.write_all(&batch).await.unwrap();
            batch.clear();
        }
    }
    batch.extend(copy_done());
    let r = send(s, &[batch]).await;
    assert_eq!(tags(&r), "CZ", "{r:?}");
    command_tag(&r).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_round_trips_in_text_csv_and_binary_through_simple_queries() {
    let px = start(2);
    let setup = client(&px).await;
    create_source(&setup, "rt_simple").await;
    // Three clients on a pool of 2: they take turns between transactions.
    let mut tasks = Vec::new();
    for fmt in ["text", "csv", "binary"] {
        let mut s = raw(&px).await;
        tasks.push(tokio::spawn(async move {
            let out = raw_copy_out(
                &mut s,
                &format!("COPY (SELECT * FROM rt_simple_src ORDER BY id) TO STDOUT (FORMAT {fmt})"),
            )
            .await;
            check_copy_out(fmt, &out);
            let tag = raw_copy_in(
                &mut s,
                &format!("COPY rt_simple_{fmt} FROM STDIN (FORMAT {fmt})"),
                &out,
            )
            .await;
            assert_eq!(tag, format!("COPY {ROWS}"), "{fmt}");
            let again = raw_copy_out(
                &mut s,
                &format!(
                    "COPY (SELECT * FROM rt_simple_{fmt} ORDER BY id) TO STDOUT (FORMAT {fmt})"
                ),
            )
            .await;
            assert!(again == out, "{fmt}: COPY TO of the copy differs");
            out.len()
        }));
    }
    for (fmt, t) in ["text", "csv", "binary"].iter().zip(tasks) {
        let bytes = t
            .await
            .unwrap_or_else(|e| panic!("{fmt}: {e}\n{}", px.log()));
        assert_eq!(rows_differing(&setup, "rt_simple", fmt).await, 0, "{fmt}");
        eprintln!("{fmt}: {ROWS} rows, {bytes} bytes each way");
    }
    pool_is_whole(&px, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_round_trips_in_text_csv_and_binary_with_tokio_postgres() {
    let px = start(2);
    let setup = client(&px).await;
    create_source(&setup, "rt_tp").await;
    let mut tasks = Vec::new();
    for fmt in ["text", "csv", "binary"] {
        let c = client(&px).await;
        tasks.push(tokio::spawn(async move {
            let out = copy_out(
                &c,
                &format!("COPY (SELECT * FROM rt_tp_src ORDER BY id) TO STDOUT (FORMAT {fmt})"),
            )
            .await;
            check_copy_out(fmt, &out);
            let n = copy_in(
                &c,
                &format!("COPY rt_tp_{fmt} FROM STDIN (FORMAT {fmt})"),
                &out,
            )
            .await;
            assert_eq!(n, ROWS as u64, "{fmt}: rows copied in");
            let again = copy_out(
                &c,
                &format!("COPY (SELECT * FROM rt_tp_{fmt} ORDER BY id) TO STDOUT (FORMAT {fmt})"),
            )
            .await;
            assert!(again == out, "{fmt}: COPY TO of the copy differs");
            assert_eq!(rows_differing(&c, "rt_tp", fmt).await, 0, "{fmt}");
            out.len()
        }));
    }
    for (fmt, t) in ["text", "csv", "binary"].iter().zip(tasks) {
        let bytes = t
            .await
            .unwrap_or_else(|e| panic!("{fmt}: {e}\n{}", px.log()));
        eprintln!("{fmt}: {ROWS} rows, {bytes} bytes each way");
    }
    pool_is_whole(&px, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_out_with_tokio_postgres_in_text_csv_and_binary() {
    // COPY TO STDOUT over the extended protocol (tokio-postgres prepares it as a named
    // statement), compared with the same COPY through a simple query.
    let px = start(2);
    let c = client(&px).await;
    create_source(&c, "out_tp").await;
    let mut s = raw(&px).await;
    for fmt in ["text", "csv", "binary"] {
        let sql = format!("COPY (SELECT * FROM out_tp_src ORDER BY id) TO STDOUT (FORMAT {fmt})");
        let out = copy_out(&c, &sql).await;
        check_copy_out(fmt, &out);
        assert!(
            out == raw_copy_out(&mut s, &sql).await,
            "{fmt}: extended and simple differ"
        );
        let n: i64 = c
            .query_one("SELECT count(*) FROM out_tp_src", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, ROWS);
    }
    drop(s);
    pool_is_whole(&px, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_through_simple_queries_as_psql_does() {
    let px = start(1);
    let mut a = raw(&px).await;
    let r = send(
        &mut a,
        &[wire::query(
            "DROP TABLE IF EXISTS copy_simple; CREATE TABLE copy_simple (id int, t text)",
        )],
    )
    .await;
    assert_eq!(r.last().unwrap().body, b"I");
    // FROM STDIN, rows split across CopyData messages at odd places.
    a.write_all(&wire::query("COPY copy_simple FROM STDIN"))
        .await
        .unwrap();
    let r = read_through(&mut a, b'G').await;
    assert_eq!(tags(&r), "G");
    let r = send(
        &mut a,
        &[
            copy_data(b"1\tone\n2\t"),
            copy_data(b"two\n"),
            copy_data(b"3\t\\N\n"),
            copy_done(),
        ],
    )
    .await;
    assert_eq!(tags(&r), "CZ", "{r:?}");
    assert_eq!(command_tag(&r).as_deref(), Some("COPY 3"));
    // TO STDOUT: one CopyData per row, then CopyDone.
    let r = send(
        &mut a,
        &[wire::query(
            "COPY (SELECT * FROM copy_simple ORDER BY id) TO STDOUT (FORMAT csv)",
        )],
    )
    .await;
    assert_eq!(tags(&r), "HdddcCZ", "{r:?}");
    let rows: Vec<&[u8]> = r
        .iter()
        .filter(|m| m.tag == b'd')
        .map(|m| &m.body[..])
        .collect();
    assert_eq!(rows, [&b"1,one\n"[..], b"2,two\n", b"3,\n"]);
    // A COPY that follows other statements in one simple query.
    a.write_all(&wire::query(
        "SELECT 1; COPY copy_simple FROM STDIN (FORMAT csv)",
    ))
    .await
    .unwrap();
    let r = read_through(&mut a, b'G').await;
    assert_eq!(tags(&r), "TDCG");
    let r = send(&mut a, &[copy_data(b"4,four\n"), copy_done()]).await;
    assert_eq!(command_tag(&r).as_deref(), Some("COPY 1"));
    let r = send(&mut a, &[wire::query("SELECT count(*) FROM copy_simple")]).await;
    assert_eq!(first_value(&r), "4");
    // The one server of the pool was released: another client gets it.
    let mut b = raw(&px).await;
    let r = send(&mut b, &[wire::query("SELECT count(*) FROM copy_simple")]).await;
    assert_eq!(first_value(&r), "4");
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_fail_aborts_with_the_clients_message_and_the_session_goes_on() {
    let px = start(1);
    let mut a = raw(&px).await;
    send(
        &mut a,
        &[wire::query(
            "DROP TABLE IF EXISTS copy_fail; CREATE TABLE copy_fail (id int)",
        )],
    )
    .await;

    // Simple query: CopyFail ends the COPY with 57014 carrying the client's message.
    a.write_all(&wire::query("COPY copy_fail FROM STDIN"))
        .await
        .unwrap();
    read_through(&mut a, b'G').await;
    let r = send(
        &mut a,
        &[
            copy_data(b"1\n2\n"),
            copy_fail("the client changed its mind"),
        ],
    )
    .await;
    assert_eq!(tags(&r), "EZ", "{r:?}");
    assert_eq!(r[0].field(b'C').as_deref(), Some("57014"));
    assert_eq!(
        r[0].field(b'M').as_deref(),
        Some("COPY from stdin failed: the client changed its mind")
    );
    assert_eq!(r[1].body, b"I");

    // Inside a transaction: the transaction is failed, as from Postgres, until ROLLBACK.
    a.write_all(&wire::query("BEGIN; COPY copy_fail FROM STDIN"))
        .await
        .unwrap();
    read_through(&mut a, b'G').await;
    let r = send(&mut a, &[copy_data(b"3\n"), copy_fail("nope")]).await;
    assert_eq!(tags(&r), "EZ");
    assert_eq!(r[1].body, b"E", "transaction failed");
    let r = send(&mut a, &[wire::query("SELECT 1")]).await;
    assert_eq!(r[0].field(b'C').as_deref(), Some("25P02"));
    let r = send(&mut a, &[wire::query("ROLLBACK")]).await;
    assert_eq!((tags(&r).as_str(), &r[1].body[..]), ("CZ", &b"I"[..]));

    // The session goes on: a COPY that completes, and nothing of the failed ones.
    a.write_all(&wire::query("COPY copy_fail FROM STDIN"))
        .await
        .unwrap();
    read_through(&mut a, b'G').await;
    let r = send(&mut a, &[copy_data(b"7\n8\n"), copy_done()]).await;
    assert_eq!(command_tag(&r).as_deref(), Some("COPY 2"));
    let r = send(
        &mut a,
        &[wire::query(
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM copy_fail",
        )],
    )
    .await;
    assert_eq!(first_value(&r), "7,8");
    // And the server is free for another client.
    let mut b = raw(&px).await;
    let r = send(&mut b, &[wire::query("SELECT count(*) FROM copy_fail")]).await;
    assert_eq!(first_value(&r), "2");
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_in_extended_protocol_with_sync_before_the_data_as_libpq_sends_it() {
    // libpq (PQexecParams, psycopg with parameters) and tokio-postgres send Parse/Bind/Execute/
    // Sync at once, then the CopyData, then CopyDone or CopyFail and another Sync. Postgres
    // ignores a Sync received during COPY IN, so the two Syncs get ONE ReadyForQuery.
    let px = start(1);
    let mut a = raw(&px).await;
    send(
        &mut a,
        &[wire::query(
            "DROP TABLE IF EXISTS copy_ext; CREATE TABLE copy_ext (id int)",
        )],
    )
    .await;
    a.write_all(
        &[
            parse_named("cp", "COPY copy_ext FROM STDIN"),
            bind_named("cp"),
            execute(),
            sync(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let r = read_through(&mut a, b'G').await;
    assert_eq!(tags(&r), "12G");
    // CopyDone + Sync, then (as tokio-postgres does when the statement is dropped) Close + Sync:
    // Postgres answers C Z, then 3 Z.
    a.write_all(
        &[
            copy_data(b"1\n2\n3\n"),
            copy_done(),
            sync(),
            close_statement("cp"),
            sync(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let r = wire::read_until_ready(&mut a, LIMIT).await.unwrap();
    assert_eq!(tags(&r), "CZ", "{r:?}");
    assert_eq!(command_tag(&r).as_deref(), Some("COPY 3"));
    let r = wire::read_until_ready(&mut a, LIMIT).await.unwrap();
    assert_eq!(tags(&r), "3Z", "the reply to Close + Sync");
    // CopyFail the same way: 57014 with the client's message, then one ReadyForQuery.
    a.write_all(
        &[
            parse_unnamed("COPY copy_ext FROM STDIN"),
            bind_unnamed(),
            execute(),
            sync(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    read_through(&mut a, b'G').await;
    let r = send(&mut a, &[copy_data(b"4\n"), copy_fail("stop"), sync()]).await;
    assert_eq!(tags(&r), "EZ", "{r:?}");
    assert_eq!(r[0].field(b'C').as_deref(), Some("57014"));
    assert_eq!(
        r[0].field(b'M').as_deref(),
        Some("COPY from stdin failed: stop")
    );
    let r = send(&mut a, &[wire::query("SELECT count(*) FROM copy_ext")]).await;
    assert_eq!(tags(&r), "TDCZ", "{r:?}");
    assert_eq!(first_value(&r), "3");
    // The pool's one server is free: another client gets it.
    let mut b = raw(&px).await;
    let r = tokio::time::timeout(
        LIMIT,
        send(&mut b, &[wire::query("SELECT count(*) FROM copy_ext")]),
    )
    .await
    .expect("the server is still held by the client that ran COPY");
    assert_eq!(first_value(&r), "3", "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokio_postgres_abandoned_copy_in_is_aborted_and_the_client_goes_on() {
    // A CopyInSink dropped without finish() sends CopyFail (empty message) and Sync.
    let px = start(1);
    let c = client(&px).await;
    c.batch_execute("DROP TABLE IF EXISTS copy_drop; CREATE TABLE copy_drop (id int)")
        .await
        .unwrap();
    {
        let mut sink = Box::pin(
            c.copy_in::<_, Bytes>("COPY copy_drop FROM STDIN")
                .await
                .unwrap(),
        );
        sink.send(Bytes::from_static(b"1\n2\n")).await.unwrap();
    }
    let n: i64 = tokio::time::timeout(LIMIT, c.query_one("SELECT count(*) FROM copy_drop", &[]))
        .await
        .expect("the client hangs after an aborted COPY")
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let n = copy_in(&c, "COPY copy_drop FROM STDIN", b"5\n6\n").await;
    assert_eq!(n, 2);
    pool_is_whole(&px, 1).await;
}
