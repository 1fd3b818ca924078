//! `pgtier::timers` on a runtime without tokio's time driver. Its own test binary: the timers
//! are per process and bound to the runtime that started them.

use std::time::Duration;

use pgtier::timers;
use tokio::time::Instant;

/// Once started: sleeps, timeouts, resets and intervals fire in deadline order, and a dropped
/// or fired sleep leaves the wheel.
#[test]
fn timers_fire_on_a_runtime_without_a_time_driver() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    runtime.block_on(async {
        timers::start().unwrap();
        let started = Instant::now();
        timers::sleep(Duration::from_millis(20)).await;
        assert!(started.elapsed() >= Duration::from_millis(20));

        let late = timers::timeout(Duration::from_millis(10), std::future::pending::<()>());
        assert_eq!(late.await, Err(timers::Elapsed));
        let on_time = timers::timeout(Duration::from_secs(5), async { 7 });
        assert_eq!(on_time.await, Ok(7));

        // A later timer armed first, then an earlier one: the earlier fires first.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (ms, name) in [(60u64, "late"), (15, "early")] {
            let tx = tx.clone();
            tokio::spawn(async move {
                timers::sleep(Duration::from_millis(ms)).await;
                let _ = tx.send(name);
            });
        }
        assert_eq!(rx.recv().await, Some("early"));
        assert_eq!(rx.recv().await, Some("late"));

        // A dropped sleep is no longer pending; a reset one waits again.
        let mut far = Box::pin(timers::sleep(Duration::from_secs(60)));
        assert!(futures_poll_once(far.as_mut()).await.is_pending());
        assert_eq!(timers::pending(), 1);
        drop(far);
        assert_eq!(timers::pending(), 0);
        let mut s = timers::sleep(Duration::from_millis(1));
        (&mut s).await;
        s.reset(Instant::now() + Duration::from_millis(10));
        let before = Instant::now();
        (&mut s).await;
        assert!(before.elapsed() >= Duration::from_millis(10));
        drop(s);
        assert_eq!(timers::pending(), 0);

        let mut tick = timers::interval(Duration::from_millis(5));
        let first = tick.tick().await;
        tick.tick().await;
        let third = tick.tick().await;
        assert!(third - first >= Duration::from_millis(10));

        // Many timers at once, dropped in any order, leave nothing behind.
        let mut many: Vec<_> = (0..1000)
            .map(|i| Box::pin(timers::sleep(Duration::from_millis(1000 + i % 7))))
            .collect();
        for s in &mut many {
            assert!(futures_poll_once(s.as_mut()).await.is_pending());
        }
        assert_eq!(timers::pending(), 1000);
        many.reverse();
        drop(many);
        assert_eq!(timers::pending(), 0);
    });
}

/// Polls `f` once with the task's waker.
async fn futures_poll_once<F: std::future::Future>(
    f: std::pin::Pin<&mut F>,
) -> std::task::Poll<F::Output> {
    let mut f = Some(f);
    std::future::poll_fn(|cx| std::task::Poll::Ready(f.take().unwrap().poll(cx))).await
}

/// A timeout holds its future once, beside a small sleep: a client's task pays for the timeout
/// around its login whatever state it is in.
#[test]
fn a_timeout_costs_its_future_and_a_sleep() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let big = async {
            let kept = [7u8; 1024];
            tokio::task::yield_now().await;
            kept[1000]
        };
        let alone = std::mem::size_of_val(&big);
        let bounded = timers::timeout(Duration::from_secs(5), big);
        let sleep = std::mem::size_of::<timers::Sleep>();
        assert!(sleep <= 64, "a sleep takes {sleep} bytes");
        assert!(
            std::mem::size_of_val(&bounded) <= alone + sleep,
            "{} bytes around a future of {alone}",
            std::mem::size_of_val(&bounded)
        );
        // Not polled: the other test counts the wheel's pending timers.
        drop(bounded);
    });
}
