//! Named prepared statements when something fails, in transaction mode: a failed or skipped
//! Parse or Close changes nothing (as in Postgres, checked against a direct connection), a
//! skipped eviction never turns into 42P05, and `DEALLOCATE` always gets an answer.

use std::sync::OnceLock;
use std::time::Duration;

use pgtier_kit::fixture::{scram_role, ConfigBuilder};
use pgtier_kit::wire::{bind, close_statement as close, execute, first_value, parse, sync, tags};
use pgtier_kit::{wire, Cluster, Pgtier};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

fn cluster() -> &'static Cluster {
    static SETUP: OnceLock<()> = OnceLock::new();
    let c = Cluster::shared();
    SETUP.get_or_init(|| {
        scram_role(c, "prep", "prep").unwrap();
        c.create_trust_role("pgtier_trust").unwrap();
    });
    c
}

fn start(pool_size: u32, max_prepared: u32) -> Pgtier {
    ConfigBuilder::new(cluster())
        .global(&format!("max_prepared_statements = {max_prepared}"))
        .user("pgtier_trust", "auth = \"trust\"")
        .user(
            "preptrust",
            "auth = \"trust\"\nserver_user = \"prep\"\nserver_password = \"prep\"",
        )
        .database(&format!("pool_size = {pool_size}"))
        .start()
        .unwrap()
}

async fn send(s: &mut TcpStream, parts: &[Vec<u8>]) -> Vec<wire::Msg> {
    wire::send_all(s, parts, LIMIT).await.unwrap()
}

/// What a client sees for each step: the reply tags and the error codes.
fn summary(r: &[wire::Msg]) -> String {
    let codes: Vec<String> = r.iter().filter_map(|m| m.field(b'C')).collect();
    format!("{} {}", tags(r), codes.join(","))
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_parse_and_skipped_close_answer_like_postgres() {
    let c = cluster();
    let px = start(1, 100);
    let (mut direct, _) = wire::login_trust(&c.primary().addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    let (mut proxied, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    // Each step goes to a server (a Bind or Describe is in it, so pgtier does not answer it
    // alone); Postgres and pgtier must give the same answers.
    let steps: Vec<Vec<Vec<u8>>> = vec![
        // A syntax error: the name stays free...
        vec![parse("s", "SELEC 1"), bind("s"), execute(), sync()],
        vec![bind("s"), execute(), sync()],
        // ... so it can be prepared (Postgres: no 42P05).
        vec![parse("s", "SELECT 's'"), bind("s"), execute(), sync()],
        // In a pipeline: ok1 is created, the error skips everything up to Sync (ok2 too).
        vec![
            parse("ok1", "SELECT 'ok1'"),
            parse("bad", "SELECT nope FROM nowhere"),
            parse("ok2", "SELECT 'ok2'"),
            bind("ok1"),
            execute(),
            sync(),
        ],
        vec![bind("ok1"), execute(), sync()],
        vec![bind("ok2"), execute(), sync()],
        vec![bind("bad"), execute(), sync()],
        // A Close skipped after an error leaves the statement.
        vec![parse("bad3", "SELEC"), close("ok1"), bind("ok1"), sync()],
        vec![bind("ok1"), execute(), sync()],
        // A Close that runs does close it, and the name is free again in the same pipeline.
        vec![
            close("ok1"),
            parse("ok1", "SELECT 'again'"),
            bind("ok1"),
            execute(),
            sync(),
        ],
        // Parse after an error in the same pipeline is skipped: the name stays free.
        vec![bind("nope"), parse("late", "SELECT 1"), sync()],
        vec![
            parse("late", "SELECT 'late'"),
            bind("late"),
            execute(),
            sync(),
        ],
    ];
    for (i, step) in steps.iter().enumerate() {
        let want = send(&mut direct, step).await;
        let got = send(&mut proxied, step).await;
        assert_eq!(
            summary(&got),
            summary(&want),
            "step {i}: pgtier {got:?}\nPostgres {want:?}"
        );
        let (g, w) = (
            got.iter().find(|m| m.tag == b'D'),
            want.iter().find(|m| m.tag == b'D'),
        );
        assert_eq!(g.map(|m| &m.body), w.map(|m| &m.body), "step {i}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_skipped_eviction_never_leads_to_42p05() {
    // One server connection holding at most 2 statements: preparing a third evicts one with
    // a Close that the server skips when an earlier message of the pipeline failed.
    let px = start(1, 2);
    let (mut a, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    for (name, v) in [("a", "1"), ("b", "2")] {
        let r = send(
            &mut a,
            &[
                parse(name, &format!("SELECT {v}")),
                bind(name),
                execute(),
                sync(),
            ],
        )
        .await;
        assert_eq!(tags(&r), "12DCZ", "{r:?}");
    }
    for round in 0..3 {
        // The unnamed statement fails first; "c" then evicts "a" or "b" (skipped Close).
        let r = send(
            &mut a,
            &[
                parse("", "SELECT 1/0"),
                bind(""),
                execute(),
                parse("c", "SELECT 3"),
                bind("c"),
                execute(),
                sync(),
            ],
        )
        .await;
        assert_eq!(summary(&r), "1EZ 22012", "round {round}: {r:?}");
        // Every statement works afterwards, in any order (re-prepared where evicted).
        for (name, v) in [("a", "1"), ("b", "2"), ("a", "1")] {
            let r = send(&mut a, &[bind(name), execute(), sync()]).await;
            assert_eq!(tags(&r), "2DCZ", "round {round} {name}: {r:?}");
            assert_eq!(first_value(&r), v);
        }
        let r = send(
            &mut a,
            &[parse("c", "SELECT 3"), bind("c"), execute(), sync()],
        )
        .await;
        assert_eq!(
            tags(&r),
            "12DCZ",
            "round {round}: c was never prepared: {r:?}"
        );
        let r = send(&mut a, &[close("c"), sync()]).await;
        assert_eq!(tags(&r), "3Z");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn many_distinct_statements_through_a_tiny_registry_without_errors() {
    let px = start(2, 3);
    let mut tasks = Vec::new();
    for i in 0..4i64 {
        let port = px.port();
        tasks.push(tokio::spawn(async move {
            let dsn = format!("host=127.0.0.1 port={port} user=preptrust dbname=app");
            let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let mut kept = Vec::new();
            for j in 0..60i64 {
                // Distinct texts: every prepare evicts on a registry of 3.
                let sql = format!("SELECT $1::int8 + {j}");
                let stmt = c.prepare(&sql).await?;
                let v: i64 = c.query_one(&stmt, &[&i]).await?.get(0);
                anyhow::ensure!(v == i + j, "client {i} statement {j}: {v}");
                if j % 3 == 0 {
                    // Errors in between.
                    let bad = c.query_one("SELECT 1/($1::int8 - $1::int8)", &[&j]).await;
                    anyhow::ensure!(bad.is_err(), "division by zero expected");
                }
                kept.push((stmt, j));
                // Statements evicted long ago are still the client's and still run.
                let (old, k) = &kept[(j as usize * 7) % kept.len()];
                let v: i64 = c.query_one(old, &[&i]).await?.get(0);
                anyhow::ensure!(v == i + k, "client {i} old statement {k}: {v}");
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            panic!("{e:#}\n{}", px.log());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deallocate_always_gets_an_answer() {
    let px = start(1, 100);
    let (mut a, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    // A Parse sent alone is answered by pgtier (the statement is not on any server yet);
    // its text does not even parse.
    assert_eq!(
        tags(&send(&mut a, &[parse("bad", "SELEC 1"), sync()]).await),
        "1Z"
    );
    let r = send(&mut a, &[wire::query("DEALLOCATE bad")]).await;
    assert_eq!(tags(&r), "CZ", "{r:?}");
    assert_eq!(&r[0].body[..], b"DEALLOCATE\0");
    // The name is gone, and the session goes on.
    let r = send(&mut a, &[bind("bad"), execute(), sync()]).await;
    assert_eq!(summary(&r), "EZ 26000");
    let r = send(
        &mut a,
        &[parse("bad", "SELECT 'ok'"), bind("bad"), execute(), sync()],
    )
    .await;
    assert_eq!(first_value(&r), "ok");
    // In an aborted transaction: Postgres' 25P02, and the statement stays (as in Postgres).
    send(&mut a, &[parse("keep", "SELECT 'kept'"), sync()]).await;
    let r = send(&mut a, &[wire::query("BEGIN; SELECT 1/0")]).await;
    assert_eq!(summary(&r), "CEZ 22012");
    let r = send(&mut a, &[wire::query("DEALLOCATE keep")]).await;
    assert_eq!(summary(&r), "EZ 25P02", "{r:?}");
    assert_eq!(r.last().unwrap().body, b"E");
    send(&mut a, &[wire::query("ROLLBACK")]).await;
    let r = send(&mut a, &[bind("keep"), execute(), sync()]).await;
    assert_eq!(first_value(&r), "kept", "{r:?}");
    // And once prepared on the server, DEALLOCATE drops it there too.
    let r = send(&mut a, &[wire::query("DEALLOCATE keep")]).await;
    assert_eq!(tags(&r), "CZ", "{r:?}");
    let r = send(&mut a, &[bind("keep"), execute(), sync()]).await;
    assert_eq!(summary(&r), "EZ 26000");
}

/// A Parse that arrives alone (psycopg's pipeline mode flushes it before the rest) of a
/// statement the server connection already has is answered by pgtier alone: the client's own
/// name must never reach the server (it did, and a second client's identical Parse then got
/// Postgres' 42P05 for that name).
#[tokio::test(flavor = "multi_thread")]
async fn a_lone_parse_answered_by_pgtier_sends_nothing_to_the_server() {
    let px = start(1, 100);
    // Client A puts "SELECT 4242" on the pool's only server connection.
    let (mut a, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    let r = send(
        &mut a,
        &[parse("s", "SELECT 4242"), bind("s"), execute(), sync()],
    )
    .await;
    assert_eq!(tags(&r), "12DCZ", "{r:?}");
    for client in ["b", "c"] {
        let (mut s, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
            .await
            .unwrap();
        // The same statement under the client's own name, in a pipeline: the Parse alone in
        // its own write (pgtier answers it at once), the rest later.
        s.write_all(&parse("lone", "SELECT 4242")).await.unwrap();
        let first = wire::read_msg(&mut s, LIMIT).await.unwrap();
        assert_eq!(first.tag, b'1', "{client}: {first:?}");
        let r = send(&mut s, &[bind("lone"), execute(), sync()]).await;
        assert_eq!(tags(&r), "2DCZ", "{client}: {r:?}");
        assert_eq!(first_value(&r), "4242");
        // Only pgtier's names are on the server.
        let r = send(
            &mut s,
            &[wire::query(
                "SELECT count(*) FROM pg_prepared_statements WHERE name NOT LIKE 'pgtier%'",
            )],
        )
        .await;
        assert_eq!(
            first_value(&r),
            "0",
            "{client}: a client's name reached the server"
        );
    }
}
