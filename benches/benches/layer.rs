//! One request through the layer against a hand-written service doing bb8 `get_owned`, with
//! the OpenTelemetry SDK installed (metrics and traces) and the trace unsampled, then
//! sampled. Both run `oneshot` on a trivial inner service over an in-memory manager.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use opentelemetry::metrics::MeterProvider;
use opentelemetry::{global, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use pool_core::{ManageConnection, Pool};
use pool_tower::{Db, PoolLayer, PoolTelemetry};
use tower::{service_fn, Layer, ServiceExt};

#[derive(Debug, Clone, Copy)]
struct Unit;

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
    assert!(
        !pool_core::uses_test_clock(),
        "pool-core was built with its test-util feature; run the benchmarks with -p pool-benches"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let meters = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
        .build();
    let tracers = SdkTracerProvider::builder()
        .with_simple_exporter(DropSpans)
        .build();
    global::set_tracer_provider(tracers.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());

    let mut bb8_floor_pool = None;
    let (bb8, pool, bare_pool) = rt.block_on(async {
        let bb8 = bb8::Pool::builder().max_size(16).build(Unit).await.unwrap();
        bb8_floor_pool = Some(bb8.clone());
        let telemetry = PoolTelemetry::new(&meters.meter("bench"));
        let pool = Pool::builder()
            .base_size(16)
            .max_overflow(0)
            .health_interval(Duration::from_secs(3600))
            .observer(telemetry.observer())
            .build(Unit)
            .unwrap();
        pool.warm_up().await.unwrap();
        telemetry.observe(&pool);
        let bare_pool = Pool::builder()
            .base_size(16)
            .max_overflow(0)
            .health_interval(Duration::from_secs(3600))
            .build(Unit)
            .unwrap();
        bare_pool.warm_up().await.unwrap();
        (bb8, pool, bare_pool)
    });

    // For the breakdown: the hand-written service plus what any layer like this one must
    // also do per request, and nothing else: put a handle into the request's extensions and
    // record the wait and use time histograms (with the pool-name attribute) in the SDK.
    let floor = {
        let pool = bb8_floor_pool.take().unwrap();
        let meter = meters.meter("bench-floor");
        let wait = meter.f64_histogram("floor.wait_time").build();
        let used = meter.f64_histogram("floor.use_time").build();
        let attrs = [KeyValue::new("db.client.connection.pool.name", "bench")];
        let metrics = Arc::new((wait, used, attrs));
        service_fn(move |mut req: Request<()>| {
            let pool = pool.clone();
            let metrics = metrics.clone();
            async move {
                let (wait, used, attrs) = &*metrics;
                req.extensions_mut().insert(Arc::new(()));
                let conn = pool.get_owned().await.unwrap();
                wait.record(0.0, attrs);
                black_box(&*conn);
                drop(conn);
                used.record(0.0, attrs);
                Ok::<_, Infallible>(Response::new(String::new()))
            }
        })
    };
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
    let eager = PoolLayer::new(pool.clone()).eager().layer(trivial);
    let layered = PoolLayer::new(pool).layer(handler);
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
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
