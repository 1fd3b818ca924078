//! Unit tests of the hub: delivery, unlisten, overflow.

use super::*;

pub(super) fn hub() -> Arc<Hub> {
    Listeners::new(Arc::new(Metrics::new())).hub("db")
}

pub(super) fn member(hub: &Arc<Hub>, id: u64, max: usize) -> Listening {
    Listening {
        hub: hub.clone(),
        mailbox: Arc::new(Mailbox {
            id,
            max,
            inbox: Mutex::default(),
        }),
    }
}

/// What `Hub::listen` records (without starting the connection task).
pub(super) fn join(l: &Listening, channel: &str) {
    let mut st = lock(&l.hub.state);
    if !st.channels.contains_key(channel) {
        l.hub.channels_total.fetch_add(1, Ordering::Relaxed);
    }
    st.channels
        .entry(channel.to_owned())
        .or_default()
        .insert(l.mailbox.id, l.mailbox.clone());
    lock(&l.mailbox.inbox).channels.insert(channel.to_owned());
}

/// A NotificationResponse as a server sends it.
pub(super) fn note(pid: i32, channel: &str, payload: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.extend_from_slice(b"A");
    let len = 4 + 4 + channel.len() + 1 + payload.len() + 1;
    b.extend_from_slice(&(len as i32).to_be_bytes());
    b.extend_from_slice(&pid.to_be_bytes());
    b.extend_from_slice(channel.as_bytes());
    b.extend_from_slice(b"\0");
    b.extend_from_slice(payload.as_bytes());
    b.extend_from_slice(b"\0");
    b.freeze()
}

#[test]
fn notifications_reach_the_channels_listeners_and_channels_are_counted_once() {
    let h = hub();
    let (a, b) = (member(&h, 1, 10), member(&h, 2, 10));
    join(&a, "x");
    join(&b, "x");
    join(&b, "y");
    assert_eq!(h.channels_total.load(Ordering::Relaxed), 2);
    h.dispatch(b"x", note(7, "x", "1"));
    h.dispatch(b"y", note(7, "y", "2"));
    h.dispatch(b"z", note(7, "z", "3"));
    let (mut oa, mut ob) = (BytesMut::new(), BytesMut::new());
    assert_eq!(a.take(&mut oa), Ok(1));
    assert_eq!(b.take(&mut ob), Ok(2));
    assert_eq!(&oa[..], &note(7, "x", "1")[..], "forwarded byte for byte");
    // The last listener of a channel leaving ends the channel.
    drop(b);
    assert_eq!(h.wanted(), HashSet::from(["x".to_owned()]));
    drop(a);
    assert!(h.wanted().is_empty());
    assert_eq!(h.channels_total.load(Ordering::Relaxed), 0);
}

#[test]
fn unlisten_drops_queued_notifications_of_that_channel_only() {
    let h = hub();
    let a = member(&h, 1, 10);
    join(&a, "x");
    join(&a, "y");
    h.dispatch(b"x", note(1, "x", "1"));
    h.dispatch(b"y", note(1, "y", "2"));
    a.unlisten("x");
    let mut out = BytesMut::new();
    assert_eq!(a.take(&mut out), Ok(1));
    assert_eq!(notification_channel(&out), Some(&b"y"[..]));
}

#[test]
fn an_overflowing_mailbox_is_marked_and_emptied() {
    let h = hub();
    let a = member(&h, 1, 3);
    join(&a, "x");
    for i in 0..4 {
        h.dispatch(b"x", note(1, "x", &i.to_string()));
    }
    let mut out = BytesMut::new();
    assert_eq!(a.take(&mut out), Err(Overflowed { max: 3 }));
    assert!(out.is_empty(), "none of a partial queue is delivered");
}
