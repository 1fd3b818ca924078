//! The protocol fuzzer (`pgtier_kit::fuzz`, binary `pgtier-fuzz`) against pgtier on the kit
//! cluster for a bounded time: mutated startup, auth, simple/extended, COPY and cancel streams
//! over many connections, with the process alive, its RSS bounded, no caught panic in its log,
//! every reply well framed and normal clients served after every batch. The seed is fixed
//! (PGTIER_FUZZ_SEED overrides it, PGTIER_FUZZ_SECONDS the 30 s) and printed; a failure names
//! the connection seeds to replay with `pgtier-fuzz --conn-seed S`. Two more tests check that
//! the fuzzer's own checks fail when they should.

use std::time::{Duration, Instant};

use pgtier_kit::fuzz::{self, Options};
use pgtier_kit::Cluster;

/// One test at a time: the fuzz run loads the machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_streams_leave_pgtier_up_bounded_and_serving() {
    let _serial = SERIAL.lock().await;
    let px = fuzz::start_pgtier(Cluster::shared()).unwrap();
    let opts = Options {
        seed: env_u64("PGTIER_FUZZ_SEED", 16),
        duration: Duration::from_secs(env_u64("PGTIER_FUZZ_SECONDS", 30)),
        progress: Some(Duration::from_secs(10)),
        ..Options::default()
    };
    eprintln!("fuzz seed {} for {:?}", opts.seed, opts.duration);
    let report = fuzz::run(&px, &opts)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("fuzz seed {}: {report}", opts.seed);
    // The run did what it says: many conversations, most of them past login, and pgtier
    // answered the broken ones with protocol errors rather than silence.
    assert!(report.batches >= 2, "{report}");
    assert!(report.logins * 3 >= report.executions, "{report}");
    assert!(
        report.sqlstates.get("08P01").copied().unwrap_or(0) > 0,
        "{report}"
    );
}

/// File descriptors `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fuzzer_notices_a_dead_pgtier() {
    let _serial = SERIAL.lock().await;
    let px = fuzz::start_pgtier(Cluster::shared()).unwrap();
    let pid = px.pid();
    let killer = std::thread::spawn(move || {
        // Once the first batch's connections are open (pgtier holds 30+ descriptors), kill
        // pgtier; the run must fail at its next check.
        let deadline = Instant::now() + Duration::from_secs(30);
        while open_fds(pid) < 30 {
            assert!(
                Instant::now() < deadline,
                "the fuzz connections never opened"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: kill(2) on the pgtier child this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let opts = Options {
        duration: Duration::from_secs(60),
        batch: 50,
        ..Options::default()
    };
    let err = fuzz::run(&px, &opts)
        .await
        .expect_err("a run against a killed pgtier passed");
    killer.join().unwrap();
    let text = format!("{err:#}");
    assert!(text.contains("is gone"), "{text}");
    assert!(text.contains("seed 16"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fuzzer_enforces_its_rss_bound() {
    let _serial = SERIAL.lock().await;
    let px = fuzz::start_pgtier(Cluster::shared()).unwrap();
    let opts = Options {
        batch: 10,
        rss_limit_kib: 1024,
        ..Options::default()
    };
    let err = fuzz::run(&px, &opts)
        .await
        .expect_err("a 1 MiB RSS bound held");
    let text = format!("{err:#}");
    assert!(text.contains("over the bound of 1024 KiB"), "{text}");
}
