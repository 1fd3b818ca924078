//! Classifier micro benchmarks:
//! 1. a cached deep-path SELECT (cache lookup + decision),
//! 2. a fast-path INSERT (first keyword, no cache),
//! 3. pgbench -S's SELECT with a new literal each time (a cache hit by normalized text),
//! 4. the ORM SELECT uncached (lexer + sqlparser + checks),
//! 5. the whole corpus uncached (cache disabled; per-statement average = time / statements),
//! 6. the whole routing decision for a cached read: classification, unit, target, replica
//!    choice (a primary and two healthy replicas, no monitors).
//!
//! `cargo bench -p pgtier-benches --bench classify -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgtier::cluster::{Lsn, Topology};
use pgtier::router::classify::{Class, Classifier, FunctionTable};
use pgtier::router::route::{ClientRouting, Router, Target, UnitInfo};

const SELECT: &str = "SELECT \"users\".* FROM \"users\" WHERE \"users\".\"id\" = $1 \
    AND \"users\".\"deleted_at\" IS NULL ORDER BY \"users\".\"created_at\" DESC LIMIT $2";
const INSERT: &str = "INSERT INTO \"users\" (\"email\", \"created_at\", \"updated_at\") \
    VALUES ($1, $2, $3) RETURNING \"id\"";

fn corpus() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../proxy/tests/corpus/statements.txt"
    );
    let text = std::fs::read_to_string(path).expect("read corpus");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t'))
        .map(|(_, sql)| sql.replace("\\n", "\n").replace("\\t", "\t"))
        .collect()
}

fn bench(c: &mut Criterion) {
    let classifier = Classifier::new(FunctionTable::builtin(), 10_000);
    assert_eq!(classifier.classify(SELECT.as_bytes()).class, Class::Read);
    c.bench_function("cached deep-path SELECT", |b| {
        b.iter(|| classifier.classify(black_box(SELECT.as_bytes())))
    });
    c.bench_function("fast-path INSERT", |b| {
        b.iter(|| classifier.classify(black_box(INSERT.as_bytes())))
    });

    // Precomputed texts: formatting is not what is measured.
    let pgbench: Vec<String> = (1..=1000)
        .map(|aid| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"))
        .collect();
    let mut next = pgbench.iter().cycle();
    c.bench_function("pgbench -S SELECT, new literal each time", |b| {
        b.iter(|| classifier.classify(black_box(next.next().expect("cycle").as_bytes())))
    });

    let uncached = Classifier::new(FunctionTable::builtin(), 0);
    c.bench_function("uncached deep-path SELECT", |b| {
        b.iter(|| uncached.classify(black_box(SELECT.as_bytes())))
    });

    let statements = corpus();
    let mut group = c.benchmark_group("corpus uncached");
    group.throughput(Throughput::Elements(statements.len() as u64));
    group.bench_function(format!("{} statements", statements.len()), |b| {
        b.iter(|| {
            for s in &statements {
                black_box(uncached.classify(black_box(s.as_bytes())));
            }
        })
    });
    group.finish();

    let settings = pgtier::config::parse_str(
        "[users.app]\npassword = \"app\"\n[databases.app]\nprimary = \"127.0.0.1:5432\"\n\
         replicas = [\"127.0.0.1:5433\", \"127.0.0.1:5434\"]\n",
    )
    .expect("bench config");
    let db = &settings.databases["app"];
    let router = Router::new(
        Topology::unmonitored(db.cluster.clone()),
        db.routing.clone(),
        FunctionTable::builtin(),
        10_000,
        true,
    );
    let client = ClientRouting::default();
    c.bench_function("routing decision (cached read)", |b| {
        b.iter(|| {
            let classifier = router.classifier();
            let sql = black_box(SELECT.as_bytes());
            let mut unit = UnitInfo::default();
            unit.add_statement(None, sql, &classifier.classify(sql));
            match router.target(&unit, &client) {
                Target::Replica { min_lsn, limits } => {
                    black_box(router.choose(min_lsn.max(Lsn::ZERO), limits.as_ref(), None))
                }
                Target::Primary => unreachable!("a read"),
            }
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = bench
}
criterion_main!(benches);
