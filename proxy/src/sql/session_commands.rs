//! Statements that change the client's session as a whole and that pgtier applies to its own
//! state: DEALLOCATE and DISCARD ALL (`session_command`), SET/RESET of one parameter
//! (`param_command`), and the RESETs anywhere in a query (`resets`, `resets_all`).

use super::lexer::{Lexer, StringSyntax, Token};

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

/// The first word of `sql` after whitespace and comments (`--`, nested `/* */`), or empty
/// when something else comes first: a cheap check, on every simple Query, for commands
/// known by their first word (SET, RESET, SHOW, DISCARD, DEALLOCATE).
pub fn first_word(sql: &[u8]) -> &[u8] {
    let mut i = 0;
    loop {
        while sql.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        match sql.get(i..i + 2) {
            Some(b"--") => match sql[i..].iter().position(|&b| b == b'\n') {
                Some(p) => i += p + 1,
                None => return b"",
            },
            Some(b"/*") => {
                let mut depth = 0usize;
                loop {
                    match sql.get(i..i + 2) {
                        Some(b"/*") => {
                            depth += 1;
                            i += 2;
                        }
                        Some(b"*/") => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        Some(_) => i += 1,
                        None => return b"",
                    }
                }
            }
            _ => break,
        }
    }
    let rest = &sql[i..];
    let end = rest
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        .unwrap_or(rest.len());
    &rest[..end]
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

    #[test]
    fn first_word_skips_space_and_comments() {
        assert_eq!(first_word(b"  SET x = 1"), b"SET");
        assert_eq!(first_word(b"-- c\n/* a /* b */ c */ reset all"), b"reset");
        assert_eq!(first_word(b"show pgtier.route;"), b"show");
        assert_eq!(first_word(b"(SELECT 1)"), b"");
        assert_eq!(first_word(b"/* unterminated SET"), b"");
        assert_eq!(first_word(b"-- only a comment"), b"");
        assert_eq!(first_word(b""), b"");
    }
}
