//! `LISTEN ch`, `UNLISTEN ch` and `UNLISTEN *` as whole simple queries: the statements pgtier
//! answers itself in transaction mode (see `notify`), and `SELECT pg_listening_channels()`,
//! whose answer only pgtier knows. Anything less plain (comments, an over-long name, other
//! statements in the same query) is not recognised and goes to a server as before.

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

/// A simple query pgtier answers for a client that listens through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenQuery {
    /// One or more LISTEN-family statements (`;`-separated), nothing else.
    Commands(Vec<ListenCommand>),
    /// `SELECT pg_listening_channels()` or `SELECT * FROM pg_listening_channels()`.
    Channels,
}

/// Most statements in one query recognised as [`ListenQuery::Commands`].
const MAX_STATEMENTS: usize = 64;

/// Recognises a simple query made only of LISTEN-family statements, or one that only reads
/// `pg_listening_channels()`.
pub fn listen_query(sql: &[u8]) -> Option<ListenQuery> {
    // Cheap rejection first: this runs on simple queries inside transaction blocks.
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    let head = |word: &[u8]| {
        sql[start..]
            .get(..word.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(word))
    };
    match sql[start] | 0x20 {
        // UPDATE and the like stop here.
        b'l' | b'u' if head(b"listen") || head(b"unlisten") => {}
        b's' => return listening_channels_query(&sql[start..]).then_some(ListenQuery::Channels),
        _ => return None,
    }
    // A `;` inside a quoted name splits it into pieces that are not names: not recognised.
    let mut commands = Vec::new();
    for piece in sql.split(|&b| b == b';') {
        if piece.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if commands.len() == MAX_STATEMENTS {
            return None;
        }
        commands.push(parse(piece)?);
    }
    (!commands.is_empty()).then_some(ListenQuery::Commands(commands))
}

/// Whether `sql` is `SELECT [pg_catalog.]pg_listening_channels()` or `SELECT * FROM
/// [pg_catalog.]pg_listening_channels()` (any case and spacing, an optional `;`).
pub fn listening_channels_query(sql: &[u8]) -> bool {
    // Cheap rejection of other SELECTs (this runs on simple queries of transaction-mode
    // clients): short, ending in `)`, naming the function.
    let trimmed = sql.trim_ascii_end();
    let trimmed = trimmed
        .strip_suffix(b";")
        .unwrap_or(trimmed)
        .trim_ascii_end();
    if sql.len() > 128
        || trimmed.last() != Some(&b')')
        || !sql.windows(9).any(|w| w.eq_ignore_ascii_case(b"listening"))
    {
        return false;
    }
    let Ok(text) = std::str::from_utf8(sql) else {
        return false;
    };
    let text = text.trim();
    let text = text.strip_suffix(';').unwrap_or(text);
    let mut tokens: Vec<String> = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            word.push(c.to_ascii_lowercase());
            continue;
        }
        if !word.is_empty() {
            tokens.push(std::mem::take(&mut word));
        }
        match c {
            '(' | ')' | '*' => tokens.push(c.to_string()),
            c if c.is_ascii_whitespace() => {}
            _ => return false,
        }
        if tokens.len() > 6 {
            return false;
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    let call = |t: &[String]| {
        matches!(
            t,
            [f, o, c] if (f == "pg_listening_channels" || f == "pg_catalog.pg_listening_channels")
                && o == "("
                && c == ")"
        )
    };
    match tokens.as_slice() {
        [s, rest @ ..] if s == "select" && rest.len() == 3 => call(rest),
        [s, star, from, rest @ ..] if s == "select" && star == "*" && from == "from" => call(rest),
        _ => false,
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
    fn listen_only_queries_and_the_channels_query_are_recognised() {
        use ListenCommand::*;
        let q = |s: &str| listen_query(s.as_bytes());
        assert_eq!(
            q("LISTEN a; UNLISTEN \"B\";; unlisten *;"),
            Some(ListenQuery::Commands(vec![
                Listen("a".into()),
                Unlisten("B".into()),
                UnlistenAll
            ]))
        );
        for s in [
            "SELECT pg_listening_channels()",
            " select * from PG_LISTENING_CHANNELS ( ) ; ",
            "SELECT pg_catalog.pg_listening_channels()",
        ] {
            assert_eq!(q(s), Some(ListenQuery::Channels), "{s}");
        }
        for s in [
            "LISTEN a; SELECT 1",
            "LISTEN \"a;b\"",
            ";",
            "SELECT pg_listening_channels() AS c",
            "SELECT pg_listening_channels(), 1",
            "SELECT count(*) FROM pg_listening_channels()",
            "SELECTpg_listening_channels()x",
            "SELECT * FROM pg_listening_channels() WHERE true",
        ] {
            assert_eq!(q(s), None, "{s}");
        }
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
