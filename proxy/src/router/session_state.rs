//! Statements that leave state on the server connection that pgtier cannot carry to another
//! one: the client must keep that server (it is pinned) until it disconnects.

use super::lexer::{Lexer, Token};

/// Why a statement pins its client to the server, if it does. `reported` says whether a
/// parameter's changes are reported by the server (those are synced instead of pinned).
pub fn pins(sql: &[u8], reported: impl Fn(&[u8]) -> bool) -> Option<&'static str> {
    let mut idx = 0usize;
    let mut words: [&[u8]; 3] = [b""; 3];
    let mut prev: &[u8] = b"";
    for tok in Lexer::new(sql) {
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
        let is = |a: &[u8], b: &str| a.eq_ignore_ascii_case(b.as_bytes());
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
    let mut words = Vec::with_capacity(4);
    for tok in Lexer::new(sql) {
        match tok {
            Token::Word(w) if words.len() < 4 => words.push(w),
            Token::Semicolon => {}
            _ => return None,
        }
    }
    let is = |w: &[u8], k: &str| w.eq_ignore_ascii_case(k.as_bytes());
    match words.as_slice() {
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
        ] {
            assert!(check(sql).is_some(), "{sql} should pin");
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
        ] {
            assert_eq!(check(sql), None, "{sql} should not pin");
        }
    }
}
