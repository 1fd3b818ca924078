//! Startup negotiation with a new client: TLS (an SSLRequest answered 'S' when client TLS is
//! on, or PostgreSQL 17's direct TLS: a ClientHello first), GSS encryption refused with 'N',
//! cancel requests recognised, the protocol version checked, and newer minor versions or
//! unknown `_pq_.` options answered with NegotiateProtocolVersion.

use bytes::BytesMut;

use crate::frontend::stream::ClientStream;
use crate::protocol::messages::negotiate_protocol_version;
use crate::protocol::startup::{read_packet, CancelKey, StartupMessage, StartupPacket};
use crate::tls::acceptor::ALPN_POSTGRESQL;
use crate::tls::ClientTls;

use super::LoginError;

/// The first byte of a TLS record carrying a handshake (a ClientHello), where a startup
/// packet's length would be.
const TLS_HANDSHAKE: u8 = 0x16;

/// What a new connection turned out to be.
#[derive(Debug)]
pub enum Opening {
    /// A cancel request (the connection carries nothing else).
    Cancel(CancelKey),
    /// A client that wants a session.
    Client(StartupMessage),
}

/// Runs the startup phase up to (not including) authentication.
/// `tls` is the client-side TLS configuration (None: client TLS is disabled).
pub async fn negotiate(
    stream: &mut ClientStream,
    tls: Option<&ClientTls>,
) -> Result<Opening, LoginError> {
    if let ClientStream::Plain(tcp) = stream {
        let mut first = [0u8; 1];
        let n = tcp.peek(&mut first).await.map_err(LoginError::Io)?;
        if n == 1 && first[0] == TLS_HANDSHAKE {
            // Direct TLS: no SSLRequest, and ALPN "postgresql" is mandatory.
            let tls = tls.ok_or_else(|| {
                LoginError::Tls("a TLS handshake, but client TLS is disabled".into())
            })?;
            upgrade(stream, tls).await?;
            let ClientStream::Tls(s) = &*stream else {
                return Err(LoginError::Tls("handshake lost".into()));
            };
            if s.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
                return Err(LoginError::Tls(
                    "direct TLS without ALPN \"postgresql\"".into(),
                ));
            }
        }
    }
    // SSLRequest and GSSENCRequest may each come once before the StartupMessage.
    for _ in 0..3 {
        match read_packet(stream).await? {
            StartupPacket::Ssl if stream.is_tls() => {
                return Err(LoginError::Protocol(
                    "SSLRequest on an encrypted connection".into(),
                ))
            }
            StartupPacket::Ssl => match tls {
                Some(tls) => {
                    stream.send(b"S").await.map_err(LoginError::Io)?;
                    upgrade(stream, tls).await?;
                }
                None => stream.send(b"N").await.map_err(LoginError::Io)?,
            },
            StartupPacket::GssEnc => stream.send(b"N").await.map_err(LoginError::Io)?,
            // Cancel keys are not tied to a socket: plain or TLS, any mode.
            StartupPacket::Cancel(key) => return Ok(Opening::Cancel(key)),
            StartupPacket::Startup(_)
                if !stream.is_tls() && tls.is_some_and(|t| t.mode.requires_tls()) =>
            {
                return Err(LoginError::SslRequired);
            }
            StartupPacket::Startup(msg) => {
                if msg.major != 3 {
                    return Err(LoginError::UnsupportedProtocol(msg.major, msg.minor));
                }
                let unknown: Vec<&str> = msg
                    .params
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .filter(|k| k.starts_with("_pq_."))
                    .collect();
                if msg.minor > 0 || !unknown.is_empty() {
                    let mut buf = BytesMut::new();
                    negotiate_protocol_version(&mut buf, 0, &unknown);
                    stream.send(&buf).await.map_err(LoginError::Io)?;
                }
                return Ok(Opening::Client(msg));
            }
        }
    }
    Err(LoginError::Protocol(
        "too many encryption requests before the startup message".into(),
    ))
}

/// Runs the TLS handshake on a plain stream and puts the TLS stream in its place.
async fn upgrade(stream: &mut ClientStream, tls: &ClientTls) -> Result<(), LoginError> {
    let ClientStream::Plain(tcp) = std::mem::replace(stream, ClientStream::Broken) else {
        return Err(LoginError::Protocol("TLS requested twice".into()));
    };
    let tls_stream = tls
        .accept(tcp)
        .await
        .map_err(|e| LoginError::Tls(format!("TLS handshake failed: {e}")))?;
    *stream = ClientStream::Tls(Box::new(tls_stream));
    Ok(())
}
