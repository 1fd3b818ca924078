//! A server connection's socket: plain TCP or TLS, decided at connect. The relay reads and
//! writes it through `AsyncRead`/`AsyncWrite`; a plain connection costs one enum match over a
//! bare `TcpStream`.
//!
//! TLS buffers: a write may leave ciphertext in rustls when the socket is full. It goes out
//! before the next write, on `flush`, and at the start of every read (so a relay that writes a
//! request and then waits for the answer never leaves the tail of its request unsent).

use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::tls::TlsInfo;
use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::server::BackendError;
use crate::config::NodeAddr;
use crate::tls::ServerTls;

/// The Terminate message.
const TERMINATE: &[u8] = b"X\0\0\0\x04";

/// A socket to a server.
#[derive(Debug)]
pub enum ServerStream {
    /// Plain text.
    Plain(TcpStream),
    /// TLS over TCP (boxed: the rustls state is large and only TLS connections carry it).
    Tls(Box<TlsStream<TcpStream>>),
}

impl ServerStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            ServerStream::Plain(s) => s,
            ServerStream::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, ServerStream::Tls(_))
    }

    /// The server's address.
    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// pgtier's end of the socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp().local_addr()
    }

    /// The server's certificate (leaf, DER), on TLS connections that have one.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        match self {
            ServerStream::Plain(_) => None,
            ServerStream::Tls(s) => s
                .get_ref()
                .1
                .peer_certificates()?
                .first()
                .map(|c| c.as_ref()),
        }
    }

    /// The negotiated version and cipher suite (None: plain text).
    pub fn tls_info(&self) -> Option<TlsInfo> {
        let ServerStream::Tls(s) = self else {
            return None;
        };
        TlsInfo::of(s.get_ref().1)
    }

    /// False if the server closed the socket or sent something unprompted (e.g. a FATAL after
    /// `pg_terminate_backend`) while the connection sat idle. Never blocks.
    pub fn is_alive(&mut self) -> bool {
        match self {
            // `try_read` reads only when the reactor marked the socket readable (anything
            // arrived: data, FIN, RST), so a healthy checkout costs no system call, and it
            // registers no waker (a readiness poll would, under a lock).
            ServerStream::Plain(s) => {
                let mut probe = [0u8; 1];
                matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            // Readable TLS bytes may be records without data (a TLS 1.3 session ticket): read
            // through rustls once, only when the reactor saw bytes. Pending = nothing for the
            // protocol = alive; data, EOF (close_notify or FIN) or an error = not reusable.
            ServerStream::Tls(s) => {
                let mut cx = Context::from_waker(Waker::noop());
                match s.get_ref().0.poll_read_ready(&mut cx) {
                    Poll::Pending => return true,
                    Poll::Ready(Err(_)) => return false,
                    Poll::Ready(Ok(())) => {}
                }
                let mut probe = [0u8; 1];
                let mut buf = ReadBuf::new(&mut probe);
                Pin::new(&mut **s).poll_read(&mut cx, &mut buf).is_pending()
            }
        }
    }

    /// Sends Terminate (and on TLS close_notify), best effort and without blocking, so the
    /// server does not log an EOF.
    pub fn terminate(&mut self) {
        match self {
            ServerStream::Plain(s) => {
                let _ = s.try_write(TERMINATE);
            }
            ServerStream::Tls(s) => {
                let (tcp, conn) = s.get_mut();
                if conn.writer().write_all(TERMINATE).is_err() {
                    return;
                }
                conn.send_close_notify();
                let mut out = TryWrite(tcp);
                while conn.wants_write() {
                    match conn.write_tls(&mut out) {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
            }
        }
    }
}

/// SSLRequest, then the TLS handshake if the server answers `S`. An `N` means plain text for
/// prefer and allow, and an error for require and stricter.
pub(crate) async fn negotiate(
    mut tcp: TcpStream,
    addr: &NodeAddr,
    tls: &ServerTls,
) -> Result<ServerStream, BackendError> {
    let io = |source| BackendError::Io {
        addr: addr.clone(),
        source,
    };
    let mut out = BytesMut::with_capacity(8);
    frontend::ssl_request(&mut out);
    tcp.write_all(&out).await.map_err(io)?;
    // Exactly one byte: anything the server sent after it must come through the handshake
    // (CVE-2021-23222), not be taken as plain text.
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io)?;
    match answer[0] {
        b'S' => match tls.handshake(tcp, &addr.host).await {
            Ok(s) => Ok(ServerStream::Tls(Box::new(s))),
            Err(reason) => Err(BackendError::Tls {
                addr: addr.clone(),
                reason,
            }),
        },
        b'N' if !tls.mode().requires_tls() => Ok(ServerStream::Plain(tcp)),
        b'N' => Err(BackendError::Tls {
            addr: addr.clone(),
            reason: format!(
                "the server does not accept TLS (server_tls_sslmode = {})",
                tls.mode()
            ),
        }),
        other => Err(BackendError::Protocol {
            addr: addr.clone(),
            what: format!("unexpected answer {other:#04x} to SSLRequest"),
        }),
    }
}

/// `std::io::Write` over a non-blocking socket: writes what it takes now, never waits.
struct TryWrite<'a>(&'a TcpStream);

impl Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Tls(s) => {
                if s.get_ref().1.wants_write() {
                    // Pending is fine: the waker is registered for writability too, and the
                    // read must go on (the server may be blocked writing to us).
                    if let Poll::Ready(Err(e)) = Pin::new(&mut **s).poll_flush(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                Pin::new(&mut **s).poll_read(cx, buf)
            }
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Tls(s) => {
                let n = std::task::ready!(Pin::new(&mut **s).poll_write(cx, buf))?;
                // Push the records out now if the socket takes them (see the module doc for
                // what it does not take).
                if let Poll::Ready(Err(e)) = Pin::new(&mut **s).poll_flush(cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(n))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            // One slice at a time through `poll_write`, which pushes the records out.
            tls @ ServerStream::Tls(_) => {
                let first = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &**b);
                Pin::new(tls).poll_write(cx, first)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerStream::Plain(s) => s.is_write_vectored(),
            ServerStream::Tls(_) => false,
        }
    }
}
