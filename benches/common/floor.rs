//! The floor the request benchmarks compare the layer with (`benches/layer.rs` and
//! `examples/instructions.rs` share it): the hand-written service plus what any layer like
//! pool-tower must also do per request, and nothing else: a handle in the request's
//! extensions and the wait and use time histograms (with the pool-name attribute) recorded.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;

use http::{Request, Response};
use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;
use pool_benches::Unit;
use tower::{service_fn, Service};

pub(crate) fn floor(
    pool: bb8::Pool<Unit>,
    meter: &Meter,
) -> impl Service<
    Request<()>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<String>, Infallible>> + Send,
> + Clone
       + Send {
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
            Ok(Response::new(String::new()))
        }
    })
}
