//! axum and tonic end to end on 127.0.0.1: real HTTP, real PostgreSQL (started by
//! `scripts/test.sh`), real gRPC.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use common::{closed_port, http_get, pg_url};
use pool_core::postgres::{tokio_postgres::NoTls, PostgresManager};
use pool_core::{BreakerConfig, BreakerState, PoolBuilder, PostgresPool};
use pool_tower::{Db, DbError, PoolLayer};

type Pg = PostgresManager<NoTls>;

async fn answer(db: Db<Pg>) -> Result<String, DbError> {
    let conn = db.conn().await?;
    let row = conn
        .query_one("select 40 + 2", &[])
        .await
        .map_err(DbError::query)?;
    Ok(row.get::<_, i32>(0).to_string())
}

async fn plain() -> &'static str {
    "no database here"
}

/// The layer must fit `Router::layer` (a compile-time check as much as a runtime one).
fn app(pool: PostgresPool) -> Router {
    Router::new()
        .route("/answer", get(answer))
        .route("/plain", get(plain))
        .layer(PoolLayer::new(pool))
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_route_answers_200_and_returns_its_connection() {
    let Some(url) = pg_url("a_query_route_answers_200_and_returns_its_connection") else {
        return;
    };
    let pool = PoolBuilder::postgres()
        .database_url(&url)
        .base_size(1)
        .max_overflow(1)
        .build_postgres()
        .unwrap();
    let addr = serve(app(pool.clone())).await;
    let response = http_get(addr, "/answer", &[]).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body, "42");
    let response = http_get(addr, "/plain", &[]).await;
    assert_eq!(response.status, 200);
    let s = pool.stats();
    assert_eq!(s.in_use, 0);
    assert_eq!(
        s.checkouts_direct + s.checkouts_waited,
        1,
        "only /answer checked out"
    );
}

/// `DbConn::check`: the one line that reports a query's error to the breaker and turns it
/// into a 500.
async fn checked(db: Db<Pg>, Path(what): Path<String>) -> Result<String, DbError> {
    let mut conn = db.conn().await?;
    let sql = match what.as_str() {
        "typo" => "selec 1",
        _ => "select pg_terminate_backend(pg_backend_pid())",
    };
    conn.check(conn.simple_query(sql).await)?;
    Ok("unreachable".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checked_query_error_counts_for_the_breaker_only_when_the_connection_failed() {
    let Some(url) =
        pg_url("a_checked_query_error_counts_for_the_breaker_only_when_the_connection_failed")
    else {
        return;
    };
    let pool = PoolBuilder::postgres()
        .database_url(&url)
        .base_size(1)
        .max_overflow(0)
        // No reaper: its top-up could open a connection of its own between the requests.
        .idle_timeout(None)
        .build_postgres()
        .unwrap();
    pool.warm_up().await.unwrap();
    let app = Router::new()
        .route("/answer", get(answer))
        .route("/checked/{what}", get(checked))
        .layer(PoolLayer::new(pool.clone()));
    let addr = serve(app).await;

    // A query the server refuses (a syntax error): a 500, and the connection is fine.
    let response = http_get(addr, "/checked/typo", &[]).await;
    assert_eq!(response.status, 500);
    let s = pool.stats();
    assert_eq!(s.breaker.consecutive_failures, 0);
    assert_eq!(s.connections_closed.total(), 0);
    assert_eq!(http_get(addr, "/answer", &[]).await.status, 200);
    assert_eq!(
        pool.stats().connections_created,
        1,
        "the same connection served"
    );

    // The session is killed under the query: a 500, a failure for the breaker, and the
    // connection closed instead of handed on.
    let response = http_get(addr, "/checked/terminate", &[]).await;
    assert_eq!(response.status, 500);
    let s = pool.stats();
    assert_eq!(s.breaker.consecutive_failures, 1, "{s:?}");
    assert_eq!(s.connections_closed.broken, 1, "{s:?}");
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("terminating connection")),
        "{:?}",
        s.last_error
    );
    assert_eq!(http_get(addr, "/answer", &[]).await.status, 200);
    let s = pool.stats();
    assert_eq!(s.connections_created, 2, "a new connection served");
    assert_eq!(
        s.breaker.consecutive_failures, 0,
        "a success resets the count"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_answers_503_with_retry_after() {
    let Some(url) = pg_url("an_exhausted_pool_answers_503_with_retry_after") else {
        return;
    };
    let pool = PoolBuilder::postgres()
        .database_url(&url)
        .base_size(1)
        .max_overflow(0)
        .checkout_timeout(Duration::from_millis(300))
        .build_postgres()
        .unwrap();
    let addr = serve(app(pool.clone())).await;
    let held = pool.get().await.unwrap();
    let response = http_get(addr, "/answer", &[]).await;
    assert_eq!(response.status, 503);
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json")
    );
    let body = response.json();
    assert_eq!(body["status"], 503);
    assert!(!response.body.contains("pool-test-secret") && !response.body.contains("127.0.0.1"));
    drop(held);
    assert_eq!(http_get(addr, "/answer", &[]).await.status, 200);
    assert_eq!(pool.stats().checkout_timeouts, 1);
}

async fn hung(db: Db<Pg>) -> Result<String, DbError> {
    let conn = db.conn().await?;
    conn.simple_query("select pg_sleep(30)")
        .await
        .map_err(DbError::query)?;
    Ok("slept".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_the_operation_timeout_is_answered_504_and_its_connection_closed() {
    let Some(url) =
        pg_url("a_query_past_the_operation_timeout_is_answered_504_and_its_connection_closed")
    else {
        return;
    };
    let limit = Duration::from_secs(1);
    let pool = PoolBuilder::postgres()
        .database_url(&url)
        .base_size(1)
        .max_overflow(0)
        .breaker(BreakerConfig {
            operation_timeout: limit,
            ..BreakerConfig::default()
        })
        .build_postgres()
        .unwrap();
    let addr = serve(
        app(pool.clone()).merge(
            Router::new()
                .route("/hung", get(hung))
                .layer(PoolLayer::new(pool.clone())),
        ),
    )
    .await;
    let start = std::time::Instant::now();
    let response = http_get(addr, "/hung", &[]).await;
    let took = start.elapsed();
    assert_eq!(response.status, 504, "{}", response.body);
    // The bound this proves: the operation timeout plus a margin for a loaded machine (the
    // query itself would have taken 30 s).
    assert!(took < limit + Duration::from_secs(5), "{took:?}");
    let s = pool.stats();
    assert_eq!(s.connections_closed.broken, 1);
    assert_eq!(s.breaker.consecutive_failures, 1);
    // The next request gets a fresh connection and succeeds.
    let response = http_get(addr, "/answer", &[]).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(pool.stats().breaker.consecutive_failures, 0);
}

fn dead_pool(recovery: Duration) -> PostgresPool {
    PoolBuilder::postgres()
        .database_url(&format!(
            "postgres://app:pw@127.0.0.1:{}/app",
            closed_port()
        ))
        .base_size(0)
        .max_overflow(2)
        .checkout_timeout(Duration::from_secs(20))
        .breaker(BreakerConfig {
            failure_threshold: 1,
            recovery_timeout: recovery,
            ..BreakerConfig::default()
        })
        .build_postgres()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_answers_503_with_retry_after_until_its_next_recovery_probe() {
    // No server is needed: the database is a closed port, so the breaker opens for real.
    let pool = dead_pool(Duration::from_secs(30));
    let addr = serve(app(pool.clone())).await;
    let first = http_get(addr, "/answer", &[]).await;
    assert_eq!(first.status, 503);
    assert_eq!(pool.breaker_state(), BreakerState::Open);
    // The first probe is 100 ms away: whole seconds, rounded up.
    let retry_after: u64 = first.header("retry-after").unwrap().parse().unwrap();
    assert_eq!(retry_after, 1);
    let body = first.json();
    assert!(body["detail"].as_str().unwrap().contains("unavailable"));
    let second = http_get(addr, "/answer", &[]).await;
    assert_eq!(second.status, 503);
    let retry_after: u64 = second.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    // Routes without the database still work while it is down.
    assert_eq!(http_get(addr, "/plain", &[]).await.status, 200);
    assert_eq!(pool.stats().checkouts_rejected, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_answers_unavailable_while_the_breaker_is_open() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let pool = dead_pool(Duration::from_secs(30));
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let layer = PoolLayer::new(pool.clone()).grpc().eager();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    for _ in 0..2 {
        let status = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }
    assert_eq!(pool.breaker_state(), BreakerState::Open);
    assert_eq!(pool.stats().checkouts_rejected, 2);
}

#[test]
fn a_query_error_keeps_its_cause_for_the_log_but_not_for_the_client() {
    let e = DbError::query(std::io::Error::other(
        "duplicate key value violates unique constraint \"notes_pkey\"",
    ));
    assert_eq!(
        e.to_string(),
        "a database query failed: duplicate key value violates unique constraint \"notes_pkey\""
    );
    let source = std::error::Error::source(&e).expect("the driver's error is the source");
    assert!(source.to_string().contains("notes_pkey"));
    let response = axum::response::IntoResponse::into_response(e);
    assert_eq!(response.status(), 500);
    assert!(response
        .headers()
        .get("content-length")
        .is_none_or(|v| v == "0"));
}
