//! TLS keys, as plain data: the sslmode of each side, certificate paths, protocol versions.
//! `crate::tls` reads the files and builds the rustls configs from these.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::load::Validator;
use super::schema::{AuthMethod, Config, DatabaseConfig};

/// libpq's sslmode, for either side (PgBouncer's `client_tls_sslmode` / `server_tls_sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// Clients: TLS if the client asks. Servers: plain text first, TLS if the server insists.
    Allow,
    /// Clients: TLS if the client asks. Servers: TLS if the server offers it, else plain text.
    Prefer,
    /// TLS always; no certificate check on servers.
    Require,
    /// TLS always, and the peer's certificate must chain to the CA file.
    VerifyCa,
    /// As verify-ca, plus the name: a server's certificate must name the host pgtier
    /// connects to; a client's certificate's common name must be its user name.
    VerifyFull,
}

impl SslMode {
    /// Whether plain text is refused.
    pub fn requires_tls(self) -> bool {
        self >= SslMode::Require
    }

    /// Whether the peer's certificate is checked against the CA.
    pub fn verifies(self) -> bool {
        self >= SslMode::VerifyCa
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS versions one side may use (rustls implements 1.2 and 1.3 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsVersions {
    /// TLS 1.2 allowed.
    pub tls12: bool,
    /// TLS 1.3 allowed.
    pub tls13: bool,
}

impl TlsVersions {
    /// Parses PgBouncer's `*_tls_protocols`: `secure`, `default`, `all`, `legacy`, or a list
    /// of `tlsv1.0` .. `tlsv1.3` (separated by commas, colons or spaces). Versions before 1.2
    /// are accepted in a list but never used.
    pub fn parse(s: &str) -> Result<TlsVersions, String> {
        let mut v = TlsVersions {
            tls12: false,
            tls13: false,
        };
        for word in s
            .split([',', ':', ' '])
            .map(str::trim)
            .filter(|w| !w.is_empty())
        {
            match word.to_ascii_lowercase().as_str() {
                "secure" | "default" | "all" | "legacy" => {
                    v.tls12 = true;
                    v.tls13 = true;
                }
                "tlsv1.3" => v.tls13 = true,
                "tlsv1.2" => v.tls12 = true,
                "tlsv1.0" | "tlsv1.1" | "tlsv1" => {}
                other => {
                    return Err(format!(
                        "unknown protocol `{other}` (expected secure, all, or a list of tlsv1.2, tlsv1.3)"
                    ))
                }
            }
        }
        if !v.tls12 && !v.tls13 {
            return Err("no usable version: pgtier speaks TLS 1.2 and 1.3".into());
        }
        Ok(v)
    }
}

/// The client side (clients → pgtier), resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsSettings {
    /// What pgtier accepts from clients.
    pub mode: SslMode,
    /// pgtier's certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// pgtier's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CAs whose client certificates pgtier accepts (None: no client certificates).
    pub ca_file: Option<PathBuf>,
    /// Versions allowed.
    pub versions: TlsVersions,
    /// `client_tls_ciphers` as written.
    pub ciphers: String,
}

impl ClientTlsSettings {
    /// Whether pgtier offers TLS to clients at all.
    pub fn enabled(&self) -> bool {
        self.mode != SslMode::Disable
    }
}

/// The server side (pgtier → Postgres) of one database, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsSettings {
    /// How pgtier connects to the servers.
    pub mode: SslMode,
    /// CAs that sign the servers' certificates (verify-ca, verify-full).
    pub ca_file: Option<PathBuf>,
    /// pgtier's client certificate for the servers (mTLS), PEM.
    pub cert_file: Option<PathBuf>,
    /// Its private key.
    pub key_file: Option<PathBuf>,
    /// Versions allowed.
    pub versions: TlsVersions,
    /// `server_tls_ciphers` as written.
    pub ciphers: String,
}

fn path(s: &str) -> Option<PathBuf> {
    (!s.trim().is_empty()).then(|| PathBuf::from(s))
}

impl Validator<'_> {
    /// Resolves and checks the `client_tls_*` keys (and users with `auth = "cert"`).
    pub(super) fn client_tls(&mut self, raw: &Config) -> ClientTlsSettings {
        let cert_file = path(&raw.client_tls_cert_file);
        let key_file = path(&raw.client_tls_key_file);
        let ca_file = path(&raw.client_tls_ca_file);
        let mode = raw.client_tls_sslmode.unwrap_or(if cert_file.is_some() {
            SslMode::Prefer
        } else {
            SslMode::Disable
        });
        if cert_file.is_some() != key_file.is_some() {
            let missing = if cert_file.is_none() {
                "client_tls_cert_file"
            } else {
                "client_tls_key_file"
            };
            self.fail(
                &[missing],
                "client_tls_cert_file and client_tls_key_file go together",
            );
        }
        if mode != SslMode::Disable && cert_file.is_none() {
            self.fail(
                &["client_tls_sslmode"],
                format!("client_tls_sslmode = \"{mode}\" needs client_tls_cert_file and client_tls_key_file"),
            );
        }
        if mode.verifies() && ca_file.is_none() {
            self.fail(
                &["client_tls_sslmode"],
                format!("client_tls_sslmode = \"{mode}\" checks client certificates: it needs client_tls_ca_file"),
            );
        }
        for (name, u) in &raw.users {
            if u.auth == AuthMethod::Cert && (mode == SslMode::Disable || ca_file.is_none()) {
                self.fail(
                    &["users", name, "auth"],
                    "auth = \"cert\" needs client TLS with client_tls_ca_file (the CA of the client certificates)",
                );
            }
        }
        let versions = self.versions("client_tls_protocols", &raw.client_tls_protocols);
        ClientTlsSettings {
            mode,
            cert_file,
            key_file,
            ca_file,
            versions,
            ciphers: raw.client_tls_ciphers.clone(),
        }
    }

    /// Resolves and checks the `server_tls_*` keys of one database (its overrides, else the
    /// global keys).
    pub(super) fn server_tls(
        &mut self,
        raw: &Config,
        name: &str,
        d: &DatabaseConfig,
    ) -> ServerTlsSettings {
        let pick = |own: &Option<String>, global: &str| path(own.as_deref().unwrap_or(global));
        let mode = d.server_tls_sslmode.unwrap_or(raw.server_tls_sslmode);
        let ca_file = pick(&d.server_tls_ca_file, &raw.server_tls_ca_file);
        let cert_file = pick(&d.server_tls_cert_file, &raw.server_tls_cert_file);
        let key_file = pick(&d.server_tls_key_file, &raw.server_tls_key_file);
        let key_path = |key: &'static str, own: bool| -> Vec<&str> {
            if own {
                vec!["databases", name, key]
            } else {
                vec![key]
            }
        };
        if mode.verifies() && ca_file.is_none() {
            let p = key_path("server_tls_sslmode", d.server_tls_sslmode.is_some());
            self.fail(
                &p,
                format!("server_tls_sslmode = \"{mode}\" needs server_tls_ca_file (the CA that signs the servers' certificates)"),
            );
        }
        if cert_file.is_some() != key_file.is_some() {
            let p = key_path("server_tls_cert_file", d.server_tls_cert_file.is_some());
            self.fail(
                &p,
                "server_tls_cert_file and server_tls_key_file go together",
            );
        }
        let versions = self.versions("server_tls_protocols", &raw.server_tls_protocols);
        ServerTlsSettings {
            mode,
            ca_file,
            cert_file,
            key_file,
            versions,
            ciphers: raw.server_tls_ciphers.clone(),
        }
    }

    fn versions(&mut self, key: &str, value: &str) -> TlsVersions {
        TlsVersions::parse(value).unwrap_or_else(|e| {
            self.fail(&[key], e);
            TlsVersions {
                tls12: true,
                tls13: true,
            }
        })
    }
}

/// `SHOW CONFIG` spelling of an unset `client_tls_sslmode`.
pub fn serialize_opt_mode<S: serde::Serializer>(
    v: &Option<SslMode>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.map_or("", SslMode::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    const DB: &str =
        "[users.app]\npassword = \"pw\"\n[databases.app]\nprimary = \"127.0.0.1:5432\"\n";

    fn problems(text: &str) -> String {
        match parse_str(text) {
            Ok(_) => String::new(),
            Err(p) => p
                .iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    #[test]
    fn defaults_are_disable_without_a_certificate_and_prefer_with_one() {
        let s = parse_str(DB).unwrap();
        assert_eq!(s.client_tls.mode, SslMode::Disable);
        assert_eq!(s.databases["app"].server_tls.mode, SslMode::Prefer);
        let s = parse_str(&format!(
            "client_tls_cert_file = \"c.pem\"\nclient_tls_key_file = \"k.pem\"\n{DB}"
        ))
        .unwrap();
        assert_eq!(s.client_tls.mode, SslMode::Prefer);
        assert_eq!(
            s.client_tls.versions,
            TlsVersions {
                tls12: true,
                tls13: true
            }
        );
    }

    #[test]
    fn modes_without_their_files_are_refused() {
        let p = problems(&format!("client_tls_sslmode = \"require\"\n{DB}"));
        assert!(p.contains("needs client_tls_cert_file"), "{p}");
        let p = problems(&format!(
            "client_tls_sslmode = \"verify-ca\"\nclient_tls_cert_file = \"c\"\nclient_tls_key_file = \"k\"\n{DB}"
        ));
        assert!(p.contains("needs client_tls_ca_file"), "{p}");
        let p = problems(&format!("server_tls_sslmode = \"verify-full\"\n{DB}"));
        assert!(p.contains("needs server_tls_ca_file"), "{p}");
        let p = problems(&format!("client_tls_cert_file = \"c\"\n{DB}"));
        assert!(p.contains("go together"), "{p}");
        let p = problems(&format!("[users.u]\nauth = \"cert\"\n{DB}"));
        assert!(p.contains("auth = \"cert\" needs client TLS"), "{p}");
        let p = problems(&format!("client_tls_protocols = \"tlsv1.1\"\n{DB}"));
        assert!(p.contains("TLS 1.2 and 1.3"), "{p}");
    }

    #[test]
    fn a_database_overrides_the_server_side() {
        let s = parse_str(&format!(
            "server_tls_sslmode = \"disable\"\n{DB}server_tls_sslmode = \"verify-full\"\nserver_tls_ca_file = \"ca.pem\"\n"
        ))
        .unwrap();
        let t = &s.databases["app"].server_tls;
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert_eq!(t.ca_file.as_deref(), Some(std::path::Path::new("ca.pem")));
    }

    #[test]
    fn protocol_lists_parse_like_pgbouncer() {
        assert_eq!(
            TlsVersions::parse("tlsv1.3").unwrap(),
            TlsVersions {
                tls12: false,
                tls13: true
            }
        );
        assert_eq!(
            TlsVersions::parse("tlsv1.1,tlsv1.2").unwrap(),
            TlsVersions {
                tls12: true,
                tls13: false
            }
        );
        assert!(TlsVersions::parse("sslv3").is_err());
    }
}
