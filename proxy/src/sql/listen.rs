//! `LISTEN ch`, `UNLISTEN ch` and `UNLISTEN *` as whole simple queries: the statements pgtier
//! answers itself in transaction mode (see `notify`). Anything less plain (several statements,
//! comments, an over-long name) is not recognised and goes to a server as before.

/// Longest channel name Postgres keeps (NAMEDATALEN - 1); longer names it truncates with a
/// NOTICE, which pgtier leaves to Postgres.
pub const MAX_CHANNEL_LEN: usize = 63;

/// A LISTEN-family statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenCommand {
    /// `LISTEN ch`.
    Listen(String),
    /// `UNLISTEN ch`.
    Unlisten(String),
    /// `UNLISTEN *`.
    UnlistenAll,
}

impl ListenCommand {
    /// The CommandComplete tag Postgres sends for it.
    pub fn tag(&self) -> &'static str {
        match self {
            ListenCommand::Listen(_) => "LISTEN",
            _ => "UNLISTEN",
        }
    }
}

/// Recognises a simple query that is exactly one LISTEN/UNLISTEN statement (an optional `;`).
pub fn parse(sql: &[u8]) -> Option<ListenCommand> {
    // Cheap rejection first: this runs on every simple query of a transaction-mode client.
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    let first = sql[start] | 0x20;
    if first != b'l' && first != b'u' {
        return None;
    }
    let text = std::str::from_utf8(&sql[start..]).ok()?.trim_end();
    let text = text.strip_suffix(';').unwrap_or(text).trim_end();
    let (verb, rest) = text.split_at(text.find(|c: char| c.is_ascii_whitespace())?);
    let rest = rest.trim_start();
    if verb.eq_ignore_ascii_case("listen") {
        return channel(rest).map(ListenCommand::Listen);
    }
    if verb.eq_ignore_ascii_case("unlisten") {
        if rest == "*" {
            return Some(ListenCommand::UnlistenAll);
        }
        return channel(rest).map(ListenCommand::Unlisten);
    }
    None
}

/// The channel an identifier names: `"..."` as written (with `""` for `"`), otherwise folded
/// to lower case like Postgres folds unquoted names. None: not one plain identifier.
fn channel(s: &str) -> Option<String> {
    let name = if let Some(quoted) = s.strip_prefix('"') {
        let inner = quoted.strip_suffix('"')?;
        // Every quote inside must be doubled.
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '"' && chars.next() != Some('"') {
                return None;
            }
            out.push(c);
        }
        out
    } else {
        let mut chars = s.chars();
        let first = chars.next()?;
        let ident_start = first.is_ascii_alphabetic() || first == '_' || !first.is_ascii();
        let ident_rest =
            chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii());
        if !ident_start || !ident_rest || is_reserved(s) {
            return None;
        }
        s.to_ascii_lowercase()
    };
    (!name.is_empty() && name.len() <= MAX_CHANNEL_LEN && !name.contains('\0')).then_some(name)
}

/// Reserved words Postgres refuses as an unquoted channel name (the server's syntax error is
/// left to the server).
fn is_reserved(word: &str) -> bool {
    const RESERVED: &[&str] = &[
        "all",
        "analyse",
        "analyze",
        "and",
        "any",
        "array",
        "as",
        "asc",
        "asymmetric",
        "both",
        "case",
        "cast",
        "check",
        "collate",
        "column",
        "constraint",
        "create",
        "current_catalog",
        "current_date",
        "current_role",
        "current_time",
        "current_timestamp",
        "current_user",
        "default",
        "deferrable",
        "desc",
        "distinct",
        "do",
        "else",
        "end",
        "except",
        "false",
        "fetch",
        "for",
        "foreign",
        "from",
        "grant",
        "group",
        "having",
        "in",
        "initially",
        "intersect",
        "into",
        "lateral",
        "leading",
        "limit",
        "localtime",
        "localtimestamp",
        "not",
        "null",
        "offset",
        "on",
        "only",
        "or",
        "order",
        "placing",
        "primary",
        "references",
        "returning",
        "select",
        "session_user",
        "some",
        "symmetric",
        "system_user",
        "table",
        "then",
        "to",
        "trailing",
        "true",
        "union",
        "unique",
        "user",
        "using",
        "variadic",
        "when",
        "where",
        "window",
        "with",
    ];
    RESERVED.iter().any(|r| word.eq_ignore_ascii_case(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<ListenCommand> {
        parse(s.as_bytes())
    }

    #[test]
    fn plain_statements_are_recognised_with_postgres_name_folding() {
        use ListenCommand::*;
        assert_eq!(p("LISTEN Jobs"), Some(Listen("jobs".into())));
        assert_eq!(p("  listen jobs ; "), Some(Listen("jobs".into())));
        assert_eq!(
            p("LISTEN \"Mixed Case\""),
            Some(Listen("Mixed Case".into()))
        );
        assert_eq!(p("LISTEN \"a\"\"b\""), Some(Listen("a\"b".into())));
        assert_eq!(p("unlisten x_1$"), Some(Unlisten("x_1$".into())));
        assert_eq!(p("UNLISTEN *"), Some(UnlistenAll));
        assert_eq!(p("UNLISTEN *;"), Some(UnlistenAll));
    }

    #[test]
    fn anything_else_goes_to_the_server() {
        for s in [
            "SELECT 1",
            "LISTEN",
            "LISTEN a; LISTEN b",
            "LISTEN a b",
            "LISTEN \"\"",
            "LISTEN \"a\"b\"",
            "LISTEN 1a",
            "LISTEN select",
            "LISTEN /* c */ a",
            "LISTEN *",
            "NOTIFY a",
            "listener",
            &format!("LISTEN {}", "a".repeat(64)),
        ] {
            assert_eq!(p(s), None, "{s}");
        }
        assert!(p(&format!("LISTEN {}", "a".repeat(63))).is_some());
    }
}
