//! LISTEN/UNLISTEN inside a transaction block in transaction mode: answered by pgtier without
//! pinning the client, in effect at COMMIT and dropped at ROLLBACK or when the block fails, as
//! in Postgres; and `pg_listening_channels()` answered with the client's own channels.
//!
//! Ordering is checked with markers, never with sleeps: a notification on a channel the client
//! already listens on, sent after the one under test, arrives after it if that one is
//! delivered at all (one listening connection, one queue per client, in commit order).

mod listen_support;

use listen_support::*;
use tokio_postgres::{Client, SimpleQueryMessage};

/// The channels `pg_listening_channels()` returns for `c` (in the form `sql`), sorted.
async fn channels(c: &Client, sql: &str) -> Vec<String> {
    let mut v: Vec<String> = c
        .simple_query(sql)
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

async fn listening(c: &Client) -> Vec<String> {
    channels(c, "SELECT pg_listening_channels()").await
}

/// The SQLSTATE `sql` fails with.
async fn fails(c: &Client, sql: &str) -> String {
    let e = c.batch_execute(sql).await.expect_err(sql);
    e.code().expect("a server error").code().to_owned()
}

/// Sends a marker on `marker` (which `l` listens on) and waits for it: everything delivered to
/// `l` before it is returned.
async fn until_marker(l: &mut Listener, d: &Client, marker: &str, payload: &str) -> Vec<Got> {
    d.batch_execute(&format!("NOTIFY {marker}, '{payload}'"))
        .await
        .unwrap();
    let mut before = Vec::new();
    loop {
        match next(l).await {
            Got::Note(ch, p, _) if ch == marker && p == payload => return before,
            other => before.push(other),
        }
    }
}

fn note(got: &Got) -> (&str, &str) {
    match got {
        Got::Note(ch, p, _) => (ch, p),
        Got::Notice(code, m) => panic!("notice {code}: {m}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listen_in_a_block_takes_effect_at_commit_and_not_before() {
    let px = start("lt_commit", &[], 2);
    let mut a = listener(px.port(), "lt_commit").await;
    let d = direct("lt_commit").await;
    a.c.batch_execute("LISTEN marker").await.unwrap();
    a.c.batch_execute("BEGIN").await.unwrap();
    a.c.batch_execute("LISTEN later").await.unwrap();
    // Not in effect inside the block, as on Postgres.
    assert_eq!(listening(&a.c).await, ["marker"]);
    // Committed, and received by pgtier, before a's COMMIT: not delivered to a. (Postgres
    // itself would deliver one its listener reads only after the COMMIT; b's marker, sent
    // after it on the same listening connection, shows that pgtier has read it.)
    let mut b = listener(px.port(), "lt_commit").await;
    b.c.batch_execute("LISTEN marker").await.unwrap();
    d.batch_execute("NOTIFY later, 'before commit'")
        .await
        .unwrap();
    assert_eq!(until_marker(&mut b, &d, "marker", "m0").await, []);
    a.c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(listening(&a.c).await, ["later", "marker"]);
    // m0 and m1 (a listened on the marker channel all along).
    let got = until_marker(&mut a, &d, "marker", "m1").await;
    assert_eq!(got.iter().map(note).collect::<Vec<_>>(), [("marker", "m0")]);
    // Committed after it: delivered.
    d.batch_execute("NOTIFY later, 'after commit'")
        .await
        .unwrap();
    assert_eq!(note(&next(&mut a).await), ("later", "after commit"));

    // A NOTIFY inside another session's transaction is delivered at that commit.
    let d2 = direct("lt_commit").await;
    d2.batch_execute("BEGIN; NOTIFY later, 'in a transaction'")
        .await
        .unwrap();
    assert_eq!(until_marker(&mut a, &d, "marker", "m2").await, []);
    d2.batch_execute("COMMIT").await.unwrap();
    assert_eq!(note(&next(&mut a).await), ("later", "in a transaction"));

    // The block's own NOTIFY on the channel it LISTENs on commits with it: delivered.
    a.c.batch_execute("BEGIN").await.unwrap();
    a.c.batch_execute("LISTEN own").await.unwrap();
    a.c.batch_execute("NOTIFY own, 'mine'").await.unwrap();
    a.c.batch_execute("COMMIT").await.unwrap();
    let got = until_marker(&mut a, &d, "marker", "m3").await;
    assert_eq!(got.iter().map(note).collect::<Vec<_>>(), [("own", "mine")]);

    // Several statements in one query, and an extended-protocol COMMIT.
    a.c.batch_execute("BEGIN").await.unwrap();
    a.c.batch_execute("LISTEN x1; LISTEN \"X2\"; UNLISTEN own")
        .await
        .unwrap();
    a.c.execute("COMMIT", &[]).await.unwrap();
    assert_eq!(listening(&a.c).await, ["X2", "later", "marker", "x1"]);
    d.batch_execute("NOTIFY own, 'gone'; NOTIFY x1, '1'; NOTIFY \"X2\", '2'")
        .await
        .unwrap();
    let got = until_marker(&mut a, &d, "marker", "m4").await;
    assert_eq!(
        got.iter().map(note).collect::<Vec<_>>(),
        [("x1", "1"), ("X2", "2")]
    );
    assert!(!px.log().contains("pinned"), "a listener was pinned");
}

#[tokio::test(flavor = "multi_thread")]
async fn rolled_back_failed_and_aborted_blocks_change_nothing() {
    let px = start("lt_rollback", &[], 2);
    let mut a = listener(px.port(), "lt_rollback").await;
    let d = direct("lt_rollback").await;
    d.batch_execute(
        "DROP TABLE IF EXISTS lt_deferred; CREATE TABLE lt_deferred (k int UNIQUE DEFERRABLE INITIALLY DEFERRED)",
    )
    .await
    .unwrap();
    a.c.batch_execute("LISTEN marker; ").await.unwrap();
    a.c.batch_execute("LISTEN kept").await.unwrap();

    // ROLLBACK.
    a.c.batch_execute("BEGIN").await.unwrap();
    a.c.batch_execute("LISTEN rolled_back").await.unwrap();
    a.c.batch_execute("UNLISTEN kept").await.unwrap();
    a.c.batch_execute("ROLLBACK").await.unwrap();

    // A block that failed: further statements get 25P02 (also a LISTEN, answered by pgtier as
    // Postgres would), and its COMMIT is a ROLLBACK.
    a.c.batch_execute("BEGIN").await.unwrap();
    a.c.batch_execute("LISTEN failed").await.unwrap();
    assert_eq!(fails(&a.c, "SELECT 1/0").await, "22012");
    assert_eq!(fails(&a.c, "LISTEN failed_too").await, "25P02");
    assert_eq!(fails(&a.c, "UNLISTEN *").await, "25P02");
    assert_eq!(fails(&a.c, "SELECT pg_listening_channels()").await, "25P02");
    let tags = a.c.simple_query("COMMIT").await.unwrap();
    assert!(
        matches!(tags.last(), Some(SimpleQueryMessage::CommandComplete(0))),
        "{tags:?}"
    );

    // A COMMIT that fails (a deferred unique constraint).
    a.c.batch_execute("BEGIN").await.unwrap();
    a.c.batch_execute("LISTEN commit_failed").await.unwrap();
    a.c.batch_execute("INSERT INTO lt_deferred VALUES (1), (1)")
        .await
        .unwrap();
    assert_eq!(fails(&a.c, "COMMIT").await, "23505");

    // UNLISTEN * rolled back, inside a savepoint's rollback: a LISTEN staged before a SAVEPOINT
    // survives ROLLBACK TO it.
    a.c.batch_execute("BEGIN").await.unwrap();
    a.c.batch_execute("UNLISTEN *").await.unwrap();
    a.c.batch_execute("ROLLBACK").await.unwrap();
    a.c.batch_execute("BEGIN").await.unwrap();
    a.c.batch_execute("LISTEN before_savepoint").await.unwrap();
    a.c.batch_execute("SAVEPOINT s").await.unwrap();
    assert_eq!(fails(&a.c, "SELECT 1/0").await, "22012");
    a.c.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    a.c.batch_execute("COMMIT").await.unwrap();

    assert_eq!(
        listening(&a.c).await,
        ["before_savepoint", "kept", "marker"]
    );
    d.batch_execute(
        "NOTIFY rolled_back, 'x'; NOTIFY failed, 'x'; NOTIFY failed_too, 'x'; \
         NOTIFY commit_failed, 'x'; NOTIFY kept, 'k'; NOTIFY before_savepoint, 's'",
    )
    .await
    .unwrap();
    let got = until_marker(&mut a, &d, "marker", "m").await;
    assert_eq!(
        got.iter().map(note).collect::<Vec<_>>(),
        [("kept", "k"), ("before_savepoint", "s")]
    );
    assert!(!px.log().contains("pinned"), "a listener was pinned");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_block_with_listen_does_not_pin_the_client() {
    // One server connection: a client pinned to it would keep every other client waiting.
    let px = start("lt_pin", &[], 1);
    let mut a = listener(px.port(), "lt_pin").await;
    let b = listener(px.port(), "lt_pin").await;
    let d = direct("lt_pin").await;
    for round in 0..3 {
        a.c.batch_execute("BEGIN").await.unwrap();
        a.c.batch_execute(&format!("LISTEN ch{round}"))
            .await
            .unwrap();
        assert_eq!(value(&a.c, "SELECT 1").await, "1");
        a.c.batch_execute("COMMIT").await.unwrap();
        // b gets the pool's one server at once (a bounded wait, to fail rather than hang).
        let got = tokio::time::timeout(ARRIVES, value(&b.c, "SELECT 2"))
            .await
            .expect("b ran its query on the pool's one server: a does not hold it");
        assert_eq!(got, "2");
    }
    a.c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    a.c.batch_execute("UNLISTEN ch0").await.unwrap();
    a.c.batch_execute("END").await.unwrap();
    assert_eq!(
        tokio::time::timeout(ARRIVES, value(&b.c, "SELECT 3"))
            .await
            .unwrap(),
        "3"
    );
    d.batch_execute("NOTIFY ch0, 'no'; NOTIFY ch1, 'one'; NOTIFY ch2, 'two'")
        .await
        .unwrap();
    assert_eq!(note(&next(&mut a).await), ("ch1", "one"));
    assert_eq!(note(&next(&mut a).await), ("ch2", "two"));
    assert!(!px.log().contains("pinned"), "a listener was pinned");
    // The pool's one, the listening connection, the test's direct connection.
    let servers =
        pgtier_kit::fixture::server_connections(pgtier_kit::Cluster::shared(), "lt_pin").unwrap();
    assert!(servers <= 3, "{servers} server connections");
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_listening_channels_lists_the_clients_own_channels() {
    let px = start("lt_channels", &[], 1);
    let a = listener(px.port(), "lt_channels").await;
    let b = listener(px.port(), "lt_channels").await;
    assert!(listening(&a.c).await.is_empty());
    a.c.batch_execute("LISTEN one").await.unwrap();
    a.c.batch_execute("LISTEN \"Two\"").await.unwrap();
    for sql in [
        "SELECT pg_listening_channels()",
        "select * from pg_listening_channels();",
        "SELECT pg_catalog.pg_listening_channels()",
    ] {
        assert_eq!(channels(&a.c, sql).await, ["Two", "one"], "{sql}");
        assert!(channels(&b.c, sql).await.is_empty(), "{sql}");
    }
    // Column name and type as Postgres gives them.
    let rows =
        a.c.simple_query("SELECT pg_listening_channels()")
            .await
            .unwrap();
    let SimpleQueryMessage::RowDescription(cols) = &rows[0] else {
        panic!("{rows:?}");
    };
    assert_eq!(cols[0].name(), "pg_listening_channels");
    // Through the extended protocol (tokio-postgres prepares a named statement and binds it
    // with binary results).
    for (c, want) in [(&a.c, vec!["Two", "one"]), (&b.c, vec![])] {
        let mut got: Vec<String> = c
            .query("SELECT pg_listening_channels()", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        got.sort();
        assert_eq!(got, want);
    }
    // Inside a block too; b's own LISTEN does not show for a.
    b.c.batch_execute("LISTEN three").await.unwrap();
    a.c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(listening(&a.c).await, ["Two", "one"]);
    a.c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(listening(&b.c).await, ["three"]);
    a.c.batch_execute("UNLISTEN *").await.unwrap();
    assert!(listening(&a.c).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listen_over_the_channel_bound_fails_the_block_like_postgres_fails_statements() {
    let px = start("lt_bound", &["max_listen_channels = 2"], 1);
    let mut a = listener(px.port(), "lt_bound").await;
    let d = direct("lt_bound").await;
    a.c.batch_execute("LISTEN marker").await.unwrap();
    // Outside a block, several statements are one implicit transaction: none takes effect.
    assert_eq!(fails(&a.c, "LISTEN one; LISTEN two").await, "53400");
    assert_eq!(listening(&a.c).await, ["marker"]);
    // Inside a block the server raises it: the block is aborted, as after any error.
    a.c.batch_execute("BEGIN").await.unwrap();
    a.c.batch_execute("LISTEN one").await.unwrap();
    assert_eq!(fails(&a.c, "LISTEN two").await, "53400");
    assert_eq!(fails(&a.c, "SELECT 1").await, "25P02");
    a.c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(listening(&a.c).await, ["marker"]);
    // The reservation of the failed block was given back: one more channel fits again.
    a.c.batch_execute("LISTEN three").await.unwrap();
    d.batch_execute("NOTIFY one, 'x'; NOTIFY three, 'y'")
        .await
        .unwrap();
    let got = until_marker(&mut a, &d, "marker", "m").await;
    assert_eq!(got.iter().map(note).collect::<Vec<_>>(), [("three", "y")]);
}
