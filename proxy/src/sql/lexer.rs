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

    /// A lexer over `sql` (standard strings) that starts at byte `at`, which must be where a
    /// lexeme starts for the result to mean anything.
    pub(crate) fn at(sql: &'a [u8], at: usize) -> Lexer<'a> {
        Lexer {
            s: sql,
            i: at,
            strings: StringSyntax::Standard,
        }
    }

    /// Skips the input up to byte `to` (the end of a lexeme the caller read further itself).
    pub(super) fn skip_to(&mut self, to: usize) {
        self.i = to;
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
                // The escaped byte, if any: a text may end in the backslash (`E'\`), and no
                // lexeme may end past the text (the normalizer slices up to its end).
                self.i = (self.i + 1).min(self.s.len());
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
    pub(crate) fn lexeme(&mut self) -> Option<Lexeme> {
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
pub(crate) enum Kind {
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
pub(crate) struct Lexeme {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

/// Whether `sql` has more than `limit` operators outside strings, quoted identifiers and
/// comments: each byte of an operator (`+`, `||`, `::`, `->`, `=`, a subscript's `[`) and each
/// word that joins two expressions or queries (AND, OR, IS, IN, LIKE, UNION...). A parser
/// that builds a chain of them in a loop (sqlparser does, past its recursion limit) makes a
/// tree as deep as the chain is long, and walking or dropping that tree recurses as deep:
/// the bound keeps it within a thread's stack, whatever a client sends.
pub fn operators_over(sql: &[u8], limit: usize) -> bool {
    let mut count = 0usize;
    let mut lx = Lexer::new(sql);
    while let Some(l) = lx.lexeme() {
        let operator = match l.kind {
            Kind::Other => OPERATOR_BYTE[usize::from(sql[l.start])],
            Kind::Word => JOINING_WORDS
                .iter()
                .any(|w| sql[l.start..l.end].eq_ignore_ascii_case(w)),
            _ => false,
        };
        count += usize::from(operator);
        if count > limit {
            return true;
        }
    }
    false
}

/// Bytes that make up Postgres operators, and `[` (a subscript nests like one).
static OPERATOR_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let ops = b"+-*/%^<>=!|&#~@?:[";
    let mut i = 0;
    while i < ops.len() {
        t[ops[i] as usize] = true;
        i += 1;
    }
    t
};

/// Words that join two expressions or two queries into one node (see [`operators_over`]).
const JOINING_WORDS: [&[u8]; 17] = [
    b"and",
    b"or",
    b"not",
    b"is",
    b"in",
    b"like",
    b"ilike",
    b"similar",
    b"between",
    b"collate",
    b"at",
    b"overlaps",
    b"escape",
    b"operator",
    b"union",
    b"intersect",
    b"except",
];

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_word_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

pub(super) fn is_word(c: u8) -> bool {
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
    fn a_text_ending_in_an_escaping_backslash_ends_its_last_lexeme_at_its_end() {
        for sql in ["SELECT E'\\", "SELECT E'a\\", "E'\\"] {
            for strings in [StringSyntax::Standard, StringSyntax::BackslashEscapes] {
                let mut lx = Lexer::with_syntax(sql.as_bytes(), strings);
                let mut last = None;
                while let Some(l) = lx.lexeme() {
                    last = Some(l);
                }
                let last = last.expect("a lexeme");
                assert_eq!(last.end, sql.len(), "{sql:?}: {last:?}");
                assert!(matches!(
                    last.kind,
                    Kind::String {
                        terminated: false,
                        ..
                    }
                ));
            }
        }
        // Plain strings escape with a backslash only without standard_conforming_strings.
        let sql = b"SELECT '\\";
        let mut lx = Lexer::with_syntax(sql, StringSyntax::BackslashEscapes);
        while let Some(l) = lx.lexeme() {
            assert!(l.end <= sql.len(), "{l:?}");
        }
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
}
