//! Hostile clients (issue 16): a flood of half-open connections, thousands of idle clients
//! that then all run a query, and a slow, large COPY FROM STDIN. In each, pgtier keeps serving
//! normal clients and its memory stays bounded.
//!
//! Sizes for CI, and the full sizes through the environment:
//! - `PGTIER_HOSTILE_IDLE_CLIENTS` (default 10000): idle clients; fewer if the open-file limit
//!   does not allow them (the test raises its soft limit to the hard one and says so). Each
//!   client is a socket in this process and one in pgtier: 10,000 clients need
//!   `ulimit -n` of about 10,100 for each process (pgtier inherits the test's limit).
//! - `PGTIER_HOSTILE_COPY_MIB` (default 64; the figure is 1024): size of the slow COPY.
//!
//! Run them one at a time (`--test-threads 1`): each measures pgtier's RSS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pgtier_kit::fixture::{ensure_app_db, ConfigBuilder};
use pgtier_kit::pids::rss_kib;
use pgtier_kit::{wire, Cluster, Pgtier};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const USER: &str = "pgtier_trust";
/// One test at a time: each loads the machine and measures pgtier's memory.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Longest wait for anything that should take a second or two on an idle machine.
const LIMIT: Duration = Duration::from_secs(20);

fn cluster() -> &'static Cluster {
    static SETUP: OnceLock<()> = OnceLock::new();
    let c = Cluster::shared();
    SETUP.get_or_init(|| {
        ensure_app_db(c).unwrap();
        c.create_trust_role(USER).unwrap();
        c.ddl(
            "app",
            &format!(
                "CREATE TABLE IF NOT EXISTS hostile_copy (n int, pad text); \
                 GRANT ALL ON hostile_copy TO {USER}"
            ),
        )
        .unwrap();
    });
    c
}

fn start(extra: &[&str]) -> Pgtier {
    let mut b = ConfigBuilder::new(cluster()).user(USER, "auth = \"trust\"");
    for line in extra {
        b = b.global(line);
    }
    b.start().unwrap()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Client connections pgtier holds: its sockets that are established on its listen port
/// (from /proc: the socket inodes among its descriptors, matched in its net/tcp table).
fn client_sockets(px: &Pgtier) -> usize {
    let inodes: std::collections::HashSet<String> =
        std::fs::read_dir(format!("/proc/{}/fd", px.pid()))
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let link = std::fs::read_link(e.ok()?.path()).ok()?;
                let link = link.to_str()?;
                Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
            })
            .collect();
    let port = format!(":{:04X}", px.port());
    let table = std::fs::read_to_string(format!("/proc/{}/net/tcp", px.pid())).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local_address, state 01 (ESTABLISHED), inode.
            f.len() > 9 && f[1].ends_with(&port) && f[3] == "01" && inodes.contains(f[9])
        })
        .count()
}

/// Waits (bounded by [`LIMIT`]) until pgtier holds `want(n)` client connections.
async fn wait_clients(px: &Pgtier, what: &str, want: impl Fn(usize) -> bool) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let n = client_sockets(px);
        if want(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pgtier holds {n} client connections after {LIMIT:?}, expected {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A trust login, `SELECT value`, the value checked; returns the time it took.
async fn normal_client(px: &Pgtier, value: u64) -> Duration {
    let t0 = Instant::now();
    let (mut s, _) = wire::login_trust(&px.addr(), USER, "app").await.unwrap();
    s.write_all(&wire::query(&format!("SELECT {value}")))
        .await
        .unwrap();
    let r = wire::read_until_ready(&mut s, LIMIT).await.unwrap();
    assert_eq!(wire::first_value(&r), value.to_string(), "{r:?}");
    t0.elapsed()
}

/// Raises this process's soft open-file limit to `want` (as far as the hard limit allows;
/// pgtier, a child, inherits it) and returns the soft limit in force.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want.min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// Opens `n` connections that each send part of a startup packet and nothing more; returns
/// them with the time each had sent its piece.
async fn half_open(px: &Pgtier, n: usize) -> Vec<(Instant, TcpStream)> {
    let startup = wire::startup_packet(0, &[("user", USER), ("database", "app")]);
    // Pieces of a startup packet: the length only, length and version, a cut parameter.
    let pieces: [&[u8]; 3] = [&startup[..2], &startup[..8], &startup[..startup.len() - 3]];
    let mut opened = Vec::with_capacity(n);
    // In waves, so the listen backlog never overflows (a dropped SYN costs a 1 s retry).
    for wave in 0..n.div_ceil(100) {
        let mut set = JoinSet::new();
        for i in wave * 100..((wave + 1) * 100).min(n) {
            let piece = pieces[i % pieces.len()].to_vec();
            let addr = px.addr();
            set.spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(&piece).await.unwrap();
                (Instant::now(), s)
            });
        }
        while let Some(r) = set.join_next().await {
            opened.push(r.unwrap());
        }
    }
    opened
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_do_not_block_logins_and_end_at_the_login_timeout() {
    let _serial = SERIAL.lock().await;
    const HALF_OPEN: usize = 1000;
    const LOGIN_TIMEOUT: Duration = Duration::from_secs(2);
    // Half-open connections count against max_client_conn like any other: room for them and
    // the normal clients (at the default of 1000 the next client would get 53300).
    let px = start(&[
        "client_login_timeout = \"2s\"",
        &format!("max_client_conn = {}", HALF_OPEN + 24),
    ]);
    normal_client(&px, 1).await;
    wait_clients(&px, "none", |n| n == 0).await;
    let t_flood = Instant::now();
    let opened = half_open(&px, HALF_OPEN).await;
    // pgtier has accepted all of them (one descriptor each) before the normal client comes.
    wait_clients(&px, "all half-open ones", |n| n == HALF_OPEN).await;
    let flood_took = t_flood.elapsed();
    let login = normal_client(&px, 2).await;
    eprintln!("{HALF_OPEN} half-open connections opened in {flood_took:?}; a normal client logged in and was served in {login:?}");
    // They were all still open while it logged in (none had reached the login timeout).
    let held = client_sockets(&px);
    assert!(
        held >= HALF_OPEN,
        "pgtier held {held} client connections after the normal client's login: half-open \
         connections closed before the check ({flood_took:?} + {login:?})"
    );
    assert!(
        login < Duration::from_secs(1),
        "a normal client took {login:?} to log in and be served next to {HALF_OPEN} half-open connections"
    );
    // Every half-open connection reads EOF (perhaps after a FATAL), no sooner than the login
    // timeout after it opened and within a bounded time after.
    let mut set = JoinSet::new();
    for (t_open, mut s) in opened {
        set.spawn(async move {
            let closed = wire::closed_within(&mut s, LOGIN_TIMEOUT + LIMIT).await;
            (closed, t_open, Instant::now())
        });
    }
    let (mut earliest, mut latest) = (Duration::MAX, Duration::ZERO);
    while let Some(r) = set.join_next().await {
        let (closed, t_open, t_closed) = r.unwrap();
        assert!(
            closed,
            "a half-open connection was still open {:?} after it opened",
            t_closed - t_open
        );
        earliest = earliest.min(t_closed - t_open);
        latest = latest.max(t_closed - t_open);
    }
    eprintln!("half-open connections closed {earliest:?} to {latest:?} after opening");
    // Timer granularity: a few milliseconds early at most.
    assert!(
        earliest >= LOGIN_TIMEOUT - Duration::from_millis(50),
        "a half-open connection was closed {earliest:?} after opening, before client_login_timeout"
    );
    // pgtier let go of them all.
    wait_clients(&px, "none", |n| n == 0).await;
    normal_client(&px, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_at_the_default_max_client_conn_do_not_lock_clients_out() {
    let _serial = SERIAL.lock().await;
    // max_client_conn left at its default (1000); a long login timeout so the flood stays.
    let px = start(&["client_login_timeout = \"20s\""]);
    let _flood = half_open(&px, 1000).await;
    wait_clients(&px, "all half-open ones", |n| n == 1000).await;
    // Today: FATAL 53300 "too many clients" at once.
    let mut s = TcpStream::connect(px.addr()).await.unwrap();
    s.write_all(&wire::startup_packet(
        0,
        &[("user", USER), ("database", "app")],
    ))
    .await
    .unwrap();
    let m = wire::read_msg(&mut s, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        m.tag,
        b'R',
        "a normal client next to 1000 half-open connections, max_client_conn at its default: \
         {:?} {:?}",
        m.field(b'C'),
        m.field(b'M')
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_clients_then_all_run_a_query() {
    let _serial = SERIAL.lock().await;
    let want = env_usize("PGTIER_HOSTILE_IDLE_CLIENTS", 10_000);
    // Each client is a descriptor here and one in pgtier; both processes also need a few
    // hundred for themselves (pgtier: its pool and listeners).
    let nofile = raise_nofile(want as u64 + 500) as usize;
    let n = want.min(nofile.saturating_sub(500));
    if n < want {
        eprintln!(
            "NOTICE: the open-file limit is {nofile} (hard limit reached): {n} idle clients \
             instead of {want}; `ulimit -n {}` runs all of them",
            want + 500
        );
    }
    assert!(
        n >= 100,
        "an open-file limit of {nofile} leaves no room for the test"
    );
    let px = start(&[&format!("max_client_conn = {}", n + 50)]);
    normal_client(&px, 1).await;
    let before = rss_kib(px.pid());
    let t0 = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for wave in 0..n.div_ceil(200) {
        let mut set = JoinSet::new();
        for _ in wave * 200..((wave + 1) * 200).min(n) {
            let addr = px.addr();
            set.spawn(async move { wire::login_trust(&addr, USER, "app").await });
        }
        while let Some(r) = set.join_next().await {
            clients.push(r.unwrap().unwrap().0);
        }
    }
    let login_took = t0.elapsed();
    let idle = rss_kib(px.pid());
    let per_client = (idle.saturating_sub(before) * 1024) as f64 / n as f64;
    eprintln!(
        "{n} clients logged in in {login_took:?}; pgtier RSS {before} KiB before, {idle} KiB \
         with them idle: {per_client:.0} bytes per idle client"
    );
    // A normal client is served next to them.
    let t = normal_client(&px, 2).await;
    assert!(
        t < Duration::from_secs(2),
        "a normal client took {t:?} next to {n} idle ones"
    );
    // All of them run a query at once; each gets its own answer.
    let t1 = Instant::now();
    let mut set = JoinSet::new();
    for (i, mut s) in clients.into_iter().enumerate() {
        set.spawn(async move {
            s.write_all(&wire::query(&format!("SELECT {i}"))).await?;
            let r = wire::read_until_ready(&mut s, Duration::from_secs(120)).await?;
            anyhow::ensure!(wire::first_value(&r) == i.to_string(), "client {i}: {r:?}");
            Ok::<_, anyhow::Error>(s)
        });
    }
    let mut served = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        served.push(r.unwrap().unwrap());
    }
    let busy = rss_kib(px.pid());
    eprintln!(
        "all {n} ran a query in {:?}; pgtier RSS {busy} KiB after",
        t1.elapsed()
    );
    assert_eq!(served.len(), n);
    // pgtier keeps no read buffer per idle client: about 1.8 KiB each, idle since login or
    // after a query (debug and release alike; see
    // a_trust_client_idle_since_login_costs_what_one_idle_after_a_query_does); 16 KiB would
    // mean a whole read buffer kept per client.
    assert!(
        per_client < 16384.0,
        "{per_client:.0} bytes of RSS per idle client"
    );
    assert!(
        busy.saturating_sub(before) * 1024 < n as u64 * 16384,
        "after one query each, pgtier's RSS grew by {} KiB for {n} clients",
        busy.saturating_sub(before)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_large_copy_streams_in_bounded_memory_while_others_are_served() {
    let _serial = SERIAL.lock().await;
    let mib = env_usize("PGTIER_HOSTILE_COPY_MIB", 64);
    cluster().ddl("app", "TRUNCATE hostile_copy").unwrap();
    let px = start(&[]);
    normal_client(&px, 1).await;
    let before = rss_kib(px.pid());
    let (mut s, _) = wire::login_trust(&px.addr(), USER, "app").await.unwrap();
    s.write_all(&wire::query("COPY hostile_copy (n, pad) FROM STDIN"))
        .await
        .unwrap();
    let m = wire::read_msg(&mut s, LIMIT).await.unwrap();
    assert_eq!(m.tag, b'G', "expected CopyInResponse: {m:?}");
    // Other clients, meanwhile: one that stays and one new login per round.
    let stop = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let others = {
        let (stop, served, addr) = (stop.clone(), served.clone(), px.addr());
        tokio::spawn(async move {
            let (mut keep, _) = wire::login_trust(&addr, USER, "app").await.unwrap();
            let mut slowest = Duration::ZERO;
            let mut i = 0u64;
            while stop.load(Ordering::Acquire) == 0 {
                let t = Instant::now();
                keep.write_all(&wire::query(&format!("SELECT {i}")))
                    .await
                    .unwrap();
                let r = wire::read_until_ready(&mut keep, LIMIT).await.unwrap();
                assert_eq!(wire::first_value(&r), i.to_string());
                let (mut fresh, _) = wire::login_trust(&addr, USER, "app").await.unwrap();
                fresh.write_all(&wire::query("SELECT 1")).await.unwrap();
                wire::read_until_ready(&mut fresh, LIMIT).await.unwrap();
                slowest = slowest.max(t.elapsed());
                served.fetch_add(1, Ordering::AcqRel);
                i += 1;
            }
            slowest
        })
    };
    // Rows of about 1 KiB in 64 KiB CopyData messages; a pause after each MiB keeps the client
    // slow (pgtier must not read ahead and buffer what the server has not taken).
    let pad = "x".repeat(1000);
    let (mut rows, mut sum, mut sent) = (0u64, 0u64, 0usize);
    let mut peak = before;
    let t0 = Instant::now();
    let served_before = served.load(Ordering::Acquire);
    while sent < mib << 20 {
        let mut chunk = String::with_capacity(66 * 1024);
        while chunk.len() < 64 * 1024 {
            rows += 1;
            sum += rows;
            chunk.push_str(&format!("{rows}\t{pad}\n"));
        }
        sent += chunk.len();
        s.write_all(&wire::message(b'd', chunk.as_bytes()))
            .await
            .unwrap();
        if sent % (1 << 20) < chunk.len() {
            peak = peak.max(rss_kib(px.pid()));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let served_during = served.load(Ordering::Acquire) - served_before;
    s.write_all(&wire::message(b'c', b"")).await.unwrap();
    let r = wire::read_until_ready(&mut s, Duration::from_secs(120))
        .await
        .unwrap();
    let took = t0.elapsed();
    stop.store(1, Ordering::Release);
    let slowest = others.await.unwrap();
    let done = r
        .iter()
        .find(|m| m.tag == b'C')
        .unwrap_or_else(|| panic!("no CommandComplete: {r:?}"));
    assert_eq!(done.body, format!("COPY {rows}\0").into_bytes());
    eprintln!(
        "{mib} MiB ({rows} rows) copied in {took:?}; pgtier RSS {before} KiB before, peak {peak} KiB; \
         {served_during} rounds of other clients served meanwhile, slowest {slowest:?}"
    );
    // The rows arrived, all of them.
    s.write_all(&wire::query(
        "SELECT count(*) || ' ' || sum(n) || ' ' || min(length(pad)) FROM hostile_copy",
    ))
    .await
    .unwrap();
    let r = wire::read_until_ready(&mut s, LIMIT).await.unwrap();
    assert_eq!(wire::first_value(&r), format!("{rows} {sum} 1000"));
    // pgtier streamed it: its RSS did not grow with the data.
    assert!(
        peak.saturating_sub(before) < 16 * 1024,
        "pgtier's RSS grew by {} KiB during a {mib} MiB COPY",
        peak.saturating_sub(before)
    );
    assert!(
        served_during >= 3,
        "other clients were served only {served_during} times during the COPY"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "another client waited {slowest:?} during the COPY"
    );
}

/// pgtier's RSS growth per client (bytes) for `n` trust clients that log in one at a time
/// and, if `query`, each run `SELECT 1` once; the clients stay connected until it is measured.
async fn rss_per_client(n: usize, query: bool) -> f64 {
    let px = start(&[&format!("max_client_conn = {}", n + 50)]);
    normal_client(&px, 1).await;
    let before = rss_kib(px.pid());
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut s, _) = wire::login_trust(&px.addr(), USER, "app").await.unwrap();
        if query {
            s.write_all(&wire::query("SELECT 1")).await.unwrap();
            wire::read_until_ready(&mut s, LIMIT).await.unwrap();
        }
        clients.push(s);
    }
    let after = rss_kib(px.pid());
    (after.saturating_sub(before) * 1024) as f64 / n as f64
}

// Was a defect (about 9 KiB more per client idle since login): a trust login's last read (the
// startup packet, read exactly) leaves the socket marked readable, so the session's first idle
// wait woke at once, took a 16 KiB read buffer, read nothing and kept the buffer while idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_client_idle_since_login_costs_what_one_idle_after_a_query_does() {
    let _serial = SERIAL.lock().await;
    let n = 2000;
    let fresh = rss_per_client(n, false).await;
    let used = rss_per_client(n, true).await;
    eprintln!(
        "RSS per idle trust client: {fresh:.0} bytes after login only, {used:.0} after one query"
    );
    assert!(
        fresh < used + 1024.0,
        "a client idle since login costs {fresh:.0} bytes, one idle after a query {used:.0}"
    );
}
