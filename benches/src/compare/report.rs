//! The report: a markdown table of medians per run kind and target, then the per-round
//! ratios to PgBouncer.

use crate::measure::{ByRound, Failures, Sample, Target};
use crate::options::{kind_name, Options};

/// The median of `v` (not empty).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

/// Prints the medians of every run kind and target, with their ratios to PgBouncer's.
pub(crate) fn medians(o: &Options, targets: &[Target], by_round: &ByRound, failures: &Failures) {
    println!(
        "\n## pgbench -S, {} clients, pool {}, medians of {} interleaved runs of {} s, {} clients\n",
        o.clients,
        o.pool,
        o.rounds,
        o.duration,
        o.client_kinds()
            .iter()
            .map(|k| kind_name(k))
            .collect::<Vec<_>>()
            .join(" and ")
    );
    let setup = if o.replicas > 0 {
        format!(
            "pgtier with {} replicas (read/write splitting), pool {} per node; PgBouncer on the primary, pool {}",
            o.replicas, o.pool, o.bouncer_pool
        )
    } else {
        format!("primary only, pool {}", o.pool)
    };
    println!("{setup}\n");
    let share = o.replicas > 0;
    println!(
        "| mode | target | TPS | avg latency ms | machine CPU us/tx | pgbench | postgres | proxy CPU us/tx | of it kernel | TPS vs PgBouncer | CPU vs PgBouncer |{}",
        if share { " on replicas |" } else { "" }
    );
    println!(
        "|---|---|---|---|---|---|---|---|---|---|---|{}",
        if share { "---|" } else { "" }
    );
    for kind in o.run_kinds() {
        let mode = kind.label.as_str();
        let med = |name: &str, f: fn(&Sample) -> Option<f64>| -> Option<f64> {
            let v: Vec<f64> = by_round
                .iter()
                .filter(|((m, n, _), _)| *m == mode && *n == name)
                .filter_map(|(_, s)| f(s))
                .collect();
            (!v.is_empty()).then(|| median(v))
        };
        // No ratios against a PgBouncer that failed some runs of this mode (a lucky run of
        // `-M prepared` is not a baseline).
        let pgb_ok = !failures.contains_key(&(mode.to_owned(), "pgbouncer"));
        let pgb_tps = med("pgbouncer", |s| Some(s.tps)).filter(|_| pgb_ok);
        let pgb_cpu = med("pgbouncer", |s| s.cpu_us_per_tx).filter(|_| pgb_ok);
        for t in targets {
            if let Some(why) = failures.get(&(mode.to_owned(), t.name)) {
                println!("| {mode} | {} | failed: {why} | | | | | | | | |", t.name);
                continue;
            }
            let tps = med(t.name, |s| Some(s.tps)).unwrap_or(0.0);
            let lat = med(t.name, |s| Some(s.latency_ms)).unwrap_or(0.0);
            let cpu = med(t.name, |s| s.cpu_us_per_tx);
            let sys = med(t.name, |s| s.sys_us_per_tx);
            let machine = med(t.name, |s| Some(s.machine_us_per_tx)).unwrap_or(0.0);
            let bench = med(t.name, |s| Some(s.pgbench_us_per_tx)).unwrap_or(0.0);
            let postgres = med(t.name, |s| Some(s.postgres_us_per_tx)).unwrap_or(0.0);
            let on_replicas = if share {
                med(t.name, |s| s.replica_share)
                    .map_or(" - |".into(), |r| format!(" {:.0}% |", r * 100.0))
            } else {
                String::new()
            };
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "-".into(),
            };
            println!(
                "| {mode} | {} | {tps:.0} | {lat:.3} | {machine:.1} | {bench:.1} | {postgres:.1} | {} | {} | {} | {} |{on_replicas}",
                t.name,
                cpu.map_or("-".into(), |c| format!("{c:.1}")),
                sys.map_or("-".into(), |c| format!("{c:.1}")),
                ratio(Some(tps), pgb_tps),
                ratio(cpu, pgb_cpu),
            );
        }
    }
}

/// Prints, per mode and target, the median (and range) of each round's ratio to PgBouncer's
/// run of the same round: runs made seconds apart share most of the machine's noise.
pub(crate) fn paired_ratios(
    o: &Options,
    targets: &[Target],
    by_round: &ByRound,
    failures: &Failures,
) {
    println!("\n## Per-round ratios to PgBouncer's run of the same round\n");
    println!(
        "| mode | target | rounds | TPS ratio median (min-max) | CPU ratio median (min-max) |"
    );
    println!("|---|---|---|---|---|");
    // Not against a PgBouncer that failed some runs of the mode (as in the table above).
    let kinds = o.run_kinds();
    let modes = kinds.iter().map(|k| k.label.as_str());
    for mode in modes.filter(|m| !failures.contains_key(&(m.to_string(), "pgbouncer"))) {
        for t in targets.iter().filter(|t| t.name != "pgbouncer") {
            let pairs: Vec<(Sample, Sample)> = (1..=o.rounds)
                .filter_map(|r| {
                    Some((
                        *by_round.get(&(mode.to_owned(), t.name, r))?,
                        *by_round.get(&(mode.to_owned(), "pgbouncer", r))?,
                    ))
                })
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let summary = |v: Vec<f64>| {
                if v.is_empty() {
                    return "-".to_owned();
                }
                let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("{:.2}x ({lo:.2}-{hi:.2})", median(v))
            };
            let tps = pairs.iter().map(|(a, b)| a.tps / b.tps).collect();
            let cpu = pairs
                .iter()
                .filter_map(|(a, b)| Some(a.cpu_us_per_tx? / b.cpu_us_per_tx?))
                .collect();
            println!(
                "| {mode} | {} | {} | {} | {} |",
                t.name,
                pairs.len(),
                summary(tps),
                summary(cpu)
            );
        }
    }
}
