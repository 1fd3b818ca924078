//! Comparison harness: starts a kit cluster, pgtier and PgBouncer (same pool size, transaction
//! mode), then runs `pgbench -S` in simple and extended mode directly, through pgtier and
//! through PgBouncer, interleaved and repeated. Prints TPS, average latency, each proxy's CPU
//! microseconds per transaction (from /proc), and RSS per idle client.
//!
//! `cargo build --release -p pgtier && cargo run --release -p pgtier-benches --bin compare -- --help`
//!
//! `PGTIER_BASELINE_BIN=path` adds another pgtier build as the target `baseline`, interleaved
//! with the others (A/B of two builds in one run).
//!
//! `--tls require` (or `prefer`): pgtier and PgBouncer serve a certificate from a test CA with
//! that `client_tls_sslmode`, Postgres runs with `ssl = on`, and every pgbench and idle client
//! uses `sslmode=require`. The proxies reach Postgres in plain text (pgtier
//! `server_tls_sslmode = "disable"`, PgBouncer's default), so only the client side differs.

mod args;
mod pgbench;
mod pgbouncer;
mod procstat;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use args::Args;
use pgbench::{field, pgbench, pgbench_ssl};
use pgtier_kit::{free_port, Cluster, Pgtier, TestCa};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;

/// pgbench query modes compared.
const MODES: [&str; 3] = ["simple", "extended", "prepared"];

struct Options {
    rounds: usize,
    duration: u64,
    clients: u32,
    pool: u32,
    idle: usize,
    scale: u32,
    /// pgtier's `workers` setting.
    workers: u32,
    /// Targets to run (all by default): direct, pgtier, pgbouncer.
    targets: Vec<String>,
    /// pgbench modes to run (all by default).
    modes: Vec<String>,
    /// The proxies' `client_tls_sslmode`: `off` (no certificate, plain clients), `prefer` or
    /// `require` (clients use TLS).
    tls: String,
    /// Seconds of each `pgbench -C` run measuring new connections per second (0: none).
    handshakes: u64,
    /// Clients of those runs.
    handshake_clients: u32,
    /// Interleaved rounds of those runs.
    handshake_rounds: usize,
    /// Clients opening connections in those runs: pgbench (`-C`, libpq with OpenSSL) and
    /// rust (tokio-postgres with rustls, no session resumption).
    openers: Vec<String>,
    /// PBKDF2 iterations of bench's SCRAM verifier (Postgres' default 4096): what every login
    /// costs the client (and Postgres, PgBouncer and pgtier nothing beyond a few hashes).
    scram_iterations: u32,
}

impl Options {
    fn parse() -> Result<Options> {
        let a = Args::parse(
            "compare [--rounds 3] [--duration 10] [--clients 32] [--pool 20] [--idle 1000] \
             [--scale 10] [--workers 1] [--targets direct,pgtier,pgbouncer] \
             [--modes simple,extended,prepared] [--tls off|prefer|require] [--handshakes 5] \
             [--handshake-clients 4] [--handshake-rounds 3] [--scram-iterations 4096] \
             [--handshake-with pgbench,rust]",
            &[
                "rounds",
                "duration",
                "clients",
                "pool",
                "idle",
                "scale",
                "workers",
                "targets",
                "modes",
                "tls",
                "handshakes",
                "handshake-clients",
                "handshake-rounds",
                "scram-iterations",
                "handshake-with",
            ],
        )?;
        let targets = ["direct", "pgtier", "pgbouncer"];
        Ok(Options {
            rounds: a.number("rounds", 3)?,
            duration: a.number("duration", 10)?,
            clients: a.number("clients", 32)?,
            pool: a.number("pool", 20)?,
            idle: a.number("idle", 1000)?,
            scale: a.number("scale", 10)?,
            workers: a.number("workers", 1)?,
            targets: a.list("targets", &targets, &targets)?,
            modes: a.list("modes", &MODES, &MODES)?,
            tls: a.one_of("tls", "off", &["off", "prefer", "require"])?,
            handshakes: a.number("handshakes", 5)?,
            handshake_clients: a.number("handshake-clients", 4)?,
            handshake_rounds: a.number("handshake-rounds", 3)?,
            scram_iterations: a.number("scram-iterations", 4096)?,
            openers: a.list("handshake-with", &OPENERS, &OPENERS)?,
        })
    }
}

impl Options {
    /// pgbench threads: 2, or 1 for a single client (pgbench needs clients >= threads).
    fn threads(&self) -> String {
        self.clients.clamp(1, 2).to_string()
    }

    /// Whether the proxies serve TLS.
    fn tls(&self) -> bool {
        self.tls != "off"
    }

    /// libpq's sslmode for pgbench: `require` in TLS mode, else `disable`.
    fn sslmode(&self) -> &'static str {
        if self.tls() {
            "require"
        } else {
            "disable"
        }
    }

    /// Client kinds measured for idle memory and connection rate: plain when the proxies
    /// accept it, TLS when they serve it.
    fn client_kinds(&self) -> Vec<&'static str> {
        match self.tls.as_str() {
            "off" => vec!["disable"],
            "prefer" => vec!["disable", "require"],
            _ => vec!["require"],
        }
    }
}

/// A SCRAM-SHA-256 verifier as Postgres stores it:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5802, fixed salt).
fn scram_verifier(password: &str, iterations: u32) -> Result<String> {
    use base64::{engine::general_purpose::STANDARD as B64, Engine};
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::{Digest, Sha256};
    if iterations == 0 {
        bail!("--scram-iterations must be at least 1");
    }
    let hmac = |key: &[u8], data: &[u8]| -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
        mac.update(data);
        mac.finalize().into_bytes().into()
    };
    let salt = b"pgtier-bench-salt";
    // Hi(password, salt, i): PBKDF2 with HMAC-SHA-256, one block.
    let mut u = hmac(password.as_bytes(), &[&salt[..], &[0, 0, 0, 1]].concat());
    let mut salted = u;
    for _ in 1..iterations {
        u = hmac(password.as_bytes(), &u);
        for (s, x) in salted.iter_mut().zip(u) {
            *s ^= x;
        }
    }
    let stored_key: [u8; 32] = Sha256::digest(hmac(&salted, b"Client Key")).into();
    let server_key = hmac(&salted, b"Server Key");
    Ok(format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    ))
}

/// "plain" or "TLS" for an sslmode.
fn kind_name(sslmode: &str) -> &'static str {
    if sslmode == "disable" {
        "plain"
    } else {
        "TLS"
    }
}

/// One endpoint pgbench can talk to.
struct Target {
    name: &'static str,
    port: u16,
    pid: Option<u32>,
}

/// One pgbench run's numbers.
#[derive(Clone, Copy)]
struct Sample {
    tps: f64,
    latency_ms: f64,
    cpu_us_per_tx: Option<f64>,
    /// The part of `cpu_us_per_tx` spent in the kernel.
    sys_us_per_tx: Option<f64>,
    /// CPU the whole machine spent per transaction (pgbench, Postgres, the proxy, the rest).
    machine_us_per_tx: f64,
    /// Of it, pgbench's.
    pgbench_us_per_tx: f64,
    /// Of it, the PostgreSQL processes'.
    postgres_us_per_tx: f64,
    /// pgbench's context switches per transaction.
    pgbench_switches_per_tx: f64,
    /// Context switches of the live PostgreSQL processes per transaction (backends that exited
    /// during the run, as in direct runs, are not counted).
    postgres_switches_per_tx: f64,
}

/// One kind of pgbench run: a query mode with plain or TLS clients.
struct RunKind {
    /// The mode, with " TLS" or " plain" when both kinds run (`--tls prefer`).
    label: String,
    mode: String,
    sslmode: &'static str,
}

impl Options {
    /// The pgbench runs of a round: each mode, with TLS clients (`--tls require`), plain ones
    /// (`--tls off`) or both, plain first (`--tls prefer`: TLS's cost per transaction, same run).
    fn run_kinds(&self) -> Vec<RunKind> {
        let kinds = self.client_kinds();
        let mut runs = Vec::new();
        for mode in &self.modes {
            for &sslmode in &kinds {
                runs.push(RunKind {
                    label: if kinds.len() > 1 {
                        format!("{mode} {}", kind_name(sslmode))
                    } else {
                        mode.clone()
                    },
                    mode: mode.clone(),
                    sslmode,
                });
            }
        }
        runs
    }
}

fn run(t: &Target, kind: &RunKind, o: &Options) -> Result<Sample> {
    let mode = kind.mode.as_str();
    let cpu0 = t.pid.map(procstat::cpu).transpose()?;
    let machine0 = procstat::machine_busy_us()?;
    let (pgbench0, postgres0) = (procstat::children(), procstat::postgres());
    let out = pgbench_ssl(
        t.port,
        Some(kind.sslmode),
        &[
            "-n",
            "-S",
            "-M",
            mode,
            "-c",
            &o.clients.to_string(),
            "-j",
            &o.threads(),
            "-T",
            &o.duration.to_string(),
        ],
    )?;
    let cpu1 = t.pid.map(procstat::cpu).transpose()?;
    let machine1 = procstat::machine_busy_us()?;
    let (pgbench1, postgres1) = (procstat::children(), procstat::postgres());
    let tx = field(&out, "number of transactions actually processed:").context("no tx count")?;
    let per_tx = |before: u64, after: u64| after.saturating_sub(before) as f64 / tx;
    let failed = field(&out, "number of failed transactions:").unwrap_or(0.0);
    if failed > 0.0 {
        bail!("{failed} failed transactions via {}:\n{out}", t.name);
    }
    Ok(Sample {
        tps: field(&out, "tps =").context("no tps")?,
        latency_ms: field(&out, "latency average =").context("no latency")?,
        cpu_us_per_tx: cpu0
            .zip(cpu1)
            .map(|(a, b)| (b.total_us() - a.total_us()) as f64 / tx),
        sys_us_per_tx: cpu0
            .zip(cpu1)
            .map(|(a, b)| (b.sys_us - a.sys_us) as f64 / tx),
        machine_us_per_tx: per_tx(machine0, machine1),
        pgbench_us_per_tx: per_tx(pgbench0.0, pgbench1.0),
        pgbench_switches_per_tx: per_tx(pgbench0.1, pgbench1.1),
        postgres_us_per_tx: per_tx(postgres0.0, postgres1.0),
        postgres_switches_per_tx: per_tx(postgres0.1, postgres1.1),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

/// Prints, per mode and target, the median (and range) of each round's ratio to PgBouncer's
/// run of the same round: runs made seconds apart share most of the machine's noise.
fn paired_ratios(
    o: &Options,
    labels: &[&str],
    targets: &[Target],
    by_round: &BTreeMap<(&str, &str, usize), Sample>,
    failures: &BTreeMap<(&str, &str), String>,
) {
    println!("\n## Per-round ratios to PgBouncer's run of the same round\n");
    println!(
        "| mode | target | rounds | TPS ratio median (min-max) | CPU ratio median (min-max) |"
    );
    println!("|---|---|---|---|---|");
    // Not against a PgBouncer that failed some runs of the mode (as in the table above).
    let modes = labels.iter().copied();
    for mode in modes.filter(|m| !failures.contains_key(&(*m, "pgbouncer"))) {
        for t in targets.iter().filter(|t| t.name != "pgbouncer") {
            let pairs: Vec<(Sample, Sample)> = (1..=o.rounds)
                .filter_map(|r| {
                    Some((
                        *by_round.get(&(mode, t.name, r))?,
                        *by_round.get(&(mode, "pgbouncer", r))?,
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

/// Idle logged-in clients of one target; dropping them closes them.
struct IdleClients {
    clients: Vec<tokio_postgres::Client>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for IdleClients {
    fn drop(&mut self) {
        self.clients.clear();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Opens `n` clients with `sslmode` (`disable` with `NoTls`, `require` with a rustls
/// connector), each logged in (`connect` returns after ReadyForQuery; with `require` the TLS
/// handshake has completed), and leaves them idle. Returns them and the proxy's RSS growth per
/// client, in KiB. Clients opened earlier stay open, so freed memory is not reused.
async fn open_idle_clients<T>(
    pid: u32,
    port: u16,
    n: usize,
    sslmode: &str,
    tls: T,
    idle: &mut Vec<IdleClients>,
) -> Result<f64>
where
    T: MakeTlsConnect<Socket> + Clone + Send + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let dsn = format!(
        "host=127.0.0.1 port={port} user=bench password=bench dbname=bench sslmode={sslmode}"
    );
    let mut set = IdleClients {
        clients: Vec::with_capacity(n + 1),
        tasks: Vec::with_capacity(n + 1),
    };
    // Warm the pool, the TLS context and the allocator first.
    let (warm, conn) = tokio_postgres::connect(&dsn, tls.clone()).await?;
    set.tasks.push(tokio::spawn(async move {
        let _ = conn.await;
    }));
    warm.simple_query("SELECT 1").await?;
    set.clients.push(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = procstat::rss_kib(pid)?;
    for chunk in 0..n.div_ceil(50) {
        let mut batch = Vec::new();
        for _ in 0..50.min(n - chunk * 50) {
            let (dsn, tls) = (dsn.clone(), tls.clone());
            batch.push(tokio::spawn(async move {
                tokio_postgres::connect(&dsn, tls).await
            }));
        }
        for b in batch {
            let (c, conn) = b
                .await?
                .with_context(|| format!("{sslmode} client login"))?;
            set.clients.push(c);
            set.tasks.push(tokio::spawn(async move {
                let _ = conn.await;
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = procstat::rss_kib(pid)?;
    idle.push(set);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

/// A rustls connector trusting `ca_file` (ring provider, TLS 1.2 and 1.3, no resumption).
fn tls_connector(ca_file: &Path) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file)? {
        roots.add(cert?)?;
    }
    // ring, as pgtier uses (it has no post-quantum key exchange, hence the deprecation).
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    // ring's default order puts P-384 first, so its only key share would be P-384, which
    // OpenSSL 3.0 (PgBouncer) computes with generic bignum code: about 2 ms of PgBouncer's CPU
    // per handshake. libpq, browsers and rustls with aws-lc-rs lead with X25519; so does this
    // client.
    use rustls::crypto::ring::kx_group::{SECP256R1, SECP384R1, X25519};
    provider.kx_groups = vec![X25519, SECP256R1, SECP384R1];
    let mut config = rustls::ClientConfig::builder_with_provider(provider.into())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection makes a full handshake (the connection-rate runs measure handshakes).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The TLS line of psql's `\conninfo` through `port` (protocol and cipher), or an error when
/// the target does not speak TLS.
fn tls_info(port: u16) -> Result<String> {
    let out = std::process::Command::new(pgtier_kit::bin_path("psql")?)
        .args(["-X", "-c", "\\conninfo"])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "bench",
            "bench",
        ])
        .env("PGPASSWORD", "bench")
        .env("PGSSLMODE", "require")
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find(|l| l.starts_with("SSL connection"))
        .map(|l| l.trim_start_matches("SSL connection").trim().to_owned())
        .with_context(|| format!("no TLS on port {port}: {}", text.trim()))
}

/// One connection-rate run: a new connection (TLS handshake, login, `SELECT 1`, close) per
/// transaction.
#[derive(Clone, Copy)]
struct Handshakes {
    per_sec: f64,
    proxy_us_per_conn: Option<f64>,
    machine_us_per_conn: f64,
}

/// The clients opening connections in the connection-rate runs.
const OPENERS: [&str; 2] = ["pgbench", "rust"];

fn opener_name(opener: &str) -> &'static str {
    if opener == "pgbench" {
        "pgbench -C (libpq, OpenSSL)"
    } else {
        "tokio-postgres (rustls)"
    }
}

/// `tasks` tasks each connect, log in, run `SELECT 1` and close, over and over for `secs`
/// seconds. Returns the connections made and the seconds taken.
async fn connect_loop<T>(
    port: u16,
    sslmode: &str,
    tls: T,
    tasks: u32,
    secs: u64,
) -> Result<(f64, f64)>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let dsn = format!(
        "host=127.0.0.1 port={port} user=bench password=bench dbname=bench sslmode={sslmode}"
    );
    let start = std::time::Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (dsn, tls) = (dsn.clone(), tls.clone());
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            while std::time::Instant::now() < deadline {
                let (client, conn) = tokio_postgres::connect(&dsn, tls.clone()).await?;
                let conn = tokio::spawn(conn);
                client.simple_query("SELECT 1").await?;
                // Dropping the client sends Terminate; the connection task then ends.
                drop(client);
                conn.await??;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    Ok((total as f64, start.elapsed().as_secs_f64()))
}

fn handshake_run(
    t: &Target,
    sslmode: &str,
    opener: &str,
    o: &Options,
    rt: &tokio::runtime::Runtime,
    connector: Option<&tokio_postgres_rustls::MakeRustlsConnect>,
) -> Result<Handshakes> {
    let cpu0 = t.pid.map(procstat::cpu).transpose()?;
    let machine0 = procstat::machine_busy_us()?;
    let (conns, per_sec) = if opener == "pgbench" {
        let out = pgbench_ssl(
            t.port,
            Some(sslmode),
            &[
                "-n",
                "-C",
                "-S",
                "-c",
                &o.handshake_clients.to_string(),
                "-j",
                &o.handshake_clients.clamp(1, 2).to_string(),
                "-T",
                &o.handshakes.to_string(),
            ],
        )?;
        let failed = field(&out, "number of failed transactions:").unwrap_or(0.0);
        if failed > 0.0 {
            bail!("pgbench -C via {}: {failed} failed:\n{out}", t.name);
        }
        (
            field(&out, "number of transactions actually processed:").context("no count")?,
            field(&out, "tps =").context("no tps")?,
        )
    } else {
        let (tasks, secs) = (o.handshake_clients, o.handshakes);
        let (n, took) = rt.block_on(async {
            match (sslmode, connector) {
                ("disable", _) | (_, None) => {
                    connect_loop(t.port, sslmode, tokio_postgres::NoTls, tasks, secs).await
                }
                (_, Some(tls)) => connect_loop(t.port, sslmode, tls.clone(), tasks, secs).await,
            }
        })?;
        (n, n / took)
    };
    let cpu1 = t.pid.map(procstat::cpu).transpose()?;
    let machine1 = procstat::machine_busy_us()?;
    if conns == 0.0 {
        bail!("no connection through {}", t.name);
    }
    Ok(Handshakes {
        per_sec,
        proxy_us_per_conn: cpu0
            .zip(cpu1)
            .map(|(a, b)| (b.total_us() - a.total_us()) as f64 / conns),
        machine_us_per_conn: machine1.saturating_sub(machine0) as f64 / conns,
    })
}

/// New connections per second through each target, with each opener and client kind,
/// interleaved rounds.
fn handshake_rates(
    o: &Options,
    targets: &[Target],
    rt: &tokio::runtime::Runtime,
    connector: Option<&tokio_postgres_rustls::MakeRustlsConnect>,
) -> Result<()> {
    let mut by: BTreeMap<(&str, &str, &str), Vec<Handshakes>> = BTreeMap::new();
    for round in 1..=o.handshake_rounds {
        for opener in o.openers.iter().map(String::as_str) {
            for kind in o.client_kinds() {
                for t in targets {
                    let h = handshake_run(t, kind, opener, o, rt, connector)?;
                    eprintln!(
                        "connections round {round} {opener:7} {:5} {:9} {:7.0} conn/s  proxy {}  machine {:.0} us/conn",
                        kind_name(kind),
                        t.name,
                        h.per_sec,
                        h.proxy_us_per_conn
                            .map_or("-".into(), |c| format!("{c:.0} us/conn")),
                        h.machine_us_per_conn
                    );
                    by.entry((opener, kind, t.name)).or_default().push(h);
                }
            }
        }
    }
    println!(
        "\n## New connections per second ({} concurrent clients each connecting, logging in \
         (SCRAM, {} iterations), running SELECT 1 and closing; medians of {} runs of {} s)\n",
        o.handshake_clients, o.scram_iterations, o.handshake_rounds, o.handshakes
    );
    println!("| opened by | client | target | connections/s | vs PgBouncer | proxy CPU us/conn | machine CPU us/conn |");
    println!("|---|---|---|---|---|---|---|");
    for opener in o.openers.iter().map(String::as_str) {
        for kind in o.client_kinds() {
            let med = |name: &str, f: fn(&Handshakes) -> Option<f64>| -> Option<f64> {
                let v: Vec<f64> = by
                    .get(&(opener, kind, name))?
                    .iter()
                    .filter_map(f)
                    .collect();
                (!v.is_empty()).then(|| median(v))
            };
            let pgb = med("pgbouncer", |h| Some(h.per_sec));
            for t in targets {
                let rate = med(t.name, |h| Some(h.per_sec)).unwrap_or(0.0);
                println!(
                    "| {} | {} | {} | {rate:.0} | {} | {} | {:.0} |",
                    opener_name(opener),
                    kind_name(kind),
                    t.name,
                    pgb.map_or("-".into(), |p| format!("{:.2}x", rate / p)),
                    med(t.name, |h| h.proxy_us_per_conn).map_or("-".into(), |c| format!("{c:.0}")),
                    med(t.name, |h| Some(h.machine_us_per_conn)).unwrap_or(0.0),
                );
            }
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let o = Options::parse()?;
    // TLS mode: one CA; Postgres serves TLS too (for the direct target), the proxies serve a
    // certificate of their own.
    let ca = o
        .tls()
        .then(|| TestCa::new("pgtier bench CA"))
        .transpose()?;
    let proxy_cert = ca
        .as_ref()
        .map(|ca| ca.server("proxy", &["localhost", "127.0.0.1"]))
        .transpose()?;
    eprintln!(
        "starting the kit cluster (primary only{})",
        if o.tls() { ", ssl = on" } else { "" }
    );
    let cluster = match &ca {
        Some(ca) => Cluster::start_tls(0, ca)?,
        None => Cluster::start(0)?,
    };
    cluster.create_role_and_db("bench", "bench", "bench")?;
    let primary = cluster.primary().port();
    pgbench(primary, &["-i", "-q", "-s", &o.scale.to_string()])?;
    // Postgres and both proxies authenticate clients with the same SCRAM verifier, as a
    // production userlist or auth_query would: with a plaintext password PgBouncer derives a
    // salted password (4096 PBKDF2 iterations) for every login, which would swamp the TLS
    // handshake in the connection-rate runs. The client derives it in any case, so
    // `--scram-iterations` sets how much a login costs pgbench.
    let verifier = scram_verifier("bench", o.scram_iterations)?;
    cluster
        .primary()
        .psql(&format!("ALTER ROLE bench PASSWORD '{verifier}'"))?;

    let pgtier_port = free_port()?;
    // Client TLS as PgBouncer's; plain text to Postgres, as PgBouncer's default.
    let tls_config = proxy_cert.as_ref().map_or(String::new(), |c| {
        format!(
            "client_tls_sslmode = \"{}\"\nclient_tls_cert_file = \"{}\"\n\
             client_tls_key_file = \"{}\"\nserver_tls_sslmode = \"disable\"\n",
            o.tls,
            c.cert.display(),
            c.key.display()
        )
    });
    let config = format!(
        "listen = \"127.0.0.1:{pgtier_port}\"\nlog_level = \"warn\"\npool_mode = \"transaction\"\n\
         max_client_conn = 5000\nworkers = {}\n{tls_config}[users.bench]\npassword = \"{verifier}\"\n\
         server_password = \"bench\"\n\
         [databases.bench]\nprimary = \"127.0.0.1:{primary}\"\npool_size = {}\n",
        o.workers, o.pool
    );
    let pgtier = Pgtier::start(pgtier_port, &config)?;
    // Another build of pgtier, run as the target "baseline" (A/B of two builds in one run).
    let baseline = match std::env::var_os("PGTIER_BASELINE_BIN") {
        Some(bin) => {
            let port = free_port()?;
            let config = config.replace(&format!(":{pgtier_port}\""), &format!(":{port}\""));
            Some(Pgtier::start_bin(bin.into(), port, &config)?)
        }
        None => None,
    };
    let bouncer_dir =
        std::env::temp_dir().join(format!("pgtier-bench-pgbouncer-{}", std::process::id()));
    let bouncer = pgbouncer::PgBouncer::start(
        &bouncer_dir,
        free_port()?,
        primary,
        "bench",
        "bench",
        &verifier,
        o.pool,
        proxy_cert.as_ref().map(|c| pgbouncer::ClientTls {
            sslmode: &o.tls,
            cert: &c.cert,
            key: &c.key,
        }),
    )?;

    let targets = [
        Target {
            name: "direct",
            port: primary,
            pid: None,
        },
        Target {
            name: "pgtier",
            port: pgtier.port(),
            pid: Some(pgtier.pid()),
        },
        Target {
            name: "pgbouncer",
            port: bouncer.port,
            pid: Some(bouncer.pid()),
        },
    ]
    .into_iter()
    .chain(baseline.as_ref().map(|b| Target {
        name: "baseline",
        port: b.port(),
        pid: Some(b.pid()),
    }))
    .filter(|t| t.name == "baseline" || o.targets.iter().any(|n| n == t.name))
    .collect::<Vec<_>>();
    if o.tls() {
        for t in &targets {
            let info = tls_info(t.port).with_context(|| format!("TLS check of {}", t.name))?;
            eprintln!("TLS to {:9} {info}", t.name);
        }
    }
    eprintln!(
        "pgbench -S, {} clients, pool {}, {} s per run, {} rounds, interleaved, sslmode {}",
        o.clients,
        o.pool,
        o.duration,
        o.rounds,
        o.client_kinds().join(" and ")
    );
    // Warm-up: opens the pools and the caches.
    for t in &targets {
        pgbench_ssl(
            t.port,
            Some(o.sslmode()),
            &[
                "-n",
                "-S",
                "-c",
                &o.clients.to_string(),
                "-j",
                &o.threads(),
                "-T",
                "2",
            ],
        )?;
    }
    // Samples by (mode, target, round): the round pairs runs made next to each other.
    let mut by_round: BTreeMap<(&str, &str, usize), Sample> = BTreeMap::new();
    let mut failures: BTreeMap<(&str, &str), String> = BTreeMap::new();
    let kinds = o.run_kinds();
    let labels: Vec<&str> = kinds.iter().map(|k| k.label.as_str()).collect();
    for round in 1..=o.rounds {
        for kind in &kinds {
            let mode = kind.label.as_str();
            for t in &targets {
                let s = match run(t, kind, &o) {
                    Ok(s) => s,
                    Err(e) => {
                        let first = e
                            .to_string()
                            .lines()
                            .rev()
                            .find(|l| l.contains("error"))
                            .unwrap_or("")
                            .to_owned();
                        eprintln!("round {round} {mode:14} {:9} FAILED: {first}", t.name);
                        failures.entry((mode, t.name)).or_insert(first);
                        continue;
                    }
                };
                eprintln!(
                    "round {round} {mode:14} {:9} tps {:9.0}  latency {:6.3} ms  machine {:5.1} us/tx (pgbench {:4.1}, postgres {:4.1})  switches/tx pgbench {:.2} postgres {:.2}  cpu/tx {}",
                    t.name,
                    s.tps,
                    s.latency_ms,
                    s.machine_us_per_tx,
                    s.pgbench_us_per_tx,
                    s.postgres_us_per_tx,
                    s.pgbench_switches_per_tx,
                    s.postgres_switches_per_tx,
                    s.cpu_us_per_tx
                        .zip(s.sys_us_per_tx)
                        .map_or("-".into(), |(c, k)| format!("{c:.1} us (kernel {k:.1})"))
                );
                by_round.insert((mode, t.name, round), s);
            }
        }
    }

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
    println!("| mode | target | TPS | avg latency ms | machine CPU us/tx | pgbench | postgres | proxy CPU us/tx | of it kernel | TPS vs PgBouncer | CPU vs PgBouncer |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &mode in &labels {
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
        let pgb_ok = !failures.contains_key(&(mode, "pgbouncer"));
        let pgb_tps = med("pgbouncer", |s| Some(s.tps)).filter(|_| pgb_ok);
        let pgb_cpu = med("pgbouncer", |s| s.cpu_us_per_tx).filter(|_| pgb_ok);
        for t in &targets {
            if let Some(why) = failures.get(&(mode, t.name)) {
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
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "-".into(),
            };
            println!(
                "| {mode} | {} | {tps:.0} | {lat:.3} | {machine:.1} | {bench:.1} | {postgres:.1} | {} | {} | {} | {} |",
                t.name,
                cpu.map_or("-".into(), |c| format!("{c:.1}")),
                sys.map_or("-".into(), |c| format!("{c:.1}")),
                ratio(Some(tps), pgb_tps),
                ratio(cpu, pgb_cpu),
            );
        }
    }

    paired_ratios(&o, &labels, &targets, &by_round, &failures);

    let rt = tokio::runtime::Runtime::new()?;
    let connector = ca
        .as_ref()
        .map(|ca| tls_connector(&ca.ca_file()))
        .transpose()?;
    if o.handshakes > 0 && o.handshake_rounds > 0 {
        handshake_rates(&o, &targets, &rt, connector.as_ref())?;
    }

    if o.idle > 0 {
        // Per proxy and client kind: KiB per idle client. Each proxy's plain clients stay open
        // while its TLS clients are opened.
        let mut kib: BTreeMap<(&str, &str), f64> = BTreeMap::new();
        for t in targets.iter().filter(|t| t.pid.is_some()) {
            let mut idle = Vec::new();
            for kind in o.client_kinds() {
                let pid = t.pid.unwrap();
                let k = rt.block_on(async {
                    match (kind, &connector) {
                        ("disable", _) | (_, None) => {
                            let tls = tokio_postgres::NoTls;
                            open_idle_clients(pid, t.port, o.idle, kind, tls, &mut idle).await
                        }
                        (_, Some(tls)) => {
                            open_idle_clients(pid, t.port, o.idle, kind, tls.clone(), &mut idle)
                                .await
                        }
                    }
                })?;
                eprintln!(
                    "idle {:5} {:9} {k:.2} KiB per client",
                    kind_name(kind),
                    t.name
                );
                kib.insert((kind, t.name), k);
            }
            rt.block_on(async { drop(idle) });
        }
        println!(
            "\n## RSS per idle client ({} idle logged-in clients of each kind)\n",
            o.idle
        );
        println!("| client | proxy | KiB per idle client | vs PgBouncer |");
        println!("|---|---|---|---|");
        for kind in o.client_kinds() {
            for t in targets.iter().filter(|t| t.pid.is_some()) {
                let Some(k) = kib.get(&(kind, t.name)) else {
                    continue;
                };
                let vs = kib
                    .get(&(kind, "pgbouncer"))
                    .filter(|p| **p > 0.0)
                    .map_or("-".into(), |p| format!("{:.2}x", k / p));
                println!("| {} | {} | {k:.2} | {vs} |", kind_name(kind), t.name);
            }
        }
    }
    drop(bouncer);
    drop(baseline);
    drop(pgtier);
    drop(cluster);
    drop(proxy_cert);
    drop(ca);
    Ok(())
}
