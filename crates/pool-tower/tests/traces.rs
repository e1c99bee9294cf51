//! Where the pool's spans land in the application's traces, through the real SDK and the
//! real tracing-opentelemetry bridge (both installed globally, so this file is its own test
//! binary): the checkout span under a request span made with `tracing` (tower-http's
//! `TraceLayer`) and under a native OpenTelemetry server span; no pool span for an unsampled
//! request; a leak report under the request that holds the connection; eager checkouts
//! located in the user's code.
//!
//! Tests share the exporter; each uses a pool of its own name and finds its spans by it.

mod common;

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

use common::Mem;
use http::{Request, Response};
use opentelemetry::context::FutureExt;
use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
    TracerProvider,
};
use opentelemetry::{global, Context, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use pool_core::{Pool, PoolBuilder};
use pool_tower::{semconv, Db, PoolLayer, PoolTelemetry};
use tower::{service_fn, Layer, ServiceExt};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::{DefaultMakeSpan, Trace, TraceLayer};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

struct Sdk {
    provider: SdkTracerProvider,
    exporter: InMemorySpanExporter,
}

/// The SDK as an application installs it: a global tracer provider, and the
/// tracing-opentelemetry layer (its defaults: context activation on) over the same provider.
fn sdk() -> &'static Sdk {
    static SDK: OnceLock<Sdk> = OnceLock::new();
    SDK.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        global::set_tracer_provider(provider.clone());
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("app")));
        tracing::subscriber::set_global_default(subscriber).unwrap();
        Sdk { provider, exporter }
    })
}

fn spans() -> Vec<SpanData> {
    let sdk = sdk();
    sdk.provider.force_flush().unwrap();
    sdk.exporter.get_finished_spans().unwrap()
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// The spans named `name` of the pool named `pool`.
fn pool_spans(spans: &[SpanData], name: &str, pool: &str) -> Vec<SpanData> {
    spans
        .iter()
        .filter(|s| {
            s.name == name && attr(s, semconv::POOL_NAME) == Some(&Value::from(pool.to_owned()))
        })
        .cloned()
        .collect()
}

fn by_id(spans: &[SpanData], id: SpanId) -> &SpanData {
    spans
        .iter()
        .find(|s| s.span_context.span_id() == id)
        .unwrap_or_else(|| panic!("no span {id}"))
}

fn pool(name: &str, leak_threshold: Option<Duration>) -> Pool<Mem> {
    let telemetry = PoolTelemetry::new(&global::meter("traces-test"));
    PoolBuilder::new()
        .name(name)
        .base_size(1)
        .max_overflow(0)
        .health_interval(Duration::from_secs(3600))
        .leak_threshold(leak_threshold)
        .observer(telemetry.observer())
        .build(Mem::default())
        .unwrap()
}

/// The line of `handler`'s `db.conn()`.
static HANDLER_CONN_LINE: AtomicU32 = AtomicU32::new(0);

/// A handler that takes the connection, then holds it until the pool has reported it as a
/// leak, if `hold` (a bounded wait: at most 5 s).
async fn handler(
    req: Request<String>,
    hold: bool,
) -> Result<Response<String>, std::convert::Infallible> {
    let db = req.extensions().get::<Db<Mem>>().cloned().unwrap();
    let (conn, line) = (db.conn().await.unwrap(), line!());
    HANDLER_CONN_LINE.store(line, Relaxed);
    if hold {
        for _ in 0..500 {
            if db.pool().stats().leaks_suspected > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            db.pool().stats().leaks_suspected,
            1,
            "the leak was not reported"
        );
    }
    Ok(Response::new(format!("{:?}", *conn)))
}

/// tower-http's `TraceLayer` around `inner`, its request spans at INFO.
fn traced<S>(inner: S) -> Trace<S, SharedClassifier<ServerErrorsAsFailures>> {
    TraceLayer::new_for_http()
        .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO))
        .layer(inner)
}

#[tokio::test]
async fn under_a_tracing_request_span_the_checkout_span_is_its_child() {
    let _ = sdk();
    let pool = pool("under-tracing", None);
    let service = traced(PoolLayer::new(pool.clone()).layer(service_fn(|r| handler(r, false))));
    let response = service.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(response.status(), 200);
    // The request span ends with the response body.
    drop(response);

    let spans = spans();
    let checkouts = pool_spans(&spans, semconv::SPAN_CHECKOUT, "under-tracing");
    assert_eq!(checkouts.len(), 1);
    let checkout = &checkouts[0];
    let request = by_id(&spans, checkout.parent_span_id);
    assert_eq!(request.name, "request", "tower-http's span");
    assert_eq!(
        request.span_context.trace_id(),
        checkout.span_context.trace_id()
    );
}

#[tokio::test]
async fn under_a_native_server_span_the_checkout_span_is_its_child() {
    let _ = sdk();
    let pool = pool("under-native", None);
    let service = PoolLayer::new(pool.clone()).layer(service_fn(|r| handler(r, false)));
    let tracer = global::tracer("server");
    let server = tracer
        .span_builder("GET /notes")
        .with_kind(SpanKind::Server)
        .start(&tracer);
    let server_id = server.span_context().span_id();
    let cx = Context::current_with_span(server);
    let response = service
        .oneshot(Request::new(String::new()))
        .with_context(cx.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    cx.span().end();

    let spans = spans();
    let checkouts = pool_spans(&spans, semconv::SPAN_CHECKOUT, "under-native");
    assert_eq!(checkouts.len(), 1);
    assert_eq!(checkouts[0].parent_span_id, server_id);
    assert_eq!(by_id(&spans, server_id).name, "GET /notes");
}

#[tokio::test]
async fn an_unsampled_request_makes_no_pool_span() {
    let _ = sdk();
    let pool = pool("unsampled", None);
    let unsampled = Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::default(),
        true,
        TraceState::default(),
    ));
    // A native context that is not sampled.
    let native = PoolLayer::new(pool.clone()).layer(service_fn(|r| handler(r, false)));
    native
        .oneshot(Request::new(String::new()))
        .with_context(unsampled.clone())
        .await
        .unwrap();
    // A tracing request span whose remote parent is not sampled.
    let service = PoolLayer::new(pool.clone()).layer(service_fn(|r| handler(r, false)));
    let span = tracing::info_span!("request");
    span.set_parent(unsampled).unwrap();
    tracing::Instrument::instrument(service.oneshot(Request::new(String::new())), span)
        .await
        .unwrap();
    // A sampled one beside them, so the test can tell "no span" from "no export".
    let sampled = PoolLayer::new(pool.clone()).layer(service_fn(|r| handler(r, false)));
    traced(sampled)
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();

    let spans = spans();
    assert_eq!(
        pool_spans(&spans, semconv::SPAN_CHECKOUT, "unsampled").len(),
        1
    );
}

#[tokio::test]
async fn a_leak_report_is_a_child_of_the_request_that_holds_the_connection() {
    let _ = sdk();
    // Under a tracing request span.
    let pool_a = pool("leak-tracing", Some(Duration::from_millis(100)));
    let service = traced(PoolLayer::new(pool_a.clone()).layer(service_fn(|r| handler(r, true))));
    service.oneshot(Request::new(String::new())).await.unwrap();
    // Under a native server span.
    let pool_b = pool("leak-native", Some(Duration::from_millis(100)));
    let service = PoolLayer::new(pool_b.clone()).layer(service_fn(|r| handler(r, true)));
    let tracer = global::tracer("server");
    let server = tracer.start("GET /slow");
    let server_id = server.span_context().span_id();
    let cx = Context::current_with_span(server);
    service
        .oneshot(Request::new(String::new()))
        .with_context(cx.clone())
        .await
        .unwrap();
    cx.span().end();

    let spans = spans();
    let leaks = pool_spans(&spans, semconv::SPAN_LEAK, "leak-tracing");
    assert_eq!(leaks.len(), 1);
    let request = by_id(&spans, leaks[0].parent_span_id);
    assert_eq!(request.name, "request");
    let checkout = &pool_spans(&spans, semconv::SPAN_CHECKOUT, "leak-tracing")[0];
    assert_eq!(checkout.parent_span_id, request.span_context.span_id());

    let leaks = pool_spans(&spans, semconv::SPAN_LEAK, "leak-native");
    assert_eq!(leaks.len(), 1);
    assert_eq!(leaks[0].parent_span_id, server_id);
}

#[tokio::test]
async fn eager_checkouts_are_located_in_the_users_code() {
    let _ = sdk();
    let pool = pool("eager", Some(Duration::from_millis(100)));
    let (layer, layer_line) = (PoolLayer::new(pool.clone()).eager(), line!());
    let service = traced(layer.layer(service_fn(|r| handler(r, true))));
    service.oneshot(Request::new(String::new())).await.unwrap();

    let spans = spans();
    let here = file!();
    let checkout = &pool_spans(&spans, semconv::SPAN_CHECKOUT, "eager")[0];
    assert_eq!(
        attr(checkout, "code.file.path"),
        Some(&Value::from(here)),
        "the checkout span names the line that made the layer eager"
    );
    assert_eq!(
        attr(checkout, "code.line.number"),
        Some(&Value::I64(i64::from(layer_line)))
    );
    let leak = &pool_spans(&spans, semconv::SPAN_LEAK, "eager")[0];
    assert_eq!(attr(leak, "code.file.path"), Some(&Value::from(here)));
    assert_eq!(
        attr(leak, "code.line.number"),
        Some(&Value::I64(i64::from(HANDLER_CONN_LINE.load(Relaxed)))),
        "the leak names the handler line that took the connection"
    );
}
