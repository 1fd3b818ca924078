//! `[[databases.NAME.rules]]`: the DBA's routing rules, checked and compiled (regexes once,
//! names lower-cased) into a [`RuleSet`]. Every problem points at the value (or the rule's
//! header) it comes from.

use std::sync::Arc;
use std::time::Duration;

use regex_lite::Regex;
use serde::Deserialize;

use super::load::Validator;
use super::rule_set::{LagLimit, Rule, RuleAction, RuleSet, MAX_RULES};
use super::schema::Config;

/// One `[[databases.NAME.rules]]` entry as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleConfig {
    /// Matches a statement that touches any of these tables (`payments`, `billing.invoices`).
    pub tables: Option<Vec<String>>,
    /// Matches a statement whose text matches this regex.
    pub pattern: Option<String>,
    /// Matches clients logged in as one of these users.
    pub users: Option<Vec<String>>,
    /// Matches clients whose current `application_name` is one of these.
    pub application_names: Option<Vec<String>>,
    /// Where matched statements may run (required).
    pub action: Option<RuleAction>,
    /// Most time lag of a replica serving matched statements.
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    pub max_lag: Option<Duration>,
    /// Most byte lag of a replica serving matched statements.
    pub max_lag_bytes: Option<u64>,
}

/// The path of `key` in rule `index` of database `name`.
fn path<'a>(name: &'a str, index: &'a str, key: &'a str) -> [&'a str; 5] {
    ["databases", name, "rules", index, key]
}

impl Validator<'_> {
    /// Checks and compiles the rules of database `name` (problems are recorded; bad rules are
    /// left out).
    pub(super) fn rules(&mut self, raw: &Config, name: &str, rules: &[RuleConfig]) -> Arc<RuleSet> {
        let mut out = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            let index = i.to_string();
            let at = |key: &'static str| path(name, &index, key);
            let header = ["databases", name, "rules", &index];
            if i == MAX_RULES {
                self.fail(
                    &header,
                    format!("more than {MAX_RULES} rules: merge some (a rule may list several tables, users or names)"),
                );
                break;
            }
            let mut ok = true;
            let mut list = |v: &mut Self, key: &'static str, values: &Option<Vec<String>>| {
                let Some(values) = values else {
                    return Box::default();
                };
                if values.is_empty() {
                    v.fail(
                        &at(key),
                        "an empty list matches nothing: remove the key or list at least one name",
                    );
                    ok = false;
                }
                if values.iter().any(|s| s.trim().is_empty()) {
                    v.fail(&at(key), "names must not be empty");
                    ok = false;
                }
                values
                    .iter()
                    .map(|s| Box::from(s.as_str()))
                    .collect::<Box<[Box<str>]>>()
            };
            let tables: Box<[Box<str>]> = list(self, "tables", &r.tables)
                .iter()
                .map(|t| Box::from(t.to_lowercase()))
                .collect();
            let users = list(self, "users", &r.users);
            let application_names = list(self, "application_names", &r.application_names);
            if let Some(u) = users.iter().find(|u| !raw.users.contains_key(&***u)) {
                self.fail(
                    &at("users"),
                    format!("no [users.{u}] section: clients log in as configured users only"),
                );
                ok = false;
            }
            let pattern = match &r.pattern {
                None => None,
                Some(p) if p.is_empty() => {
                    self.fail(&at("pattern"), "an empty pattern matches everything: remove the key to match every statement");
                    ok = false;
                    None
                }
                Some(p) => match Regex::new(p) {
                    Ok(re) => Some(re),
                    Err(e) => {
                        let why = e.to_string().replace('\n', " ");
                        self.fail(&at("pattern"), format!("invalid regex: {why}"));
                        ok = false;
                        None
                    }
                },
            };
            if r.tables.is_none()
                && r.pattern.is_none()
                && r.users.is_none()
                && r.application_names.is_none()
            {
                self.fail(
                    &header,
                    "a rule needs at least one of tables, pattern, users, application_names",
                );
                ok = false;
            }
            let Some(action) = r.action else {
                self.fail(
                    &header,
                    "missing action: \"primary\", \"replica\" or \"any\"",
                );
                continue;
            };
            for (key, set) in [
                ("max_lag", r.max_lag.is_some()),
                ("max_lag_bytes", r.max_lag_bytes.is_some()),
            ] {
                if set && action == RuleAction::Primary {
                    self.fail(
                        &at(key),
                        "a lag limit applies to replicas: not allowed with action = \"primary\"",
                    );
                    ok = false;
                }
            }
            if r.max_lag.is_some_and(|d| d.is_zero()) {
                self.fail(
                    &at("max_lag"),
                    "must be greater than 0 (leave it out for the database's limit)",
                );
                ok = false;
            }
            if r.max_lag_bytes == Some(0) {
                self.fail(
                    &at("max_lag_bytes"),
                    "must be greater than 0 (leave it out for the database's limit)",
                );
                ok = false;
            }
            if ok {
                out.push(Rule {
                    tables,
                    pattern,
                    users,
                    application_names,
                    action,
                    lag: LagLimit {
                        time: r.max_lag,
                        bytes: r.max_lag_bytes,
                    },
                    line: self.line_of(&header),
                });
            }
        }
        Arc::new(RuleSet::new(out))
    }
}

#[cfg(test)]
mod tests {
    use super::super::rule_set::RuleAction;
    use crate::config::parse_str;

    const BASE: &str = r#"[users.app]
password = "app"
[users.analyst]
password = "x"
[databases.app]
primary = "127.0.0.1:5432"
replicas = ["127.0.0.1:5433"]
"#;

    /// (key, line, column, message) of every problem in BASE (7 lines) + `rules`.
    fn problems(rules: &str) -> Vec<(String, usize, usize, String)> {
        let text = format!("{BASE}{rules}");
        parse_str(&text)
            .unwrap_err()
            .into_iter()
            .map(|p| (p.key, p.line, p.column, p.message))
            .collect()
    }

    #[test]
    fn valid_rules_compile_in_order() {
        let text = format!(
            "{BASE}{}",
            r#"
[[databases.app.rules]]
tables = ["Payments", "billing.invoices"]
action = "primary"

[[databases.app.rules]]
pattern = '(?i)^select report_'
users = ["analyst"]
action = "replica"
max_lag = "5s"
max_lag_bytes = 1000

[[databases.app.rules]]
application_names = ["batch"]
action = "any"
"#
        );
        let s = parse_str(&text).unwrap();
        let rules = &s.databases["app"].routing.rules;
        assert_eq!(rules.rules().len(), 3);
        let r = &rules.rules()[0];
        assert_eq!(r.action, RuleAction::Primary);
        assert_eq!(&*r.tables[0], "payments");
        assert_eq!(r.line, 9);
        let r = &rules.rules()[1];
        assert_eq!(r.action, RuleAction::Replica);
        assert_eq!(r.lag.bytes, Some(1000));
        assert_eq!(r.lag.time, Some(std::time::Duration::from_secs(5)));
        assert_eq!(rules.rules()[2].action, RuleAction::Any);
        // No rules: an empty set.
        assert!(parse_str(BASE).unwrap().databases["app"]
            .routing
            .rules
            .is_empty());
    }

    #[test]
    fn bad_regex_points_at_the_pattern() {
        let p = problems("[[databases.app.rules]]\npattern = \"select (\"\naction = \"replica\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        let (key, line, col, msg) = &p[0];
        assert_eq!(key, "databases.app.rules.0.pattern");
        assert_eq!((*line, *col), (9, 11));
        assert!(msg.starts_with("invalid regex: "), "{msg}");
    }

    #[test]
    fn the_second_rule_is_located_too() {
        let p = problems(
            "[[databases.app.rules]]\ntables = [\"a\"]\naction = \"primary\"\n\n[[databases.app.rules]]\ntables = [\"b\"]\naction = \"primary\"\nmax_lag = \"1s\"\n",
        );
        assert_eq!(
            p,
            [(
                "databases.app.rules.1.max_lag".to_owned(),
                15,
                11,
                "a lag limit applies to replicas: not allowed with action = \"primary\"".to_owned()
            )]
        );
    }

    #[test]
    fn unknown_key_and_unknown_action_have_line_and_column() {
        let p = problems("[[databases.app.rules]]\ntable = [\"a\"]\naction = \"primary\"\n");
        assert_eq!((p[0].1, p[0].2), (9, 1), "{p:?}");
        assert_eq!(p[0].3, "unknown key `table` (did you mean `tables`?)");

        let p = problems("[[databases.app.rules]]\ntables = [\"a\"]\naction = \"sideways\"\n");
        assert_eq!((p[0].1, p[0].2), (10, 10), "{p:?}");
        assert!(p[0].3.contains("unknown variant `sideways`"), "{p:?}");
    }

    #[test]
    fn missing_action_and_match_keys_point_at_the_rule() {
        let p = problems("[[databases.app.rules]]\ntables = [\"a\"]\n");
        assert_eq!(
            p,
            [(
                "databases.app.rules.0".to_owned(),
                8,
                1,
                "missing action: \"primary\", \"replica\" or \"any\"".to_owned()
            )]
        );
        let p = problems("[[databases.app.rules]]\naction = \"replica\"\n");
        assert_eq!(
            (p[0].0.as_str(), p[0].1, p[0].2),
            ("databases.app.rules.0", 8, 1)
        );
        assert!(p[0].3.contains("at least one of"), "{p:?}");
    }

    #[test]
    fn empty_lists_unknown_users_and_zero_limits_are_errors() {
        let p = problems(
            "[[databases.app.rules]]\ntables = []\nusers = [\"nobody\"]\naction = \"any\"\nmax_lag_bytes = 0\n",
        );
        let keys: Vec<(&str, usize, usize)> = p.iter().map(|p| (p.0.as_str(), p.1, p.2)).collect();
        assert_eq!(
            keys,
            [
                ("databases.app.rules.0.tables", 9, 10),
                ("databases.app.rules.0.users", 10, 9),
                ("databases.app.rules.0.max_lag_bytes", 12, 17),
            ]
        );
        assert!(p[1].3.contains("no [users.nobody] section"), "{p:?}");
    }

    #[test]
    fn too_many_rules() {
        let one = "[[databases.app.rules]]\ntables = [\"t\"]\naction = \"primary\"\n";
        let p = problems(&one.repeat(65));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, "databases.app.rules.64");
        assert_eq!(p[0].1, 8 + 64 * 3);
    }
}
