//! Startup-phase packets: StartupMessage, SSLRequest, GSSENCRequest and CancelRequest. They have
//! no type byte, only a length and a request code.

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest startup packet Postgres accepts (its MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_LEN: usize = 10_000;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// A decoded startup-phase packet.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS.
    Ssl,
    /// The client asks for GSSAPI encryption.
    GssEnc,
    /// A cancel request for the backend identified by the key.
    Cancel(CancelKey),
    /// A StartupMessage.
    Startup(StartupMessage),
}

/// A client's StartupMessage.
#[derive(Debug, PartialEq, Eq)]
pub struct StartupMessage {
    /// Protocol major version (3 for every current client).
    pub major: u16,
    /// Protocol minor version requested.
    pub minor: u16,
    /// Parameters in the order sent (user, database, options, `_pq_.*` ...).
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// Value of a startup parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The key a client presents to cancel a query: BackendKeyData's process id and secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// Process id as announced in BackendKeyData.
    pub pid: i32,
    /// Secret key as announced in BackendKeyData.
    pub secret: i32,
}

impl CancelKey {
    /// Encodes a CancelRequest packet carrying this key.
    pub fn request_packet(&self) -> [u8; 16] {
        let mut p = [0u8; 16];
        p[0..4].copy_from_slice(&16i32.to_be_bytes());
        p[4..8].copy_from_slice(&CANCEL_REQUEST.to_be_bytes());
        p[8..12].copy_from_slice(&self.pid.to_be_bytes());
        p[12..16].copy_from_slice(&self.secret.to_be_bytes());
        p
    }
}

/// Why a startup packet was rejected.
#[derive(Debug, Error)]
pub enum StartupError {
    /// Socket error or EOF.
    #[error("connection closed during startup: {0}")]
    Io(#[from] std::io::Error),
    /// Length outside 8..=10000.
    #[error("invalid startup packet length {0}")]
    BadLength(i32),
    /// Packet content does not decode.
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
}

/// Reads and decodes one startup-phase packet.
pub async fn read_packet<R: AsyncRead + Unpin>(r: &mut R) -> Result<StartupPacket, StartupError> {
    let len = r.read_i32().await?;
    if !(8..=MAX_STARTUP_LEN as i32).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await?;
    decode(&body)
}

/// Decodes a startup packet body (everything after the length).
pub fn decode(body: &[u8]) -> Result<StartupPacket, StartupError> {
    if body.len() < 4 {
        return Err(StartupError::Malformed("missing request code"));
    }
    let code = i32::from_be_bytes(body[0..4].try_into().expect("length checked"));
    let rest = &body[4..];
    match code {
        SSL_REQUEST if rest.is_empty() => Ok(StartupPacket::Ssl),
        GSSENC_REQUEST if rest.is_empty() => Ok(StartupPacket::GssEnc),
        CANCEL_REQUEST if rest.len() == 8 => Ok(StartupPacket::Cancel(CancelKey {
            pid: i32::from_be_bytes(rest[0..4].try_into().expect("len 8")),
            secret: i32::from_be_bytes(rest[4..8].try_into().expect("len 8")),
        })),
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => {
            Err(StartupError::Malformed("unexpected payload"))
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            Ok(StartupPacket::Startup(StartupMessage {
                major,
                minor,
                params: decode_params(rest)?,
            }))
        }
    }
}

fn decode_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let key = take_cstr(&mut rest)?;
        if key.is_empty() {
            break;
        }
        let value = take_cstr(&mut rest)?;
        params.push((key, value));
    }
    if !rest.is_empty() {
        return Err(StartupError::Malformed("trailing bytes after parameters"));
    }
    Ok(params)
}

fn take_cstr(rest: &mut &[u8]) -> Result<String, StartupError> {
    let nul = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(StartupError::Malformed("missing terminator"))?;
    let s = std::str::from_utf8(&rest[..nul])
        .map_err(|_| StartupError::Malformed("parameter is not UTF-8"))?
        .to_owned();
    *rest = &rest[nul + 1..];
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_body(params: &[(&str, &str)]) -> Vec<u8> {
        let mut b = 196_608i32.to_be_bytes().to_vec();
        for (k, v) in params {
            b.extend_from_slice(k.as_bytes());
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn decodes_startup() {
        let p = decode(&startup_body(&[("user", "app"), ("database", "db")])).unwrap();
        let StartupPacket::Startup(m) = p else {
            panic!("not a startup")
        };
        assert_eq!((m.major, m.minor), (3, 0));
        assert_eq!(m.param("user"), Some("app"));
        assert_eq!(m.param("database"), Some("db"));
    }

    #[test]
    fn decodes_special_requests() {
        assert_eq!(
            decode(&SSL_REQUEST.to_be_bytes()).unwrap(),
            StartupPacket::Ssl
        );
        let key = CancelKey { pid: 7, secret: -3 };
        let pkt = key.request_packet();
        assert_eq!(decode(&pkt[4..]).unwrap(), StartupPacket::Cancel(key));
    }

    #[test]
    fn rejects_malformed() {
        let mut b = startup_body(&[("user", "app")]);
        b.pop();
        b.pop();
        assert!(decode(&b).is_err());
        assert!(decode(&[0, 3, 0, 0, b'u']).is_err());
    }
}
