//! Ten thousand checkouts against a pool of ten: memory per waiting checkout, whether the
//! queue is first come first served, and how late checkout timeouts fire; bare bb8 measured
//! the same way in the same run, as the baseline.
//!
//! `cargo run --release -p pool-benches --example waiters [-- WAITERS [POOL [TIMEOUT_MS]]]`
//! (defaults 10000, 10, 200). Two phases:
//!
//! 1. Every connection is held while the waiters queue one by one (each has made its first
//!    poll, and so has queued, before the next starts); the resident memory grown
//!    meanwhile, over the number of waiters, is the memory per waiter (the task, its
//!    futures, the queue entries). Then the connections are let go; each waiter holds its
//!    connection for a moment (a few yields) and then checks out once more, as a client's
//!    next request would, behind everyone already queued. The report says how many
//!    checkouts were served before one that arrived earlier, at most and in all. "Served"
//!    is when the waiter's task runs with its connection, so on the 2-worker runtime the
//!    order also has the scheduler's in it (a woken task can wait behind others, or be
//!    stolen by the other worker); on a single-threaded runtime woken tasks run in the
//!    order they were woken, which is the order the pool handed out its connections. Each
//!    case runs in a process of its own.
//! 2. Every connection is held for good, and the waiters, started together, each time out:
//!    how much later than the checkout timeout each learned it (p50, p99, max).
#![allow(missing_docs)]

use std::future::Future;
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

/// Phase 1 with `get` as the checkout: the memory per waiter (bytes) and the overtakings
/// (most, total). Each waiter, once served and done, checks out once more: that second
/// checkout arrives after every first one, as a client's next request does, and a pool that
/// lets an arriving checkout take a connection meant for one already queued lets it overtake.
async fn queue_order<C, F>(
    waiters: u64,
    size: u32,
    get: impl Fn() -> F + Clone + Send + 'static,
) -> (f64, u64, u64)
where
    C: Send + 'static,
    F: Future<Output = C> + Send + 'static,
{
    let mut held = Vec::new();
    for _ in 0..size {
        held.push(get().await);
    }
    // Each checkout's place in arrival order, counted in the same poll that queues it, and
    // in service order.
    let arrived = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let before = resident_kib();
    let mut tasks = Vec::with_capacity(waiters as usize);
    for i in 0..waiters {
        let (get, arrivals, services) = (get.clone(), arrived.clone(), served.clone());
        let checkout = move || {
            let (get, arrivals, services) = (get.clone(), arrivals.clone(), services.clone());
            async move {
                let place = arrivals.fetch_add(1, Relaxed);
                let conn = get().await;
                let rank = services.fetch_add(1, Relaxed);
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
                drop(conn);
                (place, rank)
            }
        };
        tasks.push(tokio::spawn(async move {
            let first = checkout().await;
            (first, checkout().await)
        }));
        // Queued before the next one starts (a bounded wait: it is running already).
        let deadline = Instant::now() + Duration::from_secs(10);
        while arrived.load(Relaxed) < i + 1 {
            assert!(Instant::now() < deadline, "waiter {i} never queued");
            tokio::task::yield_now().await;
        }
    }
    let grown = resident_kib().saturating_sub(before);
    drop(held);
    let mut ranks = vec![0; 2 * waiters as usize];
    for task in tasks {
        for (place, rank) in <[_; 2]>::from(task.await.unwrap()) {
            ranks[place as usize] = rank;
        }
    }
    let (max, total) = overtaken(&ranks);
    (grown as f64 * 1024.0 / waiters as f64, max, total)
}

fn new_bb8(size: u32, timeout: Duration) -> bb8::Pool<Unit> {
    bb8::Pool::builder()
        .max_size(size)
        .connection_timeout(timeout)
        .build_unchecked(Unit)
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
    // Phase 1, each pool on each runtime in a process of its own, so that no measurement
    // runs on memory an earlier one freed.
    if let Ok(case) = std::env::var("WAITERS_CASE") {
        let (pool, runtime) = case.split_once(',').unwrap_or_default();
        let rt = match runtime {
            "1 thread" => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            _ => pool_benches::runtime(),
        };
        let long = Duration::from_secs(600);
        let (memory, max, total) = rt.block_on(async {
            if pool == "bb8" {
                let bb8 = new_bb8(size, long);
                queue_order(waiters, size, move || {
                    let pool = bb8.clone();
                    async move { pool.get_owned().await.unwrap() }
                })
                .await
            } else {
                let ours = new_pool(size, long);
                ours.warm_up().await.unwrap();
                queue_order(waiters, size, move || {
                    let pool = ours.clone();
                    async move { pool.get().await.unwrap() }
                })
                .await
            }
        });
        println!("{memory} {max} {total}");
        return;
    }
    println!("{waiters} waiters on a pool of {size}");
    println!(
        "  {:<24}{:>11}{:>16}{:>13}",
        "", "per waiter", "most overtaken", "overtakings"
    );
    let exe = std::env::current_exe().unwrap();
    for runtime in ["2 workers", "1 thread"] {
        for pool in ["pool-core", "bb8"] {
            let out = std::process::Command::new(&exe)
                .args([waiters, u64::from(size), timeout.as_millis() as u64].map(|a| a.to_string()))
                .env("WAITERS_CASE", format!("{pool},{runtime}"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{pool}, {runtime}: {out:?}");
            let text = String::from_utf8_lossy(&out.stdout);
            let fields: Vec<f64> = text
                .split_whitespace()
                .map(|f| f.parse().unwrap())
                .collect();
            println!(
                "  {:<24}{:>9.0} B{:>16}{:>13}",
                format!("{pool}, {runtime}"),
                fields[0],
                fields[1],
                fields[2]
            );
        }
    }

    // Phase 2: timeouts, all started together.
    pool_benches::runtime().block_on(async {
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
            assert!(
                timed_out,
                "a checkout got a connection that was held for good"
            );
            late.push(took.saturating_sub(timeout));
        }
        drop(held);
        late.sort();
        println!(
            "  timeouts ({} ms, 2 workers) late by  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            timeout.as_millis(),
            percentile(&late, 0.5).as_secs_f64() * 1e3,
            percentile(&late, 0.99).as_secs_f64() * 1e3,
            late.last().unwrap().as_secs_f64() * 1e3,
        );
    });
}
