//! A fast SQL lexer: words and statement separators, skipping whitespace, comments
//! (`--`, nested `/* */`), string literals (`'...'`, `E'...'`), quoted identifiers and
//! dollar-quoted strings. It never allocates and never fails: unterminated input just ends.
//! Whether a backslash escapes a quote in a plain `'...'` string depends on the session's
//! `standard_conforming_strings` ([`StringSyntax`]), as in Postgres' own lexer.

/// How plain `'...'` string literals are read (the session's `standard_conforming_strings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StringSyntax {
    /// `standard_conforming_strings = on` (the default): a backslash is an ordinary character
    /// in `'...'`; only `E'...'` strings have escapes.
    #[default]
    Standard,
    /// `standard_conforming_strings = off`: a backslash escapes the next character in `'...'`
    /// too, so `'a\'...` does not end at the second quote.
    BackslashEscapes,
}

impl StringSyntax {
    /// The syntax for a `standard_conforming_strings` value (None: the default, on).
    pub fn from_setting(value: Option<&str>) -> StringSyntax {
        match value {
            Some(v) if v.eq_ignore_ascii_case("off") => StringSyntax::BackslashEscapes,
            _ => StringSyntax::Standard,
        }
    }
}

/// One token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// A keyword or identifier (quoted identifiers without their quotes).
    Word(&'a [u8]),
    /// `;`: the end of a statement.
    Semicolon,
    /// Anything else (literals, operators, numbers, punctuation).
    Other,
}

/// Iterates over the tokens of `sql`.
#[derive(Debug, Clone)]
pub struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
    strings: StringSyntax,
}

impl<'a> Lexer<'a> {
    /// A lexer over `sql` (bytes; Postgres statements may be in any server encoding), with
    /// standard-conforming strings.
    pub fn new(sql: &'a [u8]) -> Lexer<'a> {
        Lexer::with_syntax(sql, StringSyntax::Standard)
    }

    /// A lexer over `sql` reading plain strings as `strings` says.
    pub fn with_syntax(sql: &'a [u8], strings: StringSyntax) -> Lexer<'a> {
        Lexer {
            s: sql,
            i: 0,
            strings,
        }
    }

    /// Bytes of the input consumed so far (the end of the last token returned).
    pub fn offset(&self) -> usize {
        self.i
    }

    /// Skips to the end of the next `end`; false if there is none (the input ends first).
    fn skip_until(&mut self, end: &[u8]) -> bool {
        match find(&self.s[self.i..], end) {
            Some(p) => {
                self.i += p + end.len();
                true
            }
            None => {
                self.i = self.s.len();
                false
            }
        }
    }

    /// Skips a quoted string or identifier after its opening quote; false if unterminated.
    fn skip_quoted(&mut self, quote: u8, backslash: bool) -> bool {
        while self.i < self.s.len() {
            let c = self.s[self.i];
            self.i += 1;
            if backslash && c == b'\\' {
                self.i += 1;
            } else if c == quote {
                if self.s.get(self.i) == Some(&quote) {
                    self.i += 1; // doubled quote
                } else {
                    return true;
                }
            }
        }
        false
    }

    /// The next lexeme, comments included (whitespace is skipped): what the token iterator
    /// and the literal normalizer both read, so they can never disagree on where a string or
    /// comment ends.
    fn lexeme(&mut self) -> Option<Lexeme> {
        loop {
            let start = self.i;
            let c = *self.s.get(self.i)?;
            let next = self.s.get(self.i + 1).copied();
            let kind = match c {
                b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                    self.i += 1;
                    while matches!(
                        self.s.get(self.i),
                        Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')
                    ) {
                        self.i += 1;
                    }
                    continue;
                }
                // A `--` comment ends at the end of the line: \n or \r, as in Postgres.
                b'-' if next == Some(b'-') => {
                    match self.s[self.i..]
                        .iter()
                        .position(|&b| b == b'\n' || b == b'\r')
                    {
                        Some(p) => self.i += p + 1,
                        None => self.i = self.s.len(),
                    }
                    Kind::Comment { terminated: true }
                }
                b'/' if next == Some(b'*') => {
                    // Comments nest in Postgres.
                    let mut depth = 0usize;
                    let mut terminated = false;
                    while self.i < self.s.len() {
                        if self.s[self.i..].starts_with(b"/*") {
                            depth += 1;
                            self.i += 2;
                        } else if self.s[self.i..].starts_with(b"*/") {
                            depth -= 1;
                            self.i += 2;
                            if depth == 0 {
                                terminated = true;
                                break;
                            }
                        } else {
                            self.i += 1;
                        }
                    }
                    Kind::Comment { terminated }
                }
                b';' => {
                    self.i += 1;
                    Kind::Semicolon
                }
                b'\'' => {
                    self.i += 1;
                    let escapes = self.strings == StringSyntax::BackslashEscapes;
                    let terminated = self.skip_quoted(b'\'', escapes);
                    Kind::String {
                        escape_prefix: false,
                        terminated,
                    }
                }
                b'"' => {
                    self.i += 1;
                    self.skip_quoted(b'"', false);
                    Kind::QuotedIdent
                }
                b'e' | b'E' if next == Some(b'\'') => {
                    self.i += 2;
                    let terminated = self.skip_quoted(b'\'', true);
                    Kind::String {
                        escape_prefix: true,
                        terminated,
                    }
                }
                b'$' => {
                    // $tag$ ... $tag$ (or a $1 parameter).
                    let rest = &self.s[self.i + 1..];
                    let tag_len = rest.iter().position(|&b| !is_word(b) || b == b'$');
                    match tag_len {
                        Some(n)
                            if rest.get(n) == Some(&b'$')
                                && !rest[..n].first().is_some_and(u8::is_ascii_digit) =>
                        {
                            let tag = &self.s[self.i..self.i + n + 2];
                            self.i += n + 2;
                            self.skip_until(tag);
                            Kind::DollarQuoted
                        }
                        _ => {
                            self.i += 1;
                            while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                                self.i += 1;
                            }
                            Kind::Parameter
                        }
                    }
                }
                c if is_word_start(c) => {
                    self.i += self.s[self.i..]
                        .iter()
                        .position(|&b| !is_word(b))
                        .unwrap_or(self.s.len() - self.i);
                    Kind::Word
                }
                _ => {
                    self.i += 1;
                    Kind::Other
                }
            };
            return Some(Lexeme {
                kind,
                start,
                end: self.i,
            });
        }
    }
}

/// What a lexeme is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `-- ...` or `/* ... */` (`terminated`: a block comment's closing `*/` was found).
    Comment {
        terminated: bool,
    },
    Semicolon,
    /// `'...'` or (`escape_prefix`) `E'...'`.
    String {
        escape_prefix: bool,
        terminated: bool,
    },
    /// `"..."`.
    QuotedIdent,
    /// `$tag$ ... $tag$`.
    DollarQuoted,
    /// `$1` (or a lone `$`).
    Parameter,
    Word,
    /// One byte of anything else (an operator character, a digit, punctuation).
    Other,
}

/// A lexeme and where it is in the input.
#[derive(Debug, Clone, Copy)]
struct Lexeme {
    kind: Kind,
    start: usize,
    end: usize,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_word_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_word(c: u8) -> bool {
    WORD[c as usize]
}

/// Bytes that continue a word (a table: the lexer's hottest test).
const WORD: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
        c += 1;
    }
    t
};

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        loop {
            let l = self.lexeme()?;
            return Some(match l.kind {
                Kind::Comment { .. } => continue,
                Kind::Semicolon => Token::Semicolon,
                Kind::Word => Token::Word(&self.s[l.start..l.end]),
                Kind::QuotedIdent => {
                    // Without the quotes (an unterminated one runs to the end of the input).
                    let start = l.start + 1;
                    let end = l.end.saturating_sub(1).max(start);
                    Token::Word(&self.s[start..end])
                }
                Kind::String { .. } | Kind::DollarQuoted | Kind::Parameter | Kind::Other => {
                    Token::Other
                }
            });
        }
    }
}

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
pub fn normalize_literals(sql: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
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
        let placeholder: &[u8] = match l.kind {
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
            } => {
                let body_start = l.start + if escape_prefix { 2 } else { 1 };
                let body = &sql[body_start..l.end.max(body_start)];
                let prefixed = !escape_prefix
                    && l.start > 0
                    && (is_word(sql[l.start - 1]) || sql[l.start - 1] == b'&');
                if prefixed && body.contains(&b'\\') {
                    return false;
                }
                if !terminated || prefixed || (escape_prefix && body.contains(&b'\\')) {
                    separate(out, &mut separated);
                    continue;
                }
                if !body.is_ascii() && std::str::from_utf8(body).is_err() {
                    return false;
                }
                if escape_prefix {
                    b"E''"
                } else {
                    b"''"
                }
            }
            Kind::DollarQuoted => return false,
            Kind::Parameter if sql.get(l.end).is_some_and(|&b| is_word(b)) => return false,
            Kind::Word if sql[l.start..l.end].eq_ignore_ascii_case(b"explain") => return false,
            Kind::Other if sql[l.start].is_ascii_digit() => match number(sql, l.start) {
                Some((end, placeholder)) => {
                    lx.i = end;
                    prev_end = end;
                    placeholder
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
        out.extend_from_slice(&sql[run..l.start]);
        separate(out, &mut separated);
        out.extend_from_slice(placeholder);
        run = prev_end;
    }
    out.extend_from_slice(&sql[run..prev_end]);
    true
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

    fn words(sql: &str) -> Vec<String> {
        Lexer::new(sql.as_bytes())
            .map(|t| match t {
                Token::Word(w) => String::from_utf8_lossy(w).into_owned(),
                Token::Semicolon => ";".into(),
                Token::Other => "?".into(),
            })
            .collect()
    }

    #[test]
    fn skips_comments_strings_and_dollar_quotes() {
        assert_eq!(
            words("/* a /* nested */ c */ -- x\n SELECT 'it''s; LISTEN' , $q$ LISTEN; $q$ ; listen \"My Chan\""),
            ["SELECT", "?", "?", "?", ";", "listen", "My Chan"]
        );
        assert_eq!(
            words("select E'\\'; x' from t where a = $1"),
            ["select", "?", "from", "t", "where", "a", "?", "?"]
        );
        assert_eq!(words("select 'unterminated"), ["select", "?"]);
    }

    fn words_with(sql: &str, strings: StringSyntax) -> Vec<String> {
        Lexer::with_syntax(sql.as_bytes(), strings)
            .map(|t| match t {
                Token::Word(w) => String::from_utf8_lossy(w).into_owned(),
                Token::Semicolon => ";".into(),
                Token::Other => "?".into(),
            })
            .collect()
    }

    #[test]
    fn backslashes_in_plain_strings_follow_standard_conforming_strings() {
        use StringSyntax::*;
        // scs on: `'a\'` is a whole string, and what follows is SQL.
        let sql = r"SELECT 'a\'; SET search_path = x; --'";
        assert_eq!(
            words_with(sql, Standard),
            ["SELECT", "?", ";", "SET", "search_path", "?", "x", ";"]
        );
        // scs off: `\'` escapes the quote, so everything up to the last quote is one string.
        assert_eq!(words_with(sql, BackslashEscapes), ["SELECT", "?"]);
        // The reverse trap: `'a\''` is `a\` plus a doubled quote with scs on (one string that
        // runs to the end), but an escaped quote then a closing one with scs off.
        let sql = r"SELECT 'a\'', 1; LISTEN x; --'";
        assert_eq!(words_with(sql, Standard), ["SELECT", "?"]);
        assert_eq!(
            words_with(sql, BackslashEscapes),
            ["SELECT", "?", "?", "?", ";", "LISTEN", "x", ";"]
        );
        // E'' strings have escapes whatever the setting.
        for s in [Standard, BackslashEscapes] {
            assert_eq!(
                words_with(r"SELECT E'\'; x'; y", s),
                ["SELECT", "?", ";", "y"]
            );
        }
        assert_eq!(StringSyntax::from_setting(Some("off")), BackslashEscapes);
        assert_eq!(StringSyntax::from_setting(Some("on")), Standard);
        assert_eq!(StringSyntax::from_setting(None), Standard);
    }

    fn norm(sql: &str) -> Option<String> {
        let mut out = Vec::new();
        normalize_literals(sql.as_bytes(), &mut out)
            .then(|| String::from_utf8(out).expect("utf-8 in, utf-8 out"))
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
        assert!(!normalize_literals(b"SELECT '\xff'", &mut out));
        assert!(normalize_literals(b"SELECT '\xc3\xa9'", &mut out));
        assert_eq!(out, b"SELECT ''");
        // Outside literals, invalid UTF-8 is copied (the key then stays invalid, too).
        assert!(normalize_literals(b"SELECT 1 \xff", &mut out));
        assert_eq!(out, b"SELECT 0 \xff");
    }
}
