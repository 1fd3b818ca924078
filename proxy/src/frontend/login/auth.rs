//! Client authentication against the configured users: SCRAM-SHA-256, MD5, trust, or a TLS
//! client certificate.

use bytes::{Buf, BytesMut};
use rand::RngExt;
use tokio::io::AsyncReadExt;

use crate::config::{ClientAuth, User};
use crate::frontend::stream::ClientStream;
use crate::protocol::auth::{Md5Secret, ScramExchange, ScramKeys, ScramSecret, SCRAM_SHA_256};
use crate::protocol::frame::peek_header;
use crate::protocol::messages::{auth_md5, auth_sasl, auth_sasl_continue, auth_sasl_final};

use super::LoginError;

/// Largest password / SASL message accepted.
const MAX_AUTH_MESSAGE: usize = 8192;

/// Authenticates `name`; `user` is None when no such user is configured. A SCRAM login returns
/// the keys that let pgtier log in to servers for the user without its password.
pub async fn authenticate(
    stream: &mut ClientStream,
    user: Option<&User>,
    name: &str,
    cert_name: Option<&str>,
) -> Result<Option<ScramKeys>, LoginError> {
    let failed = || LoginError::PasswordFailed(name.to_owned());
    let Some(user) = user else {
        // An unknown user gets the same SCRAM exchange as a known one, against a mock
        // verifier, and fails only at its end: the answer does not tell whether it exists.
        let mock = ScramSecret::mock(name);
        return Err(scram(stream, &mock)
            .await
            .map_or_else(|e| e.or(failed()), |_| failed()));
    };
    match &user.auth {
        ClientAuth::Trust => Ok(None),
        ClientAuth::Cert => match cert_name {
            Some(cn) if cn == name => Ok(None),
            Some(_) => Err(LoginError::Certificate {
                user: name.to_owned(),
                why: "the certificate's common name is not the user name",
            }),
            None => Err(LoginError::Certificate {
                user: name.to_owned(),
                why: "no client certificate was presented over TLS",
            }),
        },
        ClientAuth::Md5(secret) => md5(stream, secret)
            .await
            .map(|()| None)
            .map_err(|e| e.or(failed())),
        ClientAuth::Scram(secret) => scram(stream, secret)
            .await
            .map(Some)
            .map_err(|e| e.or(failed())),
    }
}

/// An exchange failure: either a LoginError to report as is, or a plain mismatch.
struct Failure(Option<LoginError>);

impl Failure {
    fn or(self, mismatch: LoginError) -> LoginError {
        self.0.unwrap_or(mismatch)
    }
}

impl From<LoginError> for Failure {
    fn from(e: LoginError) -> Self {
        Failure(Some(e))
    }
}

async fn md5(stream: &mut ClientStream, secret: &Md5Secret) -> Result<(), Failure> {
    let salt: [u8; 4] = rand::rng().random();
    let mut out = BytesMut::new();
    auth_md5(&mut out, salt);
    stream.send(&out).await.map_err(LoginError::Io)?;
    let body = read_password_message(stream).await?;
    let response = body.strip_suffix(&[0]).unwrap_or(&body);
    secret.verify(salt, response).map_err(|_| Failure(None))
}

async fn scram(stream: &mut ClientStream, secret: &ScramSecret) -> Result<ScramKeys, Failure> {
    let mut out = BytesMut::new();
    auth_sasl(&mut out, &[SCRAM_SHA_256]);
    stream.send(&out).await.map_err(LoginError::Io)?;

    // SASLInitialResponse: mechanism name, then an i32 length and the client-first-message.
    let mut body = read_password_message(stream).await?;
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| LoginError::Protocol("malformed SASLInitialResponse".into()))?;
    if &body[..nul] != SCRAM_SHA_256.as_bytes() {
        return Err(LoginError::Protocol(
            "client selected an invalid SASL authentication mechanism".into(),
        )
        .into());
    }
    body.advance(nul + 1);
    if body.len() < 4 {
        return Err(LoginError::Protocol("malformed SASLInitialResponse".into()).into());
    }
    let len = body.get_i32();
    if len < 0 || len as usize != body.len() {
        return Err(LoginError::Protocol("malformed SASLInitialResponse".into()).into());
    }
    let exchange =
        ScramExchange::start(secret, &body).map_err(|e| LoginError::Protocol(e.to_string()))?;
    out.clear();
    auth_sasl_continue(&mut out, exchange.server_first().as_bytes());
    stream.send(&out).await.map_err(LoginError::Io)?;

    let body = read_password_message(stream).await?;
    let (server_final, keys) = exchange.finish(secret, &body).map_err(|e| match e {
        crate::protocol::auth::AuthError::Mismatch => Failure(None),
        other => LoginError::Protocol(other.to_string()).into(),
    })?;
    out.clear();
    auth_sasl_final(&mut out, server_final.as_bytes());
    stream.send(&out).await.map_err(LoginError::Io)?;
    Ok(keys)
}

/// Reads one 'p' message (PasswordMessage, SASLInitialResponse or SASLResponse) body.
async fn read_password_message(stream: &mut ClientStream) -> Result<BytesMut, LoginError> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        match peek_header(&buf, MAX_AUTH_MESSAGE) {
            Ok(Some(h)) if h.tag != b'p' => {
                return Err(LoginError::Protocol(format!(
                    "expected password response, got message type 0x{:02x}",
                    h.tag
                )))
            }
            Ok(Some(h)) if buf.len() >= h.frame_len() => {
                let mut frame = buf.split_to(h.frame_len());
                frame.advance(5);
                return Ok(frame);
            }
            Ok(_) => {}
            Err(e) => return Err(LoginError::Protocol(e.to_string())),
        }
        if stream.read_buf(&mut buf).await.map_err(LoginError::Io)? == 0 {
            return Err(LoginError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}
