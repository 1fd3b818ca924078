//! Logging in to a server: the startup message, then whatever the server asks (SCRAM-SHA-256
//! with channel binding over TLS, md5, cleartext, trust) answered with the configured password,
//! or without one by pass-through: an md5 hash answers md5 challenges, and the SCRAM keys a
//! client's own SCRAM login revealed (`protocol::scram_client`) answer SCRAM ones.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use md5::{Digest, Md5};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::{backend::Message, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

use super::server::{BackendError, ServerLogin, MAX_LOGIN_MESSAGE};
use super::stream::ServerStream;
use crate::config::NodeAddr;
use crate::protocol::frame::peek_header;
use crate::protocol::messages::error_fields;
use crate::protocol::scram_client::{Binding, PassThrough, ScramKeys};
use crate::protocol::startup::CancelKey;
use crate::tls::connector::server_end_point;

/// Server roles whose SCRAM keys pgtier holds (at most this many: beyond, a new role's keys
/// replace an arbitrary other's, which then waits for its next client login).
const MAX_KEYED_ROLES: usize = 10_000;

/// The SCRAM keys learned from clients' logins, by server role: what pass-through logs in with.
fn keys() -> &'static Mutex<HashMap<String, ScramKeys>> {
    static KEYS: std::sync::OnceLock<Mutex<HashMap<String, ScramKeys>>> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(Mutex::default)
}

/// Records the SCRAM keys a client's login revealed for server role `role` (replacing older
/// ones: after a password change the newest login is the one that works).
pub fn learn_scram_keys(role: &str, k: ScramKeys) {
    let mut map = keys().lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= MAX_KEYED_ROLES && !map.contains_key(role) {
        if let Some(other) = map.keys().next().cloned() {
            map.remove(&other);
        }
    }
    map.insert(role.to_owned(), k);
}

fn scram_keys_of(role: &str) -> Option<ScramKeys> {
    keys()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(role)
        .cloned()
}

/// A SCRAM exchange in progress: with the password, or by pass-through.
enum Scram {
    Password(ScramSha256),
    Keys(PassThrough),
}

/// Startup and authentication up to the first ReadyForQuery: the cancel key and the
/// parameters the server reported.
pub(super) async fn authenticate(
    stream: &mut ServerStream,
    addr: &NodeAddr,
    login: &ServerLogin,
) -> Result<(Option<CancelKey>, Vec<(String, String)>), BackendError> {
    let io = |source| BackendError::Io {
        addr: addr.clone(),
        source,
    };
    let proto = |what: String| BackendError::Protocol {
        addr: addr.clone(),
        what,
    };
    let mut out = BytesMut::with_capacity(256);
    let params = [
        ("user", login.user.as_str()),
        ("database", login.dbname.as_str()),
        ("application_name", "pgtier"),
    ];
    frontend::startup_message(params.iter().copied(), &mut out).map_err(io)?;
    write_flush(stream, &out).await.map_err(io)?;

    let mut inbuf = BytesMut::with_capacity(1024);
    let mut scram: Option<Scram> = None;
    let mut key = None;
    let mut reported = Vec::new();
    loop {
        let mut frame = read_frame(stream, &mut inbuf, addr).await?;
        if frame[0] == b'E' {
            let (code, message) = error_fields(&frame[5..]);
            return Err(BackendError::Refused {
                addr: addr.clone(),
                code: code.unwrap_or("XX000").to_owned(),
                message: message.unwrap_or("").to_owned(),
                frame: frame.freeze(),
            });
        }
        let msg = Message::parse(&mut frame)
            .map_err(|e| proto(format!("bad message during login: {e}")))?
            .ok_or_else(|| proto("truncated message during login".into()))?;
        out.clear();
        let no_password = || BackendError::NoPassword {
            addr: addr.clone(),
            user: login.user.clone(),
        };
        let no_scram_keys = || BackendError::NoScramKeys {
            addr: addr.clone(),
            user: login.user.clone(),
        };
        let password = || login.password.as_deref().ok_or_else(no_password);
        match msg {
            Message::AuthenticationOk => {}
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password()?.as_bytes(), &mut out).map_err(io)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = match (&login.password, &login.md5) {
                    (Some(pw), _) => md5_hash(login.user.as_bytes(), pw.as_bytes(), body.salt()),
                    // Pass-through: the stored hash is md5(password || user), all the
                    // challenge needs.
                    (None, Some(stored)) => md5_response(stored, body.salt()),
                    (None, None) => return Err(no_password()),
                };
                frontend::password_message(hash.as_bytes(), &mut out).map_err(io)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut plain = false;
                let mut plus = false;
                let mut mechanisms = body.mechanisms();
                while let Some(m) = mechanisms.next().map_err(io)? {
                    plain |= m == SCRAM_SHA_256;
                    plus |= m == SCRAM_SHA_256_PLUS;
                }
                // Channel binding whenever the server offers it over TLS (as libpq's default
                // channel_binding=prefer): the proof is then bound to this server's certificate,
                // so a man in the middle cannot relay it even where the certificate is not
                // verified. Otherwise "n": the server must not suspect a downgrade.
                let end_point = stream
                    .peer_certificate()
                    .filter(|_| plus)
                    .and_then(server_end_point);
                let mechanism = match end_point {
                    Some(_) => SCRAM_SHA_256_PLUS,
                    None if plain => SCRAM_SHA_256,
                    None => return Err(proto("offers no SASL mechanism pgtier supports".into())),
                };
                debug!(server = %addr, mechanism, "SCRAM login");
                let exchange = match (&login.password, end_point) {
                    (Some(pw), Some(hash)) => Scram::Password(ScramSha256::new(
                        pw.as_bytes(),
                        ChannelBinding::tls_server_end_point(hash),
                    )),
                    (Some(pw), None) => Scram::Password(ScramSha256::new(
                        pw.as_bytes(),
                        ChannelBinding::unsupported(),
                    )),
                    // Pass-through: the keys a client's SCRAM login revealed.
                    (None, end_point) => {
                        let keys = scram_keys_of(&login.user).ok_or_else(no_scram_keys)?;
                        let binding = end_point.map_or(Binding::None, Binding::TlsServerEndPoint);
                        Scram::Keys(PassThrough::new(keys, binding))
                    }
                };
                let first = match &exchange {
                    Scram::Password(s) => s.message().to_vec(),
                    Scram::Keys(p) => p.client_first().into_bytes(),
                };
                frontend::sasl_initial_response(mechanism, &first, &mut out).map_err(io)?;
                scram = Some(exchange);
            }
            Message::AuthenticationSaslContinue(body) => {
                let exchange = scram
                    .as_mut()
                    .ok_or_else(|| proto("SASL continue without SASL start".into()))?;
                let answer = match exchange {
                    Scram::Password(s) => {
                        s.update(body.data())
                            .map_err(|e| proto(format!("SCRAM: {e}")))?;
                        s.message().to_vec()
                    }
                    Scram::Keys(p) => p
                        .client_final(body.data())
                        .map_err(|e| proto(format!("SCRAM pass-through: {e}")))?
                        .into_bytes(),
                };
                frontend::sasl_response(&answer, &mut out).map_err(io)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let exchange = scram
                    .take()
                    .ok_or_else(|| proto("SASL final without SASL start".into()))?;
                let checked = match exchange {
                    Scram::Password(mut s) => s.finish(body.data()).map_err(|e| e.to_string()),
                    Scram::Keys(p) => p.verify_server(body.data()).map_err(|e| e.to_string()),
                };
                checked.map_err(|e| proto(format!("SCRAM server signature: {e}")))?;
            }
            Message::ParameterStatus(body) => {
                let name = body.name().map_err(io)?.to_owned();
                let value = body.value().map_err(io)?.to_owned();
                reported.push((name, value));
            }
            Message::BackendKeyData(body) => {
                key = Some(CancelKey {
                    pid: body.process_id(),
                    secret: body.secret_key(),
                });
            }
            Message::NoticeResponse(_) => {}
            Message::ReadyForQuery(_) => return Ok((key, reported)),
            _ => return Err(proto("unexpected message during login".into())),
        }
        if !out.is_empty() {
            write_flush(stream, &out).await.map_err(io)?;
        }
    }
}

/// Writes all of `buf` and flushes (TLS records out of rustls' buffer).
pub(super) async fn write_flush(stream: &mut ServerStream, buf: &[u8]) -> std::io::Result<()> {
    stream.write_all(buf).await?;
    stream.flush().await
}

/// Reads one whole frame during login.
async fn read_frame(
    stream: &mut ServerStream,
    buf: &mut BytesMut,
    addr: &NodeAddr,
) -> Result<BytesMut, BackendError> {
    loop {
        match peek_header(buf, MAX_LOGIN_MESSAGE) {
            Ok(Some(h)) if buf.len() >= h.frame_len() => return Ok(buf.split_to(h.frame_len())),
            Ok(_) => {}
            Err(e) => {
                return Err(BackendError::Protocol {
                    addr: addr.clone(),
                    what: e.to_string(),
                })
            }
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|source| BackendError::Io {
                addr: addr.clone(),
                source,
            })?;
        if n == 0 {
            return Err(BackendError::Io {
                addr: addr.clone(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
    }
}

/// The answer to an md5 challenge from a stored `md5...` hash: "md5" + md5(hex || salt).
fn md5_response(stored: &str, salt: [u8; 4]) -> String {
    let mut md5 = Md5::new();
    md5.update(stored.get(3..).unwrap_or_default().as_bytes());
    md5.update(salt);
    let digest = md5.finalize();
    let mut out = String::with_capacity(35);
    out.push_str("md5");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_md5_hash_answers_the_challenge_as_the_password_would() {
        let salt = [9, 8, 7, 6];
        let stored = postgres_protocol::password::md5(b"pw", "alice");
        assert_eq!(md5_response(&stored, salt), md5_hash(b"alice", b"pw", salt));
    }
}
