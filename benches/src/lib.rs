//! What the benchmarks in `benches/` share: the trivial connection manager, the runtime, the
//! pools and criterion's settings. Run them with `cargo bench -p pool-benches`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use pool_core::{ManageConnection, Pool, PoolObserver};

/// Connections every pool in the benchmarks holds.
pub const CONNECTIONS: u32 = 16;

/// A connection manager whose connections are numbers: what is measured is the pool.
#[derive(Debug, Clone, Copy)]
pub struct Unit;

impl ManageConnection for Unit {
    type Connection = u64;
    type Error = Infallible;

    async fn connect(&self) -> Result<u64, Infallible> {
        Ok(0)
    }

    async fn is_valid(&self, _: &mut u64) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _: &mut u64) -> bool {
        false
    }
}

/// A 2-worker runtime, like the machine the numbers are quoted from. Refuses to start if
/// pool-core was built with its `test-util` clock, which would be measured instead.
pub fn runtime() -> tokio::runtime::Runtime {
    assert!(
        !pool_core::uses_test_clock(),
        "pool-core was built with its test-util feature; run the benchmarks with -p pool-benches"
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Bare bb8 with its defaults and [`CONNECTIONS`] connections.
pub async fn bb8_pool() -> bb8::Pool<Unit> {
    bb8::Pool::builder()
        .max_size(CONNECTIONS)
        .build(Unit)
        .await
        .unwrap()
}

/// A pool-core pool of [`CONNECTIONS`] open connections (no overflow, the monitor out of the
/// way), with `observer` attached if given.
pub async fn pool(observer: Option<Arc<dyn PoolObserver>>) -> Pool<Unit> {
    let mut builder = Pool::builder()
        .base_size(CONNECTIONS)
        .max_overflow(0)
        .health_interval(Duration::from_secs(3600));
    if let Some(observer) = observer {
        builder = builder.observer(observer);
    }
    let pool = builder.build(Unit).unwrap();
    pool.warm_up().await.unwrap();
    pool
}

/// Criterion's settings for every benchmark here.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}
