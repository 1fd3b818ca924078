//! Function volatility knowledge: may a call of this function run on a replica?
//!
//! Three sources, in this order of precedence:
//! 1. config overrides (`with_overrides`): the operator's word wins;
//! 2. built-in lists: functions that write (or change session/cluster state) whatever
//!    `pg_proc` says, and volatile functions that are known to be read-only (`random()`);
//! 3. a `pg_proc` snapshot read from the primary (`learn_pg_proc` with [`PG_PROC_QUERY`]):
//!    volatile means the primary; a name the snapshot does not know means the primary.
//!
//! Before a snapshot is loaded, only a built-in allowlist of common immutable/stable
//! functions counts as read-only; any other call goes to the primary.

use std::collections::HashMap;

use super::builtins::{allow_before_snapshot, is_builtin_write, read_only_volatile, sql_syntax};

/// The query the proxy runs on the primary to learn function volatility: one row per
/// (schema, name) with the most volatile `provolatile` of its overloads (`v` > `s` > `i`).
///
/// All schemas are included (pg_catalog too, about 3,000 short rows): a name missing from
/// the snapshot is then really unknown (created after the snapshot, or a typo), and goes to
/// the primary. Overloads are folded so the result stays small.
pub const PG_PROC_QUERY: &str = "SELECT n.nspname::text AS schema, p.proname::text AS name, \
max(p.provolatile::text) AS provolatile \
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
WHERE n.nspname <> 'pg_toast' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%' \
GROUP BY 1, 2";

/// `provolatile` of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Volatility {
    /// `i`: same result for the same arguments, forever.
    Immutable,
    /// `s`: same result within one statement.
    Stable,
    /// `v` (or anything unrecognised): may change anything.
    Volatile,
}

impl Volatility {
    /// From `pg_proc.provolatile`; an unknown letter counts as volatile.
    pub fn from_provolatile(c: char) -> Volatility {
        match c {
            'i' => Volatility::Immutable,
            's' => Volatility::Stable,
            _ => Volatility::Volatile,
        }
    }
}

/// What a call of a function means for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Known to be read-only (immutable or stable, built-in lists, `read_only_functions`).
    Read,
    /// A known writer (built-in list, `write_functions`) or a function not known at all.
    Write,
    /// Listed VOLATILE in `pg_proc`, and not a known writer: not provably read-only, yet a
    /// routing rule may send it to a replica.
    Volatile,
}

/// A possibly schema-qualified function name from config, normalised like Postgres does
/// (unquoted parts lower-cased, quoted parts exact).
#[derive(Debug, Clone, PartialEq, Eq)]
struct QualName {
    schema: Option<String>,
    name: String,
}

impl QualName {
    fn parse(s: &str) -> Option<QualName> {
        let mut parts = Vec::new();
        let mut cur = String::new();
        let mut chars = s.trim().chars().peekable();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    cur.push('"');
                }
                '"' => quoted = !quoted,
                '.' if !quoted => parts.push(std::mem::take(&mut cur)),
                c if quoted => cur.push(c),
                c => cur.extend(c.to_lowercase()),
            }
        }
        parts.push(cur);
        // A trailing "()" or argument list is tolerated: `app.f()`.
        if let Some(last) = parts.last_mut() {
            if let Some(p) = last.find('(') {
                last.truncate(p);
            }
        }
        let name = parts.pop().filter(|n| !n.is_empty())?;
        Some(QualName {
            schema: parts.pop(),
            name,
        })
    }

    /// Matches a call of `schema.name` (`schema` None when the call is unqualified).
    fn matches(&self, schema: Option<&str>, name: &str) -> bool {
        self.name == name
            && match (&self.schema, schema) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// Function volatility knowledge: built-in lists, `pg_proc`, config overrides.
#[derive(Debug, Clone, Default)]
pub struct FunctionTable {
    /// name -> [(schema, most volatile overload)]; None until `pg_proc` has been read.
    snapshot: Option<HashMap<String, Vec<(String, Volatility)>>>,
    write_overrides: Vec<QualName>,
    read_only_overrides: Vec<QualName>,
}

impl FunctionTable {
    /// The built-in knowledge only (used until `pg_proc` has been read).
    pub fn builtin() -> FunctionTable {
        FunctionTable::default()
    }

    /// Adds config overrides: functions that must go to the primary, and functions that
    /// are read-only whatever `pg_proc` says. Names may be schema-qualified (`app.f`);
    /// unquoted names match case-insensitively. Write overrides win over read-only ones.
    pub fn with_overrides(
        mut self,
        write_functions: &[String],
        read_only_functions: &[String],
    ) -> FunctionTable {
        self.write_overrides
            .extend(write_functions.iter().filter_map(|s| QualName::parse(s)));
        self.read_only_overrides.extend(
            read_only_functions
                .iter()
                .filter_map(|s| QualName::parse(s)),
        );
        self
    }

    /// Replaces the `pg_proc` snapshot with `rows` of (schema, name, provolatile), as
    /// returned by [`PG_PROC_QUERY`]. Several rows for one (schema, name) keep the most
    /// volatile.
    pub fn learn_pg_proc(&mut self, rows: impl IntoIterator<Item = (String, String, char)>) {
        let mut map: HashMap<String, Vec<(String, Volatility)>> = HashMap::new();
        for (schema, name, vol) in rows {
            let vol = Volatility::from_provolatile(vol);
            let entries = map.entry(name).or_default();
            match entries.iter_mut().find(|(s, _)| *s == schema) {
                Some(e) if vol == Volatility::Volatile => e.1 = vol,
                Some(_) => {}
                None => entries.push((schema, vol)),
            }
        }
        self.snapshot = Some(map);
    }

    /// Whether a `pg_proc` snapshot is loaded.
    pub fn has_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    /// Number of distinct function names in the snapshot (0 without one).
    pub fn snapshot_len(&self) -> usize {
        self.snapshot.as_ref().map_or(0, HashMap::len)
    }

    /// Whether a call of `schema.name` must run on the primary. Names are as Postgres
    /// resolves them: unquoted identifiers already lower-cased by the caller.
    pub fn call_needs_primary(&self, schema: Option<&str>, name: &str) -> bool {
        self.call(schema, name) != Call::Read
    }

    /// What a call of `schema.name` is (names as in [`FunctionTable::call_needs_primary`]).
    pub fn call(&self, schema: Option<&str>, name: &str) -> Call {
        if self.write_overrides.iter().any(|q| q.matches(schema, name)) {
            return Call::Write;
        }
        if self
            .read_only_overrides
            .iter()
            .any(|q| q.matches(schema, name))
        {
            return Call::Read;
        }
        if is_builtin_write(name) {
            return Call::Write;
        }
        // Unqualified names resolve to pg_catalog first (it is implicitly first on the
        // search_path), so the built-in read-only lists apply to them.
        let catalog = schema.is_none_or(|s| s == "pg_catalog");
        if schema.is_none() && sql_syntax().contains(name) {
            return Call::Read;
        }
        if catalog && read_only_volatile().contains(name) {
            return Call::Read;
        }
        match &self.snapshot {
            Some(snap) => match snap.get(name) {
                None => Call::Write, // unknown
                Some(entries) => {
                    let mut found = false;
                    for (s, vol) in entries {
                        if schema.is_none_or(|want| want == s) {
                            found = true;
                            if *vol == Volatility::Volatile {
                                return Call::Volatile;
                            }
                        }
                    }
                    if found {
                        Call::Read
                    } else {
                        Call::Write
                    }
                }
            },
            None if catalog && allow_before_snapshot().contains(name) => Call::Read,
            None => Call::Write,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn builtin_lists() {
        let f = FunctionTable::builtin();
        for w in [
            "nextval",
            "setval",
            "pg_advisory_lock",
            "pg_advisory_xact_lock_shared",
            "pg_try_advisory_lock",
            "pg_advisory_unlock_all",
            "set_config",
            "txid_current",
            "pg_notify",
            "lo_import",
            "lo_from_bytea",
            "dblink_exec",
            "dblink",
            "pg_stat_reset_shared",
            "setseed",
            "my_function",
        ] {
            assert!(f.call_needs_primary(None, w), "{w}");
        }
        for r in [
            "random",
            "now",
            "count",
            "lower",
            "pg_is_in_recovery",
            "gen_random_uuid",
            "format_type",
        ] {
            assert!(!f.call_needs_primary(None, r), "{r}");
            assert!(!f.call_needs_primary(Some("pg_catalog"), r), "{r}");
        }
        // A user's function with a built-in name is not the built-in.
        assert!(f.call_needs_primary(Some("app"), "lower"));
        assert!(f.call_needs_primary(Some("app"), "nextval"));
    }

    #[test]
    fn snapshot_rules() {
        let mut f = FunctionTable::builtin();
        f.learn_pg_proc([
            ("app".into(), "audit_log".into(), 'v'),
            ("app".into(), "stable_fn".into(), 's'),
            ("app".into(), "pure".into(), 'i'),
            ("app".into(), "pure".into(), 'v'), // a volatile overload
            ("pg_catalog".into(), "lower".into(), 'i'),
            ("pg_catalog".into(), "random".into(), 'v'),
            ("pg_catalog".into(), "nextval".into(), 'v'),
            ("public".into(), "shared".into(), 's'),
            ("audit".into(), "shared".into(), 'v'),
        ]);
        assert!(f.has_snapshot());
        assert!(f.call_needs_primary(None, "audit_log"));
        assert!(f.call_needs_primary(Some("app"), "audit_log"));
        assert!(!f.call_needs_primary(None, "stable_fn"));
        assert!(!f.call_needs_primary(Some("app"), "stable_fn"));
        assert!(f.call_needs_primary(Some("other"), "stable_fn"));
        assert!(f.call_needs_primary(None, "pure"));
        assert!(!f.call_needs_primary(None, "lower"));
        assert!(!f.call_needs_primary(None, "random"));
        assert!(f.call_needs_primary(None, "nextval"));
        assert!(f.call_needs_primary(None, "count"), "unknown once loaded");
        assert!(
            !f.call_needs_primary(None, "coalesce"),
            "syntax, not in pg_proc"
        );
        assert!(!f.call_needs_primary(None, "current_timestamp"));
        assert!(f.call_needs_primary(Some("app"), "coalesce"));
        assert!(f.call_needs_primary(None, "shared"));
        assert!(!f.call_needs_primary(Some("public"), "shared"));
        assert!(f.call_needs_primary(Some("audit"), "shared"));
        // Volatile in pg_proc vs known writers and unknown names.
        assert_eq!(f.call(None, "audit_log"), Call::Volatile);
        assert_eq!(f.call(None, "nextval"), Call::Write);
        assert_eq!(f.call(None, "count"), Call::Write);
        assert_eq!(f.call(Some("other"), "stable_fn"), Call::Write);
        assert_eq!(f.call(None, "stable_fn"), Call::Read);
    }

    #[test]
    fn overrides() {
        let f = FunctionTable::builtin().with_overrides(
            &strings(&["app.Touch", "\"Weird\"", "lower"]),
            &strings(&["app.report", "my_fn()", "nextval", "lower"]),
        );
        assert!(f.call_needs_primary(Some("app"), "touch"));
        assert!(f.call_needs_primary(None, "touch"));
        assert!(f.call_needs_primary(None, "Weird"));
        assert!(f.call_needs_primary(None, "lower"), "write override wins");
        assert!(!f.call_needs_primary(Some("app"), "report"));
        assert!(f.call_needs_primary(Some("other"), "report"));
        assert!(!f.call_needs_primary(None, "my_fn"));
        assert!(
            !f.call_needs_primary(None, "nextval"),
            "operator's word wins"
        );
        assert_eq!(
            QualName::parse("\"My\"\"S\".F"),
            Some(QualName {
                schema: Some("My\"S".into()),
                name: "f".into()
            })
        );
        assert_eq!(QualName::parse(""), None);
    }

    #[test]
    fn provolatile_letters() {
        assert_eq!(Volatility::from_provolatile('i'), Volatility::Immutable);
        assert_eq!(Volatility::from_provolatile('s'), Volatility::Stable);
        assert_eq!(Volatility::from_provolatile('x'), Volatility::Volatile);
    }
}
