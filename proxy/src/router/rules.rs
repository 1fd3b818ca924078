//! DBA routing rules (`[[databases.NAME.rules]]`), checked in order before the default
//! classification. A rule matches a statement when every match key it has matches: `tables`
//! (the statement touches any of them), `pattern` (a regex on the statement text), `users`,
//! `application_names`. The first matching rule's action decides where the statement may run.
//!
//! Matching is split in two so that each half is computed where its inputs are, once:
//! - [`RuleSet::statement_mask`]: the rules whose statement keys (`tables`, `pattern`) match a
//!   statement text (rules without statement keys always do). It depends on the text only, so
//!   it is kept with the unit's classification (and with a prepared statement's).
//! - [`RuleSet::session_mask`]: the rules whose `users` / `application_names` match the client
//!   (rules without them always do), recomputed when the client is routed (its
//!   `application_name` may change with SET).
//!
//! A statement's rule is the lowest bit of the two masks ANDed: one AND and a
//! `trailing_zeros` per statement. A set holds at most [`MAX_RULES`] rules.
//!
//! A rule's lag limits (`max_lag`, `max_lag_bytes`) replace the database's for its reads: the
//! router hands them to the replica choice with the target (see `route::Target::Replica`).

pub use crate::config::rule_set::{LagLimit, Rule, RuleAction, RuleSet, MAX_RULES};

impl Rule {
    fn matches_statement(&self, sql: &[u8], tables: &[String]) -> bool {
        if !self.tables.is_empty()
            && !tables
                .iter()
                .any(|t| self.tables.iter().any(|r| table_matches(r, t)))
        {
            return false;
        }
        match &self.pattern {
            None => true,
            // Text that is not UTF-8 matches no pattern.
            Some(re) => std::str::from_utf8(sql).is_ok_and(|s| re.is_match(s)),
        }
    }

    fn matches_session(&self, user: &str, application_name: &str) -> bool {
        (self.users.is_empty() || self.users.iter().any(|u| &**u == user))
            && (self.application_names.is_empty()
                || self
                    .application_names
                    .iter()
                    .any(|a| &**a == application_name))
    }
}

/// Whether a rule's table name matches a table a statement touches (both lower-cased). A bare
/// rule name matches that table in any schema; a qualified one matches it qualified the same
/// way, or written bare (the search_path may resolve it there).
pub fn table_matches(rule: &str, stmt: &str) -> bool {
    if rule == stmt {
        return true;
    }
    match (rule.rsplit_once('.'), stmt.rsplit_once('.')) {
        (None, Some((_, name))) => name == rule,
        (Some((_, name)), None) => name == stmt,
        _ => false,
    }
}

impl RuleSet {
    /// The rules whose statement keys match `sql` touching `tables`, as a mask.
    pub fn statement_mask(&self, sql: &[u8], tables: &[String]) -> u64 {
        let mut mask = self.any_statement;
        for (i, r) in self.rules.iter().enumerate() {
            if r.has_statement_keys() && r.matches_statement(sql, tables) {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// The rules whose session keys match a client, as a mask.
    pub fn session_mask(&self, user: &str, application_name: &str) -> u64 {
        let mut mask = self.any_session;
        for (i, r) in self.rules.iter().enumerate() {
            if r.has_session_keys() && r.matches_session(user, application_name) {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// The first rule of a statement with `statement_mask` for a client with `session_mask`.
    pub fn first(statement_mask: u64, session_mask: u64) -> Option<usize> {
        let both = statement_mask & session_mask;
        (both != 0).then(|| both.trailing_zeros() as usize)
    }

    /// The rule at `index`.
    pub fn get(&self, index: usize) -> Option<&Rule> {
        self.rules.get(index)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use regex_lite::Regex;

    use super::*;

    fn rule(action: RuleAction) -> Rule {
        Rule {
            tables: Box::new([]),
            pattern: None,
            users: Box::new([]),
            application_names: Box::new([]),
            action,
            lag: LagLimit::default(),
            line: 1,
        }
    }

    fn names(v: &[&str]) -> Box<[Box<str>]> {
        v.iter().map(|s| Box::from(*s)).collect()
    }

    fn tables(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn table_names_match_bare_and_qualified() {
        assert!(table_matches("payments", "payments"));
        assert!(table_matches("payments", "billing.payments"));
        assert!(table_matches("billing.payments", "billing.payments"));
        assert!(table_matches("billing.payments", "payments"));
        assert!(!table_matches("billing.payments", "other.payments"));
        assert!(!table_matches("payments", "payments_archive"));
        assert!(!table_matches("payments", "payments.archive"));
    }

    #[test]
    fn first_matching_rule_wins_and_every_key_must_match() {
        let set = RuleSet::new(vec![
            Rule {
                tables: names(&["payments"]),
                ..rule(RuleAction::Primary)
            },
            Rule {
                pattern: Some(Regex::new(r"(?i)^\s*select\s+report_").unwrap()),
                users: names(&["analyst"]),
                ..rule(RuleAction::Replica)
            },
            Rule {
                application_names: names(&["batch"]),
                ..rule(RuleAction::Any)
            },
        ]);
        assert_eq!(set.primary_mask(), 0b001);
        let web = set.session_mask("app", "web");
        let analyst = set.session_mask("analyst", "web");
        let batch = set.session_mask("app", "batch");
        assert_eq!((web, analyst, batch), (0b001, 0b011, 0b101));

        let pay = set.statement_mask(b"SELECT * FROM payments", &tables(&["public.payments"]));
        assert_eq!(RuleSet::first(pay, web), Some(0));
        assert_eq!(RuleSet::first(pay, batch), Some(0));

        let report = set.statement_mask(b"select report_daily()", &[]);
        assert_eq!(report, 0b110);
        assert_eq!(RuleSet::first(report, analyst), Some(1));
        // The pattern matches but the user does not: the next rule, or none.
        assert_eq!(RuleSet::first(report, web), None);
        assert_eq!(RuleSet::first(report, batch), Some(2));

        let other = set.statement_mask(b"SELECT 1", &[]);
        assert_eq!(RuleSet::first(other, web), None);
        // Text that is not UTF-8 matches no pattern.
        assert_eq!(set.statement_mask(b"select report_\xff", &[]), 0b100);
    }

    #[test]
    fn lag_limits_combine_to_the_stricter() {
        let a = LagLimit {
            time: Some(Duration::from_secs(5)),
            bytes: None,
        };
        let b = LagLimit {
            time: Some(Duration::from_secs(1)),
            bytes: Some(10),
        };
        assert_eq!(
            a.and(b),
            LagLimit {
                time: Some(Duration::from_secs(1)),
                bytes: Some(10)
            }
        );
        assert!(LagLimit::default().is_none());
    }
}
