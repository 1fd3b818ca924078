//! Statements that leave state on the server connection that pgtier cannot carry to another
//! one: the client must keep that server (it is pinned) until it disconnects.

use super::lexer::{Lexer, StringSyntax, Token};

/// Why a statement pins its client to the server, if it does, with standard-conforming
/// strings. `reported` says whether a parameter's changes are reported by the server (those
/// are synced instead of pinned).
pub fn pins(sql: &[u8], reported: impl Fn(&[u8]) -> bool) -> Option<&'static str> {
    pins_in(sql, StringSyntax::Standard, reported)
}

/// Where a statement is in an `EXPLAIN` prefix: the explained statement is what runs (with
/// ANALYZE), so it is checked as if it came alone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Explain {
    /// Not in an EXPLAIN prefix.
    No,
    /// After EXPLAIN and its bare options (ANALYZE, VERBOSE).
    Options,
    /// Inside `EXPLAIN ( ... )` at this parenthesis depth.
    Parens(u32),
}

/// [`pins`] for a session whose plain strings follow `strings` (its
/// `standard_conforming_strings`): with it off, `'a\'; SET x = 1; --'` is one string.
pub fn pins_in(
    sql: &[u8],
    strings: StringSyntax,
    reported: impl Fn(&[u8]) -> bool,
) -> Option<&'static str> {
    if !may_pin(sql) {
        return None;
    }
    let mut idx = 0usize;
    let mut words: [&[u8]; 3] = [b""; 3];
    let mut prev: &[u8] = b"";
    let mut explain = Explain::No;
    let mut lx = Lexer::with_syntax(sql, strings);
    while let Some(tok) = lx.next() {
        let is = |a: &[u8], b: &str| a.eq_ignore_ascii_case(b.as_bytes());
        // Skip `EXPLAIN [ANALYZE] [VERBOSE]` or `EXPLAIN (...)`, so that the statement after
        // it starts at word 0 (EXPLAIN ANALYZE CREATE TEMP TABLE ... AS runs the CREATE).
        // An `Other` token that is one parenthesis ends just before the lexer's position.
        let paren = match tok {
            Token::Other => sql.get(lx.offset().wrapping_sub(1)).copied(),
            _ => None,
        };
        explain = match (explain, tok, paren) {
            (Explain::No, Token::Word(w), _) if idx == 0 && is(w, "explain") => {
                explain = Explain::Options;
                continue;
            }
            (Explain::No, ..) => Explain::No,
            (_, Token::Semicolon, _) => Explain::No,
            (Explain::Options, Token::Word(w), _)
                if ["analyze", "analyse", "verbose"].iter().any(|o| is(w, o)) =>
            {
                continue;
            }
            (Explain::Options, Token::Other, Some(b'(')) => {
                explain = Explain::Parens(1);
                continue;
            }
            (Explain::Options, ..) => Explain::No,
            (Explain::Parens(d), _, Some(b'(')) => {
                explain = Explain::Parens(d + 1);
                continue;
            }
            (Explain::Parens(1), _, Some(b')')) => {
                explain = Explain::Options;
                continue;
            }
            (Explain::Parens(d), _, Some(b')')) => {
                explain = Explain::Parens(d - 1);
                continue;
            }
            (Explain::Parens(_), ..) => continue,
        };
        let w = match tok {
            Token::Semicolon => {
                idx = 0;
                words = [b""; 3];
                continue;
            }
            Token::Other => {
                idx += 1;
                continue;
            }
            Token::Word(w) => w,
        };
        if starts_with_ci(w, b"pg_advisory_lock") || starts_with_ci(w, b"pg_try_advisory_lock") {
            return Some("session advisory lock");
        }
        if is(w, "set_config") {
            // Its third argument decides session or transaction scope; pinning is the safe side.
            return Some("set_config()");
        }
        if is(w, "dblink_connect") || is(w, "dblink_connect_u") {
            return Some("dblink connection");
        }
        if is(prev, "into") && (is(w, "temp") || is(w, "temporary")) {
            return Some("temporary object");
        }
        // CREATE [OR REPLACE] [LOCAL|GLOBAL] TEMP ..., or anything naming the pg_temp schema.
        if is(words[0], "create")
            && (is(w, "temp") || is(w, "temporary"))
            && ["create", "replace", "local", "global"]
                .iter()
                .any(|p| is(prev, p))
        {
            return Some("temporary object");
        }
        if is(w, "pg_temp") || starts_with_ci(w, b"pg_temp_") {
            return Some("temporary object");
        }
        if idx < 3 {
            words[idx] = w;
        }
        let first = words[0];
        let reason = match idx {
            0 if is(w, "prepare") => Some("SQL PREPARE"),
            0 if is(w, "listen") => Some("LISTEN"),
            0 if is(w, "load") => Some("LOAD"),
            // A DO block may SET, create temp tables or take session locks: pgtier cannot see.
            0 if is(w, "do") => Some("DO block"),
            1 if is(first, "create") && (is(w, "temp") || is(w, "temporary")) => {
                Some("temporary object")
            }
            2 if is(first, "create")
                && (is(words[1], "local") || is(words[1], "global"))
                && (is(w, "temp") || is(w, "temporary")) =>
            {
                Some("temporary object")
            }
            1 | 2 if (is(first, "set") || is(first, "reset")) && set_target(idx, &words) => {
                set_pins(w, &words, &reported)
            }
            _ if is(first, "declare") && is(prev, "with") && is(w, "hold") => {
                Some("DECLARE ... WITH HOLD")
            }
            _ => None,
        };
        if reason.is_some() {
            return reason;
        }
        prev = w;
        idx += 1;
    }
    None
}

/// What a FunctionCall (the protocol's fastpath) of built-in function `oid` leaves on the
/// server, like [`pins_in`] for the same functions called in SQL. Built-in OIDs are fixed in
/// Postgres' catalog (pg_proc.dat) and do not change between versions.
pub fn function_call_pins(oid: u32) -> Option<&'static str> {
    match oid {
        // pg_advisory_lock, pg_advisory_lock_shared, pg_try_advisory_lock,
        // pg_try_advisory_lock_shared: (bigint) 2880-2883, (int, int) 2886-2889.
        2880..=2883 | 2886..=2889 => Some("session advisory lock"),
        2078 => Some("set_config()"),
        _ => None,
    }
}

/// Whether `sql` contains, anywhere, a piece of a word that can pin (checked below): a byte scan
/// that lets most statements skip the lexer. It may say yes wrongly (`random` has `do`), never
/// no wrongly: every pinning word contains one of these.
fn may_pin(sql: &[u8]) -> bool {
    let at = |i: usize, needle: &[u8]| {
        sql.get(i..i + needle.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(needle))
    };
    (0..sql.len()).any(|i| match sql[i] | 0x20 {
        // pg_advisory_lock, pg_try_advisory_lock, pg_temp; PREPARE
        b'p' => at(i, b"pg_") || at(i, b"prepare"),
        // SET, RESET, set_config
        b's' => at(i, b"set"),
        // dblink_connect; DO
        b'd' => at(i, b"dblink") || at(i, b"do"),
        // TEMP, TEMPORARY
        b't' => at(i, b"temp"),
        // LISTEN, LOAD
        b'l' => at(i, b"listen") || at(i, b"load"),
        // DECLARE ... WITH HOLD
        b'h' => at(i, b"hold"),
        _ => false,
    })
}

/// Whether word `idx` of a SET/RESET names what is set (`SET x`, `SET SESSION x`).
fn set_target(idx: usize, words: &[&[u8]; 3]) -> bool {
    idx == 1 || words[1].eq_ignore_ascii_case(b"session")
}

fn set_pins(
    w: &[u8],
    words: &[&[u8]; 3],
    reported: &impl Fn(&[u8]) -> bool,
) -> Option<&'static str> {
    let is = |b: &str| w.eq_ignore_ascii_case(b.as_bytes());
    if words[1].eq_ignore_ascii_case(b"session") && words[2].is_empty() && is("session") {
        return None; // wait for the word after SESSION
    }
    if is("local") || is("transaction") || is("constraints") || is("all") {
        return None; // transaction-scoped, or RESET ALL
    }
    if is("role") {
        return Some("SET ROLE");
    }
    if is("authorization") {
        return Some("SET SESSION AUTHORIZATION");
    }
    if is("characteristics") {
        return Some("SET SESSION CHARACTERISTICS");
    }
    if reported(w) {
        return None;
    }
    Some("SET of a parameter pgtier cannot carry between servers")
}

/// A statement about the client's whole session that pgtier must apply to its own state.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionCommand<'a> {
    /// `DEALLOCATE [PREPARE] name`.
    Deallocate(&'a [u8]),
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
    /// `DISCARD ALL`.
    DiscardAll,
}

/// Recognises a query that is exactly one DEALLOCATE or DISCARD ALL statement.
pub fn session_command(sql: &[u8]) -> Option<SessionCommand<'_>> {
    let is = |w: &[u8], k: &str| w.eq_ignore_ascii_case(k.as_bytes());
    // At most three words; runs on every simple Query, so it stops at the first that cannot be.
    let mut words: [&[u8]; 3] = [b""; 3];
    let mut n = 0;
    for tok in Lexer::new(sql) {
        match tok {
            Token::Word(w) if n < 3 => {
                if n == 0 && !is(w, "discard") && !is(w, "deallocate") {
                    return None;
                }
                words[n] = w;
                n += 1;
            }
            Token::Semicolon => {}
            _ => return None,
        }
    }
    match &words[..n] {
        [d, a] if is(d, "discard") && is(a, "all") => Some(SessionCommand::DiscardAll),
        [d, p, n] if is(d, "deallocate") && is(p, "prepare") => Some(deallocate(n)),
        [d, n] if is(d, "deallocate") => Some(deallocate(n)),
        _ => None,
    }
}

fn deallocate(name: &[u8]) -> SessionCommand<'_> {
    if name.eq_ignore_ascii_case(b"all") {
        SessionCommand::DeallocateAll
    } else {
        SessionCommand::Deallocate(name)
    }
}

/// A query that is exactly one change of one session parameter.
#[derive(Debug, PartialEq, Eq)]
pub enum ParamCommand<'a> {
    /// `SET [SESSION] name {TO | =} value`: the name, and the statement's text (from SET to
    /// its last token: no trailing semicolon or comment).
    Set(&'a [u8], &'a [u8]),
    /// `RESET name`, or `SET name TO DEFAULT`.
    Reset(&'a [u8]),
    /// `RESET ALL`.
    ResetAll,
}

/// Recognises a query that is exactly one `SET`/`RESET` of one parameter (see
/// [`ParamCommand`]); None for anything else, including `SET LOCAL` and several statements.
pub fn param_command(sql: &[u8], strings: StringSyntax) -> Option<ParamCommand<'_>> {
    let is = |a: &[u8], b: &str| a.eq_ignore_ascii_case(b.as_bytes());
    // Where a word starts in `sql` (words are slices of it; a quoted one starts after its quote).
    let at = |w: &[u8]| w.as_ptr() as usize - sql.as_ptr() as usize;
    let mut lx = Lexer::with_syntax(sql, strings);
    let Some(Token::Word(first)) = lx.next() else {
        return None;
    };
    let reset = is(first, "reset");
    if !reset && !is(first, "set") {
        return None;
    }
    let mut tok = lx.next()?;
    if let (false, Token::Word(w)) = (reset, tok) {
        if is(w, "session") {
            tok = lx.next()?;
        }
    }
    let Token::Word(w) = tok else {
        return None;
    };
    let mut name = w;
    let mut tok = lx.next();
    // A dotted (custom) name: `myapp.tenant`, unquoted.
    while tok == Some(Token::Other) && sql.get(lx.offset() - 1) == Some(&b'.') {
        let Some(Token::Word(part)) = lx.next() else {
            return None;
        };
        if sql.get(at(part).wrapping_sub(1)) == Some(&b'"')
            || sql.get(at(name).wrapping_sub(1)) == Some(&b'"')
        {
            return None;
        }
        name = &sql[at(name)..at(part) + part.len()];
        tok = lx.next();
    }
    let mut end = lx.offset();
    let mut value_words = 0usize;
    let mut value_default = false;
    if !reset {
        match tok {
            Some(Token::Word(w)) if is(w, "to") => {}
            Some(Token::Other) if sql.get(lx.offset() - 1) == Some(&b'=') => {}
            _ => return None,
        }
        tok = lx.next();
        while let Some(t) = tok {
            if t == Token::Semicolon {
                break;
            }
            value_words += 1;
            value_default = matches!(t, Token::Word(w) if is(w, "default"));
            end = lx.offset();
            tok = lx.next();
        }
        if value_words == 0 {
            return None;
        }
    }
    // Nothing but semicolons may follow.
    while let Some(t) = tok {
        if t != Token::Semicolon {
            return None;
        }
        tok = lx.next();
    }
    Some(match (reset, value_words == 1 && value_default) {
        (true, _) if is(name, "all") => ParamCommand::ResetAll,
        (true, _) | (false, true) => ParamCommand::Reset(name),
        (false, false) => ParamCommand::Set(name, &sql[at(first)..end]),
    })
}

/// Whether any statement in `sql` is `RESET ALL` or `DISCARD ALL` (they reset every parameter).
pub fn resets_all(sql: &[u8], strings: StringSyntax) -> bool {
    if !may_reset(sql) {
        return false;
    }
    let mut first: Option<&[u8]> = None;
    let mut at_start = true;
    for tok in Lexer::with_syntax(sql, strings) {
        match tok {
            Token::Semicolon => {
                first = None;
                at_start = true;
                continue;
            }
            Token::Word(w) if at_start => match first {
                None => {
                    first = Some(w);
                    continue;
                }
                Some(f) => {
                    let is = |a: &[u8], b: &str| a.eq_ignore_ascii_case(b.as_bytes());
                    if (is(f, "reset") || is(f, "discard")) && is(w, "all") {
                        return true;
                    }
                }
            },
            _ => {}
        }
        at_start = false;
    }
    false
}

/// Whether a statement of `sql` may be a RESET, SET ... TO DEFAULT or DISCARD: it starts with
/// one of those words (or a comment or parenthesis), or `sql` has several statements. It runs
/// on every query of a client with startup values (most set application_name), so the usual
/// query is decided by its first bytes and one memchr.
fn may_reset(sql: &[u8]) -> bool {
    let trimmed = sql
        .iter()
        .rposition(|b| !b.is_ascii_whitespace() && *b != b';')
        .map_or(&sql[..0], |end| &sql[..=end]);
    let head = trimmed.trim_ascii_start();
    // A branch-free scan (the compiler vectorises it): about twice as fast as `contains`.
    let several = trimmed.iter().fold(false, |seen, &b| seen | (b == b';'));
    several
        || matches!(head.first(), Some(b'/' | b'-' | b'('))
        || [&b"reset"[..], b"discard", b"set"]
            .iter()
            .any(|k| starts_with_ci(head, k))
}

/// What statements of a query reset to their reset values (for a client with startup values,
/// its startup values, which pgtier then sets again).
#[derive(Debug, PartialEq, Eq)]
pub enum Resets<'a> {
    /// `RESET ALL` or `DISCARD ALL`: every parameter (but those Postgres marks
    /// GUC_NO_RESET_ALL, such as role: DISCARD ALL resets role to none, not to its startup value).
    All,
    /// `RESET name` or `SET [SESSION] name TO DEFAULT`: these (as written).
    Names(Vec<&'a [u8]>),
}

/// Which parameters the statements of `sql` reset, if any: `RESET name`, `SET [SESSION] name
/// {TO | =} DEFAULT`, `RESET ALL`, `DISCARD ALL` (each a statement of its own; SET LOCAL
/// resets only inside the transaction); None too when a statement is a COPY. Cheap for the
/// usual query (see `may_reset`).
pub fn resets<'a>(sql: &'a [u8], strings: StringSyntax) -> Option<Resets<'a>> {
    if !may_reset(sql) {
        return None;
    }
    let mut names: Vec<&[u8]> = Vec::new();
    let (mut all, mut copy) = (false, false);
    let mut each = |stmt: &'a [u8]| {
        if session_command(stmt) == Some(SessionCommand::DiscardAll) {
            all = true;
        }
        match param_command(stmt, strings) {
            Some(ParamCommand::ResetAll) => all = true,
            Some(ParamCommand::Reset(n)) => names.push(n),
            _ => {}
        }
        copy |= matches!(Lexer::with_syntax(stmt, strings).next(),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case(b"copy"));
    };
    let mut start = 0;
    let mut lx = Lexer::with_syntax(sql, strings);
    while let Some(tok) = lx.next() {
        if tok == Token::Semicolon {
            each(&sql[start..lx.offset() - 1]);
            start = lx.offset();
        }
    }
    each(&sql[start..]);
    if copy {
        // A restore sent behind the query would reach the server inside its COPY: left out
        // (the reset then goes to the server's default, as before).
        return None;
    }
    if all {
        return Some(Resets::All);
    }
    (!names.is_empty()).then_some(Resets::Names(names))
}

fn starts_with_ci(w: &[u8], prefix: &[u8]) -> bool {
    w.len() >= prefix.len() && w[..prefix.len()].eq_ignore_ascii_case(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sql: &str) -> Option<&'static str> {
        pins(sql.as_bytes(), |p| {
            p.eq_ignore_ascii_case(b"timezone") || p.eq_ignore_ascii_case(b"application_name")
        })
    }

    #[test]
    fn pinning_statements() {
        for sql in [
            "PREPARE q AS SELECT 1",
            "listen jobs",
            "CREATE TEMP TABLE t (a int)",
            "create local temporary table t (a int)",
            "SELECT pg_advisory_lock(1)",
            "select pg_try_advisory_lock_shared(1)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "SET ROLE admin",
            "SET SESSION AUTHORIZATION bob",
            "SET work_mem = '64MB'",
            "set session search_path to app",
            "SELECT 1; SET statement_timeout = 5",
            "LOAD 'auto_explain'",
            "SELECT set_config('work_mem', '1MB', false)",
            "SELECT * INTO TEMP t FROM x",
            "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
            "create or replace temporary view v as select 1",
            "CREATE TABLE pg_temp.t (a int)",
            "DO $$ BEGIN CREATE TEMP TABLE t (a int); END $$",
            "SELECT 1; --\rSET work_mem = '1MB'",
            "WITH q AS (SELECT 1) SELECT pg_advisory_lock(1) FROM q",
            "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
            "explain analyse verbose create temporary table t as select 1",
            "EXPLAIN (ANALYZE, FORMAT JSON) CREATE TEMP TABLE t AS SELECT 1",
            "EXPLAIN (ANALYZE true, BUFFERS (on)) CREATE LOCAL TEMP TABLE t AS SELECT 1",
            "SELECT 1; EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
            "EXPLAIN ANALYZE CREATE TABLE pg_temp.t AS SELECT 1",
        ] {
            assert!(check(sql).is_some(), "{sql} should pin");
        }
    }

    #[test]
    fn the_byte_scan_lets_plain_statements_skip_the_lexer_and_catches_every_pinning_word() {
        assert!(!may_pin(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 42;"
        ));
        assert!(!may_pin(
            b"INSERT INTO t (a, b) VALUES ($1, $2) RETURNING id"
        ));
        for sql in [
            "SET x = 1",
            "reset x",
            "SELECT set_config('a', 'b', false)",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_try_advisory_lock(1)",
            "CREATE TEMP TABLE t (a int)",
            "create temporary table t (a int)",
            "SELECT * INTO TEMP t FROM u",
            "SELECT * FROM pg_temp.t",
            "PREPARE p AS SELECT 1",
            "LISTEN ch",
            "LOAD 'x'",
            "DO $$ BEGIN END $$",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "SELECT dblink_connect('x')",
        ] {
            assert!(may_pin(sql.as_bytes()), "{sql}");
            // The scan only ever sends statements on to the full check.
            assert!(pins(sql.as_bytes(), |_| false).is_some(), "{sql}");
        }
    }

    #[test]
    fn session_commands() {
        use SessionCommand::*;
        assert_eq!(session_command(b"DEALLOCATE s1"), Some(Deallocate(b"s1")));
        assert_eq!(
            session_command(b"deallocate prepare \"S 1\";"),
            Some(Deallocate(b"S 1"))
        );
        assert_eq!(session_command(b"DEALLOCATE ALL"), Some(DeallocateAll));
        assert_eq!(session_command(b" discard all ; "), Some(DiscardAll));
        assert_eq!(session_command(b"DISCARD TEMP"), None);
        assert_eq!(session_command(b"DEALLOCATE s1; SELECT 1"), None);
    }

    #[test]
    fn param_commands() {
        use ParamCommand::*;
        let pc = |sql: &'static str| param_command(sql.as_bytes(), StringSyntax::Standard);
        assert_eq!(
            pc("  SET work_mem = '64MB'; -- bye"),
            Some(Set(b"work_mem", b"SET work_mem = '64MB'"))
        );
        assert_eq!(
            pc("set session statement_timeout to 5000"),
            Some(Set(
                b"statement_timeout",
                b"set session statement_timeout to 5000"
            ))
        );
        assert_eq!(
            pc("SET myapp.tenant = 'a'"),
            Some(Set(b"myapp.tenant", b"SET myapp.tenant = 'a'"))
        );
        assert_eq!(pc("SET \"work_mem\" TO DEFAULT"), Some(Reset(b"work_mem")));
        assert_eq!(pc("RESET work_mem;"), Some(Reset(b"work_mem")));
        assert_eq!(pc("reset all"), Some(ResetAll));
        let ra = |sql: &str| resets_all(sql.as_bytes(), StringSyntax::Standard);
        assert!(ra("BEGIN; RESET ALL; COMMIT") && ra("discard all"));
        assert!(!ra("SELECT 'reset all'") && !ra("RESET work_mem") && !ra("SELECT reset, all"));
        for sql in [
            "SET LOCAL work_mem = '1MB'",
            "SET work_mem = '1MB'; SELECT 1",
            "SET work_mem",
            "SELECT 1",
            "SET TIME ZONE 'UTC'",
            "RESET work_mem, x",
        ] {
            assert_eq!(pc(sql), None, "{sql}");
        }
    }

    #[test]
    fn statements_that_do_not_pin() {
        for sql in [
            "SELECT 1",
            "SET TimeZone = 'UTC'",
            "SET SESSION application_name TO x",
            "SET LOCAL work_mem = '1MB'",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "RESET ALL",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT 'PREPARE x; LISTEN y'",
            "/* LISTEN */ SELECT 1 -- SET ROLE x",
            "DECLARE c CURSOR FOR SELECT 1",
            "CREATE TABLE t (a int)",
            "select $$ set role x $$",
            "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
            "CREATE OR REPLACE VIEW v AS SELECT 1",
            "SELECT 'pg_temp.x'",
            "EXPLAIN ANALYZE SELECT 1",
            "EXPLAIN (ANALYZE, COSTS off) SELECT temp FROM t",
            "EXPLAIN CREATE TABLE t AS SELECT 1",
        ] {
            assert_eq!(check(sql), None, "{sql} should not pin");
        }
    }

    #[test]
    fn backslash_strings_follow_the_clients_standard_conforming_strings() {
        use StringSyntax::*;
        let check_in = |sql: &str, s| pins_in(sql.as_bytes(), s, |_| false);
        // With scs off, `\'` is an escaped quote: the SET is inside the string.
        let hidden = r"SELECT 'a\'; SET search_path = x; --'";
        assert!(check_in(hidden, Standard).is_some());
        assert_eq!(check_in(hidden, BackslashEscapes), None);
        // And the reverse: a LISTEN that only scs off shows outside the string.
        let shown = r"SELECT 'a\'', 1; LISTEN x; --'";
        assert_eq!(check_in(shown, Standard), None);
        assert_eq!(check_in(shown, BackslashEscapes), Some("LISTEN"));
        // E'' strings escape whatever the setting.
        for s in [Standard, BackslashEscapes] {
            assert_eq!(check_in(r"SELECT E'\'; LISTEN x; --'", s), None);
            assert_eq!(check_in(r"SELECT E'\\'; LISTEN x; --'", s), Some("LISTEN"));
        }
    }

    #[test]
    fn resets_finds_reset_statements_anywhere_in_a_query() {
        fn r(sql: &str) -> Option<Resets<'_>> {
            resets(sql.as_bytes(), StringSyntax::Standard)
        }
        let names =
            |v: &[&'static str]| Some(Resets::Names(v.iter().map(|n| n.as_bytes()).collect()));
        assert_eq!(r("RESET datestyle"), names(&["datestyle"]));
        assert_eq!(r("SET SESSION work_mem TO DEFAULT;"), names(&["work_mem"]));
        assert_eq!(r("reset all"), Some(Resets::All));
        assert_eq!(r("DISCARD ALL"), Some(Resets::All));
        assert_eq!(
            r("SELECT 1; RESET TimeZone; SELECT 'RESET ALL'; reset myapp.x"),
            names(&["TimeZone", "myapp.x"])
        );
        assert_eq!(r("SELECT 1; RESET ALL"), Some(Resets::All));
        assert_eq!(r("RESET ALL; COPY t FROM STDIN"), None);
        for none in [
            "SELECT 1",
            "SELECT 'RESET ALL'",
            "SET work_mem = 1",
            "SET LOCAL work_mem TO DEFAULT",
            "SELECT 1; SELECT 2",
            "/* RESET ALL */ SELECT 1",
        ] {
            assert_eq!(r(none), None, "{none}");
        }
    }
}
