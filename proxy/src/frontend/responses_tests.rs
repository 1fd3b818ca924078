//! Tests of `responses`.
use super::*;

macro_rules! no_params {
    () => {
        ParamSync {
            defaults: &[],
            client: &mut ParamChanges::default(),
            server_login: &[],
            server: &mut ParamChanges::default(),
        }
    };
}

use crate::protocol::frame::test_frame as msg;

fn server(kind: Kind, to_client: bool) -> Entry {
    if to_client {
        Entry::client(kind)
    } else {
        Entry::own(kind)
    }
}

#[test]
fn drops_pgtier_replies_and_inserts_synthetic_ones_in_order() {
    let mut exp = Expectations::default();
    let mut reg = ServerStatements::new(10);
    exp.push(server(Kind::Parse, false)); // injected Parse
    exp.push(server(Kind::Bind, true));
    exp.push(Entry::Synthetic(Synthetic::CloseComplete, None));
    exp.push(server(Kind::Execute, true));
    exp.push(server(Kind::Sync, true));
    let mut input = msg(b'1', b"");
    input.extend(msg(b'2', b""));
    input.extend(msg(b'D', b"\0\0"));
    input.extend(msg(b'C', b"SELECT 1\0"));
    input.extend(msg(b'Z', b"I"));
    let mut out = BytesMut::new();
    let scan = route_server(
        &input,
        &mut Streaming::default(),
        &mut exp,
        &mut reg,
        &mut ClientStatements::default(),
        &mut no_params!(),
        &mut out,
    )
    .unwrap();
    assert!(scan.copied);
    assert_eq!(scan.consumed, input.len());
    assert_eq!((scan.ready, scan.status), (1, Some(TxStatus::Idle)));
    let mut want = msg(b'2', b"");
    want.extend(msg(b'3', b""));
    want.extend(msg(b'D', b"\0\0"));
    want.extend(msg(b'C', b"SELECT 1\0"));
    want.extend(msg(b'Z', b"I"));
    assert_eq!(&out[..], &want[..]);
    assert!(exp.is_empty());
}

#[test]
fn plain_traffic_is_not_copied() {
    let mut exp = Expectations::default();
    exp.push(server(Kind::Query, true));
    let mut input = msg(b'T', b"x");
    input.extend(msg(b'D', &[0u8; 100]));
    input.extend(msg(b'C', b"SELECT 1\0"));
    input.extend(msg(b'Z', b"I"));
    let mut out = BytesMut::new();
    let mut st = Streaming::default();
    let mut reg = ServerStatements::new(10);
    let scan = route_server(
        &input[..20],
        &mut st,
        &mut exp,
        &mut reg,
        &mut ClientStatements::default(),
        &mut no_params!(),
        &mut out,
    )
    .unwrap();
    assert_eq!((scan.consumed, scan.copied), (20, false));
    let scan = route_server(
        &input[20..],
        &mut st,
        &mut exp,
        &mut reg,
        &mut ClientStatements::default(),
        &mut no_params!(),
        &mut out,
    )
    .unwrap();
    assert_eq!(
        (scan.consumed, scan.copied, scan.ready),
        (input.len() - 20, false, 1)
    );
    assert!(out.is_empty() && exp.is_empty());
}

#[test]
fn error_skips_to_sync_and_forgets_failed_parses() {
    let mut exp = Expectations::default();
    let mut reg = ServerStatements::new(10);
    reg.insert("pgtier_a".into());
    exp.push(Entry::own(Kind::Parse).with(None, Some(Undo::Prepare("pgtier_a".into()))));
    exp.push(server(Kind::Bind, true));
    exp.push(Entry::Synthetic(Synthetic::ParseComplete, None));
    exp.push(server(Kind::Sync, true));
    let mut input = msg(b'E', b"Cxx\0\0");
    input.extend(msg(b'Z', b"I"));
    let mut out = BytesMut::new();
    let scan = route_server(
        &input,
        &mut Streaming::default(),
        &mut exp,
        &mut reg,
        &mut ClientStatements::default(),
        &mut no_params!(),
        &mut out,
    )
    .unwrap();
    assert!(
        !scan.copied,
        "the error and ReadyForQuery both go to the client"
    );
    assert!(exp.is_empty());
    assert!(!reg.touch("pgtier_a"));
}
