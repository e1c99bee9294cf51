//! The operation timeout on the layer's path: a handler whose connection stays lent out past
//! the breaker's operation timeout (a query that never answers) is cancelled, answered 504
//! (DEADLINE_EXCEEDED for gRPC), and its connection closed and counted as a breaker failure.
//! Paused Tokio time and the in-memory pool; a real hung query runs in `http.rs`.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::Mem;
use http::{Request, Response, StatusCode};
use pool_core::{BreakerConfig, Pool, PoolBuilder};
use pool_tower::{Db, PoolLayer};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

const LIMIT: Duration = Duration::from_secs(2);

fn pool() -> Pool<Mem> {
    PoolBuilder::new()
        .name("mem")
        .base_size(1)
        .max_overflow(1)
        .checkout_timeout(Duration::from_secs(5))
        .health_interval(Duration::from_secs(3600))
        .breaker(BreakerConfig {
            operation_timeout: LIMIT,
            ..BreakerConfig::default()
        })
        .build(Mem::default())
        .unwrap()
}

/// Set when the handler's future is dropped before it finished.
struct Cancelled(Arc<AtomicBool>);

impl Drop for Cancelled {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// A handler that takes the connection and then waits `hold` with it lent out, and `after`
/// with it given back.
async fn handler(
    req: Request<()>,
    hold: Duration,
    after: Duration,
    cancelled: Arc<AtomicBool>,
) -> Result<Response<String>, Infallible> {
    let guard = Cancelled(cancelled);
    let db = req.extensions().get::<Db<Mem>>().cloned().unwrap();
    {
        let conn = db.conn().await.unwrap();
        // An operation in flight: the connection is lent.
        tokio::time::sleep(hold).await;
        drop(conn);
    }
    tokio::time::sleep(after).await;
    std::mem::forget(guard);
    Ok(Response::new("done".to_owned()))
}

async fn request(
    layer: PoolLayer<Mem>,
    hold: Duration,
    after: Duration,
) -> (Response<String>, bool) {
    let cancelled = Arc::new(AtomicBool::new(false));
    let flag = cancelled.clone();
    let service = layer.layer(service_fn(move |req| {
        handler(req, hold, after, flag.clone())
    }));
    let response = service.oneshot(Request::new(())).await.unwrap();
    (response, cancelled.load(SeqCst))
}

#[tokio::test(start_paused = true)]
async fn a_lent_connection_past_the_operation_timeout_cancels_the_request_with_504() {
    for eager in [false, true] {
        let pool = pool();
        let layer = PoolLayer::new(pool.clone());
        let layer = if eager { layer.eager() } else { layer };
        pool.warm_up().await.unwrap();
        let start = Instant::now();
        let (response, cancelled) = request(layer, Duration::from_secs(3600), Duration::ZERO).await;
        assert_eq!(
            start.elapsed(),
            LIMIT,
            "answered when the operation timeout ran out"
        );
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let body: serde_json::Value = serde_json::from_str(response.body()).unwrap();
        assert_eq!(body["detail"], "the database did not answer in time");
        assert!(cancelled, "the handler was dropped, its operation with it");
        let s = pool.stats();
        assert_eq!(s.in_use, 0);
        assert_eq!(s.connections_closed.broken, 1, "the connection was closed");
        assert_eq!(
            s.breaker.consecutive_failures, 1,
            "and counted as a failure"
        );
        assert_eq!(
            s.last_error.as_deref(),
            Some("operation timed out after 2000ms")
        );
    }
}

#[tokio::test(start_paused = true)]
async fn time_spent_without_the_connection_lent_does_not_count() {
    let pool = pool();
    pool.warm_up().await.unwrap();
    // 1.5 s with the connection, then 100 s of other work: no timeout.
    let (response, cancelled) = request(
        PoolLayer::new(pool.clone()),
        Duration::from_millis(1500),
        Duration::from_secs(100),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!cancelled);
    let s = pool.stats();
    assert_eq!(s.connections_closed.total(), 0);
    assert_eq!(s.breaker.consecutive_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn each_lend_gets_the_whole_operation_timeout() {
    let pool = pool();
    pool.warm_up().await.unwrap();
    let service = PoolLayer::new(pool.clone()).layer(service_fn(|req: Request<()>| async move {
        let db = req.extensions().get::<Db<Mem>>().cloned().unwrap();
        // Three operations of 1.5 s each: 4.5 s in all, none past 2 s.
        for _ in 0..3 {
            let _conn = db.conn().await.unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let response = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(pool.stats().connections_closed.total(), 0);
}

#[tokio::test(start_paused = true)]
async fn grpc_gets_deadline_exceeded() {
    let pool = pool();
    pool.warm_up().await.unwrap();
    let cancelled = Arc::new(AtomicBool::new(false));
    let flag = cancelled.clone();
    let service = PoolLayer::new(pool.clone())
        .grpc()
        .layer(service_fn(move |req| {
            handler(req, Duration::from_secs(3600), Duration::ZERO, flag.clone())
        }));
    let response = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "4");
    assert!(cancelled.load(SeqCst));
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_mid_operation_closes_its_connection_and_one_dropped_between_does_not() {
    for (lent, eager) in [(true, false), (false, false), (true, true), (false, true)] {
        let pool = pool();
        pool.warm_up().await.unwrap();
        let layer = PoolLayer::new(pool.clone());
        let layer = if eager { layer.eager() } else { layer };
        let service = layer.layer(service_fn(move |req: Request<()>| async move {
            let db = req.extensions().get::<Db<Mem>>().cloned().unwrap();
            let conn = db.conn().await.unwrap();
            if !lent {
                drop(conn);
            }
            // Mid-query (or, with the connection given back, doing something else).
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
        // The client hangs up after 1 s, before the operation timeout.
        let hung_up =
            tokio::time::timeout(Duration::from_secs(1), service.oneshot(Request::new(()))).await;
        assert!(hung_up.is_err());
        let s = pool.stats();
        assert_eq!(s.in_use, 0);
        let closed = u64::from(lent);
        assert_eq!(
            s.connections_closed.broken, closed,
            "lent: {lent}, eager: {eager}"
        );
        assert_eq!(
            s.breaker.consecutive_failures, 0,
            "a hang-up is no database failure"
        );
    }
}
