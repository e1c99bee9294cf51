//! The monitoring API: bearer-token access, the report's contents, recommendations.

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use axum::body::Body;
use common::Mem;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use pool_core::{BreakerConfig, Pool, PoolBuilder};
use pool_tower::Monitoring;
use tower::ServiceExt;

const TOKEN: &str = "correct-horse-battery-staple";

fn pool(name: &str, mem: Mem) -> Pool<Mem> {
    PoolBuilder::new()
        .name(name)
        .base_size(0)
        .max_overflow(2)
        .checkout_timeout(Duration::from_millis(50))
        .health_interval(Duration::from_secs(3600))
        .breaker(BreakerConfig {
            failure_threshold: 1,
            ..BreakerConfig::default()
        })
        .build(mem)
        .unwrap()
}

async fn get(
    router: &axum::Router,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

const REPORT: &str = "/monitoring/connection-pool";

#[tokio::test]
async fn only_the_right_token_in_the_authorization_header_gets_in() {
    let pool = pool("main", Mem::default());
    let router = Monitoring::new().token(TOKEN).pool(&pool).into_router();
    let bearer = format!("Bearer {TOKEN}");
    let refused: [(&str, Vec<(&str, &str)>); 6] = [
        (REPORT, vec![]),
        (REPORT, vec![("authorization", "Bearer wrong-token")]),
        (
            REPORT,
            vec![("authorization", "Bearer correct-horse-battery-stapl")],
        ),
        (REPORT, vec![("authorization", TOKEN)]),
        (
            REPORT,
            vec![("x-api-key", TOKEN), ("x-monitoring-token", TOKEN)],
        ),
        (
            "/monitoring/connection-pool?token=correct-horse-battery-staple",
            vec![],
        ),
    ];
    for (uri, headers) in &refused {
        let (status, body) = get(&router, uri, headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri} {headers:?}");
        assert!(body["error"].as_str().unwrap().contains("bearer token"));
    }
    let (status, _) = get(&router, REPORT, &[("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(
        &router,
        "/monitoring/circuit-breakers",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn without_a_token_the_endpoints_are_off() {
    let pool = pool("main", Mem::default());
    let monitoring = Monitoring::new().token("").pool(&pool);
    assert!(!monitoring.is_enabled());
    let router = monitoring.into_router();
    let (status, _) = get(&router, REPORT, &[("authorization", "Bearer ")]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!format!("{:?}", Monitoring::new().token(TOKEN)).contains(TOKEN));
}

#[tokio::test]
async fn the_report_holds_every_stats_field_a_verdict_and_recommendations() {
    let pool = pool("main", Mem::default());
    drop(pool.get().await.unwrap());
    let router = Monitoring::new().token(TOKEN).pool(&pool).into_router();
    let bearer = format!("Bearer {TOKEN}");
    let (status, body) = get(&router, REPORT, &[("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "healthy");
    let reported = body["pools"][0]["stats"].as_object().unwrap();
    let truth = serde_json::to_value(pool.stats()).unwrap();
    let expected: Vec<_> = truth.as_object().unwrap().keys().collect();
    let mut got: Vec<_> = reported.keys().collect();
    got.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(got, want);
    assert!(want.len() >= 29);
    assert_eq!(reported["name"], "main");
    assert_eq!(body["pools"][0]["health"], "healthy");
    assert_eq!(body["pools"][0]["recommendations"], serde_json::json!([]));
}

#[tokio::test]
async fn a_saturated_pool_and_an_open_breaker_each_get_their_recommendation() {
    let busy = pool("busy", Mem::default());
    let failing_mem = Mem::default();
    failing_mem.0.fail_connect.store(true, SeqCst);
    let failing = pool("failing", failing_mem);
    let _held = [busy.get().await.unwrap(), busy.get().await.unwrap()];
    assert!(failing.get().await.unwrap_err().is_circuit_open());

    let router = Monitoring::new()
        .token(TOKEN)
        .pool(&busy)
        .pool(&failing)
        .into_router();
    let bearer = format!("Bearer {TOKEN}");
    let (_, body) = get(&router, REPORT, &[("authorization", &bearer)]).await;
    assert_eq!(body["status"], "unhealthy");
    let busy_report = &body["pools"][0];
    assert_eq!(busy_report["health"], "degraded");
    let rec = &busy_report["recommendations"][0];
    assert_eq!(rec["rule"], "high_utilization");
    assert_eq!(rec["severity"], "critical");
    assert_eq!(rec["evidence"]["utilization"], 1.0);
    assert_eq!(rec["evidence"]["in_use"], 2);
    assert!(rec["message"].as_str().unwrap().contains("DB_POOL_SIZE"));

    let failing_report = &body["pools"][1];
    assert_eq!(failing_report["health"], "unhealthy");
    let rec = &failing_report["recommendations"][0];
    assert_eq!(rec["rule"], "breaker_opened");
    assert_eq!(rec["severity"], "critical");
    assert_eq!(rec["evidence"]["state"], "open");
    assert_eq!(rec["evidence"]["opened"], 1);

    let (_, breakers) = get(
        &router,
        "/monitoring/circuit-breakers",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(breakers["breakers"][0]["state"], "closed");
    assert_eq!(breakers["breakers"][1]["state"], "open");
    assert_eq!(breakers["breakers"][1]["pool"], "failing");
    assert!(
        breakers["breakers"][1]["time_until_half_open"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}
