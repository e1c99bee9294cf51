//! The HTTP API: notes (create, list, get), a deliberately slow route, a route that never
//! touches the database, and the monitoring endpoints.

use std::time::Duration;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pool_core::Pool;
use pool_tower::{Db, DbError, Monitoring, PoolLayer};
use serde::Deserialize;

use crate::store::{NewNote, Note, Store};

/// Errors a handler can answer with.
pub(crate) enum ApiError {
    Db(DbError),
    Query(String),
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
            // 503 + Retry-After when the pool cannot serve.
            ApiError::Db(e) => e.into_response(),
            ApiError::Query(e) => {
                tracing::error!(error = %e, "query failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "query failed").into_response()
            }
            ApiError::NotFound => (StatusCode::NOT_FOUND, "no such note").into_response(),
        }
    }
}

async fn create<S: Store>(
    db: Db<S::Manager>,
    Json(note): Json<NewNote>,
) -> Result<(StatusCode, Json<Note>), ApiError> {
    let mut conn = db.conn().await?;
    let note = S::create(&mut conn, note).await.map_err(ApiError::Query)?;
    Ok((StatusCode::CREATED, Json(note)))
}

async fn list<S: Store>(db: Db<S::Manager>) -> Result<Json<Vec<Note>>, ApiError> {
    let mut conn = db.conn().await?;
    Ok(Json(S::list(&mut conn).await.map_err(ApiError::Query)?))
}

async fn get_one<S: Store>(
    db: Db<S::Manager>,
    Path(id): Path<i64>,
) -> Result<Json<Note>, ApiError> {
    let mut conn = db.conn().await?;
    match S::get(&mut conn, id).await.map_err(ApiError::Query)? {
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
}
