//! Tests of `rewrite` for statements: unnamed and named ones, Parse, Bind, Close, DEALLOCATE.
use bytes::BytesMut;

use crate::frontend::relay::responses::Expectations;
use crate::prepared::client::Prepared;
use crate::prepared::server::ServerStatements;
use crate::protocol::extended;
use crate::protocol::frame::test_frame as msg;

use super::{error, frames, reply, tags, Fixture};

#[test]
fn an_unnamed_statement_from_another_checkout_is_parsed_here_first() {
    let mut f = Fixture::new();
    let parse = msg(b'P', b"\0SELECT 1\0\0\0");
    let mut buf = parse.clone();
    buf.extend(msg(b'S', b""));
    let mut out = BytesMut::new();
    f.route(&buf, &mut out).unwrap();
    // Next checkout: a new server connection.
    f.unnamed_here = false;
    let bind = msg(b'B', b"\0\0\0\0\0\0\0\0");
    let mut buf = bind.clone();
    buf.extend(msg(b'S', b""));
    let mut out = BytesMut::new();
    let scan = f.route(&buf, &mut out).unwrap();
    assert!(scan.copied);
    let mut want = parse.clone();
    want.extend(&buf);
    assert_eq!(
        &out[..],
        &want[..],
        "Parse of the unnamed statement, then the Bind"
    );
    // After a simple Query the client has no unnamed statement: 26000, not another's.
    let mut out = BytesMut::new();
    f.route(&msg(b'Q', b"SELECT 2\0"), &mut out).unwrap();
    f.unnamed_here = false;
    f.expect = Expectations::default(); // as if the server had answered all of it
    let mut out = BytesMut::new();
    f.route(&buf, &mut out).unwrap();
    assert_eq!(
        &out[..],
        &msg(b'S', b"")[..],
        "the Bind must not reach the server"
    );
    let mut reply = BytesMut::new();
    assert!(f.expect.drain_synthetic(&mut reply));
    assert_eq!(reply[0], b'E');
    assert!(reply.windows(6).any(|w| w == b"C26000"), "{reply:?}");
}

#[test]
fn unnamed_statements_pass_through_without_copying() {
    let mut f = Fixture::new();
    let mut buf = msg(b'P', b"\0select 1\0\0\0");
    buf.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    buf.extend(msg(b'E', b"\0\0\0\0\0"));
    buf.extend(msg(b'S', b""));
    let whole = buf.len();
    buf.extend(&msg(b'Q', b"select 2\0")[..7]);
    let mut out = BytesMut::new();
    let scan = f.route(&buf, &mut out).unwrap();
    assert_eq!((scan.consumed, scan.copied, scan.syncs), (whole, false, 1));
    assert_eq!(f.expect.len(), 4);
}

#[test]
fn named_statements_are_renamed_and_prepared_where_missing() {
    let mut f = Fixture::new();
    let mut buf = msg(b'P', b"s1\0select 1\0\0\0");
    buf.extend(msg(b'S', b""));
    let mut out = BytesMut::new();
    let scan = f.route(&buf, &mut out).unwrap();
    assert!(scan.copied);
    let server_name = f.statements.get(b"s1").unwrap().server_name.clone();
    // A Close of the name first: the server may still have it (see backend::statements).
    assert_eq!(tags(&out), "CPS");
    let fr = frames(&out);
    assert_eq!(&fr[0].1[1..], format!("{server_name}\0").as_bytes());
    assert_eq!(
        extended::parse(fr[1].1).unwrap().name,
        server_name.as_bytes()
    );

    // Another server connection: the Bind is preceded by a Parse pgtier owns.
    f.registry = ServerStatements::new(100);
    f.expect = Expectations::default();
    let bind = msg(b'B', b"\0s1\0\0\0\0\0\0\0");
    out.clear();
    f.route(&bind, &mut out).unwrap();
    assert_eq!(tags(&out), "CPB");
    assert_eq!(
        extended::bind(frames(&out)[2].1).unwrap().statement,
        server_name.as_bytes()
    );
    assert_eq!(f.expect.len(), 3);

    // Same connection again: just the renamed Bind.
    out.clear();
    f.route(&bind, &mut out).unwrap();
    assert_eq!(tags(&out), "B");
}

#[test]
fn a_failed_parse_leaves_the_name_free_and_a_skipped_close_keeps_it() {
    let mut f = Fixture::new();
    let mut out = BytesMut::new();
    // P(good) S: the server confirms it.
    let mut buf = msg(b'P', b"good\0select 1\0\0\0");
    buf.extend(msg(b'S', b""));
    f.route(&buf, &mut out).unwrap();
    let mut srv = msg(b'3', b"");
    srv.extend(msg(b'1', b""));
    srv.extend(msg(b'Z', b"I"));
    assert_eq!(tags(&reply(&mut f, &srv)), "1Z");
    // P(bad) C(good) P(bad2) S: the first Parse fails; Postgres skips the rest.
    let mut buf = msg(b'P', b"bad\0selec 1\0\0\0");
    buf.extend(msg(b'C', b"Sgood\0"));
    buf.extend(msg(b'P', b"bad2\0select 2\0\0\0"));
    buf.extend(msg(b'S', b""));
    out.clear();
    f.route(&buf, &mut out).unwrap();
    assert!(!f.statements.contains(b"good"), "routing sees the Close");
    let mut srv = msg(b'3', b""); // pgtier's Close before the Parse
    srv.extend(error("42601"));
    srv.extend(msg(b'Z', b"I"));
    assert_eq!(tags(&reply(&mut f, &srv)), "EZ");
    assert!(f.expect.is_empty());
    assert!(!f.statements.contains(b"bad") && !f.statements.contains(b"bad2"));
    assert!(
        f.statements.contains(b"good"),
        "the skipped Close did nothing"
    );
    let bad2 = Prepared::new(b"select 2\0\0\0");
    assert!(
        !f.registry.touch(&bad2.server_name),
        "a skipped Parse prepared nothing"
    );
    // The failed name can be prepared again.
    out.clear();
    f.route(&msg(b'P', b"bad\0select 3\0\0\0"), &mut out)
        .unwrap();
    assert_eq!(tags(&out), "CP");
}

#[test]
fn a_skipped_evicting_close_keeps_the_statement_known() {
    let mut f = Fixture::new();
    f.registry = ServerStatements::new(1);
    let mut out = BytesMut::new();
    let mut buf = msg(b'P', b"a\0select 1\0\0\0");
    buf.extend(msg(b'S', b""));
    f.route(&buf, &mut out).unwrap();
    let mut srv = msg(b'3', b"");
    srv.extend(msg(b'1', b""));
    srv.extend(msg(b'Z', b"I"));
    reply(&mut f, &srv);
    let a = f.statements.get(b"a").unwrap().server_name.clone();
    // An error before pgtier's Close of `a` (evicted for `b`): the Close is skipped.
    let mut buf = msg(b'B', b"\0nope\0\0\0\0\0\0\0");
    buf.extend(msg(b'P', b"b\0select 2\0\0\0"));
    buf.extend(msg(b'S', b""));
    out.clear();
    f.route(&buf, &mut out).unwrap();
    assert_eq!(
        tags(&out),
        "BCCPS",
        "Bind, Close b, Close a (evicted), Parse b"
    );
    let mut srv = error("26000");
    srv.extend(msg(b'Z', b"I"));
    assert_eq!(tags(&reply(&mut f, &srv)), "EZ");
    assert!(f.registry.touch(&a), "still on the server");
    assert!(!f.statements.contains(b"b"));
}

#[test]
fn a_parse_over_the_byte_bound_fails_on_the_server() {
    let mut f = Fixture::new();
    f.prepared_bytes = 8;
    let mut out = BytesMut::new();
    let mut buf = msg(b'P', b"s1\0select 1\0\0\0");
    buf.extend(msg(b'B', b"\0s1\0\0\0\0\0\0\0"));
    buf.extend(msg(b'S', b""));
    f.route(&buf, &mut out).unwrap();
    // A failing unnamed statement in place of the Parse (so that the server aborts a
    // transaction block); the client's Bind is skipped, its Sync forwarded.
    assert_eq!(tags(&out), "PBES");
    assert!(String::from_utf8_lossy(frames(&out)[0].1).contains("ERRCODE = '54000'"));
    assert!(!f.statements.contains(b"s1"));
    let mut srv = msg(b'1', b"");
    srv.extend(msg(b'2', b""));
    srv.extend(error("54000"));
    srv.extend(msg(b'Z', b"E"));
    assert_eq!(tags(&reply(&mut f, &srv)), "EZ");
    assert!(f.expect.is_empty());
}

#[test]
fn deallocate_of_a_statement_not_on_this_server_cannot_hang() {
    let mut f = Fixture::new();
    let mut out = BytesMut::new();
    // Answered without a server (see prepared::answer_parse_batch), as a client would see it.
    f.statements
        .insert(b"bad", b"selec 1\0\0\0", usize::MAX)
        .unwrap();
    f.route(&msg(b'Q', b"DEALLOCATE bad\0"), &mut out).unwrap();
    assert_eq!(tags(&out), "CPSQ");
    assert_eq!(
        extended::parse(frames(&out)[1].1).unwrap().rest,
        b"SELECT NULL\0\0\0",
        "a placeholder, not the client's text"
    );
    assert!(!f.statements.contains(b"bad"));
    // In an aborted transaction everything fails: one error (the DEALLOCATE's) and one
    // ReadyForQuery reach the client, and the client keeps its statement.
    let mut srv = error("25P02");
    srv.extend(msg(b'Z', b"E"));
    srv.extend(error("25P02"));
    srv.extend(msg(b'Z', b"E"));
    assert_eq!(tags(&reply(&mut f, &srv)), "EZ");
    assert!(f.statements.contains(b"bad"));
    assert!(f.expect.is_empty());
}

#[test]
fn closing_the_unnamed_statement_forgets_it_unless_the_close_is_skipped() {
    let mut f = Fixture::new();
    let mut out = BytesMut::new();
    let mut buf = msg(b'P', b"\0SELECT 1\0\0\0");
    buf.extend(msg(b'S', b""));
    f.route(&buf, &mut out).unwrap();
    reply(&mut f, &[msg(b'1', b""), msg(b'Z', b"I")].concat());
    // Skipped (after a failed Execute): the statement is still there.
    let mut buf = msg(b'E', b"nope\0\0\0\0\0");
    buf.extend(msg(b'C', b"S\0"));
    buf.extend(msg(b'S', b""));
    f.route(&buf, &mut out).unwrap();
    assert_eq!(f.statements.unnamed(), None);
    reply(&mut f, &[error("34000"), msg(b'Z', b"I")].concat());
    assert_eq!(f.statements.unnamed(), Some(&b"SELECT 1\0\0\0"[..]));
    // Closed: a Bind on another server connection gets 26000, as on the server.
    let mut buf = msg(b'C', b"S\0");
    buf.extend(msg(b'S', b""));
    f.route(&buf, &mut out).unwrap();
    reply(&mut f, &[msg(b'3', b""), msg(b'Z', b"I")].concat());
    assert_eq!(f.statements.unnamed(), None);
    f.unnamed_here = false;
    let mut buf = msg(b'B', b"\0\0\0\0\0\0\0\0");
    buf.extend(msg(b'S', b""));
    out.clear();
    f.route(&buf, &mut out).unwrap();
    assert_eq!(tags(&out), "S", "the Bind must not reach the server");
    let mut answer = BytesMut::new();
    assert!(f.expect.drain_synthetic(&mut answer));
    assert!(answer.windows(6).any(|w| w == b"C26000"), "{answer:?}");
}

#[test]
fn duplicate_parse_is_answered_42p05_and_skips_to_sync() {
    let mut f = Fixture::new();
    let mut out = BytesMut::new();
    f.route(&msg(b'P', b"s1\0select 1\0\0\0"), &mut out)
        .unwrap();
    f.expect = Expectations::default();
    let mut buf = msg(b'P', b"s1\0select 2\0\0\0");
    buf.extend(msg(b'B', b"\0s1\0\0\0\0\0\0\0"));
    buf.extend(msg(b'S', b""));
    out.clear();
    let scan = f.route(&buf, &mut out).unwrap();
    assert_eq!(scan.syncs, 1);
    assert_eq!(
        &out[..],
        &msg(b'S', b"")[..],
        "only the Sync reaches the server"
    );
    let mut client = BytesMut::new();
    assert!(f.expect.drain_synthetic(&mut client));
    assert!(String::from_utf8_lossy(&client).contains("42P05"));
    assert!(!f.discard);
}
