//! Spans through the real SDK (installed globally, so this file is its own test binary):
//! a checkout span only for sampled requests; breaker transitions and forced recycles.

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use common::Mem;
use http::{Request, Response};
use opentelemetry::{global, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use pool_core::{BreakerConfig, PoolBuilder};
use pool_tower::{semconv, Db, PoolLayer, PoolTelemetry};
use tower::{service_fn, Layer, ServiceExt};

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

#[tokio::test(flavor = "current_thread")]
async fn spans_for_sampled_checkouts_breaker_transitions_and_recycles() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());

    let telemetry = PoolTelemetry::new(&global::meter("spans-test"));
    let mem = Mem::default();
    let pool = PoolBuilder::new()
        .name("traced")
        .base_size(1)
        .max_overflow(0)
        .health_interval(Duration::from_secs(3600))
        .checkout_timeout(Duration::from_secs(5))
        .breaker(BreakerConfig {
            failure_threshold: 1,
            ..BreakerConfig::default()
        })
        .observer(telemetry.observer())
        .build(mem.clone())
        .unwrap();
    let service = PoolLayer::new(pool.clone()).layer(service_fn(|req: Request<()>| async move {
        let db = req.extensions().get::<Db<Mem>>().cloned().unwrap();
        let conn = db.conn().await.map(|c| *c).ok();
        Ok::<_, std::convert::Infallible>(Response::new(format!("{conn:?}")))
    }));

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    for flags in ["01", "00", ""] {
        let mut req = Request::new(());
        if !flags.is_empty() {
            let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-{flags}");
            req.headers_mut()
                .insert("traceparent", traceparent.parse().unwrap());
        }
        let response = service.clone().oneshot(req).await.unwrap();
        assert_ne!(response.body(), "None");
    }
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let checkouts: Vec<_> = spans
        .iter()
        .filter(|s| s.name == semconv::SPAN_CHECKOUT)
        .collect();
    assert_eq!(
        checkouts.len(),
        1,
        "only the sampled request pays for a span"
    );
    let checkout = checkouts[0];
    assert_eq!(checkout.span_context.trace_id().to_string(), trace_id);
    assert_eq!(checkout.parent_span_id.to_string(), "00f067aa0ba902b7");
    assert_eq!(
        attr(checkout, semconv::POOL_NAME),
        Some(&Value::from("traced"))
    );
    assert_eq!(
        attr(checkout, semconv::CHECKOUT_OUTCOME),
        Some(&Value::from("ok"))
    );
    assert!(attr(checkout, "code.file.path").is_some());

    exporter.reset();
    pool.force_recycle();
    mem.0.fail_connect.store(true, SeqCst);
    assert!(pool.get().await.unwrap_err().is_circuit_open());
    pool.reset_breaker();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let recycle = spans
        .iter()
        .find(|s| s.name == semconv::SPAN_FORCED_RECYCLE)
        .expect("a forced-recycle span");
    assert_eq!(
        attr(recycle, "db.client.connection.pool.idle_closed"),
        Some(&Value::I64(1))
    );
    let transitions: Vec<_> = spans
        .iter()
        .filter(|s| s.name == semconv::SPAN_BREAKER_TRANSITION)
        .map(|s| {
            (
                attr(s, semconv::BREAKER_FROM).unwrap().to_string(),
                attr(s, semconv::BREAKER_TO).unwrap().to_string(),
                attr(s, semconv::BREAKER_REASON).unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        transitions,
        [
            ("closed".into(), "open".into(), "failure_threshold".into()),
            ("open".into(), "closed".into(), "reset".into()),
        ]
    );
}
