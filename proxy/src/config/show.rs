//! `SHOW CONFIG`: one row per top-level key of the file (PgBouncer's columns key, value,
//! default, changeable). Rows come from `Config`'s `Serialize`, so a new key shows up without
//! a list to maintain; users and databases (passwords) are never serialized.

use std::time::Duration;

use serde::Serializer;

use super::schema::Config;
use super::settings::Settings;

/// Keys that take effect only after a restart (the listeners, the runtime and the log
/// subscriber are set up once at startup).
pub const RESTART_KEYS: &[&str] = &[
    "listen",
    "workers",
    "lane_loop",
    "log_format",
    "metrics_listen",
    "so_reuseport",
    "peer_id",
    "peer_listen",
];

/// One row of `SHOW CONFIG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    /// Key name, as in the file.
    pub key: String,
    /// Current value, formatted as in the file (durations `"30s"`, lists joined with `", "`).
    pub value: String,
    /// Value when the file does not set the key.
    pub default: String,
    /// Whether a reload applies a change (false: needs a restart).
    pub changeable: bool,
}

/// The rows of `SHOW CONFIG` for `settings`, sorted by key.
pub fn entries(settings: &Settings) -> Vec<ConfigEntry> {
    // main.rs lets RUST_LOG override log_level for the life of the process.
    entries_with(settings, std::env::var_os("RUST_LOG").is_some())
}

/// The rows of `SHOW CONFIG`, given whether `RUST_LOG` pins the log filter.
fn entries_with(settings: &Settings, rust_log_set: bool) -> Vec<ConfigEntry> {
    let defaults = flatten(&Config::default());
    flatten(&settings.raw)
        .into_iter()
        .map(|(key, value)| ConfigEntry {
            default: defaults
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            changeable: !(RESTART_KEYS.contains(&key.as_str())
                || (rust_log_set && key == "log_level")),
            key,
            value,
        })
        .collect()
}

/// `(key, value)` of every serialized top-level key, sorted by key.
fn flatten(config: &Config) -> Vec<(String, String)> {
    // Serializing plain strings, numbers, booleans and lists cannot fail; an empty table would
    // only hide rows, never leak anything.
    let table = match toml::Value::try_from(config) {
        Ok(toml::Value::Table(t)) => t,
        _ => {
            debug_assert!(false, "Config serializes to a table");
            toml::map::Map::new()
        }
    };
    let mut rows: Vec<(String, String)> = table.into_iter().map(|(k, v)| (k, render(&v))).collect();
    rows.sort();
    rows
}

fn render(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => items.iter().map(render).collect::<Vec<_>>().join(", "),
        // `[peers]`: one line, "1 = host:port, 2 = host:port".
        toml::Value::Table(t) => t
            .iter()
            .map(|(k, v)| format!("{k} = {}", render(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// A duration as written in the file: `"0"`, `"30s"`, `"100ms"`, else fractional seconds.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        "0".into()
    } else if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos() == d.subsec_millis() * 1_000_000 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Serde `serialize_with` for duration fields (see [`format_duration`]).
pub fn serialize_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// Serde `serialize_with` for optional strings: None is `""` (so the key still has a row).
pub fn serialize_opt_string<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.as_deref().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    const BASE: &str = r#"
[users.app]
password = "s3cret-pw"
server_password = "server-s3cret"
[databases.app]
primary = "127.0.0.1:5432"
"#;

    fn row<'a>(rows: &'a [ConfigEntry], key: &str) -> &'a ConfigEntry {
        rows.iter()
            .find(|r| r.key == key)
            .unwrap_or_else(|| panic!("no row {key}"))
    }

    /// Every key `Config` accepts, from serde's own "expected one of" list.
    fn accepted_keys() -> Vec<String> {
        let err = toml::from_str::<Config>("no_such_key_at_all = 1").unwrap_err();
        let msg = err.message().to_owned();
        let (_, expected) = msg.split_once("expected one of").expect(&msg);
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn every_top_level_key_has_a_row() {
        let s = parse_str(BASE).unwrap();
        let shown: Vec<String> = entries(&s).into_iter().map(|r| r.key).collect();
        let mut expected: Vec<String> = accepted_keys()
            .into_iter()
            .filter(|k| k != "users" && k != "databases")
            .collect();
        expected.sort();
        assert!(expected.len() > 30, "{expected:?}");
        assert_eq!(shown, expected);
    }

    #[test]
    fn restart_keys_exist() {
        let keys = accepted_keys();
        for k in RESTART_KEYS {
            assert!(keys.iter().any(|a| a == k), "{k} is not a config key");
        }
    }

    #[test]
    fn values_are_formatted_as_in_the_file() {
        let text = format!(
            "listen = \"0.0.0.0:7000\"\nquery_wait_timeout = \"250ms\"\nclient_idle_timeout = 90\n\
             write_functions = [\"a.f\", \"g\"]\npool_mode = \"session\"\nmonitor_user = \"app\"\n{BASE}"
        );
        let rows = entries(&parse_str(&text).unwrap());
        let listen = row(&rows, "listen");
        assert_eq!(
            (
                listen.value.as_str(),
                listen.default.as_str(),
                listen.changeable
            ),
            ("0.0.0.0:7000", "127.0.0.1:6432", false)
        );
        let q = row(&rows, "query_wait_timeout");
        assert_eq!((q.value.as_str(), q.default.as_str()), ("250ms", "120s"));
        assert!(q.changeable);
        assert_eq!(row(&rows, "client_idle_timeout").value, "90s");
        assert_eq!(row(&rows, "client_idle_timeout").default, "0");
        assert_eq!(row(&rows, "lag_check_interval").value, "100ms");
        assert_eq!(row(&rows, "write_functions").value, "a.f, g");
        assert_eq!(row(&rows, "read_only_functions").value, "");
        assert_eq!(row(&rows, "pool_mode").value, "session");
        assert_eq!(row(&rows, "pool_mode").default, "transaction");
        assert_eq!(row(&rows, "monitor_user").value, "app");
        assert_eq!(row(&rows, "monitor_user").default, "");
        assert_eq!(row(&rows, "report_causal_lsn").value, "true");
        assert_eq!(row(&rows, "pool_size").value, "20");
        assert_eq!(row(&rows, "log_format").value, "text");
        assert!(!row(&rows, "workers").changeable);
        assert!(!row(&rows, "metrics_listen").changeable);
    }

    #[test]
    fn log_level_is_not_changeable_under_rust_log() {
        let settings = parse_str(BASE).unwrap();
        assert!(row(&entries_with(&settings, false), "log_level").changeable);
        assert!(!row(&entries_with(&settings, true), "log_level").changeable);
    }

    #[test]
    fn passwords_never_appear() {
        let rows = entries(&parse_str(BASE).unwrap());
        for r in &rows {
            for s in [&r.key, &r.value, &r.default] {
                assert!(!s.contains("s3cret"), "{r:?}");
            }
        }
    }

    #[test]
    fn durations_round_trip_through_the_file_format() {
        for d in [
            Duration::ZERO,
            Duration::from_secs(30),
            Duration::from_millis(100),
            Duration::from_millis(1500),
            Duration::from_micros(250),
            Duration::from_secs(3600),
        ] {
            let text = format_duration(d);
            assert_eq!(super::super::duration::parse(&text), Some(d), "{text}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
    }
}
