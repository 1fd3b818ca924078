//! Startup negotiation with a new client: refuse TLS/GSS encryption with 'N' (TLS comes later),
//! recognise cancel requests, check the protocol version, and answer newer minor versions or
//! unknown `_pq_.` options with NegotiateProtocolVersion.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::login::LoginError;
use crate::protocol::messages::negotiate_protocol_version;
use crate::protocol::startup::{read_packet, CancelKey, StartupMessage, StartupPacket};

/// What a new connection turned out to be.
#[derive(Debug)]
pub enum Opening {
    /// A cancel request (the connection carries nothing else).
    Cancel(CancelKey),
    /// A client that wants a session.
    Client(StartupMessage),
}

/// Runs the startup phase up to (not including) authentication.
pub async fn negotiate(stream: &mut TcpStream) -> Result<Opening, LoginError> {
    // SSLRequest and GSSENCRequest may each come once before the StartupMessage.
    for _ in 0..3 {
        match read_packet(stream).await? {
            StartupPacket::Ssl | StartupPacket::GssEnc => {
                stream.write_all(b"N").await.map_err(LoginError::Io)?;
            }
            StartupPacket::Cancel(key) => return Ok(Opening::Cancel(key)),
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
                    stream.write_all(&buf).await.map_err(LoginError::Io)?;
                }
                return Ok(Opening::Client(msg));
            }
        }
    }
    Err(LoginError::Protocol(
        "too many encryption requests before the startup message".into(),
    ))
}
