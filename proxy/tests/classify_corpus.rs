//! The classifier against a corpus of realistic statements (tests/corpus/statements.txt).
//!
//! Pass 1 uses the built-in function table (no pg_proc), pass 2 a small synthetic pg_proc
//! snapshot. Each pass classifies every statement twice (cold, then from the warm cache)
//! and fails listing every mismatch; a statement marked W must never come back Read.

use pgtier::router::classify::{Class, Classifier, FunctionTable};

struct Case {
    line: usize,
    builtin: Class,
    snapshot: Class,
    sql: String,
}

fn class(c: char) -> Option<Class> {
    match c {
        'R' => Some(Class::Read),
        'W' => Some(Class::Write),
        _ => None,
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn corpus() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/statements.txt");
    let text = std::fs::read_to_string(path).expect("read corpus");
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (tag, sql) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("line {}: expected `R|W<TAB>SQL`", i + 1));
        let mut t = tag.chars();
        let (Some(a), sep, b) = (t.next().and_then(class), t.next(), t.next()) else {
            panic!("line {}: bad tag {tag:?}", i + 1);
        };
        let snapshot = match (sep, b.and_then(class)) {
            (None, _) => a,
            (Some('/'), Some(b)) => b,
            _ => panic!("line {}: bad tag {tag:?}", i + 1),
        };
        cases.push(Case {
            line: i + 1,
            builtin: a,
            snapshot,
            sql: unescape(sql),
        });
    }
    cases
}

/// A small pg_proc snapshot: the catalog functions the corpus uses (except `initcap`, left
/// out on purpose: unknown once a snapshot is loaded means the primary), plus an `app`
/// schema with volatile and stable functions.
fn synthetic_pg_proc() -> FunctionTable {
    let stable = [
        "count",
        "sum",
        "max",
        "min",
        "avg",
        "array_agg",
        "jsonb_agg",
        "jsonb_build_object",
        "lower",
        "upper",
        "length",
        "format_type",
        "pg_get_expr",
        "pg_get_userbyid",
        "pg_table_is_visible",
        "pg_encoding_to_char",
        "pg_get_constraintdef",
        "pg_get_indexdef",
        "pg_size_pretty",
        "pg_total_relation_size",
        "current_schemas",
        "current_schema",
        "current_database",
        "current_user",
        "current_setting",
        "version",
        "now",
        "date_trunc",
        "extract",
        "to_char",
        "percentile_cont",
        "row_number",
        "rank",
        "dense_rank",
        "lag",
        "lead",
        "generate_series",
        "unnest",
        "jsonb_each_text",
    ];
    let volatile = [
        "random",
        "clock_timestamp",
        "gen_random_uuid",
        "pg_sleep",
        "pg_backend_pid",
        "pg_is_in_recovery",
        "nextval",
        "setval",
        "currval",
        "set_config",
        "pg_notify",
        "txid_current",
        "pg_advisory_xact_lock",
    ];
    let mut rows: Vec<(String, String, char)> = Vec::new();
    rows.extend(
        stable
            .iter()
            .map(|n| ("pg_catalog".into(), n.to_string(), 's')),
    );
    rows.extend(
        volatile
            .iter()
            .map(|n| ("pg_catalog".into(), n.to_string(), 'v')),
    );
    for (schema, name, vol) in [
        ("app", "audit_log", 'v'),
        ("app", "stable_fn", 's'),
        ("app", "expire_sessions", 'v'),
        ("app", "report_rows", 's'),
        ("public", "calc_total", 'i'),
    ] {
        rows.push((schema.into(), name.into(), vol));
    }
    let mut f = FunctionTable::builtin();
    f.learn_pg_proc(rows);
    f
}

/// Classifies every case twice; returns the mismatch descriptions.
fn run(name: &str, classifier: &Classifier, cases: &[Case], snapshot: bool) -> Vec<String> {
    let mut bad = Vec::new();
    let mut reads = 0;
    for round in ["cold", "warm"] {
        for c in cases {
            let want = if snapshot { c.snapshot } else { c.builtin };
            let got = classifier.classify(c.sql.as_bytes());
            if round == "cold" && got.class == Class::Read {
                reads += 1;
            }
            if got.class != want {
                bad.push(format!(
                    "[{name}/{round}] line {}: expected {want:?}, got {:?} ({}): {}",
                    c.line,
                    got.class,
                    got.reason.as_str(),
                    c.sql.replace('\n', "\\n")
                ));
            }
        }
    }
    let stats = classifier.cache_stats();
    println!(
        "{name}: {} statements, {reads} read / {} write, {} mismatches; cache {} entries, {} hits, {} misses",
        cases.len(),
        cases.len() - reads,
        bad.len(),
        stats.entries,
        stats.hits,
        stats.misses
    );
    bad
}

#[test]
fn corpus_is_classified_exactly() {
    let cases = corpus();
    assert!(cases.len() >= 150, "corpus has only {} cases", cases.len());
    let mut bad = run(
        "builtin",
        &Classifier::new(FunctionTable::builtin(), 4096),
        &cases,
        false,
    );
    bad.extend(run(
        "pg_proc",
        &Classifier::new(synthetic_pg_proc(), 4096),
        &cases,
        true,
    ));
    let total = cases.len();
    for b in &bad {
        println!("MISMATCH {b}");
    }
    println!("{} passed, {} failed", 2 * 2 * total - bad.len(), bad.len());
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn writes_are_never_read_even_with_a_tiny_cache() {
    // Capacity 8: constant eviction; a wrong cache hit would show up as a Read.
    let cases = corpus();
    let classifier = Classifier::new(FunctionTable::builtin(), 8);
    for _ in 0..3 {
        for c in &cases {
            if c.builtin == Class::Write {
                let got = classifier.classify(c.sql.as_bytes());
                assert_eq!(got.class, Class::Write, "line {}: {}", c.line, c.sql);
            }
        }
    }
}

/// `sql` with every integer changed and every simple `'...'` string's content replaced:
/// texts that share a normalized cache key with the original (or do not, when the literal
/// is one the key keeps), to check a cached verdict is always the one a fresh parse gives.
fn vary_literals(sql: &str, salt: usize) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let prev_word = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if c.is_ascii_digit() && !prev_word {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            out.push_str(&(salt * 7919 + 3).to_string());
        } else if c == b'\'' && !prev_word {
            match sql[i + 1..].find('\'') {
                Some(end) => {
                    out.push_str(&format!("'v{salt}'"));
                    i += end + 2;
                }
                None => {
                    out.push_str(&sql[i..]);
                    i = b.len();
                }
            }
        } else {
            let ch = sql[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Everything a classification says.
fn full(c: &pgtier::router::classify::Classification) -> impl PartialEq + std::fmt::Debug + use<> {
    (
        c.class,
        c.reason,
        c.tables.to_vec(),
        c.hint,
        c.min_lsn,
        c.bad_hint,
        c.may_pin,
    )
}

/// Classifies `texts` (line, salt, text) in order with a warm classifier (cache and memo)
/// and with one without a cache (every text parsed), for both function tables; returns the
/// warm classifiers' stats and fails listing every difference.
fn warm_equals_fresh(
    texts: &[(usize, usize, String)],
) -> Vec<pgtier::router::classify::CacheStats> {
    let mut stats = Vec::new();
    for funcs in [FunctionTable::builtin(), synthetic_pg_proc()] {
        let warm = Classifier::new(funcs.clone(), 4096);
        let fresh = Classifier::new(funcs, 0);
        let mut bad = Vec::new();
        for (line, salt, sql) in texts {
            let (got, want) = (
                full(&warm.classify(sql.as_bytes())),
                full(&fresh.classify(sql.as_bytes())),
            );
            if got != want {
                bad.push(format!(
                    "line {line} (salt {salt}): warm {got:?}, fresh {want:?}: {sql}"
                ));
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
        stats.push(warm.cache_stats());
    }
    stats
}

#[test]
fn cached_verdicts_equal_fresh_ones_whatever_the_literals() {
    // The whole corpus four times, with new literals each time: the shared cache (keyed by
    // normalized text) answers, the per-thread memo mostly cannot (too many shapes between).
    let cases = corpus();
    let mut texts = Vec::new();
    for salt in 0..4 {
        for c in &cases {
            let sql = if salt == 0 {
                c.sql.clone()
            } else {
                vary_literals(&c.sql, salt)
            };
            texts.push((c.line, salt, sql));
        }
    }
    for s in warm_equals_fresh(&texts) {
        println!(
            "{} hits ({} by normalized key), {} misses, {} entries",
            s.hits, s.normalized, s.misses, s.entries
        );
        assert!(s.hits > s.misses, "variants should mostly hit");
    }
}

#[test]
fn remembered_shapes_give_fresh_verdicts() {
    // Each statement with new literals several times in a row, so the per-thread memo of
    // recent shapes answers all but the first.
    let texts: Vec<_> = corpus()
        .iter()
        .flat_map(|c| (1..5).map(move |salt| (c.line, salt, vary_literals(&c.sql, salt))))
        .collect();
    warm_equals_fresh(&texts);
    // Two classifiers on one thread never answer from each other's entries: the same text
    // is a write for one and a read for the other.
    let mut f = FunctionTable::builtin();
    f.learn_pg_proc([("app".to_string(), "stable_fn".to_string(), 's')]);
    let (a, b) = (
        Classifier::new(FunctionTable::builtin(), 100),
        Classifier::new(f, 100),
    );
    for i in 0..3 {
        let sql = format!("SELECT app.stable_fn({i}) FROM t");
        assert_eq!(a.classify(sql.as_bytes()).class, Class::Write);
        assert_eq!(b.classify(sql.as_bytes()).class, Class::Read);
    }
}
