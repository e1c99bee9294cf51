//! The checkout / return / stats suite on the embedded SQLite backend (no server needed).

mod common;

use std::time::Duration;

use common::{Recorded, Recorder};
use pool_core::sqlite::rusqlite;
use pool_core::{BackendKind, CheckoutError, PoolBuilder, PoolConfig, RunError, SqlitePool};

fn memory_pool(base: u32, overflow: u32) -> SqlitePool {
    PoolBuilder::sqlite()
        .database_url("sqlite::memory:")
        .name("mem-sqlite")
        .base_size(base)
        .max_overflow(overflow)
        .checkout_timeout(Duration::from_millis(300))
        .build_sqlite()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_return_and_stats_are_exact() {
    let recorder = Recorder::new();
    let pool = PoolBuilder::sqlite()
        .database_url("sqlite::memory:")
        .base_size(1)
        .max_overflow(2)
        .observer(recorder.clone())
        .build_sqlite()
        .unwrap();
    pool.warm_up().await.unwrap();
    for _ in 0..7 {
        let mut conn = pool.get().await.unwrap();
        let one: i64 = conn
            .call(|c| c.query_row("select 1", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(one, 1);
    }
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    let c = pool.get().await.unwrap();
    let s = pool.stats();
    assert_eq!((s.size, s.in_use, s.idle, s.max_size), (3, 3, 0, 3));
    assert_eq!(s.backend, "sqlite");
    drop((a, b, c));
    let s = pool.stats();
    assert_eq!(
        (s.size, s.in_use, s.idle),
        (3, 0, 3),
        "overflow lingers until idle"
    );
    assert_eq!(s.connections_closed.total(), 0);
    assert_eq!(s.checkouts_direct + s.checkouts_waited, 10);
    assert_eq!(s.connections_created, 3);
    assert_eq!(s.pending, 0);
    assert_eq!(recorder.count(|e| matches!(e, Recorded::Checkout(_))), 10);
    assert_eq!(recorder.count(|e| *e == Recorded::Returned), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_share_one_in_memory_database_across_recycling() {
    let pool = memory_pool(1, 2);
    let mut writer = pool.get().await.unwrap();
    writer
        .call(|c| c.execute_batch("create table t (v text); insert into t values ('kept');"))
        .await
        .unwrap();
    let mut reader = pool.get().await.unwrap();
    let v: String = reader
        .call(|c| c.query_row("select v from t", [], |r| r.get(0)))
        .await
        .unwrap();
    assert_eq!(v, "kept");
    drop((writer, reader));
    pool.force_recycle();
    let mut fresh = pool.get().await.unwrap();
    let n: i64 = fresh
        .call(|c| c.query_row("select count(*) from t", [], |r| r.get(0)))
        .await
        .unwrap();
    assert_eq!(n, 1, "the data outlives every pooled connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_database_works_and_an_exhausted_pool_times_out() {
    let dir = std::env::temp_dir().join(format!("pool-core-sqlite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.db");
    let pool = PoolBuilder::sqlite()
        .database_url(&format!("sqlite:{}", path.display()))
        .checkout_timeout(Duration::from_millis(200))
        .build_sqlite()
        .unwrap();
    assert_eq!(pool.config().backend(), Some(BackendKind::Sqlite));
    let mut conn = pool.get().await.unwrap();
    let mode: String = conn
        .call(|c| c.query_row("pragma journal_mode", [], |r| r.get(0)))
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let err = pool.get().await.unwrap_err();
    assert!(matches!(err, CheckoutError::Timeout { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("(total=1, active=1, idle=0, waiting=1, max=1)"),
        "{err}"
    );
    drop(conn);
    assert_eq!(pool.stats().checkout_timeouts, 1);
    drop(pool);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_statement_errors_without_counting_them_as_failures() {
    let pool = memory_pool(1, 0);
    let err = pool
        .run(|conn| Box::pin(conn.call(|c| c.execute_batch("select * from missing"))))
        .await
        .unwrap_err();
    let RunError::Operation(e) = err else {
        panic!("{err}")
    };
    assert!(e.to_string().contains("no such table"), "{e}");
    assert!(!pool.is_connection_error(&e));
    assert_eq!(pool.stats().breaker.consecutive_failures, 0);
    let cant_open = rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
        None,
    );
    assert!(pool.is_connection_error(&cant_open));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_profile_comes_from_the_environment_without_a_url() {
    let config = PoolConfig::from_env_with(|_| None).unwrap();
    assert_eq!(config, PoolConfig::sqlite());
    assert_eq!((config.base_size, config.max_overflow), (1, 0));
}
