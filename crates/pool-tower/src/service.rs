//! [`PoolService`]: the middleware itself.

use std::fmt;
use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt;
use pool_core::ManageConnection;
use tower_service::Service;

use crate::extract::{checkout, Db, Slot};
use crate::future::{timed_out, AbandonOnDrop, Bounded, ReleaseOnDrop, ResponseFuture};
use crate::layer::{LayerShared, Mode};
use crate::response::Rejection;

/// The service [`PoolLayer`](crate::PoolLayer) produces. Cheap to clone.
pub struct PoolService<S, M: ManageConnection, R> {
    inner: S,
    shared: Arc<LayerShared<M, R>>,
}

impl<S, M: ManageConnection, R> PoolService<S, M, R> {
    pub(crate) fn new(inner: S, shared: Arc<LayerShared<M, R>>) -> Self {
        PoolService { inner, shared }
    }
}

impl<S: Clone, M: ManageConnection, R> Clone for PoolService<S, M, R> {
    fn clone(&self) -> Self {
        PoolService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, M: ManageConnection, R> fmt::Debug for PoolService<S, M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolService")
            .field("inner", &self.inner)
            .field("pool", &self.shared.pool.name())
            .field("mode", &self.shared.mode)
            .finish()
    }
}

impl<S, M, R, ReqBody, ResBody> Service<Request<ReqBody>> for PoolService<S, M, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    M: ManageConnection,
    R: Rejection<ResBody>,
    ReqBody: Send + 'static,
    ResBody: 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, M, R, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let parent = sampled_parent(&req);
        let slot = Slot::new(self.shared.pool.clone(), parent);
        req.extensions_mut().insert(Db::new(slot.clone()));
        match self.shared.mode {
            Mode::Lazy => {
                ResponseFuture::lazy(self.inner.call(req), slot, self.shared.rejection.clone())
            }
            Mode::Eager => {
                // The inner service was made ready by `poll_ready`; keep that instance for
                // this request and leave a fresh clone behind (tower's usual pattern).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let rejection = self.shared.rejection.clone();
                let location = self.shared.location;
                ResponseFuture::eager(Box::pin(async move {
                    // Released when this future ends, completed or dropped midway.
                    let slot = ReleaseOnDrop(slot);
                    match checkout(slot.0.pool(), slot.0.parent(), location).await {
                        Ok(conn) => {
                            slot.0.put(conn);
                            let mut bounded = pin!(Bounded::new(inner.call(req)));
                            // Declared after `bounded`, so dropped before it if this future
                            // is abandoned midway: the lent connection is then closed.
                            let abandon = AbandonOnDrop(Some(&slot.0));
                            let output =
                                poll_fn(|cx| bounded.as_mut().poll_with(cx, &slot.0)).await;
                            abandon.disarm();
                            match output {
                                Ok(output) => output,
                                Err(limit) => Ok(timed_out(&slot.0, limit, &rejection)),
                            }
                        }
                        Err(error) => Ok(rejection.rejection(&error)),
                    }
                }))
            }
        }
    }
}

/// The trace this request belongs to, if it is sampled: the current OpenTelemetry context,
/// else the one the global propagator extracts from the headers. `None` costs nothing later.
fn sampled_parent<B>(req: &Request<B>) -> Option<opentelemetry::Context> {
    // Looked at in place: cloning the current context (two atomic operations) only when kept.
    let current = opentelemetry::Context::map_current(|cx| {
        cx.span().span_context().is_sampled().then(|| cx.clone())
    });
    if current.is_some() {
        return current;
    }
    // W3C `traceparent` (`00-<trace id>-<span id>-<flags>`): an unsampled flag byte settles it
    // without a full extraction (which allocates a context per request).
    // Read as bytes: validating the whole value as text would cost more than the rest.
    if let Some(&[hi, lo]) = req
        .headers()
        .get(&TRACEPARENT)
        .and_then(|v| v.as_bytes().get(53..55))
    {
        let hex = |b: u8| char::from(b).to_digit(16);
        if let (Some(_), Some(lo)) = (hex(hi), hex(lo)) {
            if lo & 1 == 0 {
                return None;
            }
        }
    }
    let extracted = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(req.headers()))
    });
    extracted
        .span()
        .span_context()
        .is_sampled()
        .then_some(extracted)
}

static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
