//! One request through the layer against a hand-written service doing bb8 `get_owned`, with
//! the OpenTelemetry SDK installed (metrics and traces) and the trace unsampled, then
//! sampled. Both run `oneshot` on a trivial inner service over an in-memory manager.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use opentelemetry::global;
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use pool_benches::{bb8_pool, criterion, pool, runtime, Unit};

#[path = "../common/floor.rs"]
mod floor;
use pool_tower::{Db, PoolLayer, PoolTelemetry};
use tower::{service_fn, Layer, ServiceExt};

/// Drops every span: the cost measured is making them, not storing them.
#[derive(Debug)]
struct DropSpans;

impl SpanExporter for DropSpans {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let meters = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
        .build();
    let tracers = SdkTracerProvider::builder()
        .with_simple_exporter(DropSpans)
        .build();
    global::set_tracer_provider(tracers.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());

    let bb8 = rt.block_on(bb8_pool());
    let telemetry = PoolTelemetry::new(&meters.meter("bench"));
    let observed = rt.block_on(pool(Some(telemetry.observer())));
    telemetry.observe(&observed).unwrap();
    let bare_pool = rt.block_on(pool(None));

    // For the breakdown: the hand-written service plus what any layer must also do.
    let floor = floor::floor(bb8.clone(), &meters.meter("bench-floor"));
    let baseline = service_fn(move |_req: Request<()>| {
        let pool = bb8.clone();
        async move {
            let conn = pool.get_owned().await.unwrap();
            black_box(&*conn);
            drop(conn);
            Ok::<_, Infallible>(Response::new(String::new()))
        }
    });
    let handler = service_fn(|req: Request<()>| async move {
        let db = req.extensions().get::<Db<Unit>>().unwrap();
        let conn = db.conn().await.unwrap();
        black_box(&*conn);
        drop(conn);
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    // Eager mode: the layer checks out before a trivial inner service that never looks.
    let trivial =
        service_fn(
            |_req: Request<()>| async move { Ok::<_, Infallible>(Response::new(String::new())) },
        );
    let eager = PoolLayer::new(observed.clone()).eager().layer(trivial);
    let layered = PoolLayer::new(observed).layer(handler);
    // The same without the telemetry observer: how much of the cost is the SDK's recording.
    let layered_no_metrics = PoolLayer::new(bare_pool).layer(handler);
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    let mut group = c.benchmark_group("request");
    macro_rules! case {
        ($name:literal, $svc:expr, $traceparent:expr) => {
            group.bench_function($name, |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let svc = $svc.clone();
                    let traceparent: Option<&'static str> = $traceparent;
                    async move {
                        tokio::spawn(async move {
                            let start = Instant::now();
                            for _ in 0..iters {
                                let mut req = Request::new(());
                                if let Some(tp) = traceparent {
                                    req.headers_mut().insert("traceparent", tp.parse().unwrap());
                                }
                                black_box(svc.clone().oneshot(req).await.unwrap());
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
    case!("bb8_get_owned_by_hand", baseline, Some(unsampled));
    case!("by_hand_plus_extension_and_metrics", floor, Some(unsampled));
    case!("layer_unsampled", layered, Some(unsampled));
    case!("layer_sampled", layered, Some(sampled));
    case!("layer_eager_unsampled", eager, Some(unsampled));
    case!(
        "layer_unsampled_no_metrics",
        layered_no_metrics,
        Some(unsampled)
    );
    group.finish();
}

criterion_group! {
    name = benches;
    config = criterion();
    targets = bench
}
criterion_main!(benches);
