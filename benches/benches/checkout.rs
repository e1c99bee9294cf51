//! Checkout + return: bare bb8 `get_owned` against pool-core `get`, measured side by side.
//!
//! Both pools hold 16 trivial in-memory connections; pool-core runs with its breaker closed,
//! stats on and a no-op observer attached. Each measured loop runs inside a spawned task on a
//! 2-worker runtime. `c64` runs 64 tasks of 1000 checkouts each; the time is per checkout.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use pool_benches::{bb8_pool, criterion, pool, runtime, Unit, CONNECTIONS};
use pool_core::{PoolEvent, PoolObserver};

#[derive(Debug)]
struct Noop;

impl PoolObserver for Noop {
    fn on_event(&self, _: &str, event: &PoolEvent<'_>) {
        black_box(event);
    }
}

const TASKS: u64 = 64;
const PER_TASK: u64 = 1000;

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let bb8 = rt.block_on(bb8_pool());
    // For the breakdown: bb8 as pool-core configures it (no checkout test, no bb8 lifetime).
    let bb8_lean = rt.block_on(async {
        bb8::Pool::builder()
            .max_size(CONNECTIONS)
            .max_lifetime(None)
            .idle_timeout(None)
            .test_on_check_out(false)
            .build(Unit)
            .await
            .unwrap()
    });
    let core = rt.block_on(pool(Some(Arc::new(Noop))));
    let plain = rt.block_on(pool(None));

    // One task: checkout, touch, return, `iters` times, inside a spawned task.
    macro_rules! seq {
        ($group:ident, $name:literal, $pool:expr, |$p:ident| $get:expr) => {
            $group.bench_function($name, |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let $p = $pool.clone();
                    async move {
                        tokio::spawn(async move {
                            let start = Instant::now();
                            for _ in 0..iters {
                                let conn = $get.await.unwrap();
                                black_box(&conn);
                                drop(conn);
                            }
                            start.elapsed()
                        })
                        .await
                        .unwrap()
                    }
                })
            });
        };
    }
    // 64 tasks of 1000 checkouts each; the time is per checkout.
    macro_rules! c64 {
        ($group:ident, $name:literal, $pool:expr, |$p:ident| $get:expr) => {
            $group.bench_function($name, |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let pool = $pool.clone();
                    async move {
                        let start = Instant::now();
                        for _ in 0..iters {
                            let tasks: Vec<_> = (0..TASKS)
                                .map(|_| {
                                    let $p = pool.clone();
                                    tokio::spawn(async move {
                                        for _ in 0..PER_TASK {
                                            black_box($get.await.unwrap());
                                        }
                                    })
                                })
                                .collect();
                            for t in tasks {
                                t.await.unwrap();
                            }
                        }
                        start.elapsed() / (TASKS * PER_TASK) as u32
                    }
                })
            });
        };
    }

    let mut group = c.benchmark_group("checkout_seq");
    seq!(group, "bb8_get_owned", bb8, |pool| pool.get_owned());
    seq!(group, "bb8_as_configured", bb8_lean, |pool| pool
        .get_owned());
    seq!(group, "pool_core_get", core, |pool| pool.get());
    // For the breakdown: the same pool without any observer.
    seq!(group, "pool_core_get_no_observer", plain, |pool| pool.get());
    group.finish();

    let mut group = c.benchmark_group("checkout_c64");
    group.sample_size(20);
    c64!(group, "bb8_get_owned", bb8, |pool| pool.get_owned());
    c64!(group, "pool_core_get", core, |pool| pool.get());
    group.finish();
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = bench
}
criterion_main!(benches);
