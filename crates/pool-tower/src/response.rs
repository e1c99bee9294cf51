//! What a request gets when the pool cannot serve it: a response, never an error.

use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use pool_core::CheckoutError;

/// Turns a request the pool could not serve into a response: a failed checkout, or an
/// operation cancelled by the operation timeout ([`CheckoutError::OperationTimedOut`]).
/// Implement it (or pass a closure `Fn(&CheckoutError) -> http::Response<B>`) to replace the
/// default; a closure should tell the operation timeout apart with
/// [`CheckoutError::is_operation_timeout`].
pub trait Rejection<B>: Clone + Send + Sync + 'static {
    /// The response for `error`.
    fn rejection(&self, error: &CheckoutError) -> Response<B>;
}

impl<B, F> Rejection<B> for F
where
    F: Fn(&CheckoutError) -> Response<B> + Clone + Send + Sync + 'static,
{
    fn rejection(&self, error: &CheckoutError) -> Response<B> {
        self(error)
    }
}

/// The default for HTTP: `503 Service Unavailable`, `Retry-After` in whole seconds (the
/// breaker's remaining open time, or 1 s for an exhausted pool) and a small
/// `application/problem+json` body with no internals and no secrets; `504 Gateway Timeout`
/// (same body shape, no `Retry-After`) for an operation that ran past the operation timeout.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct JsonRejection;

impl<B: From<String>> Rejection<B> for JsonRejection {
    fn rejection(&self, error: &CheckoutError) -> Response<B> {
        if error.is_operation_timeout() {
            return problem(
                StatusCode::GATEWAY_TIMEOUT,
                serde_json::json!({
                    "type": "about:blank",
                    "title": "Gateway Timeout",
                    "status": 504,
                    "detail": "the database did not answer in time",
                }),
            );
        }
        let retry_after = retry_after_secs(error.retry_after());
        let detail = if error.is_circuit_open() {
            "the database is unavailable; requests are being turned away until it recovers"
        } else {
            "no database connection became available in time"
        };
        let mut response = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "type": "about:blank",
                "title": "Service Unavailable",
                "status": 503,
                "detail": detail,
                "retry_after": retry_after,
            }),
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after));
        response
    }
}

fn problem<B: From<String>>(status: StatusCode, body: serde_json::Value) -> Response<B> {
    let mut response = Response::new(B::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// The default for gRPC: a trailers-only response with `grpc-status: 14` (UNAVAILABLE), a
/// short `grpc-message` and `retry-after`; clients retry UNAVAILABLE by convention. An
/// operation that ran past the operation timeout gets `grpc-status: 4` (DEADLINE_EXCEEDED).
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct GrpcRejection;

impl<B: Default> Rejection<B> for GrpcRejection {
    fn rejection(&self, error: &CheckoutError) -> Response<B> {
        let mut response = Response::new(B::default());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        if error.is_operation_timeout() {
            headers.insert("grpc-status", HeaderValue::from_static("4"));
            headers.insert(
                "grpc-message",
                HeaderValue::from_static("database%20operation%20timed%20out"),
            );
            return response;
        }
        headers.insert("grpc-status", HeaderValue::from_static("14"));
        let message = if error.is_circuit_open() {
            "database%20unavailable"
        } else {
            "no%20database%20connection%20available"
        };
        headers.insert("grpc-message", HeaderValue::from_static(message));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from(retry_after_secs(error.retry_after())),
        );
        response
    }
}

/// `Retry-After` is whole seconds; round up so clients never come back early, and never 0.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn open(retry_after: Duration) -> CheckoutError {
        CheckoutError::CircuitOpen {
            pool: Arc::from("db"),
            retry_after,
            last_error: Some("connection refused".into()),
            last_error_age: Some(Duration::from_millis(400)),
        }
    }

    #[test]
    fn json_rejection_is_a_503_with_retry_after_rounded_up() {
        let response: Response<String> =
            JsonRejection.rejection(&open(Duration::from_millis(12_300)));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "13");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
        let body: serde_json::Value = serde_json::from_str(response.body()).unwrap();
        assert_eq!(body["status"], 503);
        assert_eq!(body["retry_after"], 13);
        assert!(
            !response.body().contains("db"),
            "no pool internals in the body"
        );
    }

    #[test]
    fn an_operation_timeout_is_a_504_and_deadline_exceeded() {
        let error = CheckoutError::OperationTimedOut {
            pool: Arc::from("db"),
            limit: Duration::from_secs(30),
        };
        let response: Response<String> = JsonRejection.rejection(&error);
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(response.headers().get(RETRY_AFTER).is_none());
        let body: serde_json::Value = serde_json::from_str(response.body()).unwrap();
        assert_eq!(body["status"], 504);
        let response: Response<()> = GrpcRejection.rejection(&error);
        assert_eq!(response.headers()["grpc-status"], "4");
    }

    #[test]
    fn grpc_rejection_is_unavailable() {
        let response: Response<()> = GrpcRejection.rejection(&open(Duration::ZERO));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(response.headers()[RETRY_AFTER], "1");
    }
}
