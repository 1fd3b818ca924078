//! Tests of `rewrite`.
use super::*;

use crate::protocol::frame::test_frame as msg;

struct Fixture {
    statements: ClientStatements,
    discard: bool,
    copy_left: usize,
    pinned: Option<&'static str>,
    registry: ServerStatements,
    expect: Expectations,
    unnamed_here: bool,
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

#[test]
fn named_statements_are_renamed_and_prepared_where_missing() {
    let mut f = Fixture::new();
    let mut buf = msg(b'P', b"s1\0select 1\0\0\0");
    buf.extend(msg(b'S', b""));
    let mut out = BytesMut::new();
    let scan = f.route(&buf, &mut out).unwrap();
    assert!(scan.copied);
    let server_name = f.statements.get(b"s1").unwrap().server_name.clone();
    let parse = extended::parse(&out[5..]).unwrap();
    assert_eq!(parse.name, server_name.as_bytes());

    // Another server connection: the Bind is preceded by a Parse pgtier owns.
    f.registry = ServerStatements::new(100);
    f.expect = Expectations::default();
    let bind = msg(b'B', b"\0s1\0\0\0\0\0\0\0");
    out.clear();
    f.route(&bind, &mut out).unwrap();
    assert_eq!(out[0], b'P');
    let plen = u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize + 1;
    assert_eq!(out[plen], b'B');
    assert_eq!(
        extended::bind(&out[plen + 5..]).unwrap().statement,
        server_name.as_bytes()
    );
    assert_eq!(f.expect.len(), 2);

    // Same connection again: just the renamed Bind.
    out.clear();
    f.route(&bind, &mut out).unwrap();
    assert_eq!(out[0], b'B');
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
