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
    lexed_pins(sql, strings, reported)
}

/// [`pins_in`] without the byte scan that lets most statements skip the lexer.
fn lexed_pins(
    sql: &[u8],
    strings: StringSyntax,
    reported: impl Fn(&[u8]) -> bool,
) -> Option<&'static str> {
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

/// Whether a word of `sql` starts with a piece of a word that can pin (checked below): a byte
/// scan that lets most statements skip the lexer. It may say yes wrongly (`double` starts with
/// `do`), never no wrongly: every pinning word starts with one of these pieces, and the lexer
/// never starts a word right after a letter or `_` (its words start with a letter, `_` or a
/// byte >= 0x80 and go on with those, digits and `$`; a quoted identifier's word starts
/// after its `"`; any byte but a letter or `_` is taken as a word boundary here, which can
/// only say yes more often).
pub fn may_pin(sql: &[u8]) -> bool {
    // Eight bytes at a time: where words start (a letter or `_` after anything else), then,
    // at those few places only, a table load for a piece's first letter and a comparison of
    // 8 bytes at once. A byte at a time cost ~12 instructions a byte on every simple query of
    // a session without replicas.
    let mut before = 0u64;
    (0..sql.len())
        .step_by(8)
        .any(|at| pieces_start_in(sql, at, eight_from(sql, at), &mut before))
}

/// The 8 bytes of `sql` from `at` (little-endian), padded with zeros past its end: zeros are
/// no letter (no word starts there) and fold to spaces (never a piece's letter).
#[inline(always)]
fn eight_from(sql: &[u8], at: usize) -> u64 {
    let window = match sql.get(at..at + 8) {
        Some(w) => w.try_into().unwrap_or_default(),
        None => {
            let mut padded = [0u8; 8];
            padded[..sql.len() - at].copy_from_slice(&sql[at..]);
            padded
        }
    };
    u64::from_le_bytes(window)
}

/// Whether a piece starts at a word start in `x`, the 8 bytes of `sql` from `at`; `before`
/// carries (bit 7) whether the byte before them is a letter or `_`.
#[inline(always)]
fn pieces_start_in(sql: &[u8], at: usize, x: u64, before: &mut u64) -> bool {
    let word = word_bytes(x);
    let mut starts = word & !((word << 8) | *before);
    *before = word >> 56;
    while starts != 0 {
        let i = at + (starts.trailing_zeros() / 8) as usize;
        starts &= starts - 1;
        let b = sql[i];
        if PIECE_FIRST[usize::from(b)] && piece_at(sql, i, b) {
            return true;
        }
    }
    false
}

/// Bit 7 of each byte of `x` set where that byte is an ASCII letter or `_` (no carry crosses
/// a byte: every sum below stays under 0x100).
#[inline(always)]
fn word_bytes(x: u64) -> u64 {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const SEVEN: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const fn each(b: u8) -> u64 {
        0x0101_0101_0101_0101 * b as u64
    }
    // Letters fold onto 0x61..=0x7a (`_` onto 0x7f, which is none); so do some bytes >= 0x80
    // in their low seven bits, which `& !x` drops at the end.
    let folded = (x | FOLD) & SEVEN;
    let from_a = folded + each(0x80 - b'a');
    let past_z = folded + each(0x80 - (b'z' + 1));
    let letter = from_a & !past_z;
    let z = x ^ each(b'_');
    let underscore = !((((z & SEVEN) + SEVEN) | z) & HIGH);
    (letter | underscore) & !x & HIGH
}

/// Whether a piece of [`PIECE_TEXTS`] starts at `sql[i]` (whose byte is `b`).
fn piece_at(sql: &[u8], i: usize, b: u8) -> bool {
    let w = eight_from(sql, i) | FOLD;
    let is = |k: usize| w & PIECES[k].1 == PIECES[k].0;
    match b | 0x20 {
        // pg_advisory_lock, pg_try_advisory_lock, pg_temp; PREPARE
        b'p' => is(0) || is(1),
        // SET, set_config
        b's' => is(2),
        // RESET
        b'r' => is(3),
        // dblink_connect; DO
        b'd' => is(4) || is(5),
        // TEMP, TEMPORARY
        b't' => is(6),
        // LISTEN, LOAD
        b'l' => is(7) || is(8),
        // DECLARE ... WITH HOLD
        _ => is(9),
    }
}

/// The pieces a word that can pin starts with, in the order [`piece_at`]'s match names them.
const PIECE_TEXTS: [&[u8]; 10] = [
    b"pg_", b"prepare", b"set", b"reset", b"dblink", b"do", b"temp", b"listen", b"load", b"hold",
];

/// Each byte of a word `| 0x20`.
const FOLD: u64 = 0x2020_2020_2020_2020;

/// [`PIECE_TEXTS`] as (folded little-endian bytes, mask of their length).
const PIECES: [(u64, u64); PIECE_TEXTS.len()] = {
    let mut out = [(0u64, 0u64); PIECE_TEXTS.len()];
    let mut p = 0;
    while p < PIECE_TEXTS.len() {
        let s = PIECE_TEXTS[p];
        let mut k = 0;
        while k < s.len() {
            out[p].0 |= ((s[k] | 0x20) as u64) << (8 * k);
            out[p].1 |= 0xff << (8 * k);
            k += 1;
        }
        p += 1;
    }
    out
};

/// The first letters of [`PIECE_TEXTS`], in both cases.
static PIECE_FIRST: [bool; 256] = {
    let mut t = [false; 256];
    let mut p = 0;
    while p < PIECE_TEXTS.len() {
        let first = PIECE_TEXTS[p][0];
        t[first as usize] = true;
        t[(first - 0x20) as usize] = true;
        p += 1;
    }
    t
};

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

    /// The byte scan written plainly (one closure per byte): the table-driven one must agree.
    fn may_pin_reference(sql: &[u8]) -> bool {
        let at = |i: usize, needle: &[u8]| {
            sql.get(i..i + needle.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(needle))
        };
        let word_start =
            |i: usize| i == 0 || !(sql[i - 1].is_ascii_alphabetic() || sql[i - 1] == b'_');
        (0..sql.len()).any(|i| {
            word_start(i)
                && match sql[i] | 0x20 {
                    b'p' => at(i, b"pg_") || at(i, b"prepare"),
                    b's' => at(i, b"set"),
                    b'r' => at(i, b"reset"),
                    b'd' => at(i, b"dblink") || at(i, b"do"),
                    b't' => at(i, b"temp"),
                    b'l' => at(i, b"listen") || at(i, b"load"),
                    b'h' => at(i, b"hold"),
                    _ => false,
                }
        })
    }

    /// A generator of random texts over `alphabet`'s entries (seeded, the same every run).
    fn texts<'a>(
        alphabet: &'a [&'a [u8]],
        max_len: u64,
        count: usize,
    ) -> impl Iterator<Item = Vec<u8>> + 'a {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        (0..count).map(move |_| {
            let len = next() % max_len;
            (0..len)
                .flat_map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .copied()
                .collect()
        })
    }

    #[test]
    fn the_table_driven_byte_scan_agrees_with_the_reference_on_random_texts() {
        // Texts drawn from the pieces' letters in both cases, their neighbours under `| 0x20`
        // (`P` is 0x50, `p` 0x70, `0` 0x30 = 0x10 | 0x20...), and separators.
        // Bytes >= 0x80 (some fold onto letters under `| 0x20`) must never count as letters.
        let bytes: Vec<[u8; 1]> =
            b"pPgG_rReEaAsStTdDbBlLiInNkKoOmMhH0PQ$'\" ( ;\x00\x7f\xc1\xdf\xe1\xff"
                .iter()
                .map(|&b| [b])
                .collect();
        let alphabet: Vec<&[u8]> = bytes.iter().map(|b| &b[..]).collect();
        let (mut yes, mut no) = (0, 0);
        // Up to 40 bytes: words cross the 8-byte blocks, some more than once.
        for text in texts(&alphabet, 40, 50_000) {
            let want = may_pin_reference(&text);
            // Never no where the reference says yes; yes where it says no only by DEL (0x7f)
            // folding onto `_` (0x5f | 0x20) in an 8-byte comparison.
            let got = may_pin(&text);
            assert!(
                got == want || (got && text.contains(&0x7f)),
                "{:?}: {got}",
                String::from_utf8_lossy(&text)
            );
            if want {
                yes += 1
            } else {
                no += 1
            }
        }
        assert!(yes > 100 && no > 1000, "{yes} / {no}");
    }

    #[test]
    fn the_byte_scan_says_yes_wherever_the_lexer_finds_a_pinning_word() {
        // Random statements from pinning words, their neighbours and what may glue to a word
        // (letters, digits, `_`, `$`, quotes, high bytes): the prefilter may only say yes more.
        let alphabet: Vec<&[u8]> = concat!(
            "set|reset|SET|ReSet|x|_|1|$|$1|é|\"|'| |;|.|(|create|temp|TEMPORARY|into|pg_temp|",
            "pg_temp_3|pg_advisory_lock|set_config|dblink_connect|prepare|listen|load|do|declare|",
            "with|hold|explain|analyze|search_path|role|local|session|--|\n|/*|*/|;reset role|",
            ";ReSet x|;1dO $$ $$|;create temp table t|;x.pg_temp.t|E'|\\|\r|$a$|U&\"|\"set\"|;SET"
        )
        .split('|')
        .map(str::as_bytes)
        .chain([&b"\xff"[..], b"\xc1"])
        .collect();
        let mut pinning = 0;
        for text in texts(&alphabet, 8, 100_000) {
            for strings in [StringSyntax::Standard, StringSyntax::BackslashEscapes] {
                if lexed_pins(&text, strings, |_| false).is_some() {
                    pinning += 1;
                    assert!(may_pin(&text), "{:?}", String::from_utf8_lossy(&text));
                }
            }
        }
        assert!(pinning > 1000, "{pinning}");
    }

    #[test]
    fn the_byte_scan_lets_plain_statements_skip_the_lexer_and_catches_every_pinning_word() {
        assert!(!may_pin(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 42;"
        ));
        // Pieces inside words are not candidates.
        assert!(!may_pin(
            b"SELECT upset, xdo, apg_x FROM t_temp WHERE a_hold = 1"
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
}
