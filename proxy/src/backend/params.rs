//! Session parameters pgtier keeps in line in transaction mode: those Postgres reports with
//! ParameterStatus (so every change is visible in the stream without parsing SQL) and that a
//! client may set, plus the configured `track_extra_params` (not reported: pgtier records the
//! client's own `SET` statement once the server accepted it, and replays it). A client's values
//! and a server connection's values are both kept as differences from a baseline, usually
//! none, so an idle client pays nothing for them. A client's startup values (its startup
//! packet, `options`) are its session's values too, and what RESET, RESET ALL and DISCARD ALL
//! bring it back to, as in Postgres.

use std::borrow::Cow;
use std::sync::{Mutex, OnceLock};

use crate::sql::lexer::StringSyntax;
pub use crate::sql::params::{tracked, TRACKED};

/// Unreported parameters followed for every database, configured or not: pgjdbc sends
/// `SET extra_float_digits = 3` right after connecting (unless told the server version),
/// which would otherwise pin every JDBC client.
pub const ALWAYS_EXTRA: &[&str] = &["extra_float_digits"];

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
        let always = ALWAYS_EXTRA.iter().map(|n| n.to_string());
        for n in always.chain(names.iter().cloned()) {
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
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ALL`.
    DiscardAll,
}

/// Parameters Postgres marks GUC_NO_RESET_ALL: RESET ALL leaves them, and DISCARD ALL's
/// `SET SESSION AUTHORIZATION DEFAULT` puts role back to none (not to a startup value).
const NO_RESET_ALL: &[&str] = &[
    "role",
    "session_authorization",
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
];

fn no_reset_all(name: &str) -> bool {
    NO_RESET_ALL.iter().any(|n| n.eq_ignore_ascii_case(name))
}

impl ExtraUpdate {
    /// Applies the change to a client's values: RESET (and RESET ALL, DISCARD ALL) go back to
    /// the client's startup value where it has one. The server that ran it gets the same
    /// values ([`ParamChanges::copy_extra_from`]) once pgtier restored the startup values there.
    pub fn apply(&self, changes: &mut ParamChanges) {
        let discard = match self {
            ExtraUpdate::Set(name, sql) => return changes.set_extra(name, Some(sql)),
            ExtraUpdate::Reset(name) => {
                let sql = changes.startup_extra(name).map(|v| set_config_sql(name, v));
                return changes.set_extra(name, sql.as_deref());
            }
            ExtraUpdate::ResetAll => false,
            ExtraUpdate::DiscardAll => true,
        };
        changes
            .entries
            .retain(|e| e.0 != Kind::Extra || (!discard && no_reset_all(&e.1)));
        let startup: Vec<_> = changes
            .entries
            .iter()
            .filter(|e| e.0 == Kind::StartupExtra && !no_reset_all(&e.1))
            .map(|(_, n, v)| (Kind::Extra, n.clone(), set_config_sql(n, v).into()))
            .collect();
        changes.entries.extend(startup);
    }
}

/// Which list an entry of [`ParamChanges`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A reported parameter: the value as reported.
    Reported,
    /// An extra parameter: the SET statement that set it (absent: the server default).
    Extra,
    /// A client's startup value of a reported parameter (where it differs from the baseline):
    /// what RESET brings it back to. Only clients have these.
    StartupReported,
    /// A client's startup value of an unreported parameter.
    StartupExtra,
}

impl Kind {
    fn startup(self) -> bool {
        matches!(self, Kind::StartupReported | Kind::StartupExtra)
    }
}

/// Values that differ from a baseline list of (name, value). One list for every kind: every
/// client and server connection has one, mostly empty. Names are static (reported, and
/// `track_extra_params`) except those of other parameters a client gave at startup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParamChanges {
    entries: Vec<(Kind, Cow<'static, str>, Box<str>)>,
}

impl ParamChanges {
    fn find(&self, kind: Kind, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, n, _)| *k == kind && *n == name)
            .map(|(_, _, v)| &**v)
    }

    fn put(&mut self, kind: Kind, name: Cow<'static, str>, value: Option<&str>) {
        self.entries.retain(|(k, n, _)| !(*k == kind && *n == name));
        if let Some(v) = value {
            self.entries.push((kind, name, v.into()));
        }
    }

    /// A client's values from its startup parameters (`options` already split into them,
    /// later ones winning): reported parameters (those in `baseline`) as changes from it,
    /// others to be set with `set_config` on every server that serves the client. Each is
    /// also remembered as the value RESET goes back to.
    pub fn from_startup(
        baseline: &[(String, String)],
        extras: ExtraParams,
        startup: &[(String, String)],
    ) -> ParamChanges {
        let mut c = ParamChanges::default();
        for (k, v) in startup {
            if let Some(name) = tracked(k).filter(|n| lookup(baseline, n).is_some()) {
                c.set(baseline, name, v);
                let differs = lookup(baseline, name) != Some(v.as_str());
                c.put(Kind::StartupReported, name.into(), differs.then_some(v));
                continue;
            }
            // Names are case-insensitive: one spelling, so that a later SET or RESET of the
            // same parameter finds it (a configured extra keeps its static name).
            let name: Cow<'static, str> = match extras.find(k) {
                Some(n) => n.into(),
                None => k.to_ascii_lowercase().into(),
            };
            c.put(Kind::Extra, name.clone(), Some(&set_config_sql(&name, v)));
            c.put(Kind::StartupExtra, name, Some(v));
        }
        c
    }

    /// The client's startup value of unreported parameter `name`, if it gave one.
    fn startup_extra(&self, name: &str) -> Option<&str> {
        self.find(Kind::StartupExtra, name)
    }

    /// Whether the client gave startup values (reported ones that differ from the baseline,
    /// or unreported ones): then its RESETs restore them. `.1`: unreported ones among them.
    pub fn has_startup(&self) -> (bool, bool) {
        let mut any = (false, false);
        for e in &self.entries {
            any.0 |= e.0.startup();
            any.1 |= e.0 == Kind::StartupExtra;
        }
        any
    }

    /// Statements that set the client's startup values again after a statement reset them on
    /// the server: those of `names` (case-insensitive), or (`None`: RESET ALL, DISCARD ALL)
    /// all but those Postgres marks GUC_NO_RESET_ALL (RESET ALL leaves them; DISCARD ALL's
    /// SET SESSION AUTHORIZATION DEFAULT puts role back to none). None when it has none.
    pub fn restore_sql(&self, names: Option<&[&[u8]]>) -> Option<String> {
        let mut sql = String::new();
        for (_, name, value) in self.entries.iter().filter(|e| e.0.startup()) {
            let wanted = match names {
                Some(ns) => ns.iter().any(|n| n.eq_ignore_ascii_case(name.as_bytes())),
                None => !no_reset_all(name),
            };
            if wanted {
                sql.push_str(&set_config_sql(name, value));
                sql.push(';');
            }
        }
        (!sql.is_empty()).then_some(sql)
    }

    /// Records `name = value` (a tracked name); a value equal to the baseline clears the entry.
    pub fn set(&mut self, baseline: &[(String, String)], name: &'static str, value: &str) {
        let changed = lookup(baseline, name) != Some(value);
        self.put(Kind::Reported, name.into(), changed.then_some(value));
    }

    /// The changed value of `name`, if it differs from the baseline.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.find(Kind::Reported, name)
    }

    /// The client's current application_name: its own value, else the server's `defaults`.
    pub fn application_name<'a>(&'a self, defaults: &'a [(String, String)]) -> &'a str {
        self.get("application_name")
            .or_else(|| lookup(defaults, "application_name"))
            .unwrap_or("")
    }

    /// Records the statement that set extra parameter `name` (None: back to its default).
    pub fn set_extra(&mut self, name: &'static str, sql: Option<&str>) {
        self.put(Kind::Extra, name.into(), sql);
    }

    /// Whether the client set any extra parameter (its record then differs from the
    /// server's default for it).
    pub fn has_extras(&self) -> bool {
        self.entries.iter().any(|e| matches!(e.0, Kind::Extra))
    }

    /// The statement that set extra parameter `name`, if it is not at its default.
    pub fn extra(&self, name: &str) -> Option<&str> {
        self.find(Kind::Extra, name)
    }

    /// Takes `other`'s extra parameters as its own.
    pub fn copy_extra_from(&mut self, other: &ParamChanges) {
        self.entries.retain(|e| e.0 != Kind::Extra);
        self.entries
            .extend(other.entries.iter().filter(|e| e.0 == Kind::Extra).cloned());
    }

    /// How plain string literals read in this session: its own `standard_conforming_strings`,
    /// else `baseline` (the server's, from [`strings_of`]; sessions keep it from their start).
    pub fn string_syntax(&self, baseline: StringSyntax) -> StringSyntax {
        match self.get("standard_conforming_strings") {
            Some(value) => StringSyntax::from_setting(Some(value)),
            None => baseline,
        }
    }

    /// Whether nothing differs from the baseline (startup values kept for RESET aside).
    pub fn is_empty(&self) -> bool {
        self.entries.iter().all(|e| e.0.startup())
    }

    /// Whether both have the same values (startup values kept for RESET aside).
    fn same_values(&self, other: &ParamChanges) -> bool {
        fn values(c: &ParamChanges) -> impl Iterator<Item = &(Kind, Cow<'static, str>, Box<str>)> {
            c.entries.iter().filter(|e| !e.0.startup())
        }
        values(self).eq(values(other))
    }

    fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries
            .iter()
            .filter(|e| e.0 == Kind::Reported)
            .map(|e| &*e.1)
    }

    fn extra_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries
            .iter()
            .filter(|e| e.0 == Kind::Extra)
            .map(|e| &*e.1)
    }
}

/// The value of `name` in a (name, value) list.
pub fn lookup<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a str> {
    list.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// How plain string literals read under a server's reported parameters.
pub fn strings_of(params: &[(String, String)]) -> StringSyntax {
    StringSyntax::from_setting(lookup(params, "standard_conforming_strings"))
}

/// A statement that sets `name` to `value` for the session. set_config takes the value
/// verbatim (as the startup packet does), whatever its quoting (search_path lists) and whatever
/// standard_conforming_strings is.
pub fn set_config_sql(name: &str, value: &str) -> String {
    let value = value.replace('\\', "\\\\").replace('\'', "''");
    let name = name.replace('\'', "''");
    format!("SELECT pg_catalog.set_config('{name}', E'{value}', false)")
}

/// Whether a server's changes are a client's, as far as a cheap look tells (when false, they
/// may still agree: [`sync_statements`] knows).
pub fn agree(client: &ParamChanges, server: &ParamChanges) -> bool {
    // The common case: nobody changed anything. Next most common: the server last served a
    // client with the same changes (every client of an application sets the same
    // application_name).
    (client.is_empty() && server.is_empty()) || client.same_values(server)
}

/// SET statements that bring a server (its login values plus its changes) in line with a
/// client (the pool's defaults plus the client's changes); None when they already agree.
pub fn sync_statements(
    defaults: &[(String, String)],
    client: &ParamChanges,
    server_login: &[(String, String)],
    server: &ParamChanges,
) -> Option<String> {
    if agree(client, server) {
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

    #[test]
    fn startup_values_are_the_clients_and_what_reset_restores() {
        let b = base();
        let extras = ExtraParams::intern(&["work_mem".into()]);
        let startup: Vec<(String, String)> = [
            ("TimeZone", "Asia/Tokyo"),
            ("application_name", "pgtier"), // the baseline's: nothing to keep
            ("Statement_Timeout", "1234"),
            ("search_path", "my'schema"), // not reported by this server (Postgres < 18)
            ("work_mem", "3MB"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut client = ParamChanges::from_startup(&b, extras, &startup);
        assert_eq!(client.get("TimeZone"), Some("Asia/Tokyo"));
        assert_eq!(client.get("application_name"), None);
        assert_eq!(client.get("search_path"), None);
        assert_eq!(
            client.extra("statement_timeout"),
            Some("SELECT pg_catalog.set_config('statement_timeout', E'1234', false)")
        );
        assert_eq!(
            client.extra("search_path"),
            Some("SELECT pg_catalog.set_config('search_path', E'my''schema', false)")
        );
        assert_eq!(client.has_startup(), (true, true));
        // Set on a fresh server, then the server agrees (startup values aside).
        let mut server = ParamChanges::default();
        let sql = bring_in_line(&b, &client, &b, &mut server).unwrap();
        assert!(sql.contains("'TimeZone', E'Asia/Tokyo'") && sql.contains("'work_mem'"));
        server.set(&b, "TimeZone", "Asia/Tokyo"); // as reported back
        assert_eq!(sync_statements(&b, &client, &b, &server), None);
        // The next client without them resets every one.
        let sql = bring_in_line(&b, &ParamChanges::default(), &b, &mut server).unwrap();
        for reset in [
            "RESET \"statement_timeout\"",
            "RESET \"search_path\"",
            "RESET \"work_mem\"",
        ] {
            assert!(sql.contains(reset), "{sql}");
        }
        assert!(sql.contains("'TimeZone', E'UTC'"), "{sql}");
        // RESET goes back to the startup value; RESET ALL to all of them.
        let wm = extras.find("work_mem").unwrap();
        let startup_wm = client.extra(wm).unwrap().to_owned();
        ExtraUpdate::Set(wm, "SET work_mem = '1MB'".into()).apply(&mut client);
        ExtraUpdate::Reset(wm).apply(&mut client);
        assert_eq!(client.extra(wm), Some(startup_wm.as_str()));
        let all = client.clone();
        ExtraUpdate::Set(wm, "SET work_mem = '1MB'".into()).apply(&mut client);
        ExtraUpdate::ResetAll.apply(&mut client);
        assert!(client.same_values(&all));
        // What a reset takes is set again, by name (any case) or all.
        let names: [&[u8]; 2] = [b"timezone", b"STATEMENT_TIMEOUT"];
        assert_eq!(
            client.restore_sql(Some(&names)).unwrap(),
            "SELECT pg_catalog.set_config('TimeZone', E'Asia/Tokyo', false);\
             SELECT pg_catalog.set_config('statement_timeout', E'1234', false);"
        );
        assert_eq!(client.restore_sql(Some(&[b"datestyle"])), None);
        assert_eq!(
            client
                .restore_sql(None)
                .unwrap()
                .matches("set_config")
                .count(),
            4
        );
        // A client without startup values pays nothing.
        let plain = ParamChanges::from_startup(&b, extras, &[]);
        assert!(plain.is_empty() && plain.entries.capacity() == 0);
        assert_eq!(plain.has_startup(), (false, false));
    }

    #[test]
    fn reset_all_leaves_what_postgres_leaves() {
        let startup = [("role".to_string(), "tenant".to_string())];
        let c = ParamChanges::from_startup(&base(), ExtraParams::default(), &startup);
        assert_eq!(
            c.restore_sql(None),
            None,
            "RESET ALL and DISCARD ALL leave role"
        );
        let sql = c.restore_sql(Some(&[b"ROLE"])).unwrap();
        assert!(sql.contains("'role', E'tenant'"), "{sql}");
    }
}
