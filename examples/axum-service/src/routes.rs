//! The HTTP API: notes (create, list, get), a deliberately slow route, a route that never
//! touches the database, and the monitoring endpoints.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Path, Query};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pool_core::Pool;
use pool_tower::{Db, DbError, Monitoring, PoolLayer};
use serde::Deserialize;
use tower_http::trace::TraceLayer;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::store::{NewNote, Note, Store};

/// Errors a handler can answer with. A failed query is `DbError::Query` (from
/// `DbConn::check`): reported to the breaker, answered 500, its cause logged.
pub(crate) enum ApiError {
    Db(DbError),
    NotFound,
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::Db(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            // 503 + Retry-After when the pool cannot serve; 500 for a failed query.
            ApiError::Db(e) => e.into_response(),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "no such note").into_response(),
        }
    }
}

async fn create<S: Store>(
    db: Db<S::Manager>,
    Json(note): Json<NewNote>,
) -> Result<(StatusCode, Json<Note>), ApiError> {
    let mut conn = db.conn().await?;
    let created = S::create(&mut conn, note).await;
    Ok((StatusCode::CREATED, Json(conn.check(created)?)))
}

async fn list<S: Store>(db: Db<S::Manager>) -> Result<Json<Vec<Note>>, ApiError> {
    let mut conn = db.conn().await?;
    let notes = S::list(&mut conn).await;
    Ok(Json(conn.check(notes)?))
}

async fn get_one<S: Store>(
    db: Db<S::Manager>,
    Path(id): Path<i64>,
) -> Result<Json<Note>, ApiError> {
    let mut conn = db.conn().await?;
    let found = S::get(&mut conn, id).await;
    match conn.check(found)? {
        Some(note) => Ok(Json(note)),
        None => Err(ApiError::NotFound),
    }
}

#[derive(Deserialize)]
struct Slow {
    ms: Option<u64>,
}

/// Holds a connection for a while (default 500 ms, at most 30 s): makes the pool's
/// utilization, wait time and timeouts visible under load.
async fn slow<S: Store>(db: Db<S::Manager>, Query(slow): Query<Slow>) -> Result<String, ApiError> {
    let ms = slow.ms.unwrap_or(500).min(30_000);
    let _conn = db.conn().await?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(format!("held a connection for {ms} ms\n"))
}

async fn health() -> &'static str {
    "ok\n"
}

pub(crate) fn router<S: Store>(pool: Pool<S::Manager>, monitoring: Monitoring) -> Router {
    Router::new()
        .route("/notes", get(list::<S>).post(create::<S>))
        .route("/notes/{id}", get(get_one::<S>))
        .route("/slow", get(slow::<S>))
        .layer(PoolLayer::new(pool))
        .route("/health", get(health))
        .merge(monitoring.into_router())
        // Outermost: the request span is current while the pool layer and the handler run,
        // so the pool's checkout spans and events land under it.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(|response: &Response, _: Duration, span: &tracing::Span| {
                    span.record("http.response.status_code", response.status().as_u16());
                }),
        )
}

/// One server span per request, continuing the caller's trace (W3C `traceparent`, read by
/// the global propagator), named `METHOD /route` as the HTTP semantic conventions say.
fn request_span(req: &Request<Body>) -> tracing::Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(req.uri().path(), MatchedPath::as_str);
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {route}", req.method()),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = route,
        url.path = req.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Headers(req.headers()))
    });
    // Fails only without the tracing-opentelemetry layer (export off): nothing to continue.
    let _ = span.set_parent(parent);
    span
}

struct Headers<'a>(&'a axum::http::HeaderMap);

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
