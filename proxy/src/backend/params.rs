//! Session parameters pgtier keeps in line in transaction mode: those Postgres reports with
//! ParameterStatus (so every change is visible in the stream without parsing SQL) and that a
//! client may set. A client's values and a server connection's values are both kept as
//! differences from a baseline, usually none, so an idle client pays nothing for them.

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

/// Values that differ from a baseline list of (name, value).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParamChanges(Vec<(&'static str, Box<str>)>);

impl ParamChanges {
    /// Records `name = value` (a tracked name); a value equal to the baseline clears the entry.
    pub fn set(&mut self, baseline: &[(String, String)], name: &'static str, value: &str) {
        self.0.retain(|(n, _)| *n != name);
        if lookup(baseline, name) != Some(value) {
            self.0.push((name, value.into()));
        }
    }

    /// The changed value of `name`, if it differs from the baseline.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| &**v)
    }

    /// Whether nothing differs from the baseline.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().map(|(n, _)| *n)
    }
}

/// The value of `name` in a (name, value) list.
pub fn lookup<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a str> {
    list.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
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
    let mut sql = String::new();
    let mut done: Vec<&str> = Vec::new();
    for name in client.names().chain(server.names()) {
        if done.contains(&name) {
            continue;
        }
        done.push(name);
        let want = client.get(name).or_else(|| lookup(defaults, name));
        let have = server.get(name).or_else(|| lookup(server_login, name));
        if let Some(want) = want.filter(|w| Some(*w) != have) {
            // set_config takes the value verbatim (as the startup packet does), whatever its
            // quoting (search_path lists) and whatever standard_conforming_strings is.
            let value = want.replace('\\', "\\\\").replace('\'', "''");
            sql.push_str(&format!(
                "SELECT pg_catalog.set_config('{name}', E'{value}', false);"
            ));
        }
    }
    (!sql.is_empty()).then_some(sql)
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
}
