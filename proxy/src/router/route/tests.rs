//! Tests of the routing decision: precedence, rules, targets, explanations.

use super::*;
use crate::router::classify::{Class, Hint};

#[test]
fn hints_and_modes_decide_replica_eligibility() {
    let read = UnitInfo::default();
    let write = UnitInfo::write();
    let auto = ClientRouting::default();
    assert!(read.replica_ok(&auto));
    assert!(!write.replica_ok(&auto));
    let to_primary = ClientRouting {
        mode: RouteMode::Primary,
        ..auto
    };
    assert!(!read.replica_ok(&to_primary));
    // The replica hint overrides "not provably read-only", never a certain write.
    let unproven = UnitInfo {
        class: Class::Write,
        hint: Some(Hint::Replica),
        ..read
    };
    assert!(unproven.replica_ok(&auto));
    let certain = UnitInfo {
        hint: Some(Hint::Replica),
        ..write
    };
    assert!(!certain.replica_ok(&auto));
    let pinning = UnitInfo {
        pins: true,
        hint: Some(Hint::Replica),
        ..read
    };
    assert!(!pinning.replica_ok(&auto));
    let forced = UnitInfo {
        hint: Some(Hint::Primary),
        ..read
    };
    assert!(!forced.replica_ok(&auto));
}

const RULES: &str = r#"
[users.app]
password = "app"
[users.analyst]
password = "x"
[databases.app]
primary = "127.0.0.1:5432"
replicas = ["127.0.0.1:5433", "127.0.0.1:5434"]

[[databases.app.rules]]
tables = ["payments"]
action = "primary"

[[databases.app.rules]]
pattern = '(?i)select\s+report_'
action = "replica"
max_lag_bytes = 1000

[[databases.app.rules]]
users = ["analyst"]
action = "any"
"#;

fn router(config: &str) -> Router {
    let s = crate::config::parse_str(config).unwrap();
    let db = &s.databases["app"];
    let r = Router::new(
        Topology::unmonitored(db.cluster.clone()),
        db.routing.clone(),
        FunctionTable::builtin(),
        100,
        true,
    );
    let f = |name: &str, v| ("public".to_owned(), name.to_owned(), v);
    r.learn_pg_proc(vec![
        f("report_daily", 'v'),
        f("report_x", 'v'),
        f("other_function", 'v'),
        ("pg_catalog".to_owned(), "nextval".to_owned(), 'v'),
    ]);
    r
}

/// The unit of one SQL text, as `units::scan` builds it.
fn unit(r: &Router, sql: &str) -> UnitInfo {
    let mut u = UnitInfo::default();
    let c = r.classifier().classify(sql.as_bytes());
    u.add_statement(r.rule_set(), sql.as_bytes(), &c);
    u
}

#[test]
fn rules_never_relax_known_writers_and_hints_stay_strict() {
    let r = router(RULES);
    let app = r.client_routing("app", "web");
    // nextval matched by the replica rule's pattern: a known writer, the primary.
    let n = unit(&r, "SELECT report_daily(nextval('s'))");
    assert_eq!(n.resolve(&app), (Verdict::Primary, DecidedBy::CertainWrite));
    // A function pg_proc does not list: the primary.
    let n = unit(&r, "SELECT report_unknown()");
    assert_eq!(n.resolve(&app), (Verdict::Primary, DecidedBy::CertainWrite));
    // A volatile function: the rule may send it to a replica, a hint may not.
    assert!(unit(&r, "SELECT report_daily(1)").replica_ok(&app));
    let hinted = unit(&r, "/* pgtier:replica */ SELECT other_function(1)");
    assert!(!hinted.replica_ok(&app));
}

#[test]
fn rules_decide_after_hints_and_route_mode() {
    let r = router(RULES);
    let app = r.client_routing("app", "web");
    let analyst = r.client_routing("analyst", "web");
    let pay = unit(&r, "SELECT * FROM billing.payments");
    assert_eq!(pay.resolve(&app), (Verdict::Primary, DecidedBy::Rule(0)));
    assert!(!pay.replica_ok(&app));
    assert_eq!(r.target(&pay, &app), Target::Primary);
    // The first matching rule wins: payments stays on the primary for the analyst.
    assert_eq!(pay.resolve(&analyst).1, DecidedBy::Rule(0));
    // Other reads: the default classification, or the analyst's `any` rule.
    let other = unit(&r, "SELECT * FROM items");
    assert_eq!(other.resolve(&app).1, DecidedBy::Default);
    assert!(other.replica_ok(&app));
    assert_eq!(r.target(&other, &app), Target::replica(Lsn::ZERO));
    assert_eq!(other.resolve(&analyst).1, DecidedBy::Rule(2));
    // A call the classifier cannot prove read-only: a replica by the pattern rule.
    let report = unit(&r, "SELECT report_daily(1)");
    assert_eq!(report.class, Class::Write);
    assert_eq!(report.resolve(&app).1, DecidedBy::Rule(1));
    assert!(report.replica_ok(&app));
    let unknown = unit(&r, "SELECT other_function(1)");
    assert!(!unknown.replica_ok(&app));
    // Hints and SET pgtier.route come first.
    let hinted = unit(&r, "/* pgtier:replica */ SELECT * FROM payments");
    assert_eq!(hinted.resolve(&app).1, DecidedBy::Hint(Hint::Replica));
    let routed = ClientRouting {
        mode: RouteMode::Replica,
        ..app
    };
    assert_eq!(
        pay.resolve(&routed).1,
        DecidedBy::RouteMode(RouteMode::Replica)
    );
    // Never a certain write, never a pinning statement.
    let write = unit(&r, "UPDATE t SET report_x = 1 WHERE 'select report_' = ''");
    assert_eq!(
        write.resolve(&analyst),
        (Verdict::Primary, DecidedBy::CertainWrite)
    );
    let mut pinning = unit(&r, "SELECT report_x()");
    pinning.pins = true;
    assert!(!pinning.replica_ok(&app));
    // A client no rule applies to (rules_on = 0): the classification alone.
    let none = ClientRouting::default();
    assert!(pay.replica_ok(&none));
    assert!(!report.replica_ok(&none));
}

#[test]
fn a_unit_goes_to_the_primary_if_any_statement_must() {
    let r = router(RULES);
    let app = r.client_routing("app", "web");
    let mut u = unit(&r, "SELECT report_daily(1)");
    u.merge(&unit(&r, "SELECT 1"));
    assert_eq!(u.resolve(&app).1, DecidedBy::Rule(1));
    let mut with_pay = u;
    with_pay.merge(&unit(&r, "SELECT * FROM payments"));
    assert_eq!(
        with_pay.resolve(&app),
        (Verdict::Primary, DecidedBy::Rule(0))
    );
    let mut with_unproven = u;
    with_unproven.merge(&unit(&r, "SELECT other_function(1)"));
    assert_eq!(
        with_unproven.resolve(&app),
        (Verdict::Primary, DecidedBy::Default)
    );
    let mut with_message = u;
    with_message.add_class(Class::Write);
    assert!(!with_message.replica_ok(&app));
    // More distinct rule-matched statements than tracked: the primary.
    let mut many = UnitInfo::default();
    for i in 0..5 {
        let c = r.classifier().classify(b"SELECT 1");
        many.add_ruled(&c, 1 << (i + 1));
    }
    assert_eq!(
        many.resolve(&app),
        (Verdict::Primary, DecidedBy::TooManyStatements)
    );
}

#[test]
fn rule_limits_and_any_pick_targets() {
    let r = router(RULES);
    let app = r.client_routing("app", "web");
    // A lag-limited rule: its limits go with the target and decide eligibility (unmonitored
    // replicas have no measured lag: none is eligible, the read goes to the primary).
    let report = unit(&r, "SELECT report_daily(1)");
    // The rule sets max_lag_bytes; max_lag stays the database's (1 s by default).
    let limits = LagLimits {
        time: Some(std::time::Duration::from_secs(1)),
        bytes: Some(1000),
    };
    assert_eq!(
        r.target(&report, &app),
        Target::Replica {
            min_lsn: Lsn::ZERO,
            limits: Some(limits)
        }
    );
    assert_eq!(r.choose(Lsn::ZERO, Some(&limits), None), Choice::Primary);
    assert!(matches!(
        r.choose(Lsn::ZERO, None, None),
        Choice::Node(1 | 2)
    ));
    // `any`: the primary and the replicas (all idle) take turns.
    let analyst = r.client_routing("analyst", "web");
    let other = unit(&r, "SELECT 1");
    let to_primary = (0..30)
        .filter(|_| r.target(&other, &analyst) == Target::Primary)
        .count();
    assert_eq!(to_primary, 10);
    // The causal floor is kept for replica targets.
    let after_write = ClientRouting {
        causal: Lsn(42),
        ..analyst
    };
    assert!((0..3).any(|_| r.target(&other, &after_write) == Target::replica(Lsn(42))));
}

#[test]
fn explain_names_the_rule_or_the_reason() {
    let r = router(RULES);
    let app = r.client_routing("app", "web");
    let e = r.explain(b"SELECT * FROM payments", &app);
    assert_eq!((e.destination, e.by), ("primary", DecidedBy::Rule(0)));
    assert_eq!(e.to_string(), "primary: rule 1 (action primary)");
    let e = r.explain(b"select report_x()", &app);
    assert_eq!(
        e.to_string(),
        "replica: rule 2 (action replica), max_lag 1s, max_lag_bytes 1000"
    );
    let e = r.explain(b"SELECT 1", &app);
    assert_eq!(
        e.to_string(),
        "replica: default classification (read-only query)"
    );
    let e = r.explain(b"SELECT 1", &r.client_routing("analyst", ""));
    assert_eq!(e.to_string(), "any: rule 3 (action any)");
    let e = r.explain(b"INSERT INTO payments VALUES (1)", &app);
    assert_eq!(e.by, DecidedBy::CertainWrite);
    let e = r.explain(b"SET work_mem = '1GB'", &app);
    assert_eq!(e.by, DecidedBy::SessionState);
}

#[test]
fn the_floor_is_the_later_of_own_and_borrowed_tokens() {
    let c = ClientRouting {
        causal: Lsn(10),
        min_lsn: Lsn(20),
        ..ClientRouting::default()
    };
    assert_eq!(c.floor(), Lsn(20));
}

#[test]
fn rule_limits_replace_the_databases_per_limit() {
    const LOOSE: &str = r#"
[users.app]
password = "app"
[databases.app]
primary = "127.0.0.1:5432"
replicas = ["127.0.0.1:5433"]
max_replica_lag = "1s"
max_replica_lag_bytes = 1000

[[databases.app.rules]]
tables = ["loose"]
action = "replica"
max_lag = "1m"

[[databases.app.rules]]
tables = ["tight"]
action = "replica"
max_lag_bytes = 10

[[databases.app.rules]]
tables = ["plain"]
action = "replica"
"#;
    let r = router(LOOSE);
    let app = r.client_routing("app", "");
    let limits = |sql: &str| match r.target(&unit(&r, sql), &app) {
        Target::Replica { limits, .. } => limits,
        Target::Primary => panic!("{sql}: primary"),
    };
    let secs = |s| Some(std::time::Duration::from_secs(s));
    // Looser time, the database's bytes.
    assert_eq!(
        limits("SELECT * FROM loose"),
        Some(LagLimits {
            time: secs(60),
            bytes: Some(1000)
        })
    );
    // A rule without limits, or no rule: the database's (None, the hot path).
    assert_eq!(limits("SELECT * FROM plain"), None);
    assert_eq!(limits("SELECT * FROM other"), None);
    // Several rules in one unit: the stricter of each.
    let mut both = unit(&r, "SELECT * FROM loose");
    both.merge(&unit(&r, "SELECT * FROM tight"));
    assert_eq!(
        r.target(&both, &app),
        Target::Replica {
            min_lsn: Lsn::ZERO,
            limits: Some(LagLimits {
                time: secs(1),
                bytes: Some(10)
            })
        }
    );
}
