//! The DBA's routing rules as loaded: plain data the router matches statements and clients
//! against (`crate::router::rules`). A set holds at most [`MAX_RULES`] rules (a 64-bit mask).

use std::fmt;
use std::time::Duration;

use regex_lite::Regex;
use serde::Deserialize;

/// Most rules per database (a rule set is a 64-bit mask).
pub const MAX_RULES: usize = 64;

/// Where the statements a rule matches may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// The primary.
    Primary,
    /// A replica (like `/* pgtier:replica */`): even a statement the classifier cannot prove
    /// read-only, never a certain write or a session-pinning statement. The client's causal
    /// token still applies; with no replica recent enough, the primary serves it.
    Replica,
    /// The primary or an eligible replica, whichever is least loaded.
    Any,
}

impl RuleAction {
    /// The value as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Primary => "primary",
            RuleAction::Replica => "replica",
            RuleAction::Any => "any",
        }
    }
}

impl fmt::Display for RuleAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rule's replication lag limits for the replicas that may serve its statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LagLimit {
    /// Most time lag (`max_lag`).
    pub time: Option<Duration>,
    /// Most byte lag (`max_lag_bytes`).
    pub bytes: Option<u64>,
}

impl LagLimit {
    /// Whether there is any limit.
    pub fn is_none(&self) -> bool {
        self.time.is_none() && self.bytes.is_none()
    }

    /// Both limits at once (the stricter of each).
    pub fn and(self, other: LagLimit) -> LagLimit {
        fn min<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        LagLimit {
            time: min(self.time, other.time),
            bytes: min(self.bytes, other.bytes),
        }
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Table names, lower-cased (`payments`, `billing.invoices`); empty: no `tables` key.
    pub tables: Box<[Box<str>]>,
    /// Regex on the statement text.
    pub pattern: Option<Regex>,
    /// Client user names; empty: no `users` key.
    pub users: Box<[Box<str>]>,
    /// `application_name` values; empty: no `application_names` key.
    pub application_names: Box<[Box<str>]>,
    /// Where its statements may run.
    pub action: RuleAction,
    /// Lag limits for its reads (replica and any only).
    pub lag: LagLimit,
    /// Line of its `[[databases.NAME.rules]]` header in the config file.
    pub line: usize,
}

impl Rule {
    pub(crate) fn has_statement_keys(&self) -> bool {
        !self.tables.is_empty() || self.pattern.is_some()
    }

    pub(crate) fn has_session_keys(&self) -> bool {
        !self.users.is_empty() || !self.application_names.is_empty()
    }
}

impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        self.tables == other.tables
            && self.pattern.as_ref().map(Regex::as_str) == other.pattern.as_ref().map(Regex::as_str)
            && self.users == other.users
            && self.application_names == other.application_names
            && self.action == other.action
            && self.lag == other.lag
            && self.line == other.line
    }
}

impl Eq for Rule {}

/// A database's rules, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    pub(crate) rules: Box<[Rule]>,
    /// Rules with action `primary`.
    pub(crate) primary: u64,
    /// Rules without statement keys (they match every statement).
    pub(crate) any_statement: u64,
    /// Rules without session keys (they match every client).
    pub(crate) any_session: u64,
}

impl RuleSet {
    /// A set of at most [`MAX_RULES`] rules (the rest are ignored; the config rejects them).
    pub fn new(rules: Vec<Rule>) -> RuleSet {
        let mut set = RuleSet {
            rules: rules.into_iter().take(MAX_RULES).collect(),
            ..RuleSet::default()
        };
        for (i, r) in set.rules.iter().enumerate() {
            let bit = 1u64 << i;
            if r.action == RuleAction::Primary {
                set.primary |= bit;
            }
            if !r.has_statement_keys() {
                set.any_statement |= bit;
            }
            if !r.has_session_keys() {
                set.any_session |= bit;
            }
        }
        set
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Rules with action `primary`, as a mask.
    pub fn primary_mask(&self) -> u64 {
        self.primary
    }
}
