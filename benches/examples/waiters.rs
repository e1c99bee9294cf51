//! Ten thousand checkouts against a pool of ten: memory per waiting checkout, whether the
//! queue is first come first served, and how late checkout timeouts fire.
//!
//! `cargo run --release -p pool-benches --example waiters [-- WAITERS [POOL [TIMEOUT_MS]]]`
//! (defaults 10000, 10, 200). Two phases, on a 2-worker runtime:
//!
//! 1. Every connection is held while the waiters queue one by one (each is counted pending
//!    before the next starts); the resident memory grown meanwhile, over the number of
//!    waiters, is the memory per waiter (the task, its futures, the queue entries). Then the
//!    connections are let go; each waiter holds its connection for a moment (a few yields).
//!    The report says how many waiters were served before one that queued earlier, at most
//!    and in all.
//! 2. Every connection is held for good, and the waiters, started together, each time out:
//!    how much later than the checkout timeout each learned it (p50, p99, max).
#![allow(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_benches::Unit;
use pool_core::Pool;

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn new_pool(size: u32, timeout: Duration) -> Pool<Unit> {
    Pool::builder()
        .name("waiters")
        .base_size(size)
        .max_overflow(0)
        .checkout_timeout(timeout)
        .health_interval(Duration::from_secs(3600))
        .build(Unit)
        .unwrap()
}

/// For each waiter in queue order, how many that queued after it were served before it:
/// `served[i]` is the service rank of the waiter that queued `i`-th.
fn overtaken(served: &[u64]) -> (u64, u64) {
    // A Fenwick tree over service ranks, filled from the last to queue to the first: when
    // waiter i is reached it holds exactly the waiters that queued after it.
    let n = served.len();
    let mut tree = vec![0u64; n + 1];
    let (mut max, mut total) = (0, 0);
    for &rank in served.iter().rev() {
        let mut i = rank as usize; // ranks are 0-based: count those below `rank`
        let mut before = 0;
        while i > 0 {
            before += tree[i];
            i &= i - 1;
        }
        max = max.max(before);
        total += before;
        let mut i = rank as usize + 1;
        while i <= n {
            tree[i] += 1;
            i += i & i.wrapping_neg();
        }
    }
    (max, total)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let mut next = |default: u64, what: &str| match args.next() {
        None => default,
        Some(Ok(v)) if v > 0 => v,
        Some(_) => {
            eprintln!(
                "usage: waiters [WAITERS [POOL [TIMEOUT_MS]]]: {what} must be a positive number"
            );
            std::process::exit(2);
        }
    };
    let waiters = next(10_000, "WAITERS");
    let size = u32::try_from(next(10, "POOL")).unwrap_or(u32::MAX);
    let timeout = Duration::from_millis(next(200, "TIMEOUT_MS"));
    assert!(
        !pool_core::uses_test_clock(),
        "pool-core was built with its test-util feature; run with -p pool-benches"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Phase 1: queue order and memory.
        let pool = new_pool(size, Duration::from_secs(600));
        pool.warm_up().await.unwrap();
        let mut held = Vec::new();
        for _ in 0..size {
            held.push(pool.get().await.unwrap());
        }
        let served = Arc::new(AtomicU64::new(0));
        let before = resident_kib();
        let mut tasks = Vec::with_capacity(waiters as usize);
        for i in 0..waiters {
            let (waiter, served) = (pool.clone(), served.clone());
            tasks.push(tokio::spawn(async move {
                let conn = waiter.get().await.unwrap();
                let rank = served.fetch_add(1, Relaxed);
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
                drop(conn);
                rank
            }));
            // Queued before the next one starts (a bounded wait: it is running already).
            let deadline = Instant::now() + Duration::from_secs(10);
            while pool.stats().pending < i + 1 {
                assert!(Instant::now() < deadline, "waiter {i} never queued");
                tokio::task::yield_now().await;
            }
        }
        let grown = resident_kib().saturating_sub(before);
        drop(held);
        let mut ranks = Vec::with_capacity(tasks.len());
        for task in tasks {
            ranks.push(task.await.unwrap());
        }
        let (max, total) = overtaken(&ranks);
        println!("{waiters} waiters on a pool of {size}");
        println!(
            "  memory per waiter      {:.0} bytes (resident memory grew {grown} KiB)",
            grown as f64 * 1024.0 / waiters as f64
        );
        println!(
            "  first come first served: at most {max} served before one that queued earlier; {total} such overtakings in all"
        );

        // Phase 2: timeouts, all started together.
        let pool = new_pool(size, timeout);
        pool.warm_up().await.unwrap();
        let mut held = Vec::new();
        for _ in 0..size {
            held.push(pool.get().await.unwrap());
        }
        let tasks: Vec<_> = (0..waiters)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let start = Instant::now();
                    let result = pool.get().await;
                    (result.map(drop).is_err(), start.elapsed())
                })
            })
            .collect();
        let mut late = Vec::with_capacity(tasks.len());
        for task in tasks {
            let (timed_out, took) = task.await.unwrap();
            assert!(timed_out, "a checkout got a connection that was held for good");
            late.push(took.saturating_sub(timeout));
        }
        drop(held);
        late.sort();
        println!(
            "  timeouts ({} ms) late by  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            timeout.as_millis(),
            percentile(&late, 0.5).as_secs_f64() * 1e3,
            percentile(&late, 0.99).as_secs_f64() * 1e3,
            late.last().unwrap().as_secs_f64() * 1e3,
        );
    });
}
