//! A protocol fuzzer for a running pgtier, on stable Rust: many connections each play a
//! generated conversation (startup with SSLRequest/GSSENCRequest, trust, md5 and SCRAM logins,
//! simple and extended protocol, COPY FROM STDIN, CancelRequests, the admin console), mutated
//! with structure-aware edits ([`mutate`]). After each batch the fuzzer checks that the process
//! is alive, that its RSS is under a bound, that its log has no caught panic, that every reply
//! was well framed, and that normal clients (a long-lived one and a new one, tokio-postgres)
//! still get answers. Runs are reproducible per connection: each one's generator is seeded
//! from the run's seed and its index, printed on failure.
//!
//! The binary `pgtier-fuzz` (tests/src/bin) runs it for a given time; tests/tests/fuzz.rs runs
//! it for ~30 s in CI; scripts/fuzz.sh for hours.

pub mod conn;
pub mod gen;
pub mod mutate;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::task::JoinSet;
use tokio_postgres::{Client, NoTls};

use crate::fixture::{ensure_app_db, ConfigBuilder};
use crate::pids::{alive, rss_kib, try_rss_kib};
use crate::{Cluster, Pgtier};
use conn::{Auth, Shared, User};

/// The users the fuzz set-up creates (roles on the cluster and `[users.*]` in pgtier).
pub fn users() -> Vec<User> {
    let u = |name: &str, password: &str, auth| User {
        name: name.to_owned(),
        password: password.to_owned(),
        auth,
    };
    vec![
        u("pgtier_trust", "", Auth::Trust),
        u("fuzz_md5", "fuzz-md5-pw", Auth::Md5),
        u("fuzz_scram", "fuzz-scram-pw", Auth::Scram),
        u("fuzz_admin", "", Auth::Admin),
    ]
}

/// Creates the fuzz roles and table on `cluster` and starts pgtier for them (replicas listed,
/// short login, idle-transaction and wait timeouts so abandoned conversations end quickly).
pub fn start_pgtier(cluster: &Cluster) -> Result<Pgtier> {
    ensure_app_db(cluster)?;
    cluster.create_trust_role("pgtier_trust")?;
    cluster.create_md5_role("fuzz_md5", "fuzz-md5-pw")?;
    cluster.create_role("fuzz_scram", "fuzz-scram-pw")?;
    cluster.ddl(
        "app",
        &format!(
            "CREATE TABLE IF NOT EXISTS {t} (a int, b text); \
             GRANT ALL ON {t} TO pgtier_trust, fuzz_md5, fuzz_scram; \
             GRANT ALL ON SCHEMA public TO pgtier_trust, fuzz_md5, fuzz_scram",
            t = gen::TABLE
        ),
    )?;
    cluster.wait_replicas_caught_up()?;
    ConfigBuilder::new(cluster)
        .with_replicas(cluster)
        .global("log_level = \"warn\"")
        .global("lag_check_interval = \"100ms\"")
        .global("pool_size = 10")
        .global("max_message_size = 1048576")
        .global("client_login_timeout = \"2s\"")
        .global("query_wait_timeout = \"5s\"")
        .global("idle_transaction_timeout = \"3s\"")
        .global("client_write_timeout = \"5s\"")
        .global("admin_users = [\"fuzz_admin\"]")
        .user("pgtier_trust", "auth = \"trust\"")
        .user("fuzz_md5", "password = \"fuzz-md5-pw\"\nauth = \"md5\"")
        .user("fuzz_scram", "password = \"fuzz-scram-pw\"")
        .user("fuzz_admin", "auth = \"trust\"")
        .start()
}

/// How long and how hard to fuzz.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seed of the run (each connection's generator derives from it and its index).
    pub seed: u64,
    /// Stop starting batches after this long.
    pub duration: Duration,
    /// Connections per batch (a health check follows each batch).
    pub batch: usize,
    /// Connections open at once.
    pub concurrency: usize,
    /// pgtier's RSS may not exceed this (KiB).
    pub rss_limit_kib: u64,
    /// Print a progress line this often (None: never).
    pub progress: Option<Duration>,
    /// Run only the connection with this seed (a reproduction), then the health check.
    pub only: Option<u64>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            seed: 16,
            duration: Duration::from_secs(30),
            batch: 200,
            concurrency: 64,
            rss_limit_kib: 256 * 1024,
            progress: None,
            only: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Wall time.
    pub elapsed: Duration,
    /// Fuzz connections run (executions).
    pub executions: u64,
    /// Of which logged in.
    pub logins: u64,
    /// Batches, each followed by a health check.
    pub batches: u64,
    /// Messages or packets written (a chunked write counts each piece).
    pub messages: u64,
    /// Bytes written.
    pub bytes: u64,
    /// ErrorResponses received, by SQLSTATE.
    pub sqlstates: BTreeMap<String, u64>,
    /// Connections pgtier left open after the client's end (see [`conn::Outcome::not_closed`]).
    pub not_closed: u64,
    /// Seeds of the first few of those (replay one with `pgtier-fuzz --conn-seed S`).
    pub not_closed_seeds: Vec<u64>,
    /// pgtier's RSS after warm-up and the largest seen after a batch (KiB).
    pub rss_start_kib: u64,
    /// Largest RSS after a batch (KiB).
    pub rss_max_kib: u64,
    /// Slowest health check.
    pub slowest_check: Duration,
    /// Health checks slower than 5 s (an overloaded machine; see [`health`]).
    pub slow_checks: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "{:.0} s, {} executions ({:.0}/s, {} logged in), {} batches, {} writes, {} bytes, \
             RSS {} -> max {} KiB, slowest health check {:?} ({} over 5 s), not closed after the client's end: {} {:?}, \
             errors by SQLSTATE: {:?}",
            secs,
            self.executions,
            self.executions as f64 / secs.max(0.001),
            self.logins,
            self.batches,
            self.messages,
            self.bytes,
            self.rss_start_kib,
            self.rss_max_kib,
            self.slowest_check,
            self.slow_checks,
            self.not_closed,
            self.not_closed_seeds,
            self.sqlstates
        )
    }
}

/// A health check longer than this is counted as slow.
const SLOW_CHECK: Duration = Duration::from_secs(5);
/// A normal client not served within this fails the run.
const CHECK_LIMIT: Duration = Duration::from_secs(75);

/// The seed of connection `index` of a run seeded `seed`.
pub fn conn_seed(seed: u64, index: u64) -> u64 {
    seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Lines of pgtier's log written since the last call that report a caught panic or an
/// internal error.
struct LogWatch {
    path: std::path::PathBuf,
    offset: u64,
}

impl LogWatch {
    fn new_findings(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let mut text = String::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_string(&mut text).is_err() {
            return Vec::new();
        }
        // Only whole lines; the rest is read next time.
        let end = text.rfind('\n').map_or(0, |i| i + 1);
        self.offset += end as u64;
        text[..end]
            .lines()
            .filter(|l| l.contains("panic") || l.contains("internal error"))
            .map(str::to_owned)
            .collect()
    }
}

async fn connect_normal(px: &Pgtier) -> Result<Client> {
    let dsn = format!(
        "host=127.0.0.1 port={} user=fuzz_scram password=fuzz-scram-pw dbname=app connect_timeout=10",
        px.port()
    );
    let (c, conn) = tokio_postgres::connect(&dsn, NoTls).await?;
    tokio::spawn(conn);
    Ok(c)
}

/// A normal client's work: a simple query, a prepared statement with a parameter.
async fn normal_work(c: &Client) -> Result<()> {
    let n: i32 = c.query_one("SELECT $1::int + 1", &[&41i32]).await?.get(0);
    anyhow::ensure!(n == 42, "SELECT $1::int + 1 gave {n}");
    c.simple_query("SELECT 1").await?;
    Ok(())
}

/// Process alive, RSS under the bound, no panic in the log, both normal clients served.
async fn health(
    px: &Pgtier,
    keeper: &Client,
    opts: &Options,
    log: &mut LogWatch,
    report: &mut Report,
) -> Result<()> {
    let t0 = Instant::now();
    if !alive(px.pid() as i32) {
        bail!("pgtier (pid {}) is gone", px.pid());
    }
    // A process that died since the check above (a zombie) has no RSS: it is gone.
    let Some(rss) = try_rss_kib(px.pid()) else {
        bail!("pgtier (pid {}) is gone", px.pid());
    };
    report.rss_max_kib = report.rss_max_kib.max(rss);
    if rss > opts.rss_limit_kib {
        bail!(
            "pgtier's RSS is {rss} KiB, over the bound of {} KiB",
            opts.rss_limit_kib
        );
    }
    let findings = log.new_findings();
    if !findings.is_empty() {
        bail!(
            "pgtier logged {} panic/internal error line(s):\n{}",
            findings.len(),
            findings.join("\n")
        );
    }
    let check = async {
        normal_work(keeper).await.context("the long-lived client")?;
        let fresh = connect_normal(px).await.context("a new client's login")?;
        normal_work(&fresh).await.context("a new client")?;
        if report.batches.is_multiple_of(20) {
            // Keep the fuzz table small over long runs.
            fresh
                .simple_query(&format!("DELETE FROM {}", gen::TABLE))
                .await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    // On an idle machine the check takes milliseconds. A shared, overloaded machine can
    // stretch it to seconds (pgtier's node checks time out and ban the primary for a while):
    // slow checks are counted and printed; only a client not served at all fails the run.
    tokio::time::timeout(CHECK_LIMIT, check)
        .await
        .with_context(|| format!("a normal client was not served within {CHECK_LIMIT:?}"))??;
    let took = t0.elapsed();
    if took > SLOW_CHECK {
        report.slow_checks += 1;
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        eprintln!(
            "pgtier-fuzz: slow health check after batch {}: {took:?} (load average {})",
            report.batches,
            load.trim()
        );
    }
    report.slowest_check = report.slowest_check.max(took);
    Ok(())
}

/// Fuzzes pgtier `px` (started by [`start_pgtier`]) until `opts.duration` has passed; an error
/// names the failing batch's connection seeds and carries pgtier's log tail.
pub async fn run(px: &Pgtier, opts: &Options) -> Result<Report> {
    let users = Arc::new(users());
    let shared = Arc::new(Shared::default());
    let addr = px.addr();
    let mut log = LogWatch {
        path: px.log_path(),
        offset: 0,
    };
    let mut report = Report::default();
    let keeper = connect_normal(px)
        .await
        .context("the long-lived client's login")?;
    normal_work(&keeper).await?;
    report.rss_start_kib = rss_kib(px.pid());
    let t0 = Instant::now();
    let mut last_progress = t0;
    let mut index = 0u64;
    loop {
        let first = index;
        let seeds: Vec<u64> = match opts.only {
            Some(s) => vec![s],
            None => (0..opts.batch as u64)
                .map(|i| conn_seed(opts.seed, first + i))
                .collect(),
        };
        index += seeds.len() as u64;
        let mut set = JoinSet::new();
        let mut pending = seeds.clone().into_iter();
        let mut bad = Vec::new();
        loop {
            while set.len() < opts.concurrency {
                let Some(seed) = pending.next() else { break };
                let (addr, users, shared) = (addr.clone(), users.clone(), shared.clone());
                set.spawn(async move { (seed, conn::run(&addr, &users, &shared, seed).await) });
            }
            let Some(done) = set.join_next().await else {
                break;
            };
            let (seed, out) = done.context("a fuzz connection task")?;
            report.executions += 1;
            report.logins += u64::from(out.logged_in);
            report.messages += out.messages;
            report.bytes += out.bytes;
            report.not_closed += u64::from(out.not_closed);
            if out.not_closed && report.not_closed_seeds.len() < 10 {
                report.not_closed_seeds.push(seed);
            }
            for m in &out.internal {
                bad.push(format!("seed {seed}: XX000 (internal error): {m}"));
            }
            for (k, v) in out.sqlstates {
                *report.sqlstates.entry(k).or_default() += v;
            }
            if let Some(b) = out.bad_frame {
                bad.push(format!("seed {seed}: badly framed reply {b}"));
            }
        }
        report.batches += 1;
        report.elapsed = t0.elapsed();
        let checked = health(px, &keeper, opts, &mut log, &mut report).await;
        if let Err(e) = checked.and_then(|()| match bad.is_empty() {
            true => Ok(()),
            false => Err(anyhow::anyhow!(bad.join("\n"))),
        }) {
            let tail: String = {
                let l = px.log();
                let start = l.len().saturating_sub(4000);
                l[l.floor_char_boundary_compat(start)..].to_owned()
            };
            bail!(
                "fuzz run seed {} failed after batch {} (connections {first}..{index}, seeds: \
                 `pgtier-fuzz --conn-seed S` replays one; first {:?}...): {e:#}\n{report}\n\
                 pgtier log tail:\n{tail}",
                opts.seed,
                report.batches,
                &seeds[..seeds.len().min(8)]
            );
        }
        if let Some(every) = opts.progress {
            if last_progress.elapsed() >= every {
                last_progress = Instant::now();
                eprintln!("pgtier-fuzz: {report}");
            }
        }
        if opts.only.is_some() || t0.elapsed() >= opts.duration {
            return Ok(report);
        }
    }
}

trait CharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl CharBoundary for String {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}
