//! SCRAM-SHA-256 pass-through: logging in to a server as a user whose password pgtier never
//! saw. A client's successful SCRAM proof reveals its ClientKey (proof XOR ClientSignature);
//! with the ClientKey and the verifier's ServerKey pgtier can answer the server's challenge,
//! provided the server's verifier is the same one (same salt and iterations), which holds
//! when pgtier's verifier came from the database (auth_query, or a copied `pg_authid` entry).
//! postgres-protocol's client needs the password, so this exchange is written here; it follows
//! RFC 5802 as Postgres speaks it (no authzid; channel binding as the caller chooses).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::Rng;
use sha2::{Digest, Sha256};

use super::auth::{hmac, AuthError};

/// What pgtier keeps of a user to log in for it: never a password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// H(ClientKey) = StoredKey is the verifier's; the ClientKey itself comes from a client.
    pub(crate) client_key: [u8; 32],
    pub(crate) server_key: [u8; 32],
    pub(crate) salt: Vec<u8>,
    pub(crate) iterations: u32,
}

impl std::fmt::Debug for ScramKeys {
    // Never the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramKeys")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Channel binding for the client-final message.
#[derive(Debug, Clone)]
pub enum Binding {
    /// `n,,`: the client does not support it (plain text).
    None,
    /// `y,,`: the client supports it but the server did not offer it.
    Unused,
    /// `p=tls-server-end-point,,` with the hash of the server's certificate.
    TlsServerEndPoint(Vec<u8>),
}

impl Binding {
    fn gs2_header(&self) -> &'static str {
        match self {
            Binding::None => "n,,",
            Binding::Unused => "y,,",
            Binding::TlsServerEndPoint(_) => "p=tls-server-end-point,,",
        }
    }
}

/// One client-side exchange with a server.
#[derive(Debug)]
pub struct PassThrough {
    keys: ScramKeys,
    binding: Binding,
    client_nonce: String,
    /// Set by [`PassThrough::client_final`]: what the server's signature must sign.
    auth_message: Option<String>,
}

impl PassThrough {
    /// Starts an exchange with `keys`.
    pub fn new(keys: ScramKeys, binding: Binding) -> PassThrough {
        let mut random = [0u8; 18];
        rand::rng().fill_bytes(&mut random);
        PassThrough {
            keys,
            binding,
            client_nonce: B64.encode(random),
            auth_message: None,
        }
    }

    /// The client-first-message (the user name is empty: Postgres uses the startup's).
    pub fn client_first(&self) -> String {
        format!("{}n=,r={}", self.binding.gs2_header(), self.client_nonce)
    }

    /// Answers the server-first-message with the client-final-message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<String, AuthError> {
        let text =
            std::str::from_utf8(server_first).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in text.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = Some(v);
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = Some(v);
            }
        }
        let nonce = nonce
            .filter(|n| n.starts_with(&self.client_nonce) && n.len() > self.client_nonce.len())
            .ok_or(AuthError::Malformed("server nonce does not extend ours"))?;
        let salt = B64
            .decode(salt.ok_or(AuthError::Malformed("missing salt"))?)
            .map_err(|_| AuthError::Malformed("bad salt encoding"))?;
        let iterations: u32 = iterations
            .and_then(|i| i.parse().ok())
            .ok_or(AuthError::Malformed("bad iteration count"))?;
        if salt != self.keys.salt || iterations != self.keys.iterations {
            // Another verifier than the one the client's key was checked against.
            return Err(AuthError::VerifierMismatch);
        }
        let mut cbind = self.binding.gs2_header().as_bytes().to_vec();
        if let Binding::TlsServerEndPoint(hash) = &self.binding {
            cbind.extend_from_slice(hash);
        }
        let without_proof = format!("c={},r={nonce}", B64.encode(cbind));
        let client_first_bare = format!("n=,r={}", self.client_nonce);
        let auth_message = format!("{client_first_bare},{text},{without_proof}");
        let stored_key: [u8; 32] = Sha256::digest(self.keys.client_key).into();
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = self.keys.client_key;
        for (p, s) in proof.iter_mut().zip(signature) {
            *p ^= s;
        }
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message (the server proves it knows the verifier too).
    pub fn verify_server(&self, server_final: &[u8]) -> Result<(), AuthError> {
        let text =
            std::str::from_utf8(server_final).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let auth_message = self
            .auth_message
            .as_deref()
            .ok_or(AuthError::Malformed("server-final before client-final"))?;
        let v = text
            .strip_prefix("v=")
            .ok_or(AuthError::Malformed("missing server signature"))?;
        let got = B64
            .decode(v)
            .map_err(|_| AuthError::Malformed("bad server signature encoding"))?;
        let expected = hmac(&self.keys.server_key, auth_message.as_bytes());
        if got == expected {
            Ok(())
        } else {
            Err(AuthError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::auth::{ScramExchange, ScramSecret};
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// A client logs in to pgtier with its password; pgtier keeps the keys; pgtier then logs in
    /// to a "server" holding the same verifier, with the keys alone.
    #[test]
    fn keys_from_a_client_login_answer_a_server_with_the_same_verifier() {
        let secret = ScramSecret::from_password("only the client knows");
        let mut client = ScramSha256::new(b"only the client knows", ChannelBinding::unsupported());
        let ex = ScramExchange::start(&secret, client.message()).unwrap();
        client.update(ex.server_first().as_bytes()).unwrap();
        let (server_final, keys) = ex.finish(&secret, client.message()).unwrap();
        client.finish(server_final.as_bytes()).unwrap();

        let mut pass = PassThrough::new(keys.clone(), Binding::None);
        let server = ScramExchange::start(&secret, pass.client_first().as_bytes()).unwrap();
        let client_final = pass.client_final(server.server_first().as_bytes()).unwrap();
        let (server_final, again) = server.finish(&secret, client_final.as_bytes()).unwrap();
        pass.verify_server(server_final.as_bytes()).unwrap();
        assert_eq!(again, keys);

        // A server with another verifier for the same password: refused before any proof.
        let other = ScramSecret::from_password("only the client knows");
        let mut pass = PassThrough::new(keys, Binding::None);
        let server = ScramExchange::start(&other, pass.client_first().as_bytes()).unwrap();
        assert_eq!(
            pass.client_final(server.server_first().as_bytes()),
            Err(AuthError::VerifierMismatch)
        );
        assert!(!format!("{pass:?}").contains("client_key"));
    }
}
