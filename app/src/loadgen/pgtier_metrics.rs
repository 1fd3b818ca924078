//! The replica share of reads, measured from pgtier's own Prometheus endpoint
//! (`metrics_listen`, `GET /metrics`): `pgtier_transactions_total{database, role, reason}`
//! scraped before and after a run.
//!
//! Why not `pg_stat_database` alone: a node's xact counters count every transaction (writes,
//! the lag monitors' probes, other clients), while pgtier knows which transactions were reads
//! it routed and where they ended up.

use anyhow::{bail, Context, Result};

use super::client::Http;

/// The transaction counter pgtier exports.
pub const TRANSACTIONS: &str = "pgtier_transactions_total";

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, e.g. `pgtier_transactions_total`.
    pub name: String,
    /// Label pairs in the order they appeared.
    pub labels: Vec<(String, String)>,
    /// The value (`NaN` and `±Inf` included).
    pub value: f64,
}

impl Sample {
    /// A label's value.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the Prometheus text exposition format: `# ...` lines and blank lines are skipped;
/// labels may come in any order and values may hold `\\`, `\"` and `\n` escapes; a trailing
/// timestamp is ignored. A malformed line is an error naming its line number.
pub fn parse(text: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_line(line).with_context(|| format!("line {}: {line:?}", i + 1))?;
        out.push(sample);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let end = line.find(|c: char| !is_name(c)).unwrap_or(line.len());
    let (name, mut rest) = line.split_at(end);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        bail!("no metric name");
    }
    let mut labels = Vec::new();
    rest = rest.trim_start();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().context("no value")?;
    let value: f64 = value
        .parse()
        .with_context(|| format!("{value:?} is not a number"))?;
    // An optional timestamp (milliseconds), then nothing.
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .with_context(|| format!("{ts:?} is not a timestamp"))?;
    }
    if fields.next().is_some() {
        bail!("unexpected text after the value");
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `name="value",...}` (the opening brace already consumed); returns what follows `}`.
fn parse_labels<'a>(mut s: &'a str, labels: &mut Vec<(String, String)>) -> Result<&'a str> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .context("unterminated labels")?;
        let (key, after) = s.split_at(end);
        if key.is_empty() {
            bail!("expected a label name at {s:?}");
        }
        let after = after.trim_start();
        let after = after
            .strip_prefix('=')
            .with_context(|| format!("expected = after label {key}"))?
            .trim_start();
        let mut chars = after
            .strip_prefix('"')
            .with_context(|| format!("expected a quoted value for label {key}"))?
            .char_indices();
        let mut value = String::new();
        let rest = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated value for label {key}"),
                },
                // `"` is one byte: the rest starts right after it.
                Some((i, '"')) => break &after[1 + i + 1..],
                Some((_, c)) => value.push(c),
                None => bail!("unterminated value for label {key}"),
            }
        };
        labels.push((key.to_owned(), value));
        s = rest.trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            bail!("expected , or }} after label {key}");
        }
    }
}

/// `pgtier_transactions_total` summed into what the replica share needs, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Routing {
    /// Transactions replicas served (every reason): reads.
    pub replica: f64,
    /// Reads meant for a replica that went to the primary because none was eligible.
    pub fallback: f64,
    /// Primary transactions the classifier could not prove read-only, or certain writes.
    pub writes: f64,
    /// Primary transactions for any other reason (session state, hints, rules, unrouted).
    pub primary_other: f64,
    /// Samples that matched (0: the endpoint is not pgtier's, or the database is unknown).
    pub series: usize,
}

/// Sums the transaction counters of `database` (every database when `None`).
pub fn routing(samples: &[Sample], database: Option<&str>) -> Routing {
    let mut r = Routing::default();
    for s in samples.iter().filter(|s| s.name == TRANSACTIONS) {
        if database.is_some_and(|d| s.label("database") != Some(d)) {
            continue;
        }
        r.series += 1;
        match (s.label("role"), s.label("reason")) {
            (Some("replica"), _) => r.replica += s.value,
            (Some("primary"), Some("fallback")) => r.fallback += s.value,
            (Some("primary"), Some("classified" | "write")) => r.writes += s.value,
            (Some("primary"), _) => r.primary_other += s.value,
            _ => {}
        }
    }
    r
}

/// What pgtier routed during a run: differences of two [`Routing`] snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoutedReads {
    /// Reads served by replicas.
    pub replica_reads: u64,
    /// Reads that fell back to the primary (no eligible replica).
    pub primary_fallbacks: u64,
    /// Writes (and reads the classifier could not prove read-only) on the primary.
    pub primary_writes: u64,
    /// Other primary transactions (session state, hints, rules, unrouted).
    pub primary_other: u64,
}

impl RoutedReads {
    /// The change from `before` to `after`; a counter that went down (pgtier restarted)
    /// counts as 0.
    pub fn between(before: &Routing, after: &Routing) -> RoutedReads {
        let d = |a: f64, b: f64| (a - b).max(0.0).round() as u64;
        RoutedReads {
            replica_reads: d(after.replica, before.replica),
            primary_fallbacks: d(after.fallback, before.fallback),
            primary_writes: d(after.writes, before.writes),
            primary_other: d(after.primary_other, before.primary_other),
        }
    }

    /// Replica reads / (replica reads + primary fallbacks); `None` when no read was routed.
    pub fn share(&self) -> Option<f64> {
        let routed = self.replica_reads + self.primary_fallbacks;
        (routed > 0).then(|| self.replica_reads as f64 / routed as f64)
    }
}

/// Splits `http://host:port/path` into the base and the path (`/metrics` when none).
pub fn split_url(url: &str) -> Result<(String, String)> {
    let Some(rest) = url.trim().strip_prefix("http://") else {
        bail!("{url:?}: expected http://HOST:PORT/metrics");
    };
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if host.is_empty() {
        bail!("{url:?}: no host");
    }
    let path = if path.is_empty() || path == "/" {
        "/metrics"
    } else {
        path
    };
    Ok((format!("http://{host}"), path.to_owned()))
}

/// Fetches and parses `url`, then sums the transaction counters of `database`.
pub async fn scrape(url: &str, database: Option<&str>) -> Result<Routing> {
    let (base, path) = split_url(url)?;
    let resp = Http::new(&base)
        .get(&path)
        .await
        .with_context(|| format!("scraping pgtier metrics at {url}"))?;
    if resp.status != 200 {
        bail!("{url}: HTTP {}", resp.status);
    }
    let samples = parse(&resp.text()).with_context(|| format!("{url}: not Prometheus text"))?;
    Ok(routing(&samples, database))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP pgtier_transactions_total Transactions by database, serving node role and routing reason.
# TYPE pgtier_transactions_total counter
pgtier_transactions_total{database=\"app\",reason=\"classified\",role=\"replica\"} 90
pgtier_transactions_total{database=\"app\",reason=\"hint\",role=\"replica\"} 5
pgtier_transactions_total{role=\"primary\",database=\"app\",reason=\"fallback\"} 5
pgtier_transactions_total{database=\"app\",role=\"primary\",reason=\"classified\"} 7
pgtier_transactions_total{database=\"app\",reason=\"write\",role=\"primary\"} 13
pgtier_transactions_total{database=\"app\",reason=\"session_state\",role=\"primary\"} 2
pgtier_transactions_total{database=\"other\",reason=\"classified\",role=\"replica\"} 1000

pgtier_up 1
pgtier_query_duration_seconds_bucket{database=\"app\",role=\"replica\",le=\"+Inf\"} 95 1700000000000
";

    #[test]
    fn parses_names_labels_values_and_timestamps() {
        let s = parse(TEXT).unwrap();
        assert_eq!(s.len(), 9);
        assert_eq!(s[0].name, TRANSACTIONS);
        assert_eq!(s[0].label("role"), Some("replica"));
        assert_eq!(s[0].label("reason"), Some("classified"));
        assert_eq!(s[0].value, 90.0);
        assert_eq!(s[7].name, "pgtier_up");
        assert!(s[7].labels.is_empty());
        assert_eq!(s[8].label("le"), Some("+Inf"));
        assert_eq!(s[8].value, 95.0);
    }

    #[test]
    fn parses_escapes_spaces_special_values_and_trailing_commas() {
        let s = parse(
            "m{a=\"x\\\"y\\\\z\\nw\", b = \"}, {\" ,} +Inf\nn NaN\no{} -1.5e3\np{q=\"é\"} 2\n",
        )
        .unwrap();
        assert_eq!(s[0].label("a"), Some("x\"y\\z\nw"));
        assert_eq!(s[0].label("b"), Some("}, {"));
        assert_eq!(s[0].value, f64::INFINITY);
        assert!(s[1].value.is_nan());
        assert_eq!(s[2].value, -1500.0);
        assert_eq!(s[3].label("q"), Some("é"));
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "m{a=\"x\"",
            "m{a=x} 1",
            "m{a=\"x\" b=\"y\"} 1",
            "m{a=\"x} 1",
            "m",
            "m one",
            "m 1 2 3",
            "m 1 soon",
            "{a=\"x\"} 1",
            "<html>",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        let e = parse("ok 1\nbad{\n").unwrap_err();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
    }

    #[test]
    fn sums_roles_and_reasons_for_one_database() {
        let s = parse(TEXT).unwrap();
        let app = routing(&s, Some("app"));
        assert_eq!(
            app,
            Routing {
                replica: 95.0,
                fallback: 5.0,
                writes: 20.0,
                primary_other: 2.0,
                series: 6,
            }
        );
        assert_eq!(routing(&s, None).replica, 1095.0);
        assert_eq!(routing(&s, Some("nope")).series, 0);
    }

    #[test]
    fn share_of_routed_reads() {
        let before = Routing {
            replica: 100.0,
            fallback: 10.0,
            writes: 50.0,
            primary_other: 1.0,
            series: 4,
        };
        let after = Routing {
            replica: 1000.0,
            fallback: 110.0,
            writes: 250.0,
            primary_other: 1.0,
            series: 4,
        };
        let d = RoutedReads::between(&before, &after);
        assert_eq!(
            d,
            RoutedReads {
                replica_reads: 900,
                primary_fallbacks: 100,
                primary_writes: 200,
                primary_other: 0,
            }
        );
        assert_eq!(d.share(), Some(0.9));
        // Writes alone: no reads were routed, so there is no share.
        let writes_only = Routing {
            writes: 300.0,
            ..before
        };
        assert_eq!(RoutedReads::between(&before, &writes_only).share(), None);
        // A restarted pgtier (counters went down) does not produce huge numbers.
        assert_eq!(
            RoutedReads::between(&after, &before),
            RoutedReads::default()
        );
    }

    #[test]
    fn urls() {
        let s = |u: &str| split_url(u).map_err(|e| e.to_string());
        assert_eq!(
            s("http://127.0.0.1:9930/metrics"),
            Ok(("http://127.0.0.1:9930".into(), "/metrics".into()))
        );
        assert_eq!(
            s("http://localhost:9930"),
            Ok(("http://localhost:9930".into(), "/metrics".into()))
        );
        assert_eq!(
            s("http://h:1/x/metrics?a=b"),
            Ok(("http://h:1".into(), "/x/metrics?a=b".into()))
        );
        assert!(s("https://h:1/metrics").is_err());
        assert!(s("h:1/metrics").is_err());
        assert!(s("http:///metrics").is_err());
    }
}
