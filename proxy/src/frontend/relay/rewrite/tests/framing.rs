//! Tests of `rewrite` for framing: CopyData streaming, bad input, Sync and Flush.
use bytes::BytesMut;

use crate::frontend::relay::rewrite::Violation;
use crate::protocol::frame::{test_frame as msg, FrameError};

use super::Fixture;

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
