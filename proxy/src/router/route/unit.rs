//! What one unit of client work needs for routing, merged over its statements, and the
//! precedence that turns it into a verdict for one client: certain writes and session-pinning
//! statements, hints, `SET pgtier.route`, routing rules, the default classification.

use super::types::{ClientRouting, RouteMode};
use crate::cluster::Lsn;
use crate::router::classify::{Class, Classification, Hint, Reason};
use crate::router::rules::RuleSet;

/// What one unit of client work needs, merged over its statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitInfo {
    /// Write if any statement is.
    pub class: Class,
    /// The first hint comment.
    pub hint: Option<Hint>,
    /// The highest `pgtier:min_lsn` comment.
    pub min_lsn: Option<Lsn>,
    /// A statement leaves session state: the client will be pinned to this server.
    pub pins: bool,
    /// A statement certainly writes (no hint or override sends it to a replica).
    pub certain_write: bool,
    /// A statement (or message) that no routing rule can match is not provably read-only.
    pub unruled_write: bool,
    /// A statement (or message) that no routing rule can match.
    pub unruled: bool,
    /// A statement calls functions `pg_proc` lists as VOLATILE that are not known writers
    /// ([`Reason::VolatileFunction`]): not a certain write, so a routing rule may send it to a
    /// replica, but hints and `SET pgtier.route` do not.
    pub volatile_call: bool,
    /// The statements some routing rule may match (empty when the database has no rules).
    pub rules: RuleFacts,
}

impl Default for UnitInfo {
    fn default() -> UnitInfo {
        UnitInfo {
            class: Class::Read,
            hint: None,
            min_lsn: None,
            pins: false,
            certain_write: false,
            unruled_write: false,
            unruled: false,
            volatile_call: false,
            rules: RuleFacts::default(),
        }
    }
}

/// Per statement of a unit that a routing rule may match: the rules whose statement keys
/// match it (a mask, see [`RuleSet::statement_mask`]) and whether it is not provably
/// read-only. Distinct entries only; a unit with more than fit goes to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuleFacts {
    masks: [u64; RULE_FACTS],
    /// Bit i: entry i is not provably read-only.
    writes: u8,
    len: u8,
    /// More distinct entries than fit.
    overflow: bool,
}

/// Distinct (mask, class) entries kept per unit.
const RULE_FACTS: usize = 4;

impl RuleFacts {
    fn push(&mut self, mask: u64, write: bool) {
        if self.entries().any(|e| e == (mask, write)) {
            return;
        }
        let n = usize::from(self.len);
        if n == RULE_FACTS {
            self.overflow = true;
            return;
        }
        self.masks[n] = mask;
        self.writes |= u8::from(write) << n;
        self.len += 1;
    }

    fn merge(&mut self, other: &RuleFacts) {
        self.overflow |= other.overflow;
        for (mask, write) in other.entries() {
            self.push(mask, write);
        }
    }

    /// (statement mask, not provably read-only) per entry.
    fn entries(&self) -> impl Iterator<Item = (u64, bool)> + '_ {
        (0..usize::from(self.len)).map(|i| (self.masks[i], self.writes & (1 << i) != 0))
    }

    fn is_empty(&self) -> bool {
        self.len == 0 && !self.overflow
    }
}

impl UnitInfo {
    /// A unit that must run on the primary.
    pub fn write() -> UnitInfo {
        UnitInfo {
            class: Class::Write,
            certain_write: true,
            unruled_write: true,
            unruled: true,
            ..UnitInfo::default()
        }
    }

    /// Adds one statement (its text `sql` and classification `c`): with the database's
    /// routing `rules`, also the rules whose statement keys match it.
    pub fn add_statement(&mut self, rules: Option<&RuleSet>, sql: &[u8], c: &Classification) {
        match rules {
            None => self.add(c),
            Some(rules) => self.add_ruled(c, rules.statement_mask(sql, &c.tables)),
        }
    }

    /// Adds one statement's classification (no routing rule can match it).
    pub fn add(&mut self, c: &Classification) {
        self.add_class(c.class);
        self.unruled = true;
        self.hint = self.hint.or(c.hint);
        self.min_lsn = self.min_lsn.max(c.min_lsn);
        self.certain_write |= c.class == Class::Write && certainly_writes(c.reason);
        self.volatile_call |= c.reason == Reason::VolatileFunction;
    }

    /// Adds one statement's classification and the rules whose statement keys match it
    /// (`statement_mask`, see [`RuleSet::statement_mask`]; 0: none can match it).
    pub fn add_ruled(&mut self, c: &Classification, statement_mask: u64) {
        if statement_mask == 0 {
            return self.add(c);
        }
        let (unruled_write, unruled) = (self.unruled_write, self.unruled);
        self.add(c);
        (self.unruled_write, self.unruled) = (unruled_write, unruled);
        self.rules.push(statement_mask, c.class == Class::Write);
    }

    /// Adds what another unit (or statement) needs.
    pub fn merge(&mut self, other: &UnitInfo) {
        if other.class == Class::Write {
            self.class = Class::Write;
        }
        self.hint = self.hint.or(other.hint);
        self.min_lsn = self.min_lsn.max(other.min_lsn);
        self.pins |= other.pins;
        self.certain_write |= other.certain_write;
        self.unruled_write |= other.unruled_write;
        self.unruled |= other.unruled;
        self.volatile_call |= other.volatile_call;
        self.rules.merge(&other.rules);
    }

    /// Adds a class (Write wins), of a message no routing rule can match.
    pub fn add_class(&mut self, class: Class) {
        if class == Class::Write {
            self.class = Class::Write;
            self.unruled_write = true;
            self.unruled = true;
        }
    }

    /// Whether this unit may run on a replica for this client.
    pub fn replica_ok(&self, client: &ClientRouting) -> bool {
        !matches!(self.resolve(client).0, Verdict::Primary)
    }

    /// Where the unit may go and what decided it, in order of precedence: a certain write or a
    /// session-pinning statement (primary), a hint comment, `SET pgtier.route`, the routing
    /// rules, the classification.
    pub(super) fn resolve(&self, client: &ClientRouting) -> (Verdict, DecidedBy) {
        if self.certain_write {
            // A write would only fail on a replica.
            return (Verdict::Primary, DecidedBy::CertainWrite);
        }
        if self.pins {
            // A pinned replica would take the client's later writes.
            return (Verdict::Primary, DecidedBy::SessionState);
        }
        if let Some(h) = self.hint {
            let v = match h {
                Hint::Primary => Verdict::Primary,
                Hint::Replica if self.volatile_call => {
                    return (Verdict::Primary, DecidedBy::CertainWrite)
                }
                Hint::Replica => Verdict::Replica {
                    rules: 0,
                    any: false,
                },
            };
            return (v, DecidedBy::Hint(h));
        }
        if client.mode == RouteMode::Replica && self.volatile_call {
            return (Verdict::Primary, DecidedBy::CertainWrite);
        }
        match client.mode {
            RouteMode::Primary => return (Verdict::Primary, DecidedBy::RouteMode(client.mode)),
            RouteMode::Replica => {
                return (
                    Verdict::Replica {
                        rules: 0,
                        any: false,
                    },
                    DecidedBy::RouteMode(client.mode),
                )
            }
            RouteMode::Auto => {}
        }
        if self.rules.is_empty() {
            return match self.class {
                Class::Read => (
                    Verdict::Replica {
                        rules: 0,
                        any: false,
                    },
                    DecidedBy::Default,
                ),
                Class::Write => (Verdict::Primary, DecidedBy::Default),
            };
        }
        if self.rules.overflow {
            return (Verdict::Primary, DecidedBy::TooManyStatements);
        }
        // Per statement: its first rule, else its class. Any statement for the primary sends
        // the unit there; the rules that let the others go elsewhere all apply.
        let mut used = 0u64;
        let mut all_any = !self.unruled;
        let mut default_write = self.unruled_write;
        for (mask, write) in self.rules.entries() {
            match RuleSet::first(mask, client.rules_on) {
                Some(r) if client.rules_primary & (1 << r) != 0 => {
                    return (Verdict::Primary, DecidedBy::Rule(r));
                }
                Some(r) => used |= 1 << r,
                None => {
                    all_any = false;
                    default_write |= write;
                }
            }
        }
        if default_write {
            return (Verdict::Primary, DecidedBy::Default);
        }
        let by = match used {
            0 => DecidedBy::Default,
            _ => DecidedBy::Rule(used.trailing_zeros() as usize),
        };
        // Whether every used rule is `any` is known to the router (it has the actions).
        (
            Verdict::Replica {
                rules: used,
                any: all_any && used != 0,
            },
            by,
        )
    }
}

/// Where a unit may go, before a node is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The primary only.
    Primary,
    /// A replica (the primary when none is eligible), within the lag limits of `rules`; `any`:
    /// every statement was matched by a rule whose action may be `any` (the primary is then a
    /// candidate too if all of them are).
    Replica { rules: u64, any: bool },
}

/// What decided where a unit goes (for `SHOW ROUTE` and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// A statement certainly writes: the primary, whatever else says.
    CertainWrite,
    /// A statement leaves session state (the client is pinned to the server): the primary.
    SessionState,
    /// A `/* pgtier:primary */` or `/* pgtier:replica */` comment.
    Hint(Hint),
    /// `SET pgtier.route`.
    RouteMode(RouteMode),
    /// The routing rule at this index (0-based, in file order).
    Rule(usize),
    /// More distinct statements that rules may match than pgtier tracks in one unit: the
    /// primary.
    TooManyStatements,
    /// The default classification.
    Default,
}

/// Whether a Write classification is certain (a hint, `pgtier.route` or a rule cannot send it
/// to a replica), as opposed to "could not prove it reads only" (which includes
/// [`Reason::VolatileFunction`]: only rules may send those to a replica).
fn certainly_writes(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::WriteStatement
            | Reason::LockingClause
            | Reason::WritableCte
            | Reason::SelectInto
            | Reason::WriteFunction
            | Reason::CopyFrom
            | Reason::CopyToServer
            | Reason::ExplainAnalyze
    )
}
