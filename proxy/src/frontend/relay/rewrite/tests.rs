//! Tests of `rewrite`.
use crate::backend::params::{ExtraUpdate, ParamChanges};
use crate::prepared::client::Prepared;
use crate::protocol::frame::test_frame as msg;

use super::*;

struct Fixture {
    statements: ClientStatements,
    discard: bool,
    copy_left: usize,
    pinned: Option<&'static str>,
    registry: ServerStatements,
    expect: Expectations,
    unnamed_here: bool,
    extras: ExtraParams,
    prepared_bytes: usize,
    params: ParamChanges,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            statements: ClientStatements::default(),
            discard: false,
            copy_left: 0,
            pinned: None,
            registry: ServerStatements::new(100),
            expect: Expectations::default(),
            unnamed_here: false,
            extras: ExtraParams::default(),
            prepared_bytes: usize::MAX,
            params: ParamChanges::default(),
        }
    }

    fn route(&mut self, buf: &[u8], out: &mut BytesMut) -> Result<ClientScan, Violation> {
        route_client(
            buf,
            1 << 20,
            &mut ClientSide {
                statements: &mut self.statements,
                discard: &mut self.discard,
                copy_left: &mut self.copy_left,
                pinned: &mut self.pinned,
                reported: &[],
                policy: SessionStatePolicy::Pin,
                strings: StringSyntax::Standard,
                extras: self.extras,
                in_transaction: false,
                prepared_bytes: self.prepared_bytes,
                params: &self.params,
                startup: self.params.has_startup(),
                unpinned: 0,
            },
            &mut ServerSide {
                registry: &mut self.registry,
                expect: &mut self.expect,
                unnamed_here: &mut self.unnamed_here,
            },
            out,
        )
    }
}

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

/// The (tag, body) of each message in `buf`.
fn frames(buf: &[u8]) -> Vec<(u8, &[u8])> {
    let mut v = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let len = u32::from_be_bytes(buf[pos + 1..pos + 5].try_into().unwrap()) as usize;
        v.push((buf[pos], &buf[pos + 5..pos + 1 + len]));
        pos += 1 + len;
    }
    v
}

fn tags(buf: &[u8]) -> String {
    frames(buf).iter().map(|(t, _)| *t as char).collect()
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

/// Feeds server replies to the fixture's expectations; returns what reaches the client.
fn reply(f: &mut Fixture, server: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    let scan = super::super::responses::route_server(
        server,
        &mut Default::default(),
        &mut f.expect,
        &mut f.registry,
        &mut f.statements,
        &mut super::super::responses::ParamSync {
            defaults: &[],
            client: &mut Default::default(),
            server_login: &[],
            server: &mut Default::default(),
        },
        &mut out,
    )
    .unwrap();
    if !scan.copied {
        out.extend_from_slice(&server[..scan.consumed]);
    }
    out
}

fn error(code: &str) -> Vec<u8> {
    msg(b'E', format!("SERROR\0C{code}\0Mx\0\0").as_bytes())
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
fn extra_parameters_are_followed_outside_transactions_and_pin_inside() {
    let mut f = Fixture::new();
    f.extras = ExtraParams::intern(&["work_mem".into()]);
    let mut out = BytesMut::new();
    f.route(&msg(b'Q', b"SET work_mem = '2MB'\0"), &mut out)
        .unwrap();
    assert_eq!(f.pinned, None);
    assert!(matches!(
        f.expect.param_update,
        Some(ExtraUpdate::Set("work_mem", _))
    ));
    // Behind another query of the client's (it may open a transaction): pinned.
    f.route(&msg(b'Q', b"SET work_mem = '3MB'\0"), &mut out)
        .unwrap();
    assert!(f.pinned.is_some());
    // Not configured: pinned, as before.
    let mut f = Fixture::new();
    f.route(&msg(b'Q', b"SET work_mem = '2MB'\0"), &mut out)
        .unwrap();
    assert!(f.pinned.is_some() && f.expect.param_update.is_none());
}

/// Feeds server replies like `reply`, keeping the parameter changes: (client's, server's).
fn reply_params(f: &mut Fixture, server: &[u8]) -> (ParamChanges, ParamChanges) {
    let (mut client, mut srv) = (ParamChanges::default(), ParamChanges::default());
    let mut out = BytesMut::new();
    super::super::responses::route_server(
        server,
        &mut Default::default(),
        &mut f.expect,
        &mut f.registry,
        &mut f.statements,
        &mut super::super::responses::ParamSync {
            defaults: &[],
            client: &mut client,
            server_login: &[],
            server: &mut srv,
        },
        &mut out,
    )
    .unwrap();
    (client, srv)
}

/// P B [D] E S of one unnamed statement, the unit JDBC and psycopg send for a plain statement.
fn unit(sql: &str, describe: bool) -> Vec<u8> {
    let mut buf = msg(b'P', format!("\0{sql}\0\0\0").as_bytes());
    buf.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    if describe {
        buf.extend(msg(b'D', b"P\0"));
    }
    buf.extend(msg(b'E', b"\0\0\0\0\0"));
    buf.extend(msg(b'S', b""));
    buf
}

/// Bind of the unnamed statement, Execute, Sync: running it again without a Parse.
fn rebind() -> Vec<u8> {
    let mut buf = msg(b'B', b"\0\0\0\0\0\0\0\0");
    buf.extend(msg(b'E', b"\0\0\0\0\0"));
    buf.extend(msg(b'S', b""));
    buf
}

/// Server replies to `unit`: ParseComplete, BindComplete, then `tail`.
fn unit_replies(tail: &[Vec<u8>]) -> Vec<u8> {
    [vec![msg(b'1', b""), msg(b'2', b"")], tail.to_vec()]
        .concat()
        .concat()
}

#[test]
fn an_extended_set_of_an_extra_parameter_alone_in_its_unit_is_followed() {
    for describe in [false, true] {
        let mut f = Fixture::new();
        f.extras = ExtraParams::intern(&["work_mem".into()]);
        let mut out = BytesMut::new();
        f.route(&unit("SET work_mem = '2MB'", describe), &mut out)
            .unwrap();
        assert_eq!(f.pinned, None);
        assert!(matches!(
            f.expect.param_update,
            Some(ExtraUpdate::Set("work_mem", _))
        ));
        // Applied when its Execute completes.
        let no_data = if describe { msg(b'n', b"") } else { vec![] };
        let srv = unit_replies(&[no_data, msg(b'C', b"SET\0"), msg(b'Z', b"I")]);
        let (client, server) = reply_params(&mut f, &srv);
        assert_eq!(client.extra("work_mem"), Some("SET work_mem = '2MB'"));
        assert_eq!(server.extra("work_mem"), Some("SET work_mem = '2MB'"));
        assert!(f.expect.param_update.is_none() && f.expect.is_empty());

        // Running the unnamed SET again (Bind without Parse) would go unseen: that pins.
        f.route(&rebind(), &mut out).unwrap();
        assert!(f.pinned.is_some(), "a second Bind of the followed SET pins");
    }
}

#[test]
fn a_followed_set_replaced_by_a_skipped_parse_still_pins_when_run_again() {
    let mut f = Fixture::new();
    f.extras = ExtraParams::intern(&["work_mem".into()]);
    let mut out = BytesMut::new();
    f.route(&unit("SET work_mem = '2MB'", false), &mut out)
        .unwrap();
    reply_params(
        &mut f,
        &unit_replies(&[msg(b'C', b"SET\0"), msg(b'Z', b"I")]),
    );
    // An Execute that fails makes the server skip the Parse after it: the SET stays the
    // unnamed statement.
    let mut buf = msg(b'E', b"nope\0\0\0\0\0");
    buf.extend(msg(b'P', b"\0SELECT 1\0\0\0"));
    buf.extend(msg(b'S', b""));
    f.route(&buf, &mut out).unwrap();
    let mut srv = error("34000");
    srv.extend(msg(b'Z', b"I"));
    reply(&mut f, &srv);
    assert_eq!(
        f.statements.unnamed(),
        Some(&b"SET work_mem = '2MB'\0\0\0"[..])
    );
    f.route(&rebind(), &mut out).unwrap();
    assert!(f.pinned.is_some(), "re-running the followed SET pins");
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
fn a_fastpath_call_of_a_session_state_builtin_pins() {
    // FunctionCall: function OID, no format codes, one text argument, text result.
    let call = |oid: u32| {
        let mut body = oid.to_be_bytes().to_vec();
        body.extend(0i16.to_be_bytes());
        body.extend(1i16.to_be_bytes());
        body.extend(2i32.to_be_bytes());
        body.extend(b"42");
        body.extend(0i16.to_be_bytes());
        msg(b'F', &body)
    };
    let mut f = Fixture::new();
    let mut out = BytesMut::new();
    let scan = f.route(&call(1317), &mut out).unwrap(); // length(text)
    assert_eq!((scan.syncs, f.pinned), (1, None));
    let scan = f.route(&call(2880), &mut out).unwrap(); // pg_advisory_lock(bigint)
    assert_eq!(f.pinned, Some("session advisory lock"));
    assert!(!scan.copied, "the call reaches the server as sent");
}

#[test]
fn a_failed_extended_set_changes_nothing() {
    let mut f = Fixture::new();
    f.extras = ExtraParams::intern(&["work_mem".into()]);
    let mut out = BytesMut::new();
    f.route(&unit("SET work_mem = 'lots'", false), &mut out)
        .unwrap();
    let (client, server) = reply_params(&mut f, &unit_replies(&[error("22023"), msg(b'Z', b"I")]));
    assert_eq!(
        (client.extra("work_mem"), server.extra("work_mem")),
        (None, None)
    );
    assert!(f.expect.param_update.is_none());
}

#[test]
fn an_extended_set_with_company_or_named_pins() {
    let extras = || ExtraParams::intern(&["work_mem".into()]);
    // Another statement in the same unit (they share an implicit transaction).
    let mut f = Fixture::new();
    f.extras = extras();
    let mut buf = unit("SET work_mem = '2MB'", false);
    buf.truncate(buf.len() - 5);
    buf.extend(unit("SELECT 1", false));
    f.route(&buf, &mut BytesMut::new()).unwrap();
    assert!(f.pinned.is_some() && f.expect.param_update.is_none());
    // A named statement (it may run any number of times later).
    let mut f = Fixture::new();
    f.extras = extras();
    let mut buf = msg(b'P', b"s1\0SET work_mem = '2MB'\0\0\0");
    buf.extend(msg(b'B', b"\0s1\0\0\0\0\0\0\0"));
    buf.extend(msg(b'E', b"\0\0\0\0\0"));
    buf.extend(msg(b'S', b""));
    f.route(&buf, &mut BytesMut::new()).unwrap();
    assert!(f.pinned.is_some() && f.expect.param_update.is_none());
    // The unit not complete in what was read.
    let mut f = Fixture::new();
    f.extras = extras();
    let buf = unit("SET work_mem = '2MB'", false);
    f.route(&buf[..buf.len() - 5], &mut BytesMut::new())
        .unwrap();
    assert!(f.pinned.is_some() && f.expect.param_update.is_none());
    // A parameter not in track_extra_params.
    let mut f = Fixture::new();
    f.route(&unit("SET work_mem = '2MB'", false), &mut BytesMut::new())
        .unwrap();
    assert!(f.pinned.is_some());
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

#[test]
fn copy_data_streams_and_bad_input_is_rejected() {
    let mut f = Fixture::new();
    let data = msg(b'd', &[7u8; 100]);
    let mut out = BytesMut::new();
    let scan = f.route(&data[..30], &mut out).unwrap();
    assert_eq!((scan.consumed, f.copy_left), (30, 75));
    let scan = f.route(&data[30..], &mut out).unwrap();
    assert_eq!((scan.consumed, f.copy_left), (75, 0));
    // CopyData larger than max_message_size (1 MiB here) streams too; a Query that large
    // does not.
    let mut big = vec![b'd'];
    big.extend(((2u32 << 20) + 4).to_be_bytes());
    big.extend([0u8; 1000]);
    let scan = f.route(&big, &mut out).unwrap();
    assert_eq!((scan.consumed, f.copy_left), (1005, (2 << 20) - 1000));
    f.copy_left = 0;
    let mut huge_query = vec![b'Q'];
    huge_query.extend(((2u32 << 20) + 4).to_be_bytes());
    assert!(matches!(
        f.route(&huge_query, &mut out),
        Err(Violation::Frame(FrameError::TooLarge { .. }))
    ));
    assert_eq!(
        f.route(&msg(b'?', b""), &mut out),
        Err(Violation::UnknownType(b'?'))
    );
    let mut buf = msg(b'Q', b"select 1\0");
    let q = buf.len();
    buf.extend(msg(b'X', b""));
    let scan = f.route(&buf, &mut out).unwrap();
    assert_eq!((scan.consumed, scan.syncs, scan.terminate), (q, 1, true));
}

#[test]
fn a_reset_of_startup_values_is_followed_by_their_restore() {
    let mut f = Fixture::new();
    let startup = [("work_mem".to_string(), "3MB".to_string())];
    f.params = ParamChanges::from_startup(&[], ExtraParams::default(), &startup);
    let mut out = BytesMut::new();
    // A Query: the restore follows it at once, and its failure (an aborted transaction, which
    // undoes the reset too) reaches nobody and ends nothing.
    let scan = f.route(&msg(b'Q', b"RESET work_mem\0"), &mut out).unwrap();
    assert!(scan.copied && scan.syncs == 1);
    let sent = frames(&out);
    assert_eq!(tags(&out), "QQ");
    assert_eq!(
        sent[1].1,
        &b"SELECT pg_catalog.set_config('work_mem', E'3MB', false);\0"[..]
    );
    // (A RESET by name of a parameter outside track_extra_params pins, as its SET does.)
    assert!(f.pinned.is_some());
    let mut srv = msg(b'C', b"RESET\0");
    srv.extend(msg(b'Z', b"T"));
    srv.extend(error("25P02"));
    srv.extend(msg(b'Z', b"E"));
    assert_eq!(tags(&reply(&mut f, &srv)), "CZ");
    assert!(f.expect.is_empty() && f.expect.sync_failed.is_none());
    // The extended protocol: after the unit's Sync. Other resets and statements: nothing.
    let mut out = BytesMut::new();
    let mut buf = msg(b'P', b"\0RESET ALL\0\0\0");
    buf.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    buf.extend(msg(b'E', b"\0\0\0\0\0"));
    buf.extend(msg(b'S', b""));
    buf.extend(msg(b'Q', b"RESET datestyle\0"));
    buf.extend(msg(b'Q', b"SELECT 1\0"));
    f.route(&buf, &mut out).unwrap();
    assert_eq!(tags(&out), "PBESQQQ");
}

#[test]
fn a_flush_after_a_sync_leaves_the_server_at_rest() {
    let mut f = Fixture::new();
    let mut out = BytesMut::new();
    // psycopg ends each pipeline so; the server may go back to its pool.
    f.route(&[msg(b'S', b""), msg(b'H', b"")].concat(), &mut out)
        .unwrap();
    assert!(!f.expect.unsynced);
    // Inside extended work a Flush changes nothing: a Sync still owes the end.
    f.route(
        &[msg(b'P', b"\0SELECT 1\0\0\0"), msg(b'H', b"")].concat(),
        &mut out,
    )
    .unwrap();
    assert!(f.expect.unsynced);
}
