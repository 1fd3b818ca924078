//! Server-side password checks for clients: SCRAM-SHA-256 (RFC 5802/7677 as Postgres speaks it)
//! and MD5. The client side (pgtier logging in to Postgres) uses `postgres-protocol`, or
//! `scram_client` when pgtier has no password (pass-through).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use rand::Rng;
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use super::scram_client::ScramKeys;

/// SASL mechanism name pgtier offers.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// Why an authentication exchange failed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    /// The client's message does not follow the mechanism's syntax.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The proof or password did not match.
    #[error("password does not match")]
    Mismatch,
    /// Pass-through: the server's verifier (salt, iterations) is not the one pgtier has.
    #[error("the server's SCRAM verifier differs from pgtier's (another salt or iteration count)")]
    VerifierMismatch,
}

/// A SCRAM-SHA-256 verifier in Postgres' `pg_authid` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramSecret {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl ScramSecret {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Option<ScramSecret> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramSecret {
            iterations: iterations.parse().ok().filter(|&i| i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    /// A verifier no password matches, for a user that does not exist: its salt depends only
    /// on the name and this process (a client that asks twice sees the same salt, as for a
    /// real user), and no key derivation is spent on it.
    pub fn mock(name: &str) -> ScramSecret {
        static SEED: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let seed = SEED.get_or_init(|| {
            let mut s = [0u8; 32];
            rand::rng().fill_bytes(&mut s);
            s
        });
        let salt = hmac(seed, name.as_bytes())[..16].to_vec();
        let mut stored_key = [0u8; 32];
        let mut server_key = [0u8; 32];
        rand::rng().fill_bytes(&mut stored_key);
        rand::rng().fill_bytes(&mut server_key);
        ScramSecret {
            iterations: 4096,
            salt,
            stored_key,
            server_key,
        }
    }

    /// Derives a verifier (random salt, 4096 iterations) from a plaintext password.
    pub fn from_password(password: &str) -> ScramSecret {
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        ScramSecret::parse(&verifier).expect("postgres-protocol produces valid verifiers")
    }
}

/// State kept between the server-first and client-final SCRAM messages.
#[derive(Debug)]
pub struct ScramExchange {
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramExchange {
    /// Handles client-first-message; returns the state and the server-first-message to send.
    pub fn start(secret: &ScramSecret, client_first: &[u8]) -> Result<ScramExchange, AuthError> {
        let msg =
            std::str::from_utf8(client_first).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        // gs2-header: channel-binding flag, authzid, then the bare message.
        let mut parts = msg.splitn(3, ',');
        let cbind = parts.next().unwrap_or_default();
        let authzid = parts
            .next()
            .ok_or(AuthError::Malformed("missing gs2 header"))?;
        let bare = parts
            .next()
            .ok_or(AuthError::Malformed("missing gs2 header"))?;
        if cbind != "n" && cbind != "y" {
            return Err(AuthError::Malformed("channel binding is not supported"));
        }
        if !authzid.is_empty() {
            return Err(AuthError::Malformed(
                "authorization identity is not supported",
            ));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|attr| attr.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(AuthError::Malformed("missing client nonce"))?;
        let mut random = [0u8; 18];
        rand::rng().fill_bytes(&mut random);
        let nonce = format!("{client_nonce}{}", B64.encode(random));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        Ok(ScramExchange {
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
        })
    }

    /// The server-first-message to send in AuthenticationSASLContinue.
    pub fn server_first(&self) -> &str {
        &self.server_first
    }

    /// Checks client-final-message; returns the server-final-message and the keys that let
    /// pgtier log in to servers for this user (SCRAM pass-through) on success.
    pub fn finish(
        &self,
        secret: &ScramSecret,
        client_final: &[u8],
    ) -> Result<(String, ScramKeys), AuthError> {
        let msg =
            std::str::from_utf8(client_final).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(AuthError::Malformed("missing proof"))?;
        let mut cbind = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                cbind = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        let cbind = B64
            .decode(cbind.ok_or(AuthError::Malformed("missing channel binding"))?)
            .map_err(|_| AuthError::Malformed("bad channel binding encoding"))?;
        if cbind != b"n,," && cbind != b"y,," {
            return Err(AuthError::Malformed("unexpected channel binding"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(AuthError::Malformed("nonce mismatch"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(AuthError::Malformed("bad proof encoding"))?;

        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&secret.stored_key, auth_message.as_bytes());
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        if !constant_time_eq(&computed, &secret.stored_key) {
            return Err(AuthError::Mismatch);
        }
        let server_signature = hmac(&secret.server_key, auth_message.as_bytes());
        let keys = ScramKeys {
            client_key,
            server_key: secret.server_key,
            salt: secret.salt.clone(),
            iterations: secret.iterations,
        };
        Ok((format!("v={}", B64.encode(server_signature)), keys))
    }
}

/// HMAC-SHA-256 (SCRAM's HMAC).
pub(crate) fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The stored form of an MD5 password: `md5` + hex(md5(password || user)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Md5Secret(String);

impl Md5Secret {
    /// Accepts an already hashed `md5...` string (35 characters).
    pub fn parse(s: &str) -> Option<Md5Secret> {
        let hex = s.strip_prefix("md5")?;
        (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Md5Secret(s.to_ascii_lowercase()))
    }

    /// The stored form (`md5` + 32 hex digits): what answers a server's md5 challenge.
    pub fn hash(&self) -> &str {
        &self.0
    }

    /// Hashes a plaintext password for `user`.
    pub fn from_password(password: &str, user: &str) -> Md5Secret {
        Md5Secret(postgres_protocol::password::md5(password.as_bytes(), user))
    }

    /// Checks a client's PasswordMessage (without its NUL) against this secret and salt.
    pub fn verify(&self, salt: [u8; 4], response: &[u8]) -> Result<(), AuthError> {
        let mut md5 = Md5::new();
        md5.update(&self.0.as_bytes()[3..]);
        md5.update(salt);
        let expected = format!("md5{}", hex(&md5.finalize()));
        if constant_time_eq(expected.as_bytes(), response) {
            Ok(())
        } else {
            Err(AuthError::Mismatch)
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| {
            [
                DIGITS[(b >> 4) as usize] as char,
                DIGITS[(b & 15) as usize] as char,
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    #[test]
    fn scram_round_trip_with_postgres_protocol_client() {
        let secret = ScramSecret::from_password("s3cret");
        let mut client = ScramSha256::new(b"s3cret", ChannelBinding::unrequested());
        let ex = ScramExchange::start(&secret, client.message()).unwrap();
        client.update(ex.server_first().as_bytes()).unwrap();
        let (server_final, _) = ex.finish(&secret, client.message()).unwrap();
        client.finish(server_final.as_bytes()).unwrap();
    }

    #[test]
    fn scram_rejects_wrong_password() {
        let secret = ScramSecret::from_password("s3cret");
        let mut client = ScramSha256::new(b"wrong", ChannelBinding::unrequested());
        let ex = ScramExchange::start(&secret, client.message()).unwrap();
        client.update(ex.server_first().as_bytes()).unwrap();
        assert_eq!(
            ex.finish(&secret, client.message()).map(|(f, _)| f),
            Err(AuthError::Mismatch)
        );
    }

    #[test]
    fn scram_rejects_garbage() {
        let secret = ScramSecret::from_password("x");
        assert!(ScramExchange::start(&secret, b"p=tls-server-end-point,,n=,r=abc").is_err());
        assert!(ScramExchange::start(&secret, b"n,,n=").is_err());
        let ex = ScramExchange::start(&secret, b"n,,n=,r=abc").unwrap();
        assert!(ex.finish(&secret, b"c=biws,r=abc,p=AAAA").is_err());
    }

    #[test]
    fn md5_matches_libpq_hash() {
        let secret = Md5Secret::from_password("pw", "alice");
        let salt = [1, 2, 3, 4];
        let response = postgres_protocol::authentication::md5_hash(b"alice", b"pw", salt);
        assert_eq!(secret.verify(salt, response.as_bytes()), Ok(()));
        assert_eq!(secret.verify(salt, b"md5000"), Err(AuthError::Mismatch));
        assert_eq!(Md5Secret::parse(&secret.0), Some(secret.clone()));
    }
}
