//! Writes with a bound on stalls: a peer that accepts no byte for `limit` fails the write.
//! A write that completes at once costs exactly what `write_all` costs (no timer, no clock
//! read, no allocation): the timer is created only once the socket pushes back.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::time::Instant;

use crate::timers::Sleep;

/// Why a bounded write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The peer accepted nothing for `limit`; `written` bytes of the buffer went out.
    #[error("the peer accepted no data for {limit:?} ({written} of {total} bytes written)")]
    Stalled {
        /// Bytes of the buffer written before the stall.
        written: usize,
        /// Bytes in the buffer.
        total: usize,
        /// The limit that expired.
        limit: Duration,
    },
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl WriteError {
    /// Whether the peer stalled (as opposed to the socket failing).
    pub fn stalled(&self) -> bool {
        matches!(self, WriteError::Stalled { .. })
    }
}

/// Writes all of `buf`, failing with [`WriteError::Stalled`] once `limit` passes without the
/// peer accepting a byte (the limit counts from the last progress, so a slow but steady
/// reader is never cut off).
pub async fn write_all_within<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &[u8],
    limit: Duration,
) -> Result<(), WriteError> {
    if buf.is_empty() {
        return Ok(());
    }
    let mut write = WriteWithin::default();
    poll_fn(|cx| write.poll(w, buf, limit, cx)).await
}

/// The state of one bounded write (see [`write_all_within`]), for callers that poll it by
/// hand: the same buffer is passed to every poll until it is Ready.
#[derive(Debug, Default)]
pub struct WriteWithin {
    /// Bytes of the buffer written so far.
    written: usize,
    /// Boxed and created lazily: most writes never block, and the futures that embed this
    /// state (an idle client's task among them) stay small.
    timer: Option<Pin<Box<Sleep>>>,
    /// The last progress after a stall (read when the timer fires, so the timer is not
    /// re-armed per partial write).
    last_progress: Option<Instant>,
}

impl WriteWithin {
    /// Writes what `w` takes of the rest of `buf`; Ready once all of it is written and
    /// flushed, or the write failed.
    pub fn poll<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        buf: &[u8],
        limit: Duration,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            // Once all is written, flush: a TLS stream may still hold the last records (a
            // no-op on a TcpStream). Ready(Ok(0)) stands for "flushed".
            let step = if self.written == buf.len() {
                Pin::new(&mut *w).poll_flush(cx).map_ok(|()| 0)
            } else {
                Pin::new(&mut *w).poll_write(cx, &buf[self.written..])
            };
            match step {
                Poll::Ready(Ok(0)) if self.written == buf.len() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(
                        std::io::Error::from(std::io::ErrorKind::WriteZero).into()
                    ))
                }
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    if self.timer.is_some() {
                        self.last_progress = Some(Instant::now());
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => {
                    let t = self
                        .timer
                        .get_or_insert_with(|| Box::pin(crate::timers::sleep(limit)));
                    if t.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    match self.last_progress.take() {
                        Some(at) if at + limit > Instant::now() => {
                            t.as_mut().reset(at + limit);
                            // Polled again by the loop, which registers the new deadline.
                        }
                        _ => {
                            return Poll::Ready(Err(WriteError::Stalled {
                                written: self.written,
                                total: buf.len(),
                                limit,
                            }))
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_reader_that_stops_fails_the_write_after_the_limit() {
        let (mut a, _b) = tokio::io::duplex(64);
        let err = write_all_within(&mut a, &[7u8; 1000], Duration::from_millis(50))
            .await
            .unwrap_err();
        match err {
            WriteError::Stalled { written, total, .. } => assert_eq!((written, total), (64, 1000)),
            e => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn a_slow_but_steady_reader_is_not_cut_off() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut chunk = [0u8; 16];
            while got < 1000 {
                // Each read comes well within the limit, but the whole takes far longer.
                crate::timers::sleep(Duration::from_millis(20)).await;
                got += b.read(&mut chunk).await.unwrap();
            }
        });
        // 60 reads 20 ms apart: over a second in all, never 300 ms without progress.
        write_all_within(&mut a, &[7u8; 1000], Duration::from_millis(300))
            .await
            .unwrap();
        reader.await.unwrap();
    }

    #[tokio::test]
    async fn what_a_buffering_writer_holds_is_flushed() {
        // As a TLS stream holds records: a write is not done until they went out.
        let (a, mut b) = tokio::io::duplex(4096);
        let mut w = tokio::io::BufWriter::new(a);
        write_all_within(&mut w, b"hello", Duration::from_secs(1))
            .await
            .unwrap();
        let mut got = [0u8; 5];
        crate::timers::timeout(Duration::from_secs(1), b.read_exact(&mut got))
            .await
            .expect("the bytes reached the peer")
            .unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn an_immediate_write_needs_no_timer() {
        let (mut a, _b) = tokio::io::duplex(4096);
        write_all_within(&mut a, b"hello", Duration::from_nanos(1))
            .await
            .unwrap();
    }
}
