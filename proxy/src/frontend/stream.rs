//! A client's socket: plain TCP, or TLS over it once the client asked for it. Everything above
//! login reads and writes through this type, so the relay is the same for both; the plain case
//! costs one enum match per call.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::tls::TlsInfo;

/// A client connection, plain or TLS.
#[derive(Debug)]
pub enum ClientStream {
    /// Plain text.
    Plain(TcpStream),
    /// TLS (boxed: the rustls state is kilobytes and most of pgtier's clients may be plain).
    Tls(Box<TlsStream<TcpStream>>),
    /// A TLS handshake failed half-way: the socket is gone, every call fails.
    Broken,
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "TLS handshake failed")
}

impl ClientStream {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            ClientStream::Plain(s) => Some(s),
            ClientStream::Tls(s) => Some(s.get_ref().0),
            ClientStream::Broken => None,
        }
    }

    /// The negotiated TLS parameters (None: plain text).
    pub fn tls_info(&self) -> Option<TlsInfo> {
        let ClientStream::Tls(s) = self else {
            return None;
        };
        TlsInfo::of(s.get_ref().1)
    }

    /// The client's certificate chain, leaf first (None: plain text or no certificate).
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        match self {
            ClientStream::Tls(s) => s.get_ref().1.peer_certificates(),
            _ => None,
        }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// Ready when a read would not block: bytes on the socket, or plaintext rustls already
    /// decrypted and holds (the socket may then be empty, so it must not be waited on).
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ClientStream::Plain(s) => s.poll_read_ready(cx),
            ClientStream::Tls(s) => {
                let (tcp, conn) = s.get_mut();
                // Processes nothing new (the stream always processes what it read); reports
                // what is buffered.
                match conn.process_new_packets() {
                    Ok(state)
                        if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() =>
                    {
                        tcp.poll_read_ready(cx)
                    }
                    // Buffered plaintext, a close_notify, or an error: a read reports it.
                    _ => Poll::Ready(Ok(())),
                }
            }
            ClientStream::Broken => Poll::Ready(Err(broken())),
        }
    }

    /// While the client waits for a server: Ready(true) when it has left (its socket closed,
    /// or next on it a Terminate, or a TLS alert: close_notify), Ready(false) when it sent
    /// something else (pipelined work: stop watching), Pending while nothing arrived.
    /// Looks without reading (a peek), so nothing the client sent is lost.
    pub fn poll_departed(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let (tcp, leaving) = match self {
            ClientStream::Plain(s) => (s, b'X'),
            // Record type 21: an alert; after the handshake an idle client sends one only to
            // close (close_notify) or on a fatal error.
            ClientStream::Tls(s) => (s.get_ref().0, 21),
            ClientStream::Broken => return Poll::Ready(true),
        };
        let mut first = [0u8; 1];
        let mut buf = ReadBuf::new(&mut first);
        match tcp.poll_peek(cx, &mut buf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(true),
            Poll::Ready(Ok(_)) => Poll::Ready(first[0] == leaving),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes all of `bytes` and flushes: for login messages the client must answer (a TLS
    /// stream may hold the records it encrypted until flushed).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.write_all(bytes).await?;
        self.flush().await
    }

    /// Writes all of `buf` only if the socket takes it now (never waits); returns whether it
    /// did. For a last message to a client that may have stopped reading.
    pub fn try_write_all(&mut self, buf: &[u8]) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut done = 0;
        while done < buf.len() {
            match Pin::new(&mut *self).poll_write(&mut cx, &buf[done..]) {
                Poll::Ready(Ok(n)) if n > 0 => done += n,
                _ => return false,
            }
        }
        // TLS: the record must reach the socket too.
        matches!(Pin::new(self).poll_flush(&mut cx), Poll::Ready(Ok(())))
    }
}

impl AsyncRead for ClientStream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientStream::Broken => Poll::Ready(Err(broken())),
        }
    }
}

impl AsyncWrite for ClientStream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            // tokio-rustls encrypts and writes what the socket takes; what it accepted is
            // flushed by later writes or poll_flush (write_all_within ends with no flush: the
            // TLS stream writes its records out within poll_write).
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientStream::Broken => Poll::Ready(Err(broken())),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientStream::Broken => Poll::Ready(Err(broken())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientStream::Broken => Poll::Ready(Ok(())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            ClientStream::Broken => Poll::Ready(Err(broken())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
            ClientStream::Broken => false,
        }
    }
}
