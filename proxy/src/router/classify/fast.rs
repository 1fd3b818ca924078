//! The first-keyword fast path: decides most statements from their first words with the
//! lexer (no allocation, no parse), and marks the rest (SELECT, WITH, VALUES, EXPLAIN,
//! DECLARE, `COPY (query)`, parenthesised queries) for the sqlparser deep check.
//!
//! It also scans every statement that is not already a write for locking clauses
//! (`FOR UPDATE`, `FOR SHARE`, `FOR NO KEY UPDATE`, `FOR KEY SHARE`) outside strings and
//! comments, so a parser quirk can never send a locking read to a replica.

use crate::sql::lexer::{Lexer, Token};

use super::Reason;

/// The fast path's verdict on a whole text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Some statement writes (the scan stops at the first one).
    Write(Reason),
    /// Every statement is read-only (the reason of the first).
    Read(Reason),
    /// No statement writes, but some need the deep check.
    Deep,
    /// Only comments and whitespace.
    Empty,
}

/// The result of scanning a text.
#[derive(Debug)]
pub(super) struct Scan {
    pub verdict: Verdict,
    /// Best-effort table names from the statements the fast path decided.
    pub tables: Vec<String>,
}

/// One statement's decision.
enum Stmt {
    Empty,
    Read(Reason),
    Write(Reason),
    Deep,
}

fn kw(w: &[u8], k: &str) -> bool {
    w.eq_ignore_ascii_case(k.as_bytes())
}

fn kw_any(w: &[u8], ks: &[&str]) -> bool {
    ks.iter().any(|k| kw(w, k))
}

/// First words of statements that change data, schema, session-visible server state, or
/// run code pgtier cannot see.
const WRITE_WORDS: &[&str] = &[
    "insert",
    "update",
    "delete",
    "merge",
    "create",
    "alter",
    "drop",
    "truncate",
    "grant",
    "revoke",
    "vacuum",
    "analyze",
    "analyse",
    "cluster",
    "reindex",
    "lock",
    "do",
    "call",
    "listen",
    "notify",
    "unlisten",
    "prepare",
    "refresh",
    "comment",
    "security",
    "import",
    "load",
    "reassign",
    "checkpoint",
];

/// First words of statements that go to the deep check.
const DEEP_WORDS: &[&str] = &["select", "with", "values", "explain", "declare"];

/// Whether the first token of `sql` starts a statement that needs the deep check (then the
/// classifier looks in its cache before doing anything else).
pub(super) fn first_needs_deep(sql: &[u8]) -> bool {
    match Lexer::new(sql).next() {
        // `TABLE t` and `COPY t TO STDOUT` are decided here; their longer forms are looked
        // up in the cache once the scan asks for the deep check.
        Some(Token::Word(w)) => kw_any(w, DEEP_WORDS),
        Some(Token::Other) => true,
        _ => false,
    }
}

/// Scans every statement of `sql`; stops at the first write.
pub(super) fn scan(sql: &[u8]) -> Scan {
    let mut lx = Lexer::new(sql);
    let mut tables = Vec::new();
    let mut first_read = None;
    let mut deep = false;
    while let Some(stmt) = statement(sql, &mut lx, &mut tables) {
        match stmt {
            Stmt::Empty => {}
            Stmt::Write(r) => {
                return Scan {
                    verdict: Verdict::Write(r),
                    tables,
                }
            }
            Stmt::Read(r) => {
                first_read.get_or_insert(r);
            }
            Stmt::Deep => deep = true,
        }
    }
    let verdict = match (deep, first_read) {
        (true, _) => Verdict::Deep,
        (false, Some(r)) => Verdict::Read(r),
        (false, None) => Verdict::Empty,
    };
    Scan { verdict, tables }
}

/// What the rest of a statement contains (consumed up to its `;`).
#[derive(Default)]
struct Rest {
    words: usize,
    locking: bool,
    analyze: bool,
    read_only: bool,
    read_write: bool,
    prepared: bool,
}

fn rest(lx: &mut Lexer<'_>) -> Rest {
    let mut r = Rest::default();
    let (mut prev2, mut prev): (&[u8], &[u8]) = (b"", b"");
    for tok in lx.by_ref() {
        let w = match tok {
            Token::Semicolon => break,
            Token::Other => {
                (prev2, prev) = (prev, b"");
                continue;
            }
            Token::Word(w) => w,
        };
        r.words += 1;
        if kw(prev, "for") && (kw(w, "update") || kw(w, "share")) {
            r.locking = true;
        }
        if kw(prev2, "for") && (kw(prev, "no") || kw(prev, "key")) && kw_any(w, &["key", "share"]) {
            r.locking = true;
        }
        if kw(prev, "read") && kw(w, "only") {
            r.read_only = true;
        }
        if kw(prev, "read") && kw(w, "write") {
            r.read_write = true;
        }
        r.analyze |= kw(w, "analyze") || kw(w, "analyse");
        r.prepared |= kw(w, "prepared");
        (prev2, prev) = (prev, w);
    }
    r
}

fn deep_unless_locking(r: &Rest) -> Stmt {
    if r.locking {
        Stmt::Write(Reason::LockingClause)
    } else {
        Stmt::Deep
    }
}

/// Decides the next statement; None at the end of the text.
fn statement(sql: &[u8], lx: &mut Lexer<'_>, tables: &mut Vec<String>) -> Option<Stmt> {
    let w = match lx.next()? {
        Token::Semicolon => return Some(Stmt::Empty),
        Token::Other => return Some(deep_unless_locking(&rest(lx))), // `(SELECT ...)`
        Token::Word(w) => w,
    };
    if kw_any(w, DEEP_WORDS) {
        let r = rest(lx);
        // EXPLAIN without ANALYZE runs nothing: its locking clause is harmless. With it,
        // the deep check still decides; the lexer only adds the locking guard.
        if kw(w, "explain") && !r.analyze {
            return Some(Stmt::Deep);
        }
        return Some(deep_unless_locking(&r));
    }
    if kw_any(w, WRITE_WORDS) {
        write_target(sql, w, lx, tables);
        return Some(Stmt::Write(Reason::WriteStatement));
    }
    let stmt = if kw(w, "table") {
        table(sql, lx, tables)
    } else if kw(w, "copy") {
        copy(sql, lx, tables)
    } else if kw(w, "begin") || kw(w, "start") {
        let r = rest(lx);
        if r.read_only && !r.read_write {
            Stmt::Read(Reason::ReadOnlyTransaction)
        } else {
            Stmt::Write(Reason::TransactionStart)
        }
    } else if kw_any(w, &["commit", "rollback", "end", "abort"]) {
        if rest(lx).prepared {
            Stmt::Write(Reason::WriteStatement) // COMMIT/ROLLBACK PREPARED: two-phase commit
        } else {
            Stmt::Read(Reason::TransactionControl)
        }
    } else if kw_any(w, &["savepoint", "release"]) {
        rest(lx);
        Stmt::Read(Reason::TransactionControl)
    } else if kw_any(w, &["show", "set", "reset", "deallocate", "discard"]) {
        rest(lx);
        Stmt::Read(Reason::SessionCommand)
    } else if kw_any(w, &["fetch", "move", "close"]) {
        rest(lx);
        Stmt::Read(Reason::CursorOperation)
    } else if kw(w, "execute") {
        Stmt::Write(Reason::Execute)
    } else {
        Stmt::Write(Reason::NotProvablyReadOnly)
    };
    Some(stmt)
}

/// `TABLE name` alone is read here (sqlparser does not parse it); anything longer
/// (`TABLE t ORDER BY ...`, `TABLE t UNION ...`) goes to the deep check.
fn table(sql: &[u8], lx: &mut Lexer<'_>, tables: &mut Vec<String>) -> Stmt {
    let probe = lx.clone();
    if let Some(name) = name(sql, lx) {
        if matches!(lx.clone().next(), None | Some(Token::Semicolon)) {
            lx.next();
            tables.push(name);
            return Stmt::Read(Reason::ReadOnly);
        }
    }
    *lx = probe;
    deep_unless_locking(&rest(lx))
}

/// `COPY table [(cols)] TO STDOUT` is read; `COPY (query) TO STDOUT` needs the deep
/// check; `COPY ... FROM` and COPY to a server file or program go to the primary.
fn copy(sql: &[u8], lx: &mut Lexer<'_>, tables: &mut Vec<String>) -> Stmt {
    let probe = lx.clone();
    match probe.clone().next() {
        Some(Token::Other) => return deep_unless_locking(&rest(lx)),
        Some(Token::Word(_)) => {}
        _ => return Stmt::Write(Reason::NotProvablyReadOnly),
    }
    let Some(table) = name(sql, lx) else {
        return Stmt::Write(Reason::NotProvablyReadOnly);
    };
    let mut saw_to = false;
    for tok in lx.by_ref() {
        match tok {
            Token::Word(w) if saw_to && kw(w, "stdout") => {
                rest(lx);
                tables.push(table);
                return Stmt::Read(Reason::CopyTo);
            }
            _ if saw_to => return Stmt::Write(Reason::CopyToServer),
            Token::Word(w) if kw(w, "from") => {
                tables.push(table);
                return Stmt::Write(Reason::CopyFrom);
            }
            Token::Word(w) if kw(w, "to") => saw_to = true,
            Token::Semicolon => break,
            _ => {}
        }
    }
    Stmt::Write(Reason::NotProvablyReadOnly)
}

/// Best-effort target of `INSERT INTO x`, `UPDATE [ONLY] x`, `DELETE FROM [ONLY] x`,
/// `MERGE INTO x`, `TRUNCATE [TABLE] [ONLY] x`.
fn write_target(sql: &[u8], first: &[u8], lx: &mut Lexer<'_>, tables: &mut Vec<String>) {
    let skip: &[&str] = if kw_any(first, &["insert", "merge"]) {
        &["into"]
    } else if kw(first, "delete") {
        &["from", "only"]
    } else if kw(first, "update") {
        &["only"]
    } else if kw(first, "truncate") {
        &["table", "only"]
    } else {
        return;
    };
    for k in skip {
        let mut peek = lx.clone();
        match peek.next() {
            Some(Token::Word(w)) if kw(w, k) => *lx = peek,
            _ => {}
        }
    }
    if let Some(n) = name(sql, lx) {
        tables.push(n);
    }
}

/// Reads `word` or `word.word` (quoted parts allowed), lower-cased and unquoted.
fn name(sql: &[u8], lx: &mut Lexer<'_>) -> Option<String> {
    let Some(Token::Word(first)) = lx.next() else {
        return None;
    };
    let mut out = lower(first);
    let mut last = first;
    while byte_after(sql, last) == Some(b'.') {
        let mut peek = lx.clone();
        peek.next(); // the dot
        match peek.next() {
            Some(Token::Word(w)) => {
                out.push('.');
                out.push_str(&lower(w));
                last = w;
                *lx = peek;
            }
            _ => break,
        }
    }
    Some(out)
}

fn lower(w: &[u8]) -> String {
    String::from_utf8_lossy(w).to_lowercase()
}

/// The byte after word `w` (a subslice of `sql`), past its closing quote if quoted.
fn byte_after(sql: &[u8], w: &[u8]) -> Option<u8> {
    let start = (w.as_ptr() as usize).checked_sub(sql.as_ptr() as usize)?;
    let mut end = start + w.len();
    if start > 0 && sql.get(start - 1) == Some(&b'"') {
        end += 1;
    }
    sql.get(end).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(sql: &str) -> Verdict {
        scan(sql.as_bytes()).verdict
    }

    #[test]
    fn verdicts() {
        use Verdict::*;
        assert_eq!(v("INSERT INTO t VALUES (1)"), Write(Reason::WriteStatement));
        assert_eq!(v("  -- c\n /* x */ select 1"), Deep);
        assert_eq!(v("SHOW search_path"), Read(Reason::SessionCommand));
        assert_eq!(
            v("SET extra_float_digits = 3"),
            Read(Reason::SessionCommand)
        );
        assert_eq!(v("BEGIN"), Write(Reason::TransactionStart));
        assert_eq!(v("BEGIN READ ONLY"), Read(Reason::ReadOnlyTransaction));
        assert_eq!(
            v("start transaction isolation level repeatable read, read only"),
            Read(Reason::ReadOnlyTransaction)
        );
        assert_eq!(v("BEGIN READ WRITE"), Write(Reason::TransactionStart));
        assert_eq!(v("COMMIT PREPARED 'x'"), Write(Reason::WriteStatement));
        assert_eq!(
            v("ROLLBACK TO SAVEPOINT a"),
            Read(Reason::TransactionControl)
        );
        assert_eq!(
            v("SELECT * FROM q FOR UPDATE SKIP LOCKED"),
            Write(Reason::LockingClause)
        );
        assert_eq!(
            v("select 1 from t for no key update"),
            Write(Reason::LockingClause)
        );
        assert_eq!(
            v("select 1 from t for key share"),
            Write(Reason::LockingClause)
        );
        assert_eq!(v("SELECT 'for update'"), Deep);
        assert_eq!(v("EXPLAIN SELECT 1 FOR UPDATE"), Deep);
        assert_eq!(
            v("EXPLAIN ANALYZE SELECT 1 FOR UPDATE"),
            Write(Reason::LockingClause)
        );
        assert_eq!(v("TABLE t"), Read(Reason::ReadOnly));
        assert_eq!(v("TABLE t FOR UPDATE"), Write(Reason::LockingClause));
        assert_eq!(v("TABLE t ORDER BY 1"), Deep);
        assert_eq!(v("COPY t TO STDOUT"), Read(Reason::CopyTo));
        assert_eq!(v("COPY t (a, b) TO STDOUT WITH CSV"), Read(Reason::CopyTo));
        assert_eq!(v("COPY t FROM STDIN"), Write(Reason::CopyFrom));
        assert_eq!(v("COPY t TO '/tmp/x'"), Write(Reason::CopyToServer));
        assert_eq!(v("COPY (SELECT 1) TO STDOUT"), Deep);
        assert_eq!(v("EXECUTE q(1)"), Write(Reason::Execute));
        assert_eq!(v("FROBNICATE"), Write(Reason::NotProvablyReadOnly));
        assert_eq!(v(" ;; -- nothing"), Empty);
        assert_eq!(v("SET a = 1; SELECT 1"), Deep);
        assert_eq!(v("SELECT 1; DELETE FROM t"), Write(Reason::WriteStatement));
        assert_eq!(v("(SELECT 1)"), Deep);
        assert_eq!(v("(SELECT 1) FOR UPDATE"), Write(Reason::LockingClause));
    }

    #[test]
    fn tables() {
        let t = |sql: &str| scan(sql.as_bytes()).tables;
        assert_eq!(
            t("INSERT INTO Billing.\"Payments\" VALUES (1)"),
            ["billing.payments"]
        );
        assert_eq!(t("update only accounts set a = 1"), ["accounts"]);
        assert_eq!(t("DELETE FROM \"a\".\"b\" WHERE x"), ["a.b"]);
        assert_eq!(t("TRUNCATE TABLE t1, t2"), ["t1"]);
        assert_eq!(t("TABLE s.t"), ["s.t"]);
        assert_eq!(t("COPY s.t TO STDOUT"), ["s.t"]);
        assert!(t("CREATE TABLE x (a int)").is_empty());
    }

    #[test]
    fn first_word() {
        assert!(first_needs_deep(b"/* c */ SELECT 1"));
        assert!(first_needs_deep(b"(select 1)"));
        assert!(!first_needs_deep(b"INSERT INTO t VALUES (1)"));
        assert!(!first_needs_deep(b""));
        assert!(!first_needs_deep(b"COPY t FROM STDIN"));
    }
}
