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

/// The monitoring API over `pool`, behind [`TOKEN`].
fn router_for(pool: &Pool<Mem>) -> axum::Router {
    Monitoring::new()
        .token(TOKEN)
        .pool(pool)
        .unwrap()
        .into_router()
}

#[tokio::test]
async fn only_the_right_token_in_the_authorization_header_gets_in() {
    let pool = pool("main", Mem::default());
    let router = router_for(&pool);
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

/// The status of one request built by hand (for header bytes `get` cannot express).
async fn status_of(router: &axum::Router, req: Request<Body>) -> StatusCode {
    router.clone().oneshot(req).await.unwrap().status()
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_whitespace_around_tokens_is_ignored() {
    let pool = pool("main", Mem::default());
    // A token read from a file, trailing newline included.
    let router = Monitoring::new()
        .token(format!("{TOKEN}\n"))
        .pool(&pool)
        .unwrap()
        .into_router();
    for value in [
        format!("Bearer {TOKEN}"),
        format!("bearer {TOKEN}"),
        format!("BEARER {TOKEN}"),
        format!("Bearer   {TOKEN}  "),
        format!("Bearer\t{TOKEN}"),
    ] {
        let (status, _) = get(&router, REPORT, &[("authorization", &value)]).await;
        assert_eq!(status, StatusCode::OK, "{value:?}");
    }
}

#[tokio::test]
async fn hostile_authorization_headers_get_401_and_never_a_panic() {
    let pool = pool("main", Mem::default());
    let router = router_for(&pool);
    let bearer = format!("Bearer {TOKEN}");
    let longer = format!("Bearer {TOKEN}x");
    let huge = format!("Bearer {}", "a".repeat(64 * 1024));
    let basic = format!("Basic {TOKEN}");
    let glued = format!("Bearer{TOKEN}");
    let cookie = format!("token={TOKEN}");
    let refused: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (REPORT, vec![("authorization", &longer)]),
        (REPORT, vec![("authorization", "Bearer")]),
        (REPORT, vec![("authorization", "Bearer ")]),
        (REPORT, vec![("authorization", &basic)]),
        (REPORT, vec![("authorization", &glued)]),
        (REPORT, vec![("authorization", &huge)]),
        (REPORT, vec![("cookie", &cookie)]),
        (
            "/monitoring/connection-pool?access_token=correct-horse-battery-staple",
            vec![],
        ),
        // Repeated headers, even when each one alone would pass.
        (
            REPORT,
            vec![("authorization", &bearer), ("authorization", &bearer)],
        ),
        (
            REPORT,
            vec![
                ("authorization", "Bearer wrong"),
                ("authorization", &bearer),
            ],
        ),
    ];
    for (uri, headers) in &refused {
        let (status, body) = get(&router, uri, headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri} {headers:?}");
        assert_eq!(body["error"], "a valid bearer token is required");
    }
    // Bytes outside visible ASCII: the token itself with one byte changed to 0xff, and the
    // right token followed by a UTF-8 character.
    let mut changed = bearer.clone().into_bytes();
    *changed.last_mut().unwrap() = 0xff;
    let mut trailing = bearer.clone().into_bytes();
    trailing.extend_from_slice("é".as_bytes());
    for bytes in [changed, trailing] {
        let value = http::HeaderValue::from_bytes(&bytes).unwrap();
        let req = Request::get(REPORT)
            .header("authorization", value)
            .body(Body::empty())
            .unwrap();
        assert_eq!(status_of(&router, req).await, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn a_64_kib_authorization_header_over_real_http_is_refused() {
    let pool = pool("main", Mem::default());
    let router = router_for(&pool);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let huge = format!("Bearer {}", "a".repeat(64 * 1024));
    let response = common::http_get(addr, REPORT, &[("authorization", &huge)]).await;
    assert!(
        response.status == 401 || response.status == 431,
        "{} {}",
        response.status,
        response.body
    );
    let ok = common::http_get(
        addr,
        REPORT,
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(ok.status, 200, "the server still answers: {}", ok.body);
}

#[tokio::test]
async fn without_a_token_the_endpoints_are_off() {
    let pool = pool("main", Mem::default());
    let monitoring = Monitoring::new().token("").pool(&pool).unwrap();
    assert!(!monitoring.is_enabled());
    let router = monitoring.into_router();
    let (status, _) = get(&router, REPORT, &[("authorization", "Bearer ")]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!format!("{:?}", Monitoring::new().token(TOKEN)).contains(TOKEN));
    assert!(!Monitoring::new().token(" \n").is_enabled());
    assert!(!Monitoring::new().token("tök-en").is_enabled());
    assert!(!Monitoring::new().token("two words").is_enabled());
}

#[tokio::test]
async fn the_report_holds_every_stats_field_a_verdict_and_recommendations() {
    let pool = pool("main", Mem::default());
    drop(pool.get().await.unwrap());
    let router = router_for(&pool);
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
        .unwrap()
        .pool(&failing)
        .unwrap()
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
    // Zero while a probe is due or running.
    assert!(
        breakers["breakers"][1]["next_probe_in_seconds"]
            .as_f64()
            .unwrap()
            >= 0.0
    );
    // The cause comes with its age.
    assert!(breakers["breakers"][1]["last_error"].is_string());
    assert!(breakers["breakers"][1]["last_error_age_seconds"].is_f64());
    assert!(breakers["breakers"][0]["last_error_age_seconds"].is_null());
}

#[tokio::test(start_paused = true)]
async fn after_an_outage_and_a_timeout_the_verdict_is_healthy_again_once_the_window_has_passed() {
    let mem = Mem::default();
    let state = mem.0.clone();
    let pool = pool("main", mem);
    let router = router_for(&pool);
    let bearer = format!("Bearer {TOKEN}");
    let report = || async { get(&router, REPORT, &[("authorization", &bearer)]).await.1 };
    let rules = |body: &serde_json::Value| -> Vec<String> {
        body["pools"][0]["recommendations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule"].as_str().unwrap().to_owned())
            .collect()
    };

    // The outage: the breaker opens.
    state.fail_connect.store(true, SeqCst);
    assert!(pool.get().await.unwrap_err().is_circuit_open());
    assert_eq!(report().await["status"], "unhealthy");
    // The database is back: the probes close the breaker within a second or two.
    state.fail_connect.store(false, SeqCst);
    for _ in 0..100 {
        if pool.breaker_state() == pool_core::BreakerState::Closed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pool.breaker_state(), pool_core::BreakerState::Closed);
    // Then an exhaustion with a timeout.
    let held = [pool.get().await.unwrap(), pool.get().await.unwrap()];
    assert!(pool.get().await.unwrap_err().is_timeout());
    drop(held);

    let body = report().await;
    assert_eq!(body["status"], "degraded");
    assert_eq!(
        rules(&body),
        ["high_utilization", "breaker_opened", "checkout_timeouts"],
        "{body}"
    );
    let evidence = &body["pools"][0]["recommendations"][2]["evidence"];
    assert_eq!(evidence["checkout_timeouts"], 1);
    assert_eq!(evidence["last_timeout_age_seconds"], 0.0);

    // Healthy for just under the window: still degraded, about the same events.
    tokio::time::sleep(pool_tower::monitoring::HEALTH_WINDOW - Duration::from_secs(2)).await;
    let body = report().await;
    assert_eq!(body["status"], "degraded", "{body}");
    // Two healthy minutes: healthy, nothing to recommend; the counters still say what
    // happened.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let body = report().await;
    assert_eq!(body["status"], "healthy", "{body}");
    assert!(rules(&body).is_empty(), "{body}");
    let stats = &body["pools"][0]["stats"];
    assert_eq!(stats["checkout_timeouts"], 1);
    assert_eq!(stats["breaker"]["opened"], 1);
    assert_eq!(stats["exhaustion_episodes"], 1);
}
