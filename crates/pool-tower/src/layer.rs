//! [`PoolLayer`]: one pool, shared by every clone of the service it wraps.

use std::fmt;
use std::panic::Location;
use std::sync::Arc;

use pool_core::{ManageConnection, Pool};
use tower_layer::Layer;

use crate::response::{GrpcRejection, JsonRejection};
use crate::service::PoolService;

/// When the connection is checked out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// On the handler's first [`Db::conn`](crate::Db::conn). Routes that never touch the
    /// database hold nothing. The default.
    Lazy,
    /// Before the inner service is called; a failed checkout is answered with the rejection
    /// and the inner service never runs.
    Eager,
}

/// Puts a [`Db`](crate::Db) handle into every request and turns pool failures into
/// responses (503 with `Retry-After`, or gRPC UNAVAILABLE).
///
/// ```no_run
/// # #[cfg(feature = "axum")] async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use axum::{routing::get, Router};
/// use pool_core::postgres::{tokio_postgres::NoTls, PostgresManager};
/// use pool_core::{PoolBuilder, PoolConfig};
/// use pool_tower::{Db, DbError, PoolLayer};
///
/// async fn now(db: Db<PostgresManager<NoTls>>) -> Result<String, DbError> {
///     let conn = db.conn().await?;
///     let row = conn.query_one("select now()::text", &[]).await.map_err(DbError::query)?;
///     Ok(row.get(0))
/// }
///
/// let pool = PoolBuilder::postgres().config(PoolConfig::from_env()?).build_postgres()?;
/// let app = Router::new().route("/now", get(now)).layer(PoolLayer::new(pool));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app).await?;
/// # Ok(()) }
/// ```
///
/// With tonic, use [`PoolLayer::grpc`] so failures become `grpc-status: 14`:
///
/// ```no_run
/// # async fn demo(pool: pool_core::PostgresPool) -> Result<(), Box<dyn std::error::Error>> {
/// let (_reporter, health) = tonic_health::server::health_reporter();
/// tonic::transport::Server::builder()
///     .layer(pool_tower::PoolLayer::new(pool).grpc().eager())
///     .add_service(health)
///     .serve("127.0.0.1:50051".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
pub struct PoolLayer<M: ManageConnection, R = JsonRejection> {
    shared: Arc<LayerShared<M, R>>,
}

pub(crate) struct LayerShared<M: ManageConnection, R> {
    pub(crate) pool: Pool<M>,
    pub(crate) mode: Mode,
    pub(crate) rejection: R,
    /// Where the layer was made (or made eager): the user's code, recorded for eager
    /// checkouts, which no handler line asks for.
    pub(crate) location: &'static Location<'static>,
}

impl<M: ManageConnection> PoolLayer<M> {
    /// A lazy layer over `pool` answering failures with [`JsonRejection`].
    #[track_caller]
    pub fn new(pool: Pool<M>) -> Self {
        PoolLayer {
            shared: Arc::new(LayerShared {
                pool,
                mode: Mode::Lazy,
                rejection: JsonRejection,
                location: Location::caller(),
            }),
        }
    }
}

impl<M: ManageConnection, R: Clone> PoolLayer<M, R> {
    fn with<R2>(
        &self,
        mode: Mode,
        rejection: R2,
        location: &'static Location<'static>,
    ) -> PoolLayer<M, R2> {
        PoolLayer {
            shared: Arc::new(LayerShared {
                pool: self.shared.pool.clone(),
                mode,
                rejection,
                location,
            }),
        }
    }

    /// Check out before calling the inner service. Leak reports and checkout spans of such
    /// checkouts name the line that called `eager()` (no handler line asked for them), until
    /// a handler takes the connection with [`Db::conn`](crate::Db::conn): then its line.
    #[track_caller]
    pub fn eager(self) -> Self {
        self.with(
            Mode::Eager,
            self.shared.rejection.clone(),
            Location::caller(),
        )
    }

    /// Check out on the handler's first use. The default.
    pub fn lazy(self) -> Self {
        self.with(
            Mode::Lazy,
            self.shared.rejection.clone(),
            self.shared.location,
        )
    }

    /// Answer failures as gRPC UNAVAILABLE ([`GrpcRejection`]).
    pub fn grpc(self) -> PoolLayer<M, GrpcRejection> {
        self.with(self.shared.mode, GrpcRejection, self.shared.location)
    }

    /// Answer failures with your own [`Rejection`](crate::Rejection).
    pub fn rejection<R2>(self, rejection: R2) -> PoolLayer<M, R2> {
        self.with(self.shared.mode, rejection, self.shared.location)
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.shared.mode
    }
}

impl<M: ManageConnection, R> Clone for PoolLayer<M, R> {
    fn clone(&self) -> Self {
        PoolLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<M: ManageConnection, R> fmt::Debug for PoolLayer<M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolLayer")
            .field("pool", &self.shared.pool.name())
            .field("mode", &self.shared.mode)
            .finish_non_exhaustive()
    }
}

impl<S, M: ManageConnection, R> Layer<S> for PoolLayer<M, R> {
    type Service = PoolService<S, M, R>;

    fn layer(&self, inner: S) -> Self::Service {
        PoolService::new(inner, self.shared.clone())
    }
}
