//! Routing hints in SQL comments: `/* pgtier:primary */`, `/* pgtier:replica */`,
//! `/* pgtier:min_lsn=16/B374D848 */`, or the same after `--`.
//!
//! Where they count: in any comment of the text (not inside string literals or quoted
//! identifiers), so both leading comments and the trailing comments that ORMs and
//! sqlcommenter append work. Several directives may share one comment
//! (`/* pgtier:replica pgtier:min_lsn=0/16B3748 */`). `primary` wins over `replica`.
//! A malformed directive (unknown name, invalid LSN) is ignored and reported in
//! `bad_hint`. Hints never make a write read-only; they only inform the router.

use super::Hint;
use crate::cluster::Lsn;

/// Hints found in one statement text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Hints {
    pub hint: Option<Hint>,
    pub min_lsn: Option<Lsn>,
    pub bad_hint: Option<&'static str>,
}

const MARK: &[u8] = b"pgtier:";

/// Whether `sql` mentions `pgtier:` at all (case-insensitive); a cheap pre-check.
fn mentions(sql: &[u8]) -> bool {
    let word = &MARK[..MARK.len() - 1];
    let mut from = word.len();
    while from < sql.len() {
        match sql[from..].iter().position(|&b| b == b':') {
            Some(p) => {
                let colon = from + p;
                if sql[colon - word.len()..colon].eq_ignore_ascii_case(word) {
                    return true;
                }
                from = colon + 1;
            }
            None => return false,
        }
    }
    false
}

/// Whether `sql` starts (after whitespace) with a comment.
fn starts_with_comment(sql: &[u8]) -> bool {
    let rest = sql.trim_ascii_start();
    rest.starts_with(b"/*") || rest.starts_with(b"--")
}

/// Hints from every comment of `sql` (`leading_only`: only comments before the first token).
pub(super) fn parse(sql: &[u8], leading_only: bool) -> Hints {
    let mut hints = Hints::default();
    if (leading_only && !starts_with_comment(sql)) || !mentions(sql) {
        return hints;
    }
    let mut i = 0usize;
    let n = sql.len();
    while i < n {
        let c = sql[i];
        let next = sql.get(i + 1).copied();
        match c {
            b'-' if next == Some(b'-') => {
                let end = sql[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(n, |p| i + p);
                directives(&sql[i + 2..end], &mut hints);
                i = end;
            }
            b'/' if next == Some(b'*') => {
                let start = i + 2;
                let mut depth = 0usize;
                let mut end = n;
                while i < n {
                    if sql[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if sql[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            end = i - 2;
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                directives(&sql[start..end.max(start)], &mut hints);
            }
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => i += 1,
            _ if leading_only => break,
            b'\'' => i = skip_quoted(sql, i + 1, b'\'', false),
            b'"' => i = skip_quoted(sql, i + 1, b'"', false),
            b'e' | b'E' if next == Some(b'\'') => i = skip_quoted(sql, i + 2, b'\'', true),
            b'$' => i = skip_dollar(sql, i),
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                while i < n && is_word(sql[i]) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    hints
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn skip_quoted(s: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    while i < s.len() {
        let c = s[i];
        i += 1;
        if backslash && c == b'\\' {
            i += 1;
        } else if c == quote {
            if s.get(i) == Some(&quote) {
                i += 1;
            } else {
                return i;
            }
        }
    }
    s.len()
}

fn skip_dollar(s: &[u8], i: usize) -> usize {
    let rest = &s[i + 1..];
    let tag_len = rest.iter().position(|&b| !is_word(b) || b == b'$');
    match tag_len {
        Some(t) if rest.get(t) == Some(&b'$') && !rest.first().is_some_and(u8::is_ascii_digit) => {
            let tag = &s[i..i + t + 2];
            let body = i + t + 2;
            match s[body..].windows(tag.len()).position(|w| w == tag) {
                Some(p) => body + p + tag.len(),
                None => s.len(),
            }
        }
        _ => i + 1,
    }
}

/// Applies every `pgtier:NAME[=VALUE]` in one comment body.
fn directives(body: &[u8], hints: &mut Hints) {
    let mut i = 0usize;
    while i + MARK.len() <= body.len() {
        if !body[i..i + MARK.len()].eq_ignore_ascii_case(MARK) {
            i += 1;
            continue;
        }
        i += MARK.len();
        let start = i;
        while i < body.len() && !matches!(body[i], b' ' | b'\t' | b'\r' | b'\n' | b',' | b'*') {
            i += 1;
        }
        directive(&body[start..i], hints);
    }
}

fn directive(d: &[u8], hints: &mut Hints) {
    let (name, value) = match d.iter().position(|&b| b == b'=') {
        Some(p) => (&d[..p], Some(&d[p + 1..])),
        None => (d, None),
    };
    let is = |k: &[u8]| name.eq_ignore_ascii_case(k);
    match value {
        None if is(b"primary") => hints.hint = Some(Hint::Primary),
        None if is(b"replica") => {
            if hints.hint != Some(Hint::Primary) {
                hints.hint = Some(Hint::Replica);
            }
        }
        Some(v) if is(b"min_lsn") => {
            match std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<Lsn>().ok())
            {
                // Several min_lsn hints: the strictest (latest) wins.
                Some(lsn) => hints.min_lsn = hints.min_lsn.max(Some(lsn)),
                None => hints.bad_hint = Some("invalid LSN in pgtier:min_lsn hint (ignored)"),
            }
        }
        _ => hints.bad_hint = Some("unknown pgtier: hint (ignored)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(sql: &str) -> Hints {
        parse(sql.as_bytes(), false)
    }

    #[test]
    fn recognised_hints() {
        assert_eq!(p("/* pgtier:primary */ SELECT 1").hint, Some(Hint::Primary));
        assert_eq!(p("-- pgtier:replica\nSELECT 1").hint, Some(Hint::Replica));
        assert_eq!(
            p("SELECT 1 /* pgtier:replica, pgtier:primary */").hint,
            Some(Hint::Primary)
        );
        assert_eq!(
            p("/*pgtier:replica*/ /* PGTIER:MIN_LSN=16/B374D848 */ SELECT 1"),
            Hints {
                hint: Some(Hint::Replica),
                min_lsn: Some("16/B374D848".parse().unwrap()),
                bad_hint: None,
            }
        );
        assert_eq!(
            p("/* outer /* pgtier:primary */ still comment */ SELECT 1").hint,
            Some(Hint::Primary)
        );
    }

    #[test]
    fn ignored_hints() {
        assert_eq!(p("SELECT '/* pgtier:primary */'"), Hints::default());
        assert_eq!(p("SELECT $x$ -- pgtier:primary\n $x$"), Hints::default());
        assert_eq!(p("SELECT \"-- pgtier:primary\""), Hints::default());
        assert_eq!(p("SELECT E'\\' /* pgtier:primary */'"), Hints::default());
        let bad = p("/* pgtier:min_lsn=nope */ SELECT 1");
        assert_eq!(bad.min_lsn, None);
        assert!(bad.bad_hint.is_some());
        assert!(p("/* pgtier:sideways */ SELECT 1").bad_hint.is_some());
        assert!(mentions(b"pgtier:") && mentions(b"x PgTier:") && !mentions(b"gtier:"));
        assert!(!mentions(b":") && !mentions(b"pgtier") && !mentions(b"pgtie r:"));
        assert_eq!(
            parse(b"SELECT 1 /* pgtier:primary */", true),
            Hints::default()
        );
        assert_eq!(
            parse(b"/* pgtier:primary */ INSERT", true).hint,
            Some(Hint::Primary)
        );
        // Unterminated input never panics.
        for s in [
            "/* pgtier:",
            "-- pgtier:min_lsn=",
            "'pgtier:",
            "$a$ pgtier:",
            "/* pgtier:x */*/",
        ] {
            let _ = p(s);
        }
    }
}
