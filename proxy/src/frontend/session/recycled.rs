//! A pinned heap box for the futures a session allocates per request, whose memory is
//! recycled through a small per-thread stash instead of going back to malloc.
//!
//! Why: an idle client's task must stay small (RSS per idle client is a target), so the
//! transaction's future (kilobytes: pool wait, relay) and the wait for the next request live in
//! boxes allocated per request. A transaction's box is past glibc's per-thread cache, and the
//! two allocations with their frees cost ~580 instructions per transaction under callgrind
//! (6% of all of pgtier's); a hit in the stash costs a few dozen. The stash is bounded (in
//! blocks and bytes) and holds only memory that no future occupies.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// At most this many spare blocks per thread.
const MAX_SPARES: usize = 16;
/// At most this many bytes of spare blocks per thread.
const MAX_SPARE_BYTES: usize = 128 * 1024;

/// The blocks of one thread that no future occupies.
struct Stash {
    blocks: Vec<(Layout, NonNull<u8>)>,
    bytes: usize,
}

impl Drop for Stash {
    fn drop(&mut self) {
        for (layout, ptr) in self.blocks.drain(..) {
            // SAFETY: every block in the stash came from `alloc` with this layout and is free.
            unsafe { dealloc(ptr.as_ptr(), layout) };
        }
    }
}

thread_local! {
    static STASH: RefCell<Stash> = const {
        RefCell::new(Stash {
            blocks: Vec::new(),
            bytes: 0,
        })
    };
}

/// Takes a free block of `layout` from this thread's stash, or allocates one.
fn take(layout: Layout) -> NonNull<u8> {
    let spare = STASH
        .try_with(|s| {
            let mut s = s.borrow_mut();
            let i = s.blocks.iter().rposition(|(l, _)| *l == layout)?;
            s.bytes -= layout.size();
            Some(s.blocks.swap_remove(i).1)
        })
        .ok()
        .flatten();
    spare.unwrap_or_else(|| {
        // SAFETY: the layout is not zero-sized (checked by the caller).
        let ptr = unsafe { alloc(layout) };
        NonNull::new(ptr).unwrap_or_else(|| handle_alloc_error(layout))
    })
}

/// Gives a free block back to this thread's stash, or to the allocator when the stash is full.
fn give(layout: Layout, ptr: NonNull<u8>) {
    let kept = STASH
        .try_with(|s| {
            let mut s = s.borrow_mut();
            if s.blocks.len() >= MAX_SPARES || s.bytes + layout.size() > MAX_SPARE_BYTES {
                return false;
            }
            if s.blocks.capacity() == 0 {
                s.blocks.reserve_exact(MAX_SPARES);
            }
            s.bytes += layout.size();
            s.blocks.push((layout, ptr));
            true
        })
        .unwrap_or(false);
    if !kept {
        // SAFETY: the block came from `take` with this layout and no value occupies it.
        unsafe { dealloc(ptr.as_ptr(), layout) };
    }
}

/// A future built in a recycled heap block, pinned there until it is dropped.
pub(crate) struct Recycled<F> {
    ptr: NonNull<F>,
}

// SAFETY: a `Recycled<F>` owns its `F` as a `Box<F>` does.
unsafe impl<F: Send> Send for Recycled<F> {}
// SAFETY: as above; `&Recycled<F>` gives no access to the `F`.
unsafe impl<F: Sync> Sync for Recycled<F> {}

// The future never moves: it stays in its block, whatever moves the handle.
impl<F> Unpin for Recycled<F> {}

impl<F: Future> Recycled<F> {
    /// Builds the future `make` returns in a recycled block (in place where the compiler can).
    pub(crate) fn new(make: impl FnOnce() -> F) -> Self {
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            // A zero-sized future needs no memory; `dangling` is its valid address.
            let ptr = NonNull::<F>::dangling();
            // SAFETY: writing a zero-sized value to a dangling, aligned pointer is valid.
            unsafe { ptr.as_ptr().write(make()) };
            return Self { ptr };
        }
        let ptr = take(layout).cast::<F>();
        // SAFETY: the block is free, of F's layout; should `make` panic, the block leaks (once).
        unsafe { ptr.as_ptr().write(make()) };
        Self { ptr }
    }
}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the F lives at `ptr` until `drop` and is never moved out: pinned.
        unsafe { Pin::new_unchecked(&mut *self.get_mut().ptr.as_ptr()) }.poll(cx)
    }
}

impl<F> Drop for Recycled<F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // SAFETY: the F was written in `new` and is dropped once, here.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        if layout.size() != 0 {
            give(layout, self.ptr.cast());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// One future type for both allocations of the reuse test (same layout).
    async fn holding(held: Option<Rc<()>>, fill: u8) -> [u8; 4000] {
        drop(held);
        [fill; 4000]
    }

    #[test]
    fn a_block_is_reused_and_its_future_dropped_once() {
        let alive = Rc::new(());
        let spares = || STASH.with(|s| s.borrow().blocks.len());
        let f = Recycled::new(|| holding(Some(alive.clone()), 7));
        let first = f.ptr.as_ptr() as usize;
        let before = spares();
        drop(f);
        assert_eq!(spares(), before + 1, "the block went to the stash");
        assert_eq!(
            Rc::strong_count(&alive),
            1,
            "the unpolled future was dropped"
        );
        let f = Recycled::new(|| holding(None, 9));
        assert_eq!(f.ptr.as_ptr() as usize, first, "the freed block came back");
        assert_eq!(spares(), before, "taken from the stash");
        let out = futures_lite_block_on(f);
        assert_eq!(out[3999], 9);
    }

    #[test]
    fn the_stash_keeps_at_most_its_bound() {
        let many: Vec<_> = (0..MAX_SPARES + 8)
            .map(|i| Recycled::new(move || async move { [i as u8; 1000] }))
            .collect();
        drop(many);
        let (n, bytes) = STASH.with(|s| {
            let s = s.borrow();
            (s.blocks.len(), s.bytes)
        });
        assert!(n <= MAX_SPARES, "{n} spare blocks");
        assert!(bytes <= MAX_SPARE_BYTES, "{bytes} spare bytes");
        assert!(n > 0, "freed blocks are kept");
    }

    /// Polls a future that is ready at once.
    fn futures_lite_block_on<F: Future + Unpin>(mut f: F) -> F::Output {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut f).poll(&mut cx) {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("the test future is ready at once"),
        }
    }
}
