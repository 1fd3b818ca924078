//! Tests of `rewrite` for session state: extra parameters followed or pinned, RESET restores.
use bytes::BytesMut;

use crate::backend::params::{ExtraParams, ExtraUpdate, ParamChanges};
use crate::protocol::frame::test_frame as msg;

use super::{error, frames, rebind, reply, reply_params, tags, unit, unit_replies, Fixture};

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
