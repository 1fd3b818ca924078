//! A bounded per-thread cache of client read buffers. A request needs a buffer only while it
//! runs (an idle client holds none), and taking one from here instead of the allocator saves a
//! 16 KiB malloc and free per transaction.

use std::cell::RefCell;

use bytes::BytesMut;

use super::BUF_SIZE;

/// Most buffers kept per thread: about the clients that run at once (48 x 16 KiB usually,
/// 1.5 MiB at most).
const KEEP: usize = 48;

/// A buffer grown beyond this (a large message) goes back to the allocator.
const KEEP_CAPACITY: usize = 2 * BUF_SIZE;

thread_local! {
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `BUF_SIZE` bytes.
pub(crate) fn take() -> BytesMut {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(BUF_SIZE))
}

/// Gives a buffer back (kept if the cache has room and the buffer is of the usual size).
pub(crate) fn give(mut buf: BytesMut) {
    // Never grown to a read buffer's size (nothing was read into it): not worth keeping.
    if buf.capacity() < BUF_SIZE / 2 {
        return;
    }
    buf.clear();
    // After reads were consumed from its front, room at the front is reclaimed without
    // allocating (the buffer is empty and not shared).
    buf.reserve(BUF_SIZE);
    if buf.capacity() > KEEP_CAPACITY {
        return;
    }
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < KEEP {
            f.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    #[test]
    fn buffers_are_reused_with_their_room_and_the_cache_is_bounded() {
        let mut b = take();
        assert!(b.is_empty() && b.capacity() >= BUF_SIZE);
        b.extend_from_slice(&[1u8; 1000]);
        b.advance(1000);
        let ptr = b.as_ptr() as usize;
        give(b);
        let again = take();
        assert!(again.is_empty() && again.capacity() >= BUF_SIZE);
        // The same allocation, its consumed front reclaimed.
        assert_eq!(again.as_ptr() as usize, ptr - 1000);
        for _ in 0..KEEP + 10 {
            give(BytesMut::with_capacity(BUF_SIZE));
        }
        assert_eq!(FREE.with(|f| f.borrow().len()), KEEP);
        // Oversized and never-grown buffers are not kept.
        FREE.with(|f| f.borrow_mut().clear());
        give(BytesMut::with_capacity(8 * BUF_SIZE));
        give(BytesMut::new());
        assert_eq!(FREE.with(|f| f.borrow().len()), 0);
    }
}
