//! Containing panics. pgtier is built to unwind (`panic = "abort"` does not compile, see
//! lib.rs): a panic in a client's task is caught at the task's edge (`Contained`), where the
//! session closes the client with XX000; its checked-out server is dropped on the way, which
//! closes it (never returned to the pool). Counters are kept by drop guards, so they stay right.
//!
//! The hook logs the message and location only: std's default hook symbolicates a backtrace
//! when `RUST_BACKTRACE` is set, which loads the binary's debug info and keeps it (104 MiB of
//! RSS in a release build, never given back; `panic_rss_cost` in tests/tests/no_panics.rs).

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

/// The text of a panic payload (`panic!` with a string or a format).
pub fn message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// Replaces the panic hook with one that logs message and location (no backtrace).
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map_or_else(|| "unknown".to_owned(), ToString::to_string);
        tracing::error!(
            panic = message(info.payload()),
            %location,
            "panic in pgtier (a bug): caught, the process goes on"
        );
    }));
}

/// A future whose panics come out as `Err(message)` instead of unwinding further. It is not
/// polled again after a panic.
pub struct Contained<F>(pub F);

impl<F: Future + Unpin> Future for Contained<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // AssertUnwindSafe: after a panic the future is only dropped, never polled again.
        match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut self.0).poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(message(&*payload).to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_future_gives_its_message() {
        let mut ok = std::pin::pin!(async { 7 });
        assert_eq!(Contained(ok.as_mut()).await, Ok(7));
        let mut bad = std::pin::pin!(async {
            let v: Vec<u8> = Vec::new();
            v[usize::from(v.is_empty())]
        });
        let err = Contained(bad.as_mut()).await.unwrap_err();
        assert!(err.contains("index out of bounds"), "{err}");
    }
}
