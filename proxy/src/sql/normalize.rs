//! Literal normalization for keying per-statement caches ([`normalize_literals`]), and the
//! cheap check that a text has the same key as one normalized before ([`same_shape`]).

use super::lexer::{is_word, Kind, Lexeme, Lexer};

/// The most digits of an integer literal that [`normalize_literals`] replaces: any integer of
/// up to 18 digits fits the `u64`/`i64` that sqlparser reads some of them into, so whether a
/// parse succeeds never depends on which one it is.
const MAX_NORMALIZED_DIGITS: usize = 18;

/// Writes `sql` with its literals replaced by a placeholder of their kind into `out`, for
/// keying per-statement caches: `'...'` becomes `''`, `E'...'` becomes `E''`, an integer `0`,
/// a decimal `1.5` becomes `0.0`, and each run of whitespace and comments one space (none at
/// the start or end; comments sqlparser reads as optimizer hints, `/*+ ... */`, are kept).
/// Everything else (keywords, identifiers, operators, casts, `$n` parameters) is copied as
/// it is. Whitespace and comments only separate tokens, for this lexer and for sqlparser
/// (neither joins adjacent strings in the Postgres dialect), so how much of it there is
/// cannot matter; whether there is any can, and that is kept.
///
/// Returns false when the text must be keyed as it is, because a literal in it could change
/// how it is classified: any EXPLAIN (its option values are literals), dollar-quoted strings
/// and prefixed strings with backslashes (`X'\'...`; sqlparser's idea of where they end may
/// differ from this lexer's), a literal that is not valid UTF-8, or a `$n` glued to a word.
/// Literals that do not fit a placeholder exactly are kept verbatim: unterminated strings
/// and comments, prefixed strings (`B'..'`, `X'..'`, `U&'..'`), `E'...'` with backslashes
/// (sqlparser decodes, and may reject, their escapes), numbers glued to a word or a dot
/// (`1e5`, `0x1F`, `1_000`, `t.1`) and integers of more than 18 digits.
///
/// Strings are read the standard way (`standard_conforming_strings = on`), like the
/// classifier reads them.
pub fn normalize_literals(sql: &[u8], out: &mut Vec<u8>, literals: &mut Vec<Literal>) -> bool {
    out.clear();
    literals.clear();
    let normalized = normalize(sql, out, literals);
    if !normalized {
        literals.clear();
    }
    normalized
}

fn normalize(sql: &[u8], out: &mut Vec<u8>, literals: &mut Vec<Literal>) -> bool {
    let mut lx = Lexer::new(sql);
    // Bytes from `run` to the end of the last lexeme are copied when the run breaks.
    let (mut run, mut prev_end) = (0, 0);
    // Whitespace or a comment came before the next lexeme: one space separates them.
    let mut separated = false;
    while let Some(l) = lx.lexeme() {
        if l.start > prev_end {
            out.extend_from_slice(&sql[run..prev_end]);
            run = l.start;
            separated = true;
        }
        prev_end = l.end;
        let (placeholder, kind): (&[u8], LiteralKind) = match l.kind {
            Kind::Comment { terminated } => {
                if terminated && !optimizer_hint(&sql[l.start..l.end]) {
                    out.extend_from_slice(&sql[run..l.start]);
                    run = l.end;
                    separated = true;
                    continue;
                }
                separate(out, &mut separated);
                continue;
            }
            Kind::String {
                escape_prefix,
                terminated,
            } => match string(sql, l, escape_prefix, terminated) {
                Fate::Placeholder(p) => (p, LiteralKind::String { escape_prefix }),
                Fate::Verbatim => {
                    separate(out, &mut separated);
                    continue;
                }
                Fate::Exact => return false,
            },
            Kind::DollarQuoted => return false,
            Kind::Parameter if sql.get(l.end).is_some_and(|&b| is_word(b)) => return false,
            Kind::Word if sql[l.start..l.end].eq_ignore_ascii_case(b"explain") => return false,
            Kind::Other if sql[l.start].is_ascii_digit() => match number(sql, l.start) {
                Some((end, placeholder)) => {
                    lx.skip_to(end);
                    prev_end = end;
                    let decimal = placeholder.len() > 1;
                    (placeholder, LiteralKind::Number { decimal })
                }
                None => {
                    separate(out, &mut separated);
                    continue;
                }
            },
            _ => {
                separate(out, &mut separated);
                continue;
            }
        };
        literals.push(Literal {
            start: l.start,
            end: prev_end,
            kind,
        });
        out.extend_from_slice(&sql[run..l.start]);
        separate(out, &mut separated);
        out.extend_from_slice(placeholder);
        run = prev_end;
    }
    out.extend_from_slice(&sql[run..prev_end]);
    true
}

/// What [`normalize_literals`] does with a string literal.
enum Fate {
    /// Replaced by this placeholder.
    Placeholder(&'static [u8]),
    /// Copied as it is.
    Verbatim,
    /// The whole text must be keyed exactly.
    Exact,
}

/// The fate of the string lexeme `l` of `sql`.
fn string(sql: &[u8], l: Lexeme, escape_prefix: bool, terminated: bool) -> Fate {
    let body_start = l.start + if escape_prefix { 2 } else { 1 };
    let body = &sql[body_start..l.end.max(body_start)];
    let prefixed =
        !escape_prefix && l.start > 0 && (is_word(sql[l.start - 1]) || sql[l.start - 1] == b'&');
    if prefixed && body.contains(&b'\\') {
        return Fate::Exact;
    }
    if !terminated || prefixed || (escape_prefix && body.contains(&b'\\')) {
        return Fate::Verbatim;
    }
    if !body.is_ascii() && std::str::from_utf8(body).is_err() {
        return Fate::Exact;
    }
    Fate::Placeholder(if escape_prefix { b"E''" } else { b"''" })
}

/// A literal [`normalize_literals`] replaced by a placeholder: where it is in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Literal {
    /// Its first byte.
    pub start: usize,
    /// The byte after it.
    pub end: usize,
    kind: LiteralKind,
}

/// Which placeholder a [`Literal`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LiteralKind {
    /// `0` or (`decimal`) `0.0`.
    Number { decimal: bool },
    /// `''` or (`escape_prefix`) `E''`.
    String { escape_prefix: bool },
}

/// Whether `text` normalizes to the same key as `prev`, whose `literals` (in order) are
/// what [`normalize_literals`] found in it, because it is `prev` with only those literals
/// changed, each to another literal that gets the same placeholder. Everything outside them
/// must be byte for byte the same, so the lexer is in the same state at each literal's start
/// and after its end: a few comparisons instead of a normalizing pass.
pub fn same_shape(prev: &[u8], literals: &[Literal], text: &[u8]) -> bool {
    // `i` walks `prev`, `j` walks `text`.
    let (mut i, mut j) = (0usize, 0usize);
    for lit in literals {
        let same = lit.start - i;
        if text.len() < j + same || prev[i..lit.start] != text[j..j + same] {
            return false;
        }
        j += same;
        match literal_end(text, j, lit.kind) {
            Some(end) => j = end,
            None => return false,
        }
        i = lit.end;
    }
    prev[i..] == text[j..]
}

/// The end of the literal that starts at byte `at` of `sql` if [`normalize_literals`] would
/// replace it with `kind`'s placeholder.
fn literal_end(sql: &[u8], at: usize, kind: LiteralKind) -> Option<usize> {
    match kind {
        LiteralKind::Number { decimal } => {
            if !sql.get(at).is_some_and(u8::is_ascii_digit) {
                return None;
            }
            let (end, placeholder) = number(sql, at)?;
            (decimal == (placeholder.len() > 1)).then_some(end)
        }
        LiteralKind::String { escape_prefix } => {
            let l = Lexer::at(sql, at).lexeme()?;
            let Kind::String {
                escape_prefix: e,
                terminated,
            } = l.kind
            else {
                return None;
            };
            if e != escape_prefix || l.start != at {
                return None;
            }
            match string(sql, l, escape_prefix, terminated) {
                Fate::Placeholder(_) => Some(l.end),
                Fate::Verbatim | Fate::Exact => None,
            }
        }
    }
}

/// Writes the one space that stands for whitespace and comments between two lexemes (none
/// before the first).
fn separate(out: &mut Vec<u8>, separated: &mut bool) {
    if std::mem::take(separated) && !out.is_empty() {
        out.push(b' ');
    }
}

/// An integer (`123`) or decimal (`1.5`) literal starting at `start`: its end and placeholder.
/// None if it touches a word character or a dot on either side, or is too long.
fn number(sql: &[u8], start: usize) -> Option<(usize, &'static [u8])> {
    let glued = |b: u8| is_word(b) || b == b'.';
    if start > 0 && glued(sql[start - 1]) {
        return None;
    }
    let digits = |from: usize| {
        sql[from..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(sql.len(), |p| from + p)
    };
    let mut end = digits(start);
    let mut placeholder: &'static [u8] = b"0";
    if end - start > MAX_NORMALIZED_DIGITS {
        return None;
    }
    if sql.get(end) == Some(&b'.') && sql.get(end + 1).is_some_and(u8::is_ascii_digit) {
        end = digits(end + 1);
        placeholder = b"0.0";
    }
    if sql.get(end).is_some_and(|&b| glued(b)) {
        return None;
    }
    Some((end, placeholder))
}

/// Whether a block comment is one sqlparser keeps as an optimizer hint: `/*+ ... */` or
/// `/*name+ ... */` (its body up to the first `+` is ASCII letters and digits).
fn optimizer_hint(comment: &[u8]) -> bool {
    let Some(body) = comment.strip_prefix(b"/*").or(comment.strip_prefix(b"--")) else {
        return false;
    };
    match body.iter().position(|&b| b == b'+') {
        Some(p) => body[..p].iter().all(u8::is_ascii_alphanumeric),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(sql: &str) -> Option<String> {
        let mut out = Vec::new();
        normalize_literals(sql.as_bytes(), &mut out, &mut Vec::new())
            .then(|| String::from_utf8(out).expect("utf-8 in, utf-8 out"))
    }

    #[test]
    fn a_text_ending_in_an_escaping_backslash_is_kept_as_it_is() {
        // The lexer once ended such a string one byte past the text: a slice out of range.
        // The unterminated string stays verbatim; the literals before it are replaced.
        for (sql, want) in [
            ("SELECT E'\\", "SELECT E'\\"),
            ("SELECT 1, E'ab\\", "SELECT 0, E'ab\\"),
            ("SELECT 1 WHERE a = E'\\", "SELECT 0 WHERE a = E'\\"),
        ] {
            assert_eq!(norm(sql).as_deref(), Some(want), "{sql:?}");
        }
    }

    #[test]
    fn normalizes_literals_by_kind() {
        let n = |s: &str| norm(s).unwrap_or_else(|| panic!("not normalized: {s}"));
        assert_eq!(
            n("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"),
            "SELECT abalance FROM pgbench_accounts WHERE aid = 0;"
        );
        assert_eq!(
            n("select * from t where a = 'it''s' and b = E'x' and c = -1.25 and d = $1"),
            "select * from t where a = '' and b = E'' and c = -0.0 and d = $1"
        );
        assert_eq!(
            n("SELECT '1'::int, 2::text, x1, \"a 1\""),
            "SELECT ''::int, 0::text, x1, \"a 1\""
        );
        // Whitespace and comments become one space (hints are read from each text, not
        // from the key), none at the ends; tokens that touch stay touching.
        assert_eq!(
            n("\n/* pgtier:min_lsn=0/1 */ SELECT\t\t1 /* a */-- trace=9\n  FROM/**/t "),
            "SELECT 0 FROM t"
        );
        assert_eq!(n("SELECT a+1,b FROM t"), "SELECT a+0,b FROM t");
        // ...except sqlparser's optimizer hints and unterminated ones, kept as they are.
        assert_eq!(
            n("SELECT /*+ SeqScan(t) */ 1"),
            "SELECT /*+ SeqScan(t) */ 0"
        );
        assert_eq!(n("SELECT 1 /* open"), "SELECT 0 /* open");
        // Kept verbatim: unterminated strings, prefixed strings, E'' with escapes, numbers
        // glued to words or dots, very long integers.
        for kept in [
            "SELECT 'open",
            "SELECT B'0101', X'ff', U&'dat', N'x'",
            "SELECT E'a\\nb'",
            "SELECT 1e5, 0x1F, 1_000, 1.e3, t.1, .5, 1.",
            "SELECT 1234567890123456789",
        ] {
            assert_eq!(n(kept), kept);
        }
        // Normalizing a key again changes nothing.
        for sql in [
            "SELECT 'a', E'b', 1, 2.5 /* c */ FROM t",
            "SELECT B'1', 12345678901234567890",
        ] {
            let once = n(sql);
            assert_eq!(n(&once), once);
        }
    }

    #[test]
    fn texts_where_a_literal_may_matter_are_not_normalized() {
        for sql in [
            "EXPLAIN (ANALYZE 0) DELETE FROM t",
            "explain (analyze 'off') select 1",
            "SELECT $$a$$",
            "SELECT $x$ 1 $x$",
            "SELECT X'\\', 'a'",
            "SELECT U&'d\\0061t'",
            "SELECT $1$",
            "SELECT $1a",
        ] {
            assert_eq!(norm(sql), None, "{sql}");
        }
        let mut out = Vec::new();
        assert!(!normalize_literals(
            b"SELECT '\xff'",
            &mut out,
            &mut Vec::new()
        ));
        assert!(normalize_literals(
            b"SELECT '\xc3\xa9'",
            &mut out,
            &mut Vec::new()
        ));
        assert_eq!(out, b"SELECT ''");
        // Outside literals, invalid UTF-8 is copied (the key then stays invalid, too).
        assert!(normalize_literals(
            b"SELECT 1 \xff",
            &mut out,
            &mut Vec::new()
        ));
        assert_eq!(out, b"SELECT 0 \xff");
    }

    fn shape_of(sql: &str) -> Option<Vec<Literal>> {
        let (mut out, mut lits) = (Vec::new(), Vec::new());
        normalize_literals(sql.as_bytes(), &mut out, &mut lits).then_some(lits)
    }

    fn key(sql: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        normalize_literals(sql, &mut out, &mut Vec::new()).then_some(out)
    }

    fn same(prev: &str, text: &[u8]) -> bool {
        let lits = shape_of(prev).unwrap_or_else(|| panic!("{prev} not normalized"));
        let same = same_shape(prev.as_bytes(), &lits, text);
        if same {
            // The point of the check: the same shape is the same cache key.
            assert_eq!(key(prev.as_bytes()), key(text), "{prev}");
        }
        same
    }

    #[test]
    fn same_shape_means_same_key() {
        for (prev, text) in [
            (
                "SELECT abalance FROM a WHERE aid = 1;",
                "SELECT abalance FROM a WHERE aid = 123456;",
            ),
            ("SELECT 1", "SELECT 99"),
            (
                "SELECT 1.5, 'a', E'b' FROM t",
                "SELECT 22.75, 'it''s', E'' FROM t",
            ),
            ("SELECT 'a' || 'b'", "SELECT 'é' || ''"),
            (
                "SELECT x FROM t WHERE a = 1 AND b = 2",
                "SELECT x FROM t WHERE a = 10 AND b = 2",
            ),
            ("SELECT 'a'", "SELECT 'a\\'"),
            ("SELECT 1 -- c", "SELECT 2 -- c"),
        ] {
            assert!(same(prev, text.as_bytes()), "{prev} / {text}");
        }
        for (prev, text) in [
            // Another kind of literal, or one that is not replaced.
            ("SELECT 1", "SELECT 1.5"),
            ("SELECT 1.5", "SELECT 1"),
            ("SELECT 1", "SELECT 'a'"),
            ("SELECT 'a'", "SELECT E'a'"),
            ("SELECT E'a'", "SELECT E'a\\n'"),
            ("SELECT 1", "SELECT 1e5"),
            ("SELECT 1", "SELECT 1234567890123456789"),
            ("SELECT 1", "SELECT 1x"),
            ("SELECT 1", "SELECT 1."),
            ("SELECT 1", "SELECT 1.x"),
            ("SELECT 'a'", "SELECT 'a"),
            ("SELECT 'a' FROM t", "SELECT ''' FROM t"),
            // Other bytes outside the literals.
            ("SELECT 1 FROM t", "SELECT 1 FROM u"),
            ("SELECT 1 FROM t", "SELECT 1  FROM t"),
            ("SELECT 'a', 1", "SELECT 'a', 1, 2"),
            ("SELECT 'a', 1", "SELECT 'a'"),
            ("SELECT 5 -- c", "SELECT 5 -- d"),
            ("SELECT 5", ""),
        ] {
            assert!(!same(prev, text.as_bytes()), "{prev} / {text}");
        }
        // A new string literal must be valid UTF-8, as normalizing requires.
        assert!(!same("SELECT 'a'", b"SELECT '\xff'"));
        assert!(same("SELECT 'a'", b"SELECT '\xc3\xa9'"));
    }

    #[test]
    fn literals_are_reported_where_they_were_replaced() {
        let sql = "SELECT 'x', 12, 1.5, E'y', B'1', t1 FROM t";
        let lits = shape_of(sql).unwrap();
        let spans: Vec<&str> = lits.iter().map(|l| &sql[l.start..l.end]).collect();
        assert_eq!(spans, ["'x'", "12", "1.5", "E'y'"]);
        assert_eq!(shape_of("SELECT 1, $$a$$"), None);
    }
}
