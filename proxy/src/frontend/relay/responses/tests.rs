//! Tests of `responses`.
use crate::backend::params::ParamChanges;
use crate::protocol::messages::TxStatus;

use super::route::ServerScan;
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

fn route(exp: &mut Expectations, input: &[u8], out: &mut BytesMut) -> ServerScan {
    route_server(
        input,
        &mut Streaming::default(),
        exp,
        &mut ServerStatements::new(10),
        &mut ClientStatements::default(),
        &mut no_params!(),
        out,
    )
    .unwrap()
}

/// The probe's reply to `SELECT pg_current_wal_insert_lsn()`, split where the server might.
fn probe_reply(lsn: &str) -> Vec<u8> {
    let mut row = vec![0, 1];
    row.extend((lsn.len() as i32).to_be_bytes());
    row.extend(lsn.as_bytes());
    let mut r = msg(b'T', b"rowdesc");
    r.extend(msg(b'D', &row));
    r.extend(msg(b'C', b"SELECT 1\0"));
    r.extend(msg(b'Z', b"I"));
    r
}

#[test]
fn a_pipelined_probe_puts_the_token_before_the_held_ready_for_query() {
    let token: crate::cluster::Lsn = "0/100".parse().unwrap();
    let mut exp = Expectations::with(Causal::new(true, true, token, None));
    exp.push(server(Kind::Query, true));
    exp.push(Entry::Probe);
    let mut out = BytesMut::new();
    let mut first = msg(b'C', b"INSERT 0 1\0");
    first.extend(msg(b'Z', b"I"));
    let scan = route(&mut exp, &first, &mut out);
    // The ReadyForQuery waits for the probe.
    assert_eq!(scan.ready, 0);
    assert_eq!(&out[..], &msg(b'C', b"INSERT 0 1\0")[..]);
    let mut out = BytesMut::new();
    let scan = route(&mut exp, &probe_reply("0/3000148"), &mut out);
    assert_eq!((scan.ready, scan.status), (1, Some(TxStatus::Idle)));
    let mut want = msg(b'S', b"pgtier.causal_lsn\x000/3000148\0");
    want.extend(msg(b'Z', b"I"));
    assert_eq!(&out[..], &want[..]);
    assert!(exp.is_empty());
    assert_eq!(exp.causal.token, "0/3000148".parse().unwrap());
    assert!(exp.causal.learned && !exp.causal.uncovered);
}

#[test]
fn a_failed_probe_hides_its_error_and_leaves_the_write_uncovered() {
    let mut exp = Expectations::with(Causal::new(true, true, crate::cluster::Lsn::ZERO, None));
    exp.push(server(Kind::Query, true));
    exp.push(Entry::Probe);
    let mut input = msg(b'E', b"C22012\0Mdivision by zero\0\0");
    input.extend(msg(b'Z', b"E"));
    input.extend(msg(b'E', b"C25P02\0Mcurrent transaction is aborted\0\0"));
    input.extend(msg(b'Z', b"E"));
    let mut out = BytesMut::new();
    let scan = route(&mut exp, &input, &mut out);
    let mut want = msg(b'E', b"C22012\0Mdivision by zero\0\0");
    want.extend(msg(b'Z', b"E"));
    assert_eq!(&out[..], &want[..]);
    assert_eq!(scan.ready, 1);
    assert_eq!(scan.errors, vec!["22012".to_owned()]);
    assert!(exp.causal.uncovered && !exp.causal.learned);
}

#[test]
fn a_write_not_covered_holds_the_ready_for_query_that_ends_it_and_asks_for_a_probe() {
    let mut exp = Expectations::with(Causal::new(true, false, crate::cluster::Lsn::ZERO, None));
    exp.causal.uncovered = true;
    exp.push(server(Kind::Query, true));
    let mut input = msg(b'C', b"COPY 2\0");
    input.extend(msg(b'Z', b"I"));
    let mut out = BytesMut::new();
    assert_eq!(route(&mut exp, &input, &mut out).ready, 0);
    assert!(std::mem::take(&mut exp.causal.send_now));
    let mut out = BytesMut::new();
    assert_eq!(route(&mut exp, &probe_reply("0/200"), &mut out).ready, 1);
    // Not reported (report_causal_lsn = false), but learned for routing.
    assert_eq!(&out[..], &msg(b'Z', b"I")[..]);
    assert_eq!(exp.causal.token, "0/200".parse().unwrap());
    // Reads do not hold anything.
    exp.push(server(Kind::Query, true));
    let mut out = BytesMut::new();
    let scan = route(&mut exp, &input, &mut out);
    assert_eq!((scan.ready, scan.copied), (1, false));
}
