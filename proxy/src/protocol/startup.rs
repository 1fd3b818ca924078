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

    /// The session parameters the client asks for, in the order Postgres applies them (later
    /// ones win): each `-c name=value` / `--name=value` of `options`, then every other
    /// parameter except `user`, `database`, `replication` (false only) and `_pq_.*`.
    pub fn session_params(&self) -> Result<Vec<(String, String)>, OptionsError> {
        let mut out = Vec::new();
        for (k, v) in &self.params {
            if k == "options" {
                parse_options(v, &mut out)?;
            }
        }
        for (k, v) in &self.params {
            match k.as_str() {
                "user" | "database" | "options" => {}
                // A replication connection cannot become a pooled session.
                "replication" => {
                    if !matches!(
                        v.to_ascii_lowercase().as_str(),
                        "false" | "off" | "no" | "0"
                    ) {
                        return Err(OptionsError::Replication(v.clone()));
                    }
                }
                _ if k.starts_with("_pq_.") => {}
                _ => out.push((k.clone(), v.clone())),
            }
        }
        Ok(out)
    }
}

/// Why a startup packet's session parameters cannot be applied (checked at login).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OptionsError {
    /// A switch in `options` other than `-c name=value` and `--name=value` (such as `-d 5`
    /// or `-e`): Postgres applies those at backend start only.
    #[error("pgtier cannot apply the startup option \"{0}\" in \"options\": only -c name=value and --name=value are supported")]
    Unsupported(String),
    /// `-c name` or `--name` without a value (Postgres' own message).
    #[error("{0} requires a value")]
    NeedsValue(String),
    /// A replication connection (`replication = true | database`).
    #[error("pgtier does not proxy replication connections (startup parameter \"replication\" = \"{0}\")")]
    Replication(String),
}

/// Splits `options` into arguments as Postgres does (`pg_split_opts`): separated by white
/// space, a backslash makes the next character literal (`\ ` a space, `\\` a backslash).
pub fn split_options(options: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut chars = options.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return args;
        }
        let mut arg = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_ascii_whitespace()) {
            match c {
                '\\' => arg.extend(chars.next()),
                c => arg.push(c),
            }
        }
        args.push(arg);
    }
}

/// Appends the `name = value` pairs of `options` (Postgres' `-c name=value`, `-cname=value`
/// and `--name=value`; `-` in a name reads as `_`, as in Postgres).
fn parse_options(options: &str, out: &mut Vec<(String, String)>) -> Result<(), OptionsError> {
    let mut args = split_options(options).into_iter();
    while let Some(arg) = args.next() {
        let (setting, shown) = if arg == "-c" {
            let Some(next) = args.next() else {
                return Err(OptionsError::NeedsValue("-c".into()));
            };
            (next.clone(), format!("-c {next}"))
        } else if let Some(rest) = arg.strip_prefix("-c") {
            (rest.to_owned(), format!("-c {rest}"))
        } else if let Some(rest) = arg.strip_prefix("--").filter(|r| !r.is_empty()) {
            (rest.to_owned(), arg.clone())
        } else {
            return Err(OptionsError::Unsupported(arg));
        };
        let Some((name, value)) = setting.split_once('=') else {
            return Err(OptionsError::NeedsValue(shown));
        };
        if name.is_empty() {
            return Err(OptionsError::Unsupported(shown));
        }
        out.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(())
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
    fn options_split_and_parse_like_postgres() {
        assert_eq!(
            split_options("  -c a=b\\ c\t--x-y=1 \\\\ "),
            ["-c", "a=b c", "--x-y=1", "\\"]
        );
        let msg = |options: &str, extra: &[(&str, &str)]| StartupMessage {
            major: 3,
            minor: 0,
            params: [("user", "u"), ("options", options)]
                .iter()
                .chain(extra)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let m = msg(
            "-c statement_timeout=1234 -csearch_path=a,\\ b --lock-timeout=5s",
            &[
                ("DateStyle", "ISO"),
                ("_pq_.x", "1"),
                ("replication", "false"),
            ],
        );
        assert_eq!(
            m.session_params().unwrap(),
            pairs(&[
                ("statement_timeout", "1234"),
                ("search_path", "a, b"),
                ("lock_timeout", "5s"),
                ("DateStyle", "ISO"),
            ])
        );
        let err = |options: &str| msg(options, &[]).session_params().unwrap_err();
        assert_eq!(err("-d 5"), OptionsError::Unsupported("-d".into()));
        assert_eq!(
            err("-c work_mem"),
            OptionsError::NeedsValue("-c work_mem".into())
        );
        assert_eq!(
            err("--work_mem"),
            OptionsError::NeedsValue("--work_mem".into())
        );
        assert_eq!(err("-c"), OptionsError::NeedsValue("-c".into()));
        assert_eq!(err("--=1"), OptionsError::Unsupported("--=1".into()));
        assert_eq!(err("plain"), OptionsError::Unsupported("plain".into()));
        let repl = msg("", &[("replication", "database")]);
        assert!(matches!(
            repl.session_params(),
            Err(OptionsError::Replication(_))
        ));
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
