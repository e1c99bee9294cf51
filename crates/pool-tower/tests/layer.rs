//! The layer's plumbing with tower-test's mock service and an in-memory pool.

mod common;

use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::Mem;
use http::{Request, Response, StatusCode};
use pool_core::{Pool, PoolBuilder};
use pool_tower::{Db, DbError, PoolLayer};
use tower::Layer;
use tower_test::mock;

fn pool() -> Pool<Mem> {
    PoolBuilder::new()
        .name("mem")
        .base_size(1)
        .max_overflow(0)
        .checkout_timeout(Duration::from_millis(50))
        .health_interval(Duration::from_secs(3600))
        .build(Mem::default())
        .unwrap()
}

type Mock = mock::Mock<Request<()>, Response<String>>;

type Svc = mock::Spawn<pool_tower::PoolService<Mock, Mem, pool_tower::JsonRejection>>;
type MockHandle = mock::Handle<Request<()>, Response<String>>;

fn service(layer: PoolLayer<Mem>) -> (Svc, MockHandle) {
    let (inner, handle) = mock::pair::<Request<()>, Response<String>>();
    (mock::Spawn::new(layer.layer(inner)), handle)
}

type Pending = <pool_tower::PoolService<Mock, Mem, pool_tower::JsonRejection> as tower::Service<
    Request<()>,
>>::Future;

/// One request in flight through a lazy layer over `pool`: the service and the mock's handle
/// (kept alive for the test), the response future, the request as the inner service received
/// it, and the inner service's reply channel.
async fn in_flight(
    pool: &Pool<Mem>,
) -> (
    Svc,
    MockHandle,
    Pending,
    Request<()>,
    mock::SendResponse<Response<String>>,
) {
    let (mut svc, mut handle) = service(PoolLayer::new(pool.clone()));
    handle.allow(1);
    assert!(svc.poll_ready().is_ready());
    let response = svc.call(Request::new(()));
    let (request, send) = handle.next_request().await.unwrap();
    (svc, handle, response, request, send)
}

#[tokio::test]
async fn poll_ready_delegates_to_the_inner_service() {
    let (mut svc, mut handle) = service(PoolLayer::new(pool()));
    handle.allow(0);
    assert!(svc.poll_ready().is_pending());
    handle.allow(1);
    assert!(svc.poll_ready().is_ready());
}

#[tokio::test]
async fn a_route_that_never_touches_the_database_holds_nothing() {
    let pool = pool();
    pool.warm_up().await.unwrap();
    let (_svc, _handle, response, request, send) = in_flight(&pool).await;
    assert!(
        request.extensions().get::<Db<Mem>>().is_some(),
        "the handle is in the extensions"
    );
    assert_eq!(pool.stats().in_use, 0, "lazy: nothing checked out");
    send.send_response(Response::new("ok".to_owned()));
    assert_eq!(response.await.unwrap().body(), "ok");
    let s = pool.stats();
    assert_eq!((s.in_use, s.checkouts_direct + s.checkouts_waited), (0, 0));
}

#[tokio::test]
async fn the_connection_is_back_when_the_response_completes_despite_a_kept_clone() {
    let pool = pool();
    let (_svc, _handle, response, request, send) = in_flight(&pool).await;
    let kept = request.extensions().get::<Db<Mem>>().unwrap().clone();
    {
        let conn = kept.conn().await.unwrap();
        assert!(*conn >= 1);
    }
    drop(request);
    assert_eq!(
        pool.stats().in_use,
        1,
        "the kept clone holds the connection"
    );
    send.send_response(Response::new("done".to_owned()));
    response.await.unwrap();
    assert_eq!(
        pool.stats().in_use,
        0,
        "returned when the response completed"
    );
    assert!(matches!(kept.conn().await, Err(DbError::RequestFinished)));
    assert_eq!(pool.stats().in_use, 0);
}

#[tokio::test]
async fn dropping_the_last_handle_returns_the_connection_before_the_response() {
    let pool = pool();
    let (_svc, _handle, response, mut request, send) = in_flight(&pool).await;
    let db = request.extensions_mut().remove::<Db<Mem>>().unwrap();
    drop(db.conn().await.unwrap());
    assert_eq!(pool.stats().in_use, 1);
    drop(db);
    assert_eq!(
        pool.stats().in_use,
        0,
        "returned when the handler let go of it"
    );
    send.send_response(Response::new(String::new()));
    response.await.unwrap();
}

#[tokio::test]
async fn eager_mode_checks_out_first_and_answers_503_when_it_cannot() {
    let pool = pool();
    let (mut svc, mut handle) = service(PoolLayer::new(pool.clone()).eager());
    handle.allow(1);
    assert!(svc.poll_ready().is_ready());
    let response = tokio::spawn(svc.call(Request::new(())));
    let (_request, send) = handle.next_request().await.unwrap();
    assert_eq!(
        pool.stats().in_use,
        1,
        "checked out before the inner service ran"
    );
    send.send_response(Response::new("ok".to_owned()));
    assert_eq!(response.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(pool.stats().in_use, 0);

    let _held = pool.get().await.unwrap();
    handle.allow(1);
    assert!(svc.poll_ready().is_ready());
    let response = svc.call(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_str(response.body()).unwrap();
    assert_eq!(
        body["detail"],
        "no database connection became available in time"
    );
    assert_eq!(pool.stats().checkout_timeouts, 1);
}

#[tokio::test]
async fn the_rejection_is_replaceable() {
    let pool = pool();
    let _held = pool.get().await.unwrap();
    let layer = PoolLayer::new(pool.clone())
        .eager()
        .rejection(|e: &pool_core::CheckoutError| {
            let mut r = Response::new(format!("busy: timeout={}", e.is_timeout()));
            *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            r
        });
    let (inner, mut handle) = mock::pair::<Request<()>, Response<String>>();
    let mut svc = mock::Spawn::new(layer.layer(inner));
    handle.allow(1);
    assert!(svc.poll_ready().is_ready());
    let response = svc.call(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.body(), "busy: timeout=true");
}

#[tokio::test]
async fn a_second_conn_on_the_same_request_waits_for_the_first_and_gets_the_same_connection() {
    let pool = pool();
    let (_svc, _handle, response, request, send) = in_flight(&pool).await;
    let db = request.extensions().get::<Db<Mem>>().unwrap().clone();
    let other = db.clone();
    let first = db.conn().await.unwrap();
    let id = *first;
    let waiting = tokio::spawn(async move { *other.conn().await.unwrap() });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "waits while the first is held");
    drop(first);
    // Bounded: a missed wake-up fails here instead of hanging the suite.
    let second = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting conn() is woken when the first is dropped");
    assert_eq!(second.unwrap(), id, "one connection per request");
    assert_eq!(
        pool.stats().checkouts_direct + pool.stats().checkouts_waited,
        1
    );
    drop((request, db));
    send.send_response(Response::new(String::new()));
    response.await.unwrap();
    assert_eq!(pool.stats().in_use, 0);
}

#[tokio::test]
async fn a_waiter_that_is_woken_but_never_polled_again_does_not_strand_the_next() {
    let pool = pool();
    let (_svc, _handle, _response, request, _send) = in_flight(&pool).await;
    let db = request.extensions().get::<Db<Mem>>().unwrap().clone();
    let first = db.conn().await.unwrap();
    let id = *first;
    // Polled by hand, so the order of events is exact: `stale` waits first and is then
    // abandoned without being dropped (a future kept in a `select!` that moved on).
    let mut cx = Context::from_waker(Waker::noop());
    let mut stale = Box::pin(db.conn());
    let mut next = Box::pin(db.conn());
    assert!(stale.as_mut().poll(&mut cx).is_pending());
    assert!(next.as_mut().poll(&mut cx).is_pending());
    drop(first);
    match next.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(conn)) => assert_eq!(*conn, id, "the request's connection"),
        other => panic!(
            "the second waiter was left waiting: {:?}",
            other.map(|r| r.map(|_| ()))
        ),
    }
    drop(stale);
}

#[tokio::test]
async fn a_conn_waiting_when_the_response_completes_is_told_the_request_finished() {
    let pool = pool();
    let (_svc, _handle, response, request, send) = in_flight(&pool).await;
    let db = request.extensions().get::<Db<Mem>>().unwrap().clone();
    let other = db.clone();
    let first = db.conn().await.unwrap();
    let waiting = tokio::spawn(async move { other.conn().await.map(|_| ()) });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "waits while the first is held");
    send.send_response(Response::new(String::new()));
    response.await.unwrap();
    // Bounded: a missed wake-up fails here instead of hanging the suite.
    let outcome = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting conn() is woken when the response completes")
        .unwrap();
    assert!(matches!(outcome, Err(DbError::RequestFinished)));
    drop(first);
    drop((request, db));
    assert_eq!(
        pool.stats().in_use,
        0,
        "the lent connection went back to the pool"
    );
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_checkout_lets_the_next_conn_try_again() {
    let pool = pool();
    let _held = pool.get().await.unwrap(); // the only connection: checkouts wait
    let (_svc, _handle, _response, request, _send) = in_flight(&pool).await;
    let db = request.extensions().get::<Db<Mem>>().unwrap().clone();
    // Give up on a checkout midway (a client that hung up, a select! that moved on).
    let abandoned = tokio::time::timeout(Duration::from_millis(10), db.conn()).await;
    assert!(abandoned.is_err());
    // The slot is free again: the next call tries (and, the pool being busy, times out).
    assert!(matches!(db.conn().await, Err(DbError::Unavailable(e)) if e.is_timeout()));
}
