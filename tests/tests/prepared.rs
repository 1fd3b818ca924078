//! Named prepared statements in transaction mode: real drivers (pgbench -M prepared,
//! tokio-postgres) and the exact answers Postgres gives for duplicates, unknown names and
//! pipeline errors.

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use pgtier_kit::fixture::{connect, scram_role, ConfigBuilder};
use pgtier_kit::wire::{bind, close_statement, execute, first_value, parse, sync, tags};
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

fn start(pool_size: u32) -> Pgtier {
    ConfigBuilder::new(cluster())
        .user("prep", "password = \"prep\"")
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

#[test]
fn pgbench_prepared_64_clients_on_a_pool_of_8() {
    let px = start(8);
    let run = |args: &[&str]| {
        let out = Command::new(pgtier_kit::bin_path("pgbench").unwrap())
            .args(args)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &px.port().to_string(),
                "-U",
                "prep",
                "app",
            ])
            .env("PGPASSWORD", "prep")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "pgbench {args:?}:\n{text}\n{}",
            px.log()
        );
        text
    };
    run(&["-i", "-q", "-s", "1", "--unlogged-tables"]);
    for extra in [&["-S"][..], &[][..]] {
        let mut args = vec!["-n", "-c", "64", "-j", "2", "-T", "4", "-M", "prepared"];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert!(
            out.contains("number of failed transactions: 0 (0.000%)"),
            "{out}"
        );
        assert!(
            !out.contains("already exists") && !out.contains("does not exist"),
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tokio_postgres_100_clients_x_100_statements_on_a_pool_of_10() {
    let px = start(10);
    let mut tasks = Vec::new();
    for i in 0..100i64 {
        let px_port = px.port();
        tasks.push(tokio::spawn(async move {
            let dsn = format!("host=127.0.0.1 port={px_port} user=preptrust dbname=app");
            let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            // tokio-postgres prepares every statement under its own names (s0, s1, ...), as
            // every client does: they clash on shared servers unless pgtier renames them.
            let add = c.prepare("SELECT $1::int8 + $2::int8").await?;
            for j in 0..100i64 {
                let v: i64 = if j % 2 == 0 {
                    c.query_one(&add, &[&i, &j]).await?.get(0)
                } else {
                    // A fresh prepare each time: statement names keep growing.
                    c.query_one("SELECT $1::int8 * 1000 + $2::int8", &[&i, &j])
                        .await?
                        .get(0)
                };
                let want = if j % 2 == 0 { i + j } else { i * 1000 + j };
                anyhow::ensure!(v == want, "client {i} statement {j}: {v} != {want}");
            }
            anyhow::Ok(())
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            failures.push(format!("{e:#}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed, first: {:?}\n{}",
        failures.len(),
        failures.first(),
        px.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn statement_prepared_on_one_server_runs_on_another() {
    let px = start(2);
    let (mut a, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    let r = send(
        &mut a,
        &[parse("mine", "SELECT pg_backend_pid()::text"), sync()],
    )
    .await;
    assert_eq!(tags(&r), "1Z");
    let r = send(&mut a, &[bind("mine"), execute(), sync()]).await;
    let first_pid = first_value(&r);
    // Another client holds that server connection in a transaction...
    let (mut h, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    let r = send(
        &mut h,
        &[wire::query("BEGIN; SELECT pg_backend_pid()::text")],
    )
    .await;
    assert_eq!(
        first_value(&r),
        first_pid,
        "LIFO hands out the warm connection"
    );
    // ... so the statement runs on the other one, prepared there by pgtier.
    let r = send(&mut a, &[bind("mine"), execute(), sync()]).await;
    assert_eq!(tags(&r), "2DCZ", "{r:?}");
    assert_ne!(first_value(&r), first_pid);
    send(&mut h, &[wire::query("COMMIT")]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_unknown_and_close_answer_like_postgres() {
    let px = start(1);
    let (mut a, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    let (mut b, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    // Both clients use the name "s" for different statements on the one server connection.
    assert_eq!(
        tags(&send(&mut a, &[parse("s", "SELECT 'a'"), sync()]).await),
        "1Z"
    );
    assert_eq!(
        tags(&send(&mut b, &[parse("s", "SELECT 'b'"), sync()]).await),
        "1Z"
    );
    let r = send(&mut a, &[bind("s"), execute(), sync()]).await;
    assert_eq!(first_value(&r), "a");
    let r = send(&mut b, &[bind("s"), execute(), sync()]).await;
    assert_eq!(first_value(&r), "b");

    // Re-Parse without Close: 42P05, and the rest of the pipeline is skipped up to Sync.
    let r = send(
        &mut a,
        &[parse("s", "SELECT 'again'"), bind("s"), execute(), sync()],
    )
    .await;
    assert_eq!(tags(&r), "EZ", "{r:?}");
    assert_eq!(r[0].field(b'C').as_deref(), Some("42P05"));
    assert_eq!(
        r[0].field(b'M').as_deref(),
        Some("prepared statement \"s\" already exists")
    );

    // Unknown name: Postgres' own 26000.
    let r = send(&mut a, &[bind("nope"), execute(), sync()]).await;
    assert_eq!(tags(&r), "EZ");
    assert_eq!(r[0].field(b'C').as_deref(), Some("26000"));
    assert_eq!(
        r[0].field(b'M').as_deref(),
        Some("prepared statement \"nope\" does not exist")
    );

    // Close affects only the client that closes.
    assert_eq!(
        tags(&send(&mut a, &[close_statement("s"), sync()]).await),
        "3Z"
    );
    let r = send(&mut a, &[bind("s"), execute(), sync()]).await;
    assert_eq!(r[0].field(b'C').as_deref(), Some("26000"));
    let r = send(&mut b, &[bind("s"), execute(), sync()]).await;
    assert_eq!(first_value(&r), "b");
    // After Close the name can be prepared again.
    assert_eq!(
        tags(&send(&mut a, &[parse("s", "SELECT 'a2'"), sync()]).await),
        "1Z"
    );
    let r = send(&mut a, &[bind("s"), execute(), sync()]).await;
    assert_eq!(first_value(&r), "a2");
}

#[tokio::test(flavor = "multi_thread")]
async fn pipeline_error_skips_to_sync_and_the_session_goes_on() {
    let px = start(2);
    let (mut a, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    // Several statements in one pipeline; the second fails (at Bind: 1/0 is folded when
    // planning), so the server skips the rest up to Sync.
    let r = send(
        &mut a,
        &[
            parse("one", "SELECT 1"),
            parse("div", "SELECT 1/0"),
            parse("two", "SELECT 2"),
            bind("one"),
            execute(),
            bind("div"),
            execute(),
            bind("two"),
            execute(),
            sync(),
        ],
    )
    .await;
    assert_eq!(tags(&r), "1112DCEZ", "{r:?}");
    assert_eq!(r[6].field(b'C').as_deref(), Some("22012"));
    // Statements prepared before the error stay usable; Flush returns replies before Sync.
    a.write_all(&[bind("two"), execute(), wire::message(b'H', b"")].concat())
        .await
        .unwrap();
    let m = wire::read_msg(&mut a, LIMIT).await.unwrap();
    assert_eq!(m.tag, b'2');
    let r = send(&mut a, &[sync()]).await;
    assert_eq!(tags(&r), "DCZ");
    assert_eq!(first_value(&r), "2");
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_statements_work_through_psql_style_simple_queries_too() {
    // A client mixing protocol-level statements and simple queries on the same server.
    let px = start(1);
    let c = connect(&px, "prep", "prep").await.unwrap();
    let stmt = c.prepare("SELECT $1::text || '!'").await.unwrap();
    for i in 0..20 {
        c.batch_execute("SELECT 1").await.unwrap();
        let v: String = c.query_one(&stmt, &[&i.to_string()]).await.unwrap().get(0);
        assert_eq!(v, format!("{i}!"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_statement_prepared_alone_fails_at_first_use() {
    // A named Parse sent alone with Sync is answered without a server (see README); Postgres'
    // own error then comes at the first Bind, unchanged.
    let px = start(1);
    let (mut a, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    assert_eq!(
        tags(&send(&mut a, &[parse("bad", "SELEC 1"), sync()]).await),
        "1Z"
    );
    let r = send(&mut a, &[bind("bad"), execute(), sync()]).await;
    assert_eq!(tags(&r), "EZ", "{r:?}");
    assert_eq!(r[0].field(b'C').as_deref(), Some("42601"));
    // Sent together with its Bind, the error comes at the Parse, as from Postgres.
    let r = send(
        &mut a,
        &[parse("bad2", "SELEC 1"), bind("bad2"), execute(), sync()],
    )
    .await;
    assert_eq!(tags(&r), "EZ", "{r:?}");
    assert_eq!(r[0].field(b'C').as_deref(), Some("42601"));
    // The session is fine afterwards.
    let r = send(&mut a, &[wire::query("SELECT 5")]).await;
    assert_eq!(first_value(&r), "5");
}

#[tokio::test(flavor = "multi_thread")]
async fn deallocate_and_discard_all_affect_only_the_issuing_client() {
    let px = start(1);
    let (mut a, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    let (mut b, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    // Same statement text: shared on the one server connection.
    for c in [&mut a, &mut b] {
        send(c, &[parse("s", "SELECT 'shared'"), sync()]).await;
        let r = send(c, &[bind("s"), execute(), sync()]).await;
        assert_eq!(first_value(&r), "shared");
    }
    // DEALLOCATE by the client's name: Postgres' own answer, and only A loses "s".
    let r = send(&mut a, &[wire::query("DEALLOCATE s")]).await;
    assert_eq!(tags(&r), "CZ", "{r:?}");
    assert_eq!(&r[0].body[..], b"DEALLOCATE\0");
    let r = send(&mut a, &[bind("s"), execute(), sync()]).await;
    assert_eq!(r[0].field(b'C').as_deref(), Some("26000"));
    let r = send(&mut b, &[bind("s"), execute(), sync()]).await;
    assert_eq!(first_value(&r), "shared", "{r:?}");
    // DEALLOCATE ALL and DISCARD ALL: the issuer's statements go, B's keep working.
    send(&mut a, &[parse("x", "SELECT 'x'"), sync()]).await;
    for cmd in ["DEALLOCATE ALL", "DISCARD ALL"] {
        let r = send(&mut a, &[wire::query(cmd)]).await;
        assert_eq!(
            tags(&r).chars().filter(|&t| t == 'E').count(),
            0,
            "{cmd}: {r:?}"
        );
        let r = send(&mut a, &[bind("x"), execute(), sync()]).await;
        assert_eq!(r[0].field(b'C').as_deref(), Some("26000"), "{cmd}");
        let r = send(&mut b, &[bind("s"), execute(), sync()]).await;
        assert_eq!(first_value(&r), "shared", "{cmd}: {r:?}");
        send(&mut a, &[parse("x", "SELECT 'x'"), sync()]).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn statement_is_re_prepared_after_ddl_changes_its_result_type() {
    let px = start(1);
    let c = Cluster::shared();
    c.ddl("app", "DROP TABLE IF EXISTS ddl_t; CREATE TABLE ddl_t (a int); INSERT INTO ddl_t VALUES (1); GRANT ALL ON ddl_t TO pgtier_trust").unwrap();
    let (mut a, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    let (mut b, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    send(&mut a, &[parse("q", "SELECT * FROM ddl_t"), sync()]).await;
    let r = send(&mut a, &[bind("q"), execute(), sync()]).await;
    assert_eq!(tags(&r), "2DCZ", "{r:?}");
    c.ddl("app", "ALTER TABLE ddl_t ADD COLUMN b int DEFAULT 2")
        .unwrap();
    // The first execution after the DDL fails exactly as on Postgres...
    let r = send(&mut a, &[bind("q"), execute(), sync()]).await;
    assert_eq!(r[0].field(b'C').as_deref(), Some("0A000"), "{r:?}");
    // ... and then pgtier re-prepares it: this client and others get the new shape.
    let r = send(&mut a, &[bind("q"), execute(), sync()]).await;
    assert_eq!(tags(&r), "2DCZ", "{r:?}");
    let row = r.iter().find(|m| m.tag == b'D').unwrap();
    assert_eq!(&row.body[..2], &2i16.to_be_bytes(), "two columns now");
    send(&mut b, &[parse("q2", "SELECT * FROM ddl_t"), sync()]).await;
    let r = send(&mut b, &[bind("q2"), execute(), sync()]).await;
    assert_eq!(tags(&r), "2DCZ", "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unsynced_extended_work_is_never_handed_to_another_client() {
    // Review finding: Parse/Bind/Execute/Flush opens an implicit transaction that only a Sync
    // ends; a client leaving then must not leave that server to the next client.
    let px = start(1);
    let c = Cluster::shared();
    c.ddl("app", "DROP TABLE IF EXISTS unsynced_t; CREATE TABLE unsynced_t (v int); GRANT ALL ON unsynced_t TO pgtier_trust").unwrap();
    let (mut a, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    a.write_all(
        &[
            parse("", "INSERT INTO unsynced_t VALUES (1)"),
            bind(""),
            execute(),
            wire::message(b'H', b""),
        ]
        .concat(),
    )
    .await
    .unwrap();
    for want in [b'1', b'2', b'C'] {
        assert_eq!(wire::read_msg(&mut a, LIMIT).await.unwrap().tag, want);
    }
    drop(a);
    let (mut b, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    let r = send(&mut b, &[wire::query("SELECT count(*) FROM unsynced_t")]).await;
    assert_eq!(
        first_value(&r),
        "0",
        "the abandoned implicit transaction must not commit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn session_state_in_a_locally_answered_parse_still_pins() {
    // Review finding: a named Parse+Sync answered without a server must not skip pinning.
    let px = start(1);
    let (mut a, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    assert_eq!(
        tags(&send(&mut a, &[parse("s", "SET work_mem = '77MB'"), sync()]).await),
        "1Z"
    );
    let r = send(&mut a, &[bind("s"), execute(), sync()]).await;
    assert_eq!(tags(&r), "2CZ", "{r:?}");
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut b, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    let r = send(&mut b, &[wire::query("SHOW work_mem")]).await;
    assert_ne!(first_value(&r), "77MB", "the SET leaked");
}

/// A client's unnamed statement follows it to another server connection (Parse and Bind in
/// different transactions, as with pgx's describe-exec mode), and a client without one gets
/// Postgres' 26000 rather than another client's unnamed statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statement_is_parsed_again_on_another_server() {
    let px = start(2);
    let (mut a, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    let (mut b, _) = wire::login_trust(&px.addr(), "pgtier_trust", "app")
        .await
        .unwrap();
    assert_eq!(
        tags(&send(&mut a, &[parse("", "SELECT 'mine'"), sync()]).await),
        "1Z"
    );
    // B takes the server A just used (most recently released) and leaves an unnamed
    // statement of its own there, inside an open transaction.
    let r = send(
        &mut b,
        &[wire::query("BEGIN"), parse("", "SELECT 'theirs'"), sync()],
    )
    .await;
    assert_eq!(r.last().unwrap().body, b"T");
    let r = send(&mut a, &[bind(""), execute(), sync()]).await;
    assert_eq!(first_value(&r), "mine", "{r:?}");
    // A simple Query destroys the unnamed statement, as in Postgres.
    send(&mut a, &[wire::query("SELECT 1")]).await;
    let r = send(&mut a, &[bind(""), execute(), sync()]).await;
    assert_eq!(tags(&r), "EZ", "{r:?}");
    assert_eq!(r[0].field(b'C').as_deref(), Some("26000"));
    send(&mut b, &[wire::query("COMMIT")]).await;
}
