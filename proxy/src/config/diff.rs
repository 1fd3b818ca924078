//! What a reload cannot apply: keys that changed but take effect only after a restart.

use super::settings::Settings;
use super::show::{entries, RESTART_KEYS};

/// Keys of [`RESTART_KEYS`] whose value differs between `old` and `new` (in that order).
pub fn restart_required(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let (old_rows, new_rows) = (entries(old), entries(new));
    let value = |rows: &[super::show::ConfigEntry], key: &str| {
        rows.iter().find(|r| r.key == key).map(|r| r.value.clone())
    };
    RESTART_KEYS
        .iter()
        .copied()
        .filter(|&key| match key {
            // Compared parsed: "127.0.0.1:6432" and "127.0.0.1:06432" are the same address.
            "listen" => old.listen != new.listen,
            "metrics_listen" => old.metrics_listen != new.metrics_listen,
            _ => value(&old_rows, key) != value(&new_rows, key),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    const BASE: &str = r#"
[users.app]
password = "app"
[databases.app]
primary = "127.0.0.1:5432"
"#;

    fn settings(top: &str) -> Settings {
        parse_str(&format!("{top}\n{BASE}")).unwrap()
    }

    #[test]
    fn nothing_changed_needs_nothing() {
        let a = settings("workers = 2");
        assert!(restart_required(&a, &a.clone()).is_empty());
    }

    #[test]
    fn changeable_keys_need_no_restart() {
        let a = settings("pool_size = 10\nquery_wait_timeout = \"5s\"");
        let b = settings(
            "pool_size = 30\nquery_wait_timeout = \"9s\"\nslow_query_threshold = \"1s\"\n\
             log_level = \"debug\"",
        );
        assert!(restart_required(&a, &b).is_empty());
    }

    #[test]
    fn restart_keys_are_reported_in_order() {
        let a = settings("listen = \"127.0.0.1:6432\"");
        let b = settings(
            "listen = \"127.0.0.1:7432\"\nworkers = 4\nlog_format = \"json\"\n\
             metrics_listen = \"127.0.0.1:9930\"\nlog_level = \"debug\"\npool_size = 3",
        );
        assert_eq!(
            restart_required(&a, &b),
            ["listen", "workers", "log_format", "metrics_listen"]
        );
        assert_eq!(restart_required(&b, &a).len(), 4);
    }

    #[test]
    fn same_address_spelled_differently_is_no_change() {
        let a = settings("metrics_listen = \"127.0.0.1:9930\"");
        let b = settings("metrics_listen = \"127.0.0.1:09930\"");
        assert!(restart_required(&a, &b).is_empty());
    }
}
