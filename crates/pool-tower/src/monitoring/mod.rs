//! A token-protected JSON monitoring API over one or more pools.
//!
//! - `GET /monitoring/connection-pool`: every pool's [`PoolStats`], a health verdict and
//!   recommendations, each with the evidence that triggered it.
//! - `GET /monitoring/circuit-breakers`: every pool's breaker.
//!
//! The verdict and the recommendations are about now and the last [`HEALTH_WINDOW`] (60 s):
//! a pool that has been fine for that long is `healthy`, whatever its lifetime counters say
//! (see [`verdict`]). The stats beside them keep the whole story.
//!
//! Requests must carry exactly one `Authorization: Bearer <token>` header (RFC 6750; the
//! scheme in any case, whitespace around the token ignored, on the configured token too); the
//! token is compared in constant time and accepted nowhere else (not in the query string, not
//! in a cookie, not in another header). With no token configured the endpoints answer 404:
//! monitoring is off until you choose a token.
//!
//! ```no_run
//! # #[cfg(feature = "axum")] fn demo(pool: pool_core::PostgresPool) {
//! use pool_tower::Monitoring;
//!
//! let monitoring = Monitoring::new()
//!     .token_from_env("MONITORING_TOKEN")
//!     .pool(&pool)
//!     .expect("one pool, one name");
//! let app: axum::Router = axum::Router::new().merge(monitoring.into_router());
//! # }
//! ```

mod recommend;

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use pool_core::{ManageConnection, Pool, PoolStats};
use serde_json::json;
use tower_service::Service;

pub use recommend::{recommendations, verdict, Health, Recommendation, Severity, HEALTH_WINDOW};

/// The path of the pool report.
pub const POOL_PATH: &str = "/monitoring/connection-pool";
/// The path of the breaker report.
pub const BREAKERS_PATH: &str = "/monitoring/circuit-breakers";

/// The monitoring API. Build it, then mount [`Monitoring::into_router`] (axum) or use it as a
/// tower [`Service`] directly.
#[derive(Clone, Default)]
pub struct Monitoring {
    pools: Vec<crate::Registered>,
    token: Option<Arc<str>>,
}

impl fmt::Debug for Monitoring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitoring")
            .field("pools", &self.pools.len())
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Monitoring {
    /// No pools, no token (the endpoints answer 404 until a token is set).
    pub fn new() -> Self {
        Self::default()
    }

    /// The bearer token clients must send. Surrounding whitespace is trimmed (as it is from
    /// the presented token), so a token read from a file with a trailing newline works; an
    /// empty token turns monitoring off.
    ///
    /// A token with characters outside visible ASCII could never be sent in a header (RFC
    /// 6750's token68), so it turns monitoring off too, with an error in the log.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        let token = token.trim();
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            tracing::error!(
                "the monitoring token holds characters no Authorization header can carry \
                 (spaces, control characters or non-ASCII); monitoring is off"
            );
            self.token = None;
            return self;
        }
        self.token = (!token.is_empty()).then(|| token.into());
        self
    }

    /// The bearer token from environment variable `var`; unset or empty turns monitoring off.
    pub fn token_from_env(self, var: &str) -> Self {
        match std::env::var(var) {
            Ok(token) => self.token(token),
            Err(_) => Monitoring {
                token: None,
                ..self
            },
        }
    }

    /// Whether a token is set (the endpoints are on).
    pub fn is_enabled(&self) -> bool {
        self.token.is_some()
    }

    /// Adds a pool to the report (adding the same pool again changes nothing). The report
    /// holds no strong reference: a dropped pool disappears from it, and its name is free
    /// again.
    ///
    /// # Errors
    ///
    /// [`NameInUse`](crate::NameInUse) if another live pool in this report has the same
    /// name (also logged); the report is unchanged.
    pub fn pool<M: ManageConnection>(mut self, pool: &Pool<M>) -> Result<Self, crate::NameInUse> {
        crate::Registered::new(pool).join(&mut self.pools, "monitoring report")?;
        Ok(self)
    }

    fn stats(&self) -> Vec<PoolStats> {
        self.pools.iter().filter_map(|p| (p.stats)()).collect()
    }

    /// RFC 7235 / RFC 6750: exactly one `Authorization` header, scheme `Bearer` in any case,
    /// then the token (surrounding whitespace ignored), compared in constant time. Anything
    /// else (a second header, non-ASCII bytes, a token in the query string or a cookie) is
    /// refused.
    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let Some(expected) = &self.token else {
            return false;
        };
        let mut values = req.headers().get_all(AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return false;
        };
        let Ok(value) = value.to_str() else {
            return false;
        };
        let Some((scheme, token)) = value.trim().split_once([' ', '\t']) else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer")
            && constant_time_eq(token.trim().as_bytes(), expected.as_bytes())
    }

    /// Answers one request.
    pub fn respond<B>(&self, req: &Request<B>) -> Response<String> {
        let path = req.uri().path();
        if self.token.is_none() || (path != POOL_PATH && path != BREAKERS_PATH) {
            return plain(StatusCode::NOT_FOUND, "not found");
        }
        if !self.authorized(req) {
            let mut response = plain(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"monitoring\""),
            );
            return response;
        }
        if req.method() != Method::GET {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed");
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET"));
            return response;
        }
        let stats = self.stats();
        let body = if path == POOL_PATH {
            pool_report(&stats)
        } else {
            breaker_report(&stats)
        };
        let mut response = Response::new(body.to_string());
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    /// An axum router serving both paths.
    #[cfg(feature = "axum")]
    pub fn into_router<S: Clone + Send + Sync + 'static>(self) -> axum::Router<S> {
        let service = MonitoringService { monitoring: self };
        axum::Router::new()
            .route_service(POOL_PATH, service.clone())
            .route_service(BREAKERS_PATH, service)
    }

    /// A tower service serving both paths (and 404 elsewhere).
    pub fn into_service(self) -> MonitoringService {
        MonitoringService { monitoring: self }
    }
}

fn plain(status: StatusCode, text: &str) -> Response<String> {
    let mut response = Response::new(json!({ "error": text }).to_string());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn pool_report(stats: &[PoolStats]) -> serde_json::Value {
    let pools: Vec<_> = stats
        .iter()
        .map(|s| {
            json!({
                "stats": s,
                "health": verdict(s),
                "recommendations": recommendations(s),
            })
        })
        .collect();
    let overall = stats.iter().map(verdict).max().unwrap_or(Health::Healthy);
    json!({ "status": overall, "pools": pools })
}

fn breaker_report(stats: &[PoolStats]) -> serde_json::Value {
    let breakers: Vec<_> = stats
        .iter()
        .map(|s| {
            json!({
                "pool": s.name,
                "state": s.breaker.state,
                "consecutive_failures": s.breaker.consecutive_failures,
                "transitions": s.breaker.transitions,
                "opened": s.breaker.opened,
                "rejected": s.breaker.rejected,
                "next_probe_in_seconds": s.breaker.next_probe_in.map(|d| d.as_secs_f64()),
                "last_error": s.last_error,
                "last_error_age_seconds": s.last_error_age.map(|d| d.as_secs_f64()),
            })
        })
        .collect();
    json!({ "breakers": breakers })
}

/// Whether `given` equals `expected`, in a time that depends on the expected length only:
/// no early exit, so the time taken does not reveal how much of a guess was right.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    // Every byte of `expected` is visited whatever `given` holds, so the time says nothing
    // about how much of a guess was right.
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= given.get(i).copied().unwrap_or(!e) ^ e;
    }
    // Keeps the optimizer from turning the loop back into an early exit.
    std::hint::black_box(diff) == 0
}

/// The monitoring API as a tower service (any stack can mount it).
#[derive(Clone, Debug)]
pub struct MonitoringService {
    monitoring: Monitoring,
}

impl<B> Service<Request<B>> for MonitoringService {
    type Response = Response<http_body_full::Full>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let response = self.monitoring.respond(&req);
        ready(Ok(
            response.map(|body| http_body_full::Full::new(Bytes::from(body)))
        ))
    }
}

/// A one-chunk body, so the service needs no body crate beyond `http-body`.
pub mod http_body_full {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body::{Body, Frame, SizeHint};

    /// A body of one chunk.
    #[derive(Debug, Default)]
    pub struct Full(Option<Bytes>);

    impl Full {
        /// A body holding `bytes`.
        pub fn new(bytes: Bytes) -> Self {
            Full(Some(bytes).filter(|b| !b.is_empty()))
        }
    }

    impl Body for Full {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_none()
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
