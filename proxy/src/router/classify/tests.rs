//! End-to-end tests of the classifier (fast path, deep check, cache, hints together).

use super::*;
use crate::cluster::Lsn;

fn c() -> Classifier {
    Classifier::new(FunctionTable::builtin(), 1000)
}

fn class(sql: &str) -> (Class, Reason) {
    let r = c().classify(sql.as_bytes());
    (r.class, r.reason)
}

#[track_caller]
fn read(sql: &str) {
    let (cl, r) = class(sql);
    assert_eq!(cl, Class::Read, "{sql}: {r:?}");
}

#[track_caller]
fn write(sql: &str, reason: Reason) {
    assert_eq!(class(sql), (Class::Write, reason), "{sql}");
}

#[test]
fn classifier_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Classifier>();
    check::<Classification>();
}

#[test]
fn reads() {
    for sql in [
        "SELECT 1",
        "select * from users where id = $1",
        "WITH a AS (SELECT * FROM t) SELECT count(*) FROM a",
        "VALUES (1), (2)",
        "(SELECT 1) UNION (SELECT 2)",
        "SELECT now(), random(), gen_random_uuid()",
        "SELECT * FROM generate_series(1, 10) g",
        "EXPLAIN SELECT * FROM t",
        "EXPLAIN INSERT INTO t VALUES (1)",
        "EXPLAIN (ANALYZE false) DELETE FROM t",
        "EXPLAIN ANALYZE SELECT * FROM t",
        "DECLARE c CURSOR FOR SELECT * FROM t",
        "COPY (SELECT a FROM t) TO STDOUT",
        "BEGIN READ ONLY; SELECT 1; COMMIT",
        "SET search_path = app; SELECT 1",
        "TABLE t",
        "",
        "  /* only a comment */ ",
    ] {
        read(sql);
    }
}

#[test]
fn writes() {
    use Reason::*;
    write("INSERT INTO t VALUES (1)", WriteStatement);
    write("SELECT * FROM jobs FOR UPDATE SKIP LOCKED", LockingClause);
    write("SELECT * FROM t FOR NO KEY UPDATE", LockingClause);
    write("SELECT * FROM (SELECT * FROM t FOR SHARE) s", LockingClause);
    write(
        "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
        WritableCte,
    );
    write(
        "SELECT * FROM (WITH y AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM y) z",
        WritableCte,
    );
    write("SELECT * INTO newtable FROM t", SelectInto);
    write("SELECT nextval('s')", WriteFunction);
    write("SELECT pg_advisory_lock(1)", WriteFunction);
    write("SELECT my_func(1)", WriteFunction);
    write("SELECT * FROM my_srf(1)", WriteFunction);
    write("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", ExplainAnalyze);
    write(
        "EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1",
        ExplainAnalyze,
    );
    write("DO $$ BEGIN PERFORM 1; END $$", WriteStatement);
    write("VACUUM (ANALYZE) t", WriteStatement);
    write("BEGIN; SELECT 1; COMMIT", TransactionStart);
    write("SELECT 1; INSERT INTO t VALUES (1)", WriteStatement);
    write("SELECT 1 FROM", ParseError);
    write("COPY (SELECT nextval('s')) TO STDOUT", WriteFunction);
    write(
        "DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE",
        LockingClause,
    );
    // sqlparser cannot parse `TABLE t`: alone the fast path reads it, in a list it is a write.
    write("TABLE t; SELECT 1", ParseError);
}

/// Chains of infix operators that sqlparser builds in a loop (past its recursion limit) into
/// trees as deep as they are long: a 70 KB `SELECT 1+1+...` once overflowed the stack while
/// its tree was dropped, aborting the whole process. Up to the bound they are analysed on a
/// 2 MiB stack (a tokio worker's), even in a debug build; past it they are writes, too deep.
#[test]
fn long_operator_chains_are_analysed_within_a_small_stack_or_are_too_deep() {
    let n = deep::MAX_OPERATORS;
    let chains = |terms: usize| {
        [
            format!("SELECT 1{}", "+1".repeat(terms)),
            format!(
                "SELECT 1 FROM t WHERE a = 1{}",
                " OR a = 1".repeat(terms / 2)
            ),
            format!("SELECT x{}", "::int".repeat(terms / 2)),
            format!("SELECT 'a'{}", " || 'a'".repeat(terms / 2)),
            format!("SELECT 1{}", " UNION SELECT 1".repeat(terms)),
        ]
    };
    let within = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            for sql in chains(n - 10) {
                let (cl, r) = class(&sql);
                assert_eq!(cl, Class::Read, "{}...: {r:?}", &sql[..40]);
            }
        })
        .unwrap();
    within.join().expect("analysed within a 2 MiB stack");
    for sql in chains(100_000) {
        assert_eq!(
            class(&sql),
            (Class::Write, Reason::TooDeep),
            "{}...",
            &sql[..40]
        );
    }
    // Operators in strings, quoted identifiers and comments do not count; nor do IN lists.
    let quiet = format!(
        "SELECT '{0}', \"{0}\" /* {0} */ FROM t WHERE id IN ({1}1)",
        "+".repeat(5_000),
        "1, ".repeat(5_000)
    );
    read(&quiet);
}

#[test]
fn never_panics_and_deep_nesting_is_a_write() {
    let n = 10_000;
    let parens = format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n));
    write(&parens, Reason::TooDeep);
    let queries = format!("{}SELECT 1{}", "(".repeat(n), ")".repeat(n));
    let (cl, _) = class(&queries);
    assert_eq!(cl, Class::Write);
    let subqueries = format!("SELECT {}1{}", "(SELECT ".repeat(n), ")".repeat(n));
    assert_eq!(class(&subqueries).0, Class::Write);
    // Invalid UTF-8 in a deep statement is a write; the fast path still decides others.
    let bad = b"SELECT '\xff\xfe'";
    let cl = c().classify(bad);
    assert_eq!((cl.class, cl.reason), (Class::Write, Reason::InvalidUtf8));
    assert_eq!(c().classify(b"SHOW \xff").class, Class::Read);
    for junk in [
        &b"\0\0\0"[..],
        b"select $$",
        b"select '",
        b"/*",
        b"select \"",
        b"e'",
        b"select (((",
        b";;;;",
        b"copy",
        b"copy t to",
        b"table",
        b"table a.",
        b"begin",
    ] {
        let _ = c().classify(junk);
    }
}

#[test]
fn hints_and_tables() {
    let r =
        c().classify(b"/* pgtier:replica */ SELECT * FROM Billing.Payments p JOIN users u ON true");
    assert_eq!(r.class, Class::Read);
    assert_eq!(r.hint, Some(Hint::Replica));
    assert_eq!(&*r.tables, ["billing.payments", "users"]);
    let r = c().classify(b"SELECT 1 -- pgtier:min_lsn=16/B374D848");
    assert_eq!(r.min_lsn, Some("16/B374D848".parse().unwrap()));
    let r = c().classify(b"/* pgtier:min_lsn=zz */ SELECT 1");
    assert_eq!((r.min_lsn, r.bad_hint.is_some()), (None, true));
    let r = c().classify(b"/* pgtier:replica */ INSERT INTO a.b VALUES (1)");
    assert_eq!(r.class, Class::Write, "a hint never makes a write a read");
    assert_eq!(r.hint, Some(Hint::Replica));
    assert_eq!(&*r.tables, ["a.b"]);
    let r = c().classify(b"WITH q AS (SELECT * FROM t) SELECT * FROM q, generate_series(1,2)");
    assert_eq!(&*r.tables, ["t"]);
}

#[test]
fn cache_hits_and_function_swaps() {
    let cl = Classifier::new(FunctionTable::builtin(), 100);
    let sql = b"SELECT app.stable_fn(id) FROM t";
    assert_eq!(cl.classify(sql).class, Class::Write);
    assert_eq!(cl.classify(sql).class, Class::Write);
    let s = cl.cache_stats();
    assert_eq!((s.hits, s.misses, s.entries), (1, 1, 1));
    // Fast-path texts are not cached.
    cl.classify(b"INSERT INTO t VALUES (1)");
    cl.classify(b"SHOW x");
    assert_eq!(cl.cache_len(), 1);
    let mut f = FunctionTable::builtin();
    f.learn_pg_proc([("app".to_string(), "stable_fn".to_string(), 's')]);
    cl.set_functions(f);
    assert_eq!(cl.cache_len(), 0);
    assert_eq!(cl.classify(sql).class, Class::Read);
    assert!(cl.functions().has_snapshot());
    // Bounded.
    for i in 0..1000 {
        cl.classify(format!("SELECT {i}").as_bytes());
    }
    assert!(cl.cache_len() <= 100);
    // Too long to cache: counted, still classified.
    let long = format!("SELECT 1 {}", " ".repeat(MAX_CACHED_TEXT));
    assert_eq!(cl.classify(long.as_bytes()).class, Class::Read);
    assert_eq!(cl.cache_stats().uncached, 1);
}

#[test]
fn reasons_describe_themselves() {
    assert_eq!(
        Reason::LockingClause.as_str(),
        "locking clause (FOR UPDATE/SHARE)"
    );
    assert_eq!(Reason::ParseError.to_string(), Reason::ParseError.as_str());
}

#[test]
fn volatile_calls_are_told_from_known_writers() {
    let mut f = FunctionTable::builtin();
    f.learn_pg_proc([
        ("app".to_string(), "report".to_string(), 'v'),
        ("pg_catalog".to_string(), "nextval".to_string(), 'v'),
        ("public".to_string(), "t".to_string(), 's'),
    ]);
    let cl = Classifier::new(f, 100);
    let reason = |sql: &str| {
        let r = cl.classify(sql.as_bytes());
        (r.class, r.reason, r.tables.to_vec())
    };
    use Reason::*;
    // Only volatile calls: VolatileFunction, with every table seen.
    assert_eq!(
        reason("SELECT app.report(1), x FROM payments"),
        (Class::Write, VolatileFunction, vec!["payments".to_string()])
    );
    // Anything else that writes wins, wherever it is.
    assert_eq!(reason("SELECT report(1), nextval('s')").1, WriteFunction);
    assert_eq!(reason("SELECT report(1), unknown_fn()").1, WriteFunction);
    assert_eq!(
        reason("SELECT report(1) FROM t FOR UPDATE").1,
        LockingClause
    );
    assert_eq!(
        reason("SELECT report(1); SELECT nextval('s')").1,
        WriteFunction
    );
    assert_eq!(reason("SELECT report(1); SELECT 1").1, VolatileFunction);
    assert_eq!(
        reason("EXPLAIN ANALYZE SELECT report(1)").1,
        VolatileFunction
    );
    assert_eq!(
        reason("EXPLAIN ANALYZE SELECT nextval('s')").1,
        ExplainAnalyze
    );
}

/// What a cached answer must reproduce exactly.
fn full(c: &Classification) -> (Class, Reason, Vec<String>, Option<Hint>, Option<Lsn>) {
    (c.class, c.reason, c.tables.to_vec(), c.hint, c.min_lsn)
}

#[test]
fn literals_share_one_cache_entry() {
    let cl = Classifier::new(FunctionTable::builtin(), 100);
    // pgbench -S (and the read of -N): a new literal every time, one parse.
    for aid in 1..=200 {
        let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
        let r = cl.classify(sql.as_bytes());
        assert_eq!((r.class, r.reason), (Class::Read, Reason::ReadOnly));
        assert_eq!(&*r.tables, ["pgbench_accounts"]);
    }
    let s = cl.cache_stats();
    assert_eq!((s.misses, s.hits, s.entries), (1, 199, 1));
    assert_eq!(s.normalized, 200);
    // -N's writes are decided by the fast path and never reach the cache.
    for (aid, delta) in [(1, 5), (2, -7)] {
        for sql in [
            format!("UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};"),
            format!(
                "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
                 VALUES (1, 2, {aid}, {delta}, CURRENT_TIMESTAMP);"
            ),
        ] {
            assert_eq!(cl.classify(sql.as_bytes()).class, Class::Write);
        }
    }
    assert_eq!(cl.cache_stats().entries, 1);
    // Strings, decimals, casts and negative numbers too.
    let a = cl.classify(b"SELECT * FROM users WHERE email = 'a@b.c' AND score > -1.5::numeric");
    let b = cl.classify(b"SELECT * FROM users WHERE email = 'x''y' AND score > -22.75::numeric");
    assert_eq!(full(&a), full(&b));
    assert_eq!(cl.cache_stats().misses, 2);
}

#[test]
fn hints_come_from_each_text_not_from_the_cache() {
    let cl = Classifier::new(FunctionTable::builtin(), 100);
    let a = cl.classify(b"/* pgtier:min_lsn=0/10 */ SELECT * FROM t WHERE id = 1");
    let b = cl.classify(b"/* pgtier:min_lsn=0/20 pgtier:primary */ SELECT * FROM t WHERE id = 2");
    let c = cl.classify(b"SELECT * FROM t WHERE id = 3 -- pgtier:nonsense");
    let d = cl.classify(b"SELECT * FROM t WHERE id = 4");
    assert_eq!(cl.cache_stats().misses, 1, "one entry for all four");
    assert_eq!(a.min_lsn, Some("0/10".parse().unwrap()));
    assert_eq!(
        (b.min_lsn, b.hint),
        (Some("0/20".parse().unwrap()), Some(Hint::Primary))
    );
    assert!(c.bad_hint.is_some() && c.min_lsn.is_none());
    assert_eq!((d.hint, d.min_lsn, d.bad_hint), (None, None, None));
}

#[test]
fn literals_that_matter_keep_their_own_verdict() {
    use Reason::*;
    let cl = Classifier::new(FunctionTable::builtin(), 100);
    let fresh = |sql: &[u8]| full(&Classifier::new(FunctionTable::builtin(), 0).classify(sql));
    let pairs: [(&[u8], &[u8]); 7] = [
        // EXPLAIN option values are literals: any EXPLAIN is keyed exactly.
        (
            b"EXPLAIN (ANALYZE 0) DELETE FROM t",
            b"EXPLAIN (ANALYZE 1) DELETE FROM t",
        ),
        // A literal sqlparser rejects (too large for a type modifier) is kept verbatim.
        (
            b"SELECT 'a'::varchar(5)",
            b"SELECT 'a'::varchar(123456789012345678901234)",
        ),
        // Invalid UTF-8 inside a literal: the text is keyed exactly.
        (b"SELECT 'ok' FROM t", b"SELECT '\xff' FROM t"),
        // An unterminated string or comment is not a literal of the same kind.
        (b"SELECT 'a' FROM t", b"SELECT 'a FROM t"),
        (b"SELECT 1 /* c */", b"SELECT 1 /* c"),
        // E'' escapes sqlparser may reject stay in the key.
        (b"SELECT E'\\u00e9'", b"SELECT E'\\uZZZZ'"),
        // Function names are words, never normalized; their arguments do not matter.
        (b"SELECT lower('s')", b"SELECT nextval('s')"),
    ];
    for (a, b) in pairs {
        for sql in [a, b, a, b] {
            assert_eq!(
                full(&cl.classify(sql)),
                fresh(sql),
                "{}",
                String::from_utf8_lossy(sql)
            );
        }
        assert_ne!(fresh(a), fresh(b), "{}", String::from_utf8_lossy(a));
    }
    assert_eq!(
        full(&cl.classify(b"EXPLAIN (ANALYZE 1) DELETE FROM t")).1,
        ExplainAnalyze
    );
    assert_eq!(
        full(&cl.classify(b"SELECT nextval('other')")).1,
        WriteFunction
    );
    assert_eq!(full(&cl.classify(b"SELECT lower('other')")).1, ReadOnly);
}

#[test]
fn the_cached_classification_says_whether_the_text_may_pin() {
    let c = Classifier::new(FunctionTable::builtin(), 100);
    // The second of each pair is a cache hit (same text up to its literals).
    assert!(!c.classify(b"SELECT a FROM t WHERE b = 1").may_pin);
    assert!(!c.classify(b"SELECT a FROM t WHERE b = 2").may_pin);
    assert!(c.classify(b"SELECT * FROM pg_temp.t WHERE b = 1").may_pin);
    assert!(c.classify(b"SELECT * FROM pg_temp.t WHERE b = 2").may_pin);
    assert!(c.classify(b"SELECT pg_advisory_lock(1)").may_pin);
    assert!(c.cache_stats().hits >= 2);
}
