//! `SHOW ROUTE` support: where a statement would go for a client and why, without choosing a
//! node (that happens when the statement runs).

use crate::cluster::LagLimits;
use crate::router::classify::{Class, Hint, Reason};
use crate::router::rules::RuleAction;
use crate::sql::session_state::pins;

use super::unit::Verdict;
use super::{DecidedBy, Router, UnitInfo};

/// Where a statement would go for a client and why (see [`Router::explain`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// "primary", "replica" (the primary when no replica is eligible or recent enough) or
    /// "any" (the primary or a replica, whichever is least loaded).
    pub destination: &'static str,
    /// What decided it.
    pub by: DecidedBy,
    /// The matched rule's action, when a rule decided.
    pub rule_action: Option<RuleAction>,
    /// The lag limits that decide which replicas are eligible, when the rules that apply set
    /// their own (None: the database's).
    pub lag: Option<LagLimits>,
    /// The classifier's verdict for the statement.
    pub class: Class,
    /// Why the classifier said so.
    pub reason: Reason,
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.destination)?;
        match self.by {
            DecidedBy::CertainWrite => write!(f, "the statement writes ({})", self.reason),
            DecidedBy::SessionState => f.write_str("the statement leaves session state"),
            DecidedBy::Hint(Hint::Primary) => f.write_str("hint /* pgtier:primary */"),
            DecidedBy::Hint(Hint::Replica) => f.write_str("hint /* pgtier:replica */"),
            DecidedBy::RouteMode(m) => write!(f, "SET pgtier.route = '{}'", m.as_str()),
            DecidedBy::Rule(i) => write!(
                f,
                "rule {} (action {})",
                i + 1,
                self.rule_action.map_or("?", RuleAction::as_str)
            ),
            DecidedBy::TooManyStatements => {
                f.write_str("too many statements matched by rules in one unit")
            }
            DecidedBy::Default => write!(f, "default classification ({})", self.reason),
        }?;
        if let Some(lag) = self.lag {
            if let Some(t) = lag.time {
                write!(f, ", max_lag {t:?}")?;
            }
            if let Some(b) = lag.bytes {
                write!(f, ", max_lag_bytes {b}")?;
            }
        }
        Ok(())
    }
}

impl Router {
    /// Explains where `sql` (one Query or Parse text) would go for `client`, and why.
    pub fn explain(&self, sql: &[u8], client: &super::ClientRouting) -> Explanation {
        let c = self.classifier().classify(sql);
        let mut unit = UnitInfo::default();
        unit.add_statement(self.rule_set(), sql, &c);
        unit.pins = pins(sql, |name| {
            std::str::from_utf8(name)
                .ok()
                .and_then(crate::sql::params::tracked)
                .is_some()
        })
        .is_some();
        let (verdict, by) = unit.resolve(client);
        let (destination, lag) = match verdict {
            Verdict::Primary => ("primary", None),
            Verdict::Replica { rules, any } => {
                let (lag, any) = self.rule_policy(rules, any);
                (if any { "any" } else { "replica" }, lag)
            }
        };
        Explanation {
            destination,
            by,
            rule_action: match by {
                DecidedBy::Rule(i) => self.rules().get(i).map(|r| r.action),
                _ => None,
            },
            lag,
            class: c.class,
            reason: c.reason,
        }
    }
}
