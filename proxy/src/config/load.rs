//! Loading: TOML parse, schema check and semantic validation. Every problem is reported with
//! the file, line and column it comes from, so a DBA can fix it without guessing.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use thiserror::Error;

use super::schema::{Config, DatabaseConfig, UserConfig};
use super::settings::{nonzero, Database, PoolSettings, RoutingSettings, Settings};
use super::topology::ClusterSettings;

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path, when known.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// A config that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {error}")]
    Read {
        /// File name.
        file: String,
        /// Cause.
        error: std::io::Error,
    },
    /// A file the config names (certificate, key, CA) cannot be used; checked when the
    /// proxy starts or reloads, not by `parse_str`.
    #[error("{file}: {reason}")]
    Files {
        /// Config file name.
        file: String,
        /// Which key and file, and why.
        reason: String,
    },
    /// Parse or validation problems.
    #[error("{}", render(file, problems))]
    Invalid {
        /// File name.
        file: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn render(file: &str, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{file}:{}:{}: ", p.line, p.column));
        if !p.key.is_empty() {
            out.push_str(&format!("{}: ", p.key));
        }
        out.push_str(&p.message);
    }
    out
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.line, self.column, self.key, self.message
        )
    }
}

/// Reads and validates a config file.
pub fn load_file(path: &Path) -> Result<Settings, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        file: file.clone(),
        error,
    })?;
    parse_in(&text, path.parent()).map_err(|problems| ConfigError::Invalid { file, problems })
}

/// Parses and validates config text (relative file names are relative to the working
/// directory).
pub fn parse_str(text: &str) -> Result<Settings, Vec<Problem>> {
    parse_in(text, None)
}

/// Parses and validates config text; relative `auth_file` names are relative to `dir`.
fn parse_in(text: &str, dir: Option<&Path>) -> Result<Settings, Vec<Problem>> {
    let config: Config = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        vec![Problem {
            line,
            column,
            key: String::new(),
            message: with_hint(e.message().trim()),
        }]
    })?;
    let mut v = Validator {
        text,
        doc: toml_edit::ImDocument::parse(text).ok(),
        problems: Vec::new(),
        dir: dir.map(Path::to_path_buf),
    };
    let settings = v.resolve(config);
    if v.problems.is_empty() {
        Ok(settings)
    } else {
        Err(v.problems)
    }
}

/// Adds a "did you mean" hint to serde's unknown-field message.
fn with_hint(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (edit_distance(unknown, k), k))
        .min();
    match best {
        Some((d, k)) if d <= 2.max(unknown.len() / 3) => {
            format!("unknown key `{unknown}` (did you mean `{k}`?)")
        }
        _ => message.to_owned(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

pub(super) struct Validator<'a> {
    text: &'a str,
    doc: Option<toml_edit::ImDocument<&'a str>>,
    problems: Vec<Problem>,
    /// The config file's directory (relative `auth_file` names start there).
    pub(super) dir: Option<std::path::PathBuf>,
}

impl Validator<'_> {
    /// Records a problem at the value of `path` (or the closest table that exists).
    pub(super) fn fail(&mut self, path: &[&str], message: impl Into<String>) {
        let offset = self.span_of(path).unwrap_or(0);
        let (line, column) = line_col(self.text, offset);
        self.problems.push(Problem {
            line,
            column,
            key: path.join("."),
            message: message.into(),
        });
    }

    /// The 1-based line of `path` (as [`Validator::fail`] would report it).
    pub(super) fn line_of(&self, path: &[&str]) -> usize {
        line_col(self.text, self.span_of(path).unwrap_or(0)).0
    }

    fn span_of(&self, path: &[&str]) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut item = doc.as_item();
        // Inside an entry of an array of tables (`[[databases.app.rules]]`).
        let mut entry: Option<&toml_edit::Table> = None;
        let mut best = None;
        for seg in path {
            if let Ok(i) = seg.parse::<usize>() {
                if entry.is_none() {
                    if let Some(span) = item
                        .as_array()
                        .and_then(|a| a.get(i))
                        .and_then(|v| v.span())
                    {
                        return Some(span.start);
                    }
                    if let Some(t) = item.as_array_of_tables().and_then(|a| a.get(i)) {
                        best = t.span().map(|s| s.start).or(best);
                        entry = Some(t);
                        continue;
                    }
                }
            }
            let table: &dyn toml_edit::TableLike = match entry.take() {
                Some(t) => t,
                None => item.as_table_like()?,
            };
            let key_span = table.key(seg).and_then(|k| k.span());
            item = table.get(seg)?;
            best = item.span().or(key_span).map(|s| s.start).or(best);
        }
        best
    }

    fn resolve(&mut self, raw: Config) -> Settings {
        let listen = raw.listen.parse::<SocketAddr>().unwrap_or_else(|_| {
            self.fail(&["listen"], "expected an address like \"127.0.0.1:6432\"");
            SocketAddr::from(([127, 0, 0, 1], 6432))
        });
        // Empty disables the endpoint; anything else must be an address to bind.
        let metrics_listen = match raw.metrics_listen.as_str() {
            "" => None,
            addr => addr.parse::<SocketAddr>().map(Some).unwrap_or_else(|_| {
                self.fail(
                    &["metrics_listen"],
                    "expected an address like \"127.0.0.1:9930\" (or \"\" to disable)",
                );
                None
            }),
        };
        if raw.max_client_conn == 0 {
            self.fail(&["max_client_conn"], "must be at least 1");
        }
        if raw.max_pending_notifications == 0 {
            self.fail(&["max_pending_notifications"], "must be at least 1");
        }
        if raw.max_listen_channels == 0 {
            self.fail(&["max_listen_channels"], "must be at least 1");
        }
        if raw.max_prepared_statements == 0 {
            self.fail(&["max_prepared_statements"], "must be at least 1");
        }
        if raw.max_prepared_statement_bytes_per_client < 1024 {
            self.fail(
                &["max_prepared_statement_bytes_per_client"],
                "must be at least 1024 bytes",
            );
        }
        if raw.max_prepared_statement_bytes_total < raw.max_prepared_statement_bytes_per_client {
            self.fail(
                &["max_prepared_statement_bytes_total"],
                "must be at least max_prepared_statement_bytes_per_client",
            );
        }
        if raw.max_message_size < 1024 {
            self.fail(&["max_message_size"], "must be at least 1024 bytes");
        }
        for (key, d) in [
            ("query_wait_timeout", raw.query_wait_timeout),
            ("server_connect_timeout", raw.server_connect_timeout),
            ("client_login_timeout", raw.client_login_timeout),
            ("client_write_timeout", raw.client_write_timeout),
            ("server_write_timeout", raw.server_write_timeout),
        ] {
            if d.is_zero() {
                self.fail(&[key], "must be greater than 0 (every wait has a timeout)");
            }
        }
        if raw
            .log_level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            self.fail(
                &["log_level"],
                "not a valid filter (e.g. \"info\" or \"pgtier=debug\")",
            );
        }
        if raw.lag_check_interval < std::time::Duration::from_millis(10) {
            self.fail(&["lag_check_interval"], "must be at least 10ms");
        }
        if raw.primary_wait_timeout.is_zero() {
            self.fail(
                &["primary_wait_timeout"],
                "must be greater than 0 (every wait has a timeout)",
            );
        }
        if raw.classify_cache_size == 0 {
            self.fail(&["classify_cache_size"], "must be at least 1");
        }
        if let Some(u) = &raw.monitor_user {
            if !raw.users.contains_key(u) {
                self.fail(&["monitor_user"], format!("no [users.{u}] section"));
            }
        }
        if raw.databases.is_empty() {
            self.fail(
                &[],
                "no [databases.NAME] section: clients would have nothing to connect to",
            );
        }
        let file_users = self.auth_file_users(&raw);
        let mut users = raw
            .users
            .iter()
            .filter_map(|(name, u)| {
                // A [users] entry without a password takes the auth_file's.
                let from_file = file_users.get(name).filter(|_| u.password.is_none());
                let u = match from_file {
                    Some(secret) => &UserConfig {
                        password: Some(secret.clone()),
                        ..u.clone()
                    },
                    None => u,
                };
                Some((name.clone(), self.user(name, u)?))
            })
            .collect::<HashMap<_, _>>();
        for (name, secret) in file_users {
            if users.contains_key(&name) {
                continue;
            }
            let u = UserConfig {
                password: Some(secret),
                auth: raw.auth_type,
                ..UserConfig::default()
            };
            if let Some(user) = self.user(&name, &u) {
                users.insert(name, user);
            }
        }
        for (i, u) in raw.admin_users.iter().enumerate() {
            if !users.contains_key(u) {
                self.fail(
                    &["admin_users", &i.to_string()],
                    format!("no [users.{u}] section or auth_file entry"),
                );
            }
        }
        let databases = raw
            .databases
            .iter()
            .filter_map(|(name, d)| Some((name.clone(), self.database(&raw, name, d)?)))
            .collect::<HashMap<_, _>>();
        let client_tls = self.client_tls(&raw);
        let peering = self.peering(&raw);
        Settings {
            peering,
            client_tls,
            client_idle_timeout: nonzero(raw.client_idle_timeout),
            metrics_listen,
            slow_query_threshold: nonzero(raw.slow_query_threshold),
            raw,
            listen,
            users,
            databases,
        }
    }

    fn database(&mut self, raw: &Config, name: &str, d: &DatabaseConfig) -> Option<Database> {
        let nodes = self.nodes(name, d);
        let size = d.pool_size.unwrap_or(raw.pool_size);
        let min_size = d.min_pool_size.unwrap_or(raw.min_pool_size);
        if size == 0 {
            let path: &[&str] = if d.pool_size.is_some() {
                &["databases", name, "pool_size"]
            } else {
                &["pool_size"]
            };
            self.fail(path, "must be at least 1");
        }
        if min_size > size {
            let path: &[&str] = if d.min_pool_size.is_some() {
                &["databases", name, "min_pool_size"]
            } else {
                &["min_pool_size"]
            };
            self.fail(
                path,
                format!("min_pool_size {min_size} exceeds pool_size {size}"),
            );
        }
        let server_tls = self.server_tls(raw, name, d);
        let auth_query = self.auth_query(raw, name, d);
        let limit = |max: u32| (max > 0).then_some(max);
        Some(Database {
            server_tls,
            auth_query,
            max_client_connections: limit(
                d.max_db_client_connections
                    .unwrap_or(raw.max_db_client_connections),
            ),
            name: name.to_owned(),
            dbname: d.dbname.clone().unwrap_or_else(|| name.to_owned()),
            cluster: ClusterSettings {
                nodes: nodes?,
                lag_check_interval: raw.lag_check_interval,
                max_replica_lag: nonzero(d.max_replica_lag.unwrap_or(raw.max_replica_lag)),
                max_replica_lag_bytes: Some(
                    d.max_replica_lag_bytes.unwrap_or(raw.max_replica_lag_bytes),
                )
                .filter(|&b| b > 0),
                login: self.monitor_login(raw, name, d)?,
                connect_timeout: raw.server_connect_timeout,
                zone: Some(raw.zone.clone()).filter(|z| !z.is_empty()),
                zone_mode: raw.zone_mode,
            },
            routing: RoutingSettings {
                primary_reads: d.primary_reads.unwrap_or(raw.primary_reads),
                replica_round_robin: d.replica_round_robin.unwrap_or(raw.replica_round_robin),
                primary_wait_timeout: raw.primary_wait_timeout,
                causal_read_wait: raw.causal_read_wait,
                report_causal_lsn: raw.report_causal_lsn,
                causal_scope: d.causal_scope.unwrap_or(raw.causal_scope),
                rules: self.rules(raw, name, &d.rules),
            },
            pool: PoolSettings {
                mode: d.pool_mode.unwrap_or(raw.pool_mode),
                size,
                min_size,
                query_wait_timeout: raw.query_wait_timeout,
                server_connect_timeout: raw.server_connect_timeout,
                server_idle_timeout: nonzero(raw.server_idle_timeout),
                server_lifetime: nonzero(raw.server_lifetime),
                idle_transaction_timeout: nonzero(raw.idle_transaction_timeout),
                max_prepared_statements: raw.max_prepared_statements as usize,
                session_state: raw.session_state,
                query_timeout: nonzero(d.query_timeout.unwrap_or(raw.query_timeout)),
                transaction_timeout: nonzero(
                    d.transaction_timeout.unwrap_or(raw.transaction_timeout),
                ),
                max_db_connections: limit(d.max_db_connections.unwrap_or(raw.max_db_connections)),
                max_user_connections: limit(raw.max_user_connections),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientAuth;

    const GOOD: &str = r#"
listen = "127.0.0.1:6432"
pool_mode = "transaction"
[users.app]
password = "app"
[databases.app]
primary = "127.0.0.1:5432"
replicas = ["127.0.0.1:5433", "127.0.0.1:5434"]
pool_size = 20
"#;

    #[test]
    fn accepts_the_documented_example() {
        let s = parse_str(GOOD).unwrap();
        let db = &s.databases["app"];
        let ports: Vec<u16> = db.nodes().iter().map(|n| n.addr.port).collect();
        assert_eq!(ports, [5432, 5433, 5434]);
        assert_eq!(db.pool.size, 20);
        assert!(matches!(s.users["app"].auth, ClientAuth::Scram(_)));
        assert_eq!(s.users["app"].server_password.as_deref(), Some("app"));
    }

    #[test]
    fn unknown_key_has_line_and_column() {
        let text = GOOD.replace("pool_size = 20", "pool_sise = 20");
        let p = parse_str(&text).unwrap_err();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].line, p[0].column), (9, 1));
        assert_eq!(
            p[0].message,
            "unknown key `pool_sise` (did you mean `pool_size`?)"
        );
    }

    #[test]
    fn wrong_type_has_line() {
        let text = GOOD.replace("pool_size = 20", "pool_size = \"many\"");
        let p = parse_str(&text).unwrap_err();
        assert_eq!(p[0].line, 9);
    }

    #[test]
    fn semantic_errors_point_at_the_value() {
        let text = GOOD
            .replace("\"127.0.0.1:5433\"", "\"nowhere\"")
            .replace("pool_size = 20", "pool_size = 0");
        let p = parse_str(&text).unwrap_err();
        let keys: Vec<_> = p
            .iter()
            .map(|p| (p.key.as_str(), p.line, p.column))
            .collect();
        assert!(
            keys.contains(&("databases.app.replicas.0", 8, 13)),
            "{keys:?}"
        );
        assert!(
            keys.contains(&("databases.app.pool_size", 9, 13)),
            "{keys:?}"
        );
    }

    #[test]
    fn md5_hash_cannot_do_scram() {
        let text = GOOD.replace(
            "password = \"app\"",
            "password = \"md5a3556571e93b0d20722ba62be61e8c2d\"",
        );
        let p = parse_str(&text).unwrap_err();
        assert_eq!(p[0].key, "users.app.password");
        assert_eq!(p[0].line, 5);
    }

    #[test]
    fn metrics_listen_must_be_an_address() {
        let s = parse_str(GOOD).unwrap();
        assert_eq!(s.metrics_listen, None);
        let text = format!("metrics_listen = \"0.0.0.0:9930\"\n{GOOD}");
        assert_eq!(
            parse_str(&text).unwrap().metrics_listen,
            Some("0.0.0.0:9930".parse().unwrap())
        );
        let text = format!("log_format = \"json\"\nmetrics_listen = \"localhost\"\n{GOOD}");
        let p = parse_str(&text).unwrap_err();
        assert_eq!(
            (p[0].key.as_str(), p[0].line, p[0].column),
            ("metrics_listen", 2, 18)
        );
    }

    #[test]
    fn log_format_and_slow_query_threshold() {
        let text = format!("log_format = \"json\"\nslow_query_threshold = \"250ms\"\n{GOOD}");
        let s = parse_str(&text).unwrap();
        assert_eq!(s.raw.log_format, crate::config::LogFormat::Json);
        assert_eq!(
            s.slow_query_threshold,
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(parse_str(GOOD).unwrap().slow_query_threshold, None);
        let p = parse_str(&format!("log_format = \"xml\"\n{GOOD}")).unwrap_err();
        assert_eq!((p[0].line, p[0].column), (1, 14));
    }

    #[test]
    fn zero_wait_timeouts_are_rejected() {
        let text = format!("query_wait_timeout = 0\n{GOOD}");
        let p = parse_str(&text).unwrap_err();
        assert_eq!((p[0].key.as_str(), p[0].line), ("query_wait_timeout", 1));
    }

    #[test]
    fn zero_write_timeouts_are_rejected() {
        for key in ["client_write_timeout", "server_write_timeout"] {
            let p = parse_str(&format!("{key} = 0\n{GOOD}")).unwrap_err();
            assert_eq!((p[0].key.as_str(), p[0].line), (key, 1));
        }
        let s = parse_str(&format!("admin_idle_timeout = 0\n{GOOD}")).unwrap();
        assert!(s.raw.admin_idle_timeout.is_zero());
    }
}
