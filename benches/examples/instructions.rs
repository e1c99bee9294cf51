//! Runs one benchmark case a given number of times, for counting instructions under
//! callgrind (`scripts/instructions.sh`). Each case is set up, warmed up, then run inside
//! [`measure`], the only function callgrind counts in (`--toggle-collect`), so set-up,
//! start-up and the background tasks are left out. Instruction counts do not move with the
//! machine's load, as criterion's times do.
//!
//! usage: instructions CASE ITERATIONS
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;

use http::{Request, Response};
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use pool_benches::{bb8_pool, pool, Unit};

#[path = "../common/floor.rs"]
mod floor;
use pool_tower::{Db, PoolLayer, PoolTelemetry};
use tokio::runtime::Runtime;
use tower::{service_fn, Layer, Service, ServiceExt};

/// Every case, in the order the script reports them.
const CASES: &[&str] = &[
    "checkout_bb8",
    "checkout_pool_core",
    "checkout_pool_core_telemetry",
    "request_by_hand",
    "request_by_hand_extension",
    "request_floor",
    "request_layer",
    "request_layer_no_metrics",
    "request_layer_eager",
    "request_no_db",
    "request_no_db_layer",
];

/// What is counted: `iterations` runs of `once`, driven to completion on `rt`.
#[inline(never)]
fn measure<F, Fut>(rt: &Runtime, iterations: u64, once: &mut F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    rt.block_on(async {
        for _ in 0..iterations {
            once().await;
        }
    });
}

/// Warms up (not counted), then measures.
fn run<F, Fut>(rt: &Runtime, iterations: u64, mut once: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    rt.block_on(async {
        for _ in 0..1000 {
            once().await;
        }
    });
    measure(rt, iterations, &mut once);
}

fn requests<S>(rt: &Runtime, svc: S, iterations: u64)
where
    S: Service<Request<()>, Response = Response<String>, Error = Infallible> + Clone,
{
    // As in the criterion benchmark: each request carries an unsampled W3C trace context.
    let name = http::HeaderName::from_static("traceparent");
    let traceparent: http::HeaderValue = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        .parse()
        .unwrap();
    run(rt, iterations, || {
        let mut req = Request::new(());
        req.headers_mut().insert(name.clone(), traceparent.clone());
        let call = svc.clone().oneshot(req);
        async move {
            black_box(call.await.unwrap());
        }
    });
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(case), Some(iterations)) = (args.next(), args.next()) else {
        eprintln!(
            "usage: instructions CASE ITERATIONS\ncases: {}",
            CASES.join(" ")
        );
        std::process::exit(2);
    };
    let Ok(iterations) = iterations.parse::<u64>() else {
        eprintln!("ITERATIONS must be a whole number, not {iterations:?}");
        std::process::exit(2);
    };
    assert!(
        !pool_core::uses_test_clock(),
        "pool-core was built with its test-util feature; build with -p pool-benches"
    );
    // One thread: callgrind runs threads one at a time anyway, and so every run does the
    // same work.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let meters = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(InMemoryMetricExporter::default()).build())
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let _entered = rt.enter();
    let telemetry = PoolTelemetry::new(&meters.meter("instructions"));
    match case.as_str() {
        "checkout_bb8" => {
            let pool = rt.block_on(bb8_pool());
            run(&rt, iterations, || async {
                black_box(&pool.get_owned().await.unwrap());
            });
        }
        "checkout_pool_core" | "checkout_pool_core_telemetry" => {
            let observer = (case == "checkout_pool_core_telemetry").then(|| telemetry.observer());
            let pool = rt.block_on(pool(observer));
            run(&rt, iterations, || async {
                black_box(&pool.get().await.unwrap());
            });
        }
        "request_by_hand" => {
            let pool = rt.block_on(bb8_pool());
            let svc = service_fn(move |_req: Request<()>| {
                let pool = pool.clone();
                async move {
                    black_box(&*pool.get_owned().await.unwrap());
                    Ok(Response::new(String::new()))
                }
            });
            requests(&rt, svc, iterations);
        }
        "request_by_hand_extension" => {
            // The hand-written service plus the floor's handle in the request's extensions
            // (the first one: the map is made for it), without the records.
            let pool = rt.block_on(bb8_pool());
            let svc = service_fn(move |mut req: Request<()>| {
                let pool = pool.clone();
                async move {
                    req.extensions_mut().insert(std::sync::Arc::new(()));
                    black_box(&*pool.get_owned().await.unwrap());
                    Ok(Response::new(String::new()))
                }
            });
            requests(&rt, svc, iterations);
        }
        "request_floor" => {
            // The hand-written service plus what any such layer must also do: a handle in
            // the request's extensions and the wait and use time histograms recorded.
            let svc = floor::floor(rt.block_on(bb8_pool()), &meters.meter("floor"));
            requests(&rt, svc, iterations);
        }
        "request_layer" | "request_layer_no_metrics" | "request_layer_eager" => {
            let observer = (case != "request_layer_no_metrics").then(|| telemetry.observer());
            let pool = rt.block_on(pool(observer));
            if case == "request_layer_eager" {
                let trivial =
                    service_fn(|_req: Request<()>| async move { Ok(Response::new(String::new())) });
                requests(&rt, PoolLayer::new(pool).eager().layer(trivial), iterations);
            } else {
                let handler = service_fn(|req: Request<()>| async move {
                    let db = req.extensions().get::<Db<Unit>>().unwrap();
                    black_box(&*db.conn().await.unwrap());
                    Ok(Response::new(String::new()))
                });
                requests(&rt, PoolLayer::new(pool).layer(handler), iterations);
            }
        }
        "request_no_db" | "request_no_db_layer" => {
            // A route that never touches the database, bare and through the (lazy) layer.
            let trivial =
                service_fn(|_req: Request<()>| async move { Ok(Response::new(String::new())) });
            if case == "request_no_db" {
                requests(&rt, trivial, iterations);
            } else {
                let pool = rt.block_on(pool(Some(telemetry.observer())));
                requests(&rt, PoolLayer::new(pool).layer(trivial), iterations);
            }
        }
        other => {
            eprintln!("unknown case {other:?}; cases: {}", CASES.join(" "));
            std::process::exit(2);
        }
    }
}
