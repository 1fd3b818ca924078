//! Session parameters pgtier keeps in line in transaction mode: those Postgres reports with
//! ParameterStatus (so every change is visible in the stream without parsing SQL) and that a
//! client may set, plus the configured `track_extra_params` (not reported: pgtier records the
//! client's own `SET` statement once the server accepted it, and replays it). A client's values
//! and a server connection's values are both kept as differences from a baseline, usually
//! none, so an idle client pays nothing for them.

use std::sync::{Mutex, OnceLock};

use crate::router::lexer::StringSyntax;

/// Reported parameters that are synced from a client to whichever server serves it.
pub const TRACKED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
    "search_path",
];

/// The canonical name of a tracked parameter (names are case-insensitive).
pub fn tracked(name: &str) -> Option<&'static str> {
    TRACKED
        .iter()
        .copied()
        .find(|t| t.eq_ignore_ascii_case(name))
}

/// The configured extra parameters (`track_extra_params`, lower case): a cheap copyable
/// handle, interned once per distinct list (lists come from config loads, so this is bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtraParams(&'static [Box<str>]);

impl ExtraParams {
    /// The handle for these names (case-insensitive; duplicates and reported parameters,
    /// which are synced anyway, are dropped, except search_path, reported only since
    /// Postgres 18).
    pub fn intern(names: &[String]) -> ExtraParams {
        let mut list: Vec<Box<str>> = Vec::new();
        for n in names {
            let n = n.trim().to_ascii_lowercase();
            // search_path is reported only by Postgres 18 and later: before that it can be
            // synced only as an extra parameter.
            let reported = tracked(&n).is_some() && n != "search_path";
            if !n.is_empty() && !reported && !list.iter().any(|l| **l == n) {
                list.push(n.into());
            }
        }
        if list.is_empty() {
            return ExtraParams::default();
        }
        static INTERNED: OnceLock<Mutex<Vec<&'static [Box<str>]>>> = OnceLock::new();
        let mut all = INTERNED
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(found) = all.iter().find(|l| ***l == *list) {
            return ExtraParams(found);
        }
        let leaked: &'static [Box<str>] = Box::leak(list.into_boxed_slice());
        all.push(leaked);
        ExtraParams(leaked)
    }

    /// The configured name equal to `name` (case-insensitive), if any.
    pub fn find(&self, name: &str) -> Option<&'static str> {
        self.0
            .iter()
            .find(|n| n.eq_ignore_ascii_case(name))
            .map(|n| &**n)
    }

    /// Whether no extra parameter is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A client's change of extra parameters, applied once the server accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraUpdate {
    /// `SET name ...`: the statement (as the client wrote it) that sets it.
    Set(&'static str, Box<str>),
    /// `RESET name` or `SET name TO DEFAULT`.
    Reset(&'static str),
    /// `RESET ALL` or `DISCARD ALL`.
    ResetAll,
}

impl ExtraUpdate {
    /// Applies the change to a list of values (a client's or a server's).
    pub fn apply(&self, changes: &mut ParamChanges) {
        match self {
            ExtraUpdate::Set(name, sql) => changes.set_extra(name, Some(sql)),
            ExtraUpdate::Reset(name) => changes.set_extra(name, None),
            ExtraUpdate::ResetAll => changes.entries.retain(|e| e.0 != Kind::Extra),
        }
    }
}

/// Which list an entry of [`ParamChanges`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A reported parameter: the value as reported.
    Reported,
    /// An extra parameter: the SET statement that set it (absent: the server default).
    Extra,
}

/// Values that differ from a baseline list of (name, value). One list for both kinds: every
/// client and server connection has one, mostly empty.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParamChanges {
    entries: Vec<(Kind, &'static str, Box<str>)>,
}

impl ParamChanges {
    fn find(&self, kind: Kind, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, n, _)| *k == kind && *n == name)
            .map(|(_, _, v)| &**v)
    }

    fn put(&mut self, kind: Kind, name: &'static str, value: Option<&str>) {
        self.entries.retain(|(k, n, _)| !(*k == kind && *n == name));
        if let Some(v) = value {
            self.entries.push((kind, name, v.into()));
        }
    }

    /// Records `name = value` (a tracked name); a value equal to the baseline clears the entry.
    pub fn set(&mut self, baseline: &[(String, String)], name: &'static str, value: &str) {
        let changed = lookup(baseline, name) != Some(value);
        self.put(Kind::Reported, name, changed.then_some(value));
    }

    /// The changed value of `name`, if it differs from the baseline.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.find(Kind::Reported, name)
    }

    /// Records the statement that set extra parameter `name` (None: back to its default).
    pub fn set_extra(&mut self, name: &'static str, sql: Option<&str>) {
        self.put(Kind::Extra, name, sql);
    }

    /// The statement that set extra parameter `name`, if it is not at its default.
    pub fn extra(&self, name: &str) -> Option<&str> {
        self.find(Kind::Extra, name)
    }

    /// Takes `other`'s extra parameters as its own.
    fn copy_extra_from(&mut self, other: &ParamChanges) {
        self.entries.retain(|e| e.0 != Kind::Extra);
        self.entries
            .extend(other.entries.iter().filter(|e| e.0 == Kind::Extra).cloned());
    }

    /// How plain string literals read in this session (its `standard_conforming_strings`,
    /// else the baseline's).
    pub fn string_syntax(&self, baseline: &[(String, String)]) -> StringSyntax {
        let name = "standard_conforming_strings";
        StringSyntax::from_setting(self.get(name).or_else(|| lookup(baseline, name)))
    }

    /// Whether nothing differs from the baseline.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries
            .iter()
            .filter(|e| e.0 == Kind::Reported)
            .map(|e| e.1)
    }

    fn extra_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries
            .iter()
            .filter(|e| e.0 == Kind::Extra)
            .map(|e| e.1)
    }
}

/// The value of `name` in a (name, value) list.
pub fn lookup<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a str> {
    list.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A statement that sets `name` to `value` for the session. set_config takes the value
/// verbatim (as the startup packet does), whatever its quoting (search_path lists) and whatever
/// standard_conforming_strings is.
pub fn set_config_sql(name: &str, value: &str) -> String {
    let value = value.replace('\\', "\\\\").replace('\'', "''");
    let name = name.replace('\'', "''");
    format!("SELECT pg_catalog.set_config('{name}', E'{value}', false)")
}

/// SET statements that bring a server (its login values plus its changes) in line with a
/// client (the pool's defaults plus the client's changes); None when they already agree.
pub fn sync_statements(
    defaults: &[(String, String)],
    client: &ParamChanges,
    server_login: &[(String, String)],
    server: &ParamChanges,
) -> Option<String> {
    if client.is_empty() && server.is_empty() {
        return None; // the common case: nobody changed anything
    }
    if client == server {
        // Next most common: the server last served a client with the same changes (every
        // client of an application sets the same application_name).
        return None;
    }
    let mut sql = String::new();
    // The client's names, then the server's that the client does not change (no list of names
    // seen: this runs before every transaction of a client with changes).
    let server_only = server.names().filter(|n| client.get(n).is_none());
    for name in client.names().chain(server_only) {
        let want = client.get(name).or_else(|| lookup(defaults, name));
        let have = server.get(name).or_else(|| lookup(server_login, name));
        if let Some(want) = want.filter(|w| Some(*w) != have) {
            sql.push_str(&set_config_sql(name, want));
            sql.push(';');
        }
    }
    // Extra parameters: the client's own SET replayed (after the reported ones, so it reads
    // with the client's standard_conforming_strings), or RESET where the client has the default.
    let server_only = server.extra_names().filter(|n| client.extra(n).is_none());
    for name in client.extra_names().chain(server_only) {
        match (client.extra(name), server.extra(name)) {
            (want, have) if want == have => {}
            (Some(want), _) => {
                sql.push_str(want);
                sql.push(';');
            }
            (None, _) => sql.push_str(&format!("RESET \"{}\";", name.replace('"', "\"\""))),
        }
    }
    (!sql.is_empty()).then_some(sql)
}

/// [`sync_statements`], recording the extra parameters as set on the server (they are not
/// reported back): the caller sends the statements ahead of the client's request.
pub fn bring_in_line(
    defaults: &[(String, String)],
    client: &ParamChanges,
    server_login: &[(String, String)],
    server: &mut ParamChanges,
) -> Option<String> {
    let sql = sync_statements(defaults, client, server_login, server);
    if sql.is_some() {
        server.copy_extra_from(client);
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(String, String)> {
        vec![
            ("TimeZone".into(), "UTC".into()),
            ("application_name".into(), "pgtier".into()),
        ]
    }

    #[test]
    fn nothing_to_do_when_nobody_changed_anything() {
        let b = base();
        assert_eq!(
            sync_statements(&b, &ParamChanges::default(), &b, &ParamChanges::default()),
            None
        );
    }

    #[test]
    fn nothing_to_do_when_server_and_client_changed_the_same() {
        let b = base();
        let mut client = ParamChanges::default();
        client.set(&b, "application_name", "pgbench");
        client.set_extra("work_mem", Some("SET work_mem = '2MB'"));
        let server = client.clone();
        assert_eq!(sync_statements(&b, &client, &b, &server), None);
    }

    #[test]
    fn client_changes_are_applied_and_server_drift_is_undone() {
        let b = base();
        let mut client = ParamChanges::default();
        client.set(&b, "TimeZone", "Asia/Tokyo");
        let mut server = ParamChanges::default();
        server.set(&b, "application_name", "it's");
        let sql = sync_statements(&b, &client, &b, &server).unwrap();
        assert_eq!(
            sql,
            "SELECT pg_catalog.set_config('TimeZone', E'Asia/Tokyo', false);\
             SELECT pg_catalog.set_config('application_name', E'pgtier', false);"
        );
        // Setting back to the baseline clears the change.
        client.set(&b, "TimeZone", "UTC");
        assert!(client.is_empty());
        server.set(&b, "application_name", "x'y");
        client.set(&b, "application_name", "x'y");
        assert_eq!(sync_statements(&b, &client, &b, &server), None);
        assert_eq!(tracked("timezone"), Some("TimeZone"));
        assert_eq!(tracked("work_mem"), None);
    }

    #[test]
    fn extra_parameters_replay_the_clients_set_or_reset() {
        let b = base();
        let extras = ExtraParams::intern(&["Work_Mem".into(), "TimeZone".into()]);
        assert_eq!(extras, ExtraParams::intern(&["work_mem".into()]));
        let wm = extras.find("WORK_MEM").unwrap();
        assert_eq!(
            extras.find("timezone"),
            None,
            "reported ones are synced anyway"
        );
        let mut client = ParamChanges::default();
        let mut server = ParamChanges::default();
        ExtraUpdate::Set(wm, "SET work_mem = '1MB'".into()).apply(&mut client);
        let sql = bring_in_line(&b, &client, &b, &mut server).unwrap();
        assert_eq!(sql, "SET work_mem = '1MB';");
        assert_eq!(bring_in_line(&b, &client, &b, &mut server), None);
        // Another client with the default: the server's value is reset.
        let other = ParamChanges::default();
        let sql = bring_in_line(&b, &other, &b, &mut server).unwrap();
        assert_eq!(sql, "RESET \"work_mem\";");
        assert!(server.is_empty());
        ExtraUpdate::ResetAll.apply(&mut client);
        assert!(client.is_empty());
    }
}
