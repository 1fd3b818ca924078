//! Large results stream through pgtier with bounded memory: a 2,000,000-row COPY TO STDOUT and
//! a 2,000,000-row SELECT, read by a client that stalls, while pgtier's RSS is sampled.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pgtier_kit::pids::rss_kib;
use pgtier_kit::wire;
use pgtier_kit::wire::first_value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Client;

mod support;

use support::{client, raw, send, start, LIMIT};

async fn copy_out(c: &Client, sql: &str) -> Vec<u8> {
    let mut stream = pin!(c.copy_out(sql).await.unwrap());
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// Samples a process' VmRSS (KiB) until stopped; returns the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak.max(rss_kib(pid))
        });
        RssSampler { stop, thread }
    }

    fn peak(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// pgtier's RSS may grow by at most this much while relaying a result of >50 MB.
const RSS_GROWTH_LIMIT_KIB: u64 = 32 * 1024;
const BIG: i64 = 2_000_000;
/// The client stops reading for a while once it has this much: a pgtier that buffers what the
/// server sends would then grow by everything the server produces meanwhile.
const STALL_AFTER: usize = 8 << 20;
const STALL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread")]
async fn copy_to_stdout_of_2m_rows_streams_with_bounded_memory() {
    let px = start(2);
    let c = client(&px).await;
    copy_out(&c, "COPY (SELECT 1) TO STDOUT").await; // warm up
    let base = rss_kib(px.pid());
    let sampler = RssSampler::start(px.pid());
    let t0 = Instant::now();
    let mut stream = pin!(c
        .copy_out(&format!(
            "COPY (SELECT i, 'row number ' || i, i * 2 FROM generate_series(1, {BIG}) i)
             TO STDOUT"
        ))
        .await
        .unwrap());
    let (mut bytes, mut lines, mut stalled) = (0usize, 0i64, false);
    let mut last = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        bytes += chunk.len();
        lines += chunk.iter().filter(|&&b| b == b'\n').count() as i64;
        if chunk.ends_with(b"\n") {
            last = chunk.to_vec();
        }
        if !stalled && bytes > STALL_AFTER {
            stalled = true;
            tokio::time::sleep(STALL).await;
        }
    }
    let elapsed = t0.elapsed();
    let peak = sampler.peak();
    eprintln!(
        "COPY TO STDOUT: {lines} rows, {:.1} MB in {:.1} s; pgtier RSS {} KiB before, peak {} KiB (+{} KiB)",
        bytes as f64 / 1e6,
        elapsed.as_secs_f64(),
        base,
        peak,
        peak.saturating_sub(base)
    );
    assert_eq!(lines, BIG);
    assert!(bytes > 50_000_000, "only {bytes} bytes");
    assert_eq!(
        String::from_utf8_lossy(&last),
        format!("{BIG}\trow number {BIG}\t{}\n", BIG * 2)
    );
    assert!(
        peak.saturating_sub(base) < RSS_GROWTH_LIMIT_KIB,
        "pgtier RSS grew from {base} KiB to {peak} KiB while streaming"
    );
    // The client goes on.
    let n: i64 = c
        .query_one("SELECT 41::int8 + 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 42);
}

#[tokio::test(flavor = "multi_thread")]
async fn select_of_2m_rows_streams_with_bounded_memory_to_a_slow_reader() {
    let px = start(2);
    let mut a = raw(&px).await;
    send(&mut a, &[wire::query("SELECT 1")]).await; // warm up
    let base = rss_kib(px.pid());
    let sampler = RssSampler::start(px.pid());
    let t0 = Instant::now();
    a.write_all(&wire::query(&format!(
        "SELECT i, repeat('y', 20) || i FROM generate_series(1, {BIG}) i"
    )))
    .await
    .unwrap();
    // Frames are scanned in place as they arrive; nothing is kept but a partial frame.
    let (mut rows, mut sum, mut bytes, mut stalled) = (0i64, 0i64, 0usize, false);
    let mut tags_seen = String::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 17);
    let mut chunk = vec![0u8; 64 << 10];
    'read: loop {
        let n = tokio::time::timeout(LIMIT, a.read(&mut chunk))
            .await
            .expect("timed out reading rows")
            .unwrap();
        assert!(n > 0, "pgtier closed the connection after {rows} rows");
        bytes += n;
        buf.extend_from_slice(&chunk[..n]);
        let mut pos = 0;
        while buf.len() - pos >= 5 {
            let tag = buf[pos];
            let len = u32::from_be_bytes(buf[pos + 1..pos + 5].try_into().unwrap()) as usize;
            if buf.len() - pos < 1 + len {
                break;
            }
            let body = &buf[pos + 5..pos + 1 + len];
            match tag {
                b'D' => {
                    rows += 1;
                    let l = i32::from_be_bytes(body[2..6].try_into().unwrap()) as usize;
                    let v: i64 = std::str::from_utf8(&body[6..6 + l])
                        .unwrap()
                        .parse()
                        .unwrap();
                    sum += v;
                    let rest = &body[6 + l..];
                    let l2 = i32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                    assert_eq!(&rest[4..4 + 20], &[b'y'; 20][..]);
                    assert_eq!(&rest[4 + 20..4 + l2], v.to_string().as_bytes());
                }
                b'E' => panic!(
                    "error after {rows} rows: {:?}",
                    wire::Msg {
                        tag,
                        body: body.to_vec()
                    }
                    .field(b'M')
                ),
                _ => tags_seen.push(tag as char),
            }
            pos += 1 + len;
            if tag == b'Z' {
                assert_eq!(pos, buf.len(), "bytes after ReadyForQuery");
                break 'read;
            }
        }
        buf.drain(..pos);
        if !stalled && bytes > STALL_AFTER {
            stalled = true;
            tokio::time::sleep(STALL).await;
        }
    }
    let elapsed = t0.elapsed();
    let peak = sampler.peak();
    eprintln!(
        "SELECT: {rows} rows, {:.1} MB in {:.1} s; pgtier RSS {} KiB before, peak {} KiB (+{} KiB)",
        bytes as f64 / 1e6,
        elapsed.as_secs_f64(),
        base,
        peak,
        peak.saturating_sub(base)
    );
    assert_eq!(tags_seen, "TCZ");
    assert_eq!(rows, BIG);
    assert_eq!(sum, BIG * (BIG + 1) / 2);
    assert!(bytes > 50_000_000, "only {bytes} bytes");
    assert!(
        peak.saturating_sub(base) < RSS_GROWTH_LIMIT_KIB,
        "pgtier RSS grew from {base} KiB to {peak} KiB while streaming"
    );
    let r = send(&mut a, &[wire::query("SELECT 'still here'")]).await;
    assert_eq!(first_value(&r), "still here");
}
