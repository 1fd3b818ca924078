//! Where client users and their secrets come from: `[users]`, `auth_file`, and (at login)
//! `auth_query`; and the server credentials each user logs in to the servers with.

use super::load::Validator;
use super::schema::{AuthMethod, Config, DatabaseConfig, UserConfig};
use super::settings::{AuthQuerySettings, ClientAuth, User};
use crate::protocol::auth::{Md5Secret, ScramSecret};

/// The user name and password a user logs in to the servers with.
pub(super) fn server_credentials(name: &str, u: &UserConfig) -> (String, Option<String>) {
    let plaintext = u
        .password
        .as_deref()
        .filter(|p| ScramSecret::parse(p).is_none() && Md5Secret::parse(p).is_none());
    (
        u.server_user.clone().unwrap_or_else(|| name.to_owned()),
        u.server_password.clone().or(plaintext.map(str::to_owned)),
    )
}

impl Validator<'_> {
    /// Database `db`'s `auth_query` lookup, when its `auth_user` (or the global one) names a
    /// `[users]` entry.
    pub(super) fn auth_query(
        &mut self,
        raw: &Config,
        db: &str,
        d: &DatabaseConfig,
    ) -> Option<AuthQuerySettings> {
        // A key set on the database wins; problems point at the key that was used.
        let at = |key: &'static str, own: bool| -> Vec<String> {
            if own {
                vec!["databases".into(), db.into(), key.into()]
            } else {
                vec![key.into()]
            }
        };
        let name = d.auth_user.as_ref().or(raw.auth_user.as_ref())?;
        let query = d.auth_query.as_ref().unwrap_or(&raw.auth_query);
        let Some(u) = raw.users.get(name) else {
            let path = at("auth_user", d.auth_user.is_some());
            self.fail(&strs(&path), format!("no [users.{name}] section"));
            return None;
        };
        if !query.contains("$1") {
            let path = at("auth_query", d.auth_query.is_some());
            self.fail(&strs(&path), "must use $1 (the user name)");
        }
        if raw.auth_cache_size == 0 {
            self.fail(&["auth_cache_size"], "must be at least 1");
        }
        let (user, password) = server_credentials(name, u);
        let dbname = d.auth_dbname.as_ref().unwrap_or(&raw.auth_dbname);
        Some(AuthQuerySettings {
            user,
            password,
            query: query.clone(),
            dbname: Some(dbname.clone()).filter(|d| !d.is_empty()),
            ttl: raw.auth_cache_ttl,
            negative_ttl: raw.auth_cache_negative_ttl,
            cache_size: raw.auth_cache_size as usize,
            method: raw.auth_type,
        })
    }

    /// The entries of `auth_file` (none when unset); problems are reported against the key.
    pub(super) fn auth_file_users(
        &mut self,
        raw: &Config,
    ) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        if raw.auth_file.trim().is_empty() {
            return out;
        }
        let path = match &self.dir {
            Some(dir) => dir.join(&raw.auth_file),
            None => std::path::PathBuf::from(&raw.auth_file),
        };
        match super::auth_file::read(&path) {
            Ok((entries, problems)) => {
                for p in problems {
                    self.fail(
                        &["auth_file"],
                        format!("{} line {}: {}", path.display(), p.line, p.message),
                    );
                }
                for e in entries {
                    out.insert(e.user, e.secret);
                }
            }
            Err(e) => self.fail(&["auth_file"], format!("{}: {e}", path.display())),
        }
        out
    }

    pub(super) fn user(&mut self, name: &str, u: &UserConfig) -> Option<User> {
        let pw = u.password.as_deref();
        let plaintext =
            pw.filter(|p| ScramSecret::parse(p).is_none() && Md5Secret::parse(p).is_none());
        let auth = match u.auth {
            AuthMethod::Trust => ClientAuth::Trust,
            AuthMethod::Cert => ClientAuth::Cert,
            AuthMethod::ScramSha256 => match (pw.and_then(ScramSecret::parse), plaintext) {
                (Some(secret), _) => ClientAuth::Scram(secret),
                (None, Some(p)) => ClientAuth::Scram(ScramSecret::from_password(p)),
                (None, None) => {
                    let why = if pw.is_some() {
                        "an MD5 hash cannot check SCRAM-SHA-256 logins: give a plaintext password or a SCRAM verifier, or set auth = \"md5\""
                    } else {
                        "auth \"scram-sha-256\" needs a password (or set auth = \"trust\")"
                    };
                    self.fail(&["users", name, "password"], why);
                    return None;
                }
            },
            // As Postgres' md5 method: a user whose secret is a SCRAM verifier logs in with
            // SCRAM.
            AuthMethod::Md5 => match (pw.and_then(Md5Secret::parse), plaintext) {
                (Some(secret), _) => ClientAuth::Md5(secret),
                (None, Some(p)) => ClientAuth::Md5(Md5Secret::from_password(p, name)),
                (None, None) => match pw.and_then(ScramSecret::parse) {
                    Some(secret) => ClientAuth::Scram(secret),
                    None => {
                        self.fail(
                            &["users", name, "password"],
                            "auth \"md5\" needs a password",
                        );
                        return None;
                    }
                },
            },
        };
        let (server_user, server_password) = server_credentials(name, u);
        if u.pool_size == Some(0) {
            self.fail(&["users", name, "pool_size"], "must be at least 1");
        }
        Some(User {
            name: name.to_owned(),
            auth,
            server_user,
            server_password,
            limits: super::settings::UserLimits {
                pool_size: u.pool_size,
                pool_mode: u.pool_mode,
                max_connections: u.max_user_connections,
                max_client_connections: u.max_user_client_connections,
                query_timeout: u.query_timeout,
                transaction_timeout: u.transaction_timeout,
                causal_scope: u.causal_scope,
            },
        })
    }
}

/// A client user found by `auth_query` (its secret a SCRAM verifier or md5 hash): it logs in to
/// the servers as itself, by pass-through. None: the secret cannot check `method` logins.
pub fn looked_up_user(name: &str, secret: &str, method: AuthMethod) -> Option<User> {
    let auth = match (method, ScramSecret::parse(secret), Md5Secret::parse(secret)) {
        (AuthMethod::Trust, _, _) => ClientAuth::Trust,
        (AuthMethod::Cert, _, _) => ClientAuth::Cert,
        (_, Some(scram), _) => ClientAuth::Scram(scram),
        (AuthMethod::Md5, None, Some(md5)) => ClientAuth::Md5(md5),
        _ => return None,
    };
    Some(User {
        name: name.to_owned(),
        auth,
        server_user: name.to_owned(),
        server_password: None,
        limits: Default::default(),
    })
}

fn strs(path: &[String]) -> Vec<&str> {
    path.iter().map(String::as_str).collect()
}
