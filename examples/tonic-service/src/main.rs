//! pool-tower on gRPC: the standard `grpc.health.v1.Health` service, answered from the
//! database through the request's pooled connection. When the pool cannot serve (exhausted,
//! or the breaker open) the layer answers `UNAVAILABLE` before the handler runs.
//!
//! `cargo run -p tonic-service` (embedded SQLite; `DATABASE_URL=postgres://…` for
//! PostgreSQL), then e.g. `grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check`.

use std::pin::Pin;

use pool_core::postgres::{tokio_postgres::NoTls, PostgresManager};
use pool_core::sqlite::SqliteManager;
use pool_core::{ManageConnection, Pool, PoolBuilder, PoolConfig};
use pool_tower::{Db, PoolLayer};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// How each backend proves it is alive.
trait Ping: ManageConnection {
    fn ping(conn: &mut Self::Connection) -> impl std::future::Future<Output = bool> + Send;
}

impl Ping for PostgresManager<NoTls> {
    async fn ping(conn: &mut pool_core::postgres::PostgresConnection) -> bool {
        conn.simple_query("select 1").await.is_ok()
    }
}

impl Ping for SqliteManager {
    async fn ping(conn: &mut pool_core::sqlite::SqliteConnection) -> bool {
        conn.call(|c| c.query_row("select 1", [], |r| r.get::<_, i64>(0)))
            .await
            .is_ok()
    }
}

/// SERVING when a query on the request's connection works.
struct DbHealth<M>(std::marker::PhantomData<fn() -> M>);

#[tonic::async_trait]
impl<M: Ping> Health for DbHealth<M> {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let db = request
            .extensions()
            .get::<Db<M>>()
            .cloned()
            .ok_or_else(|| {
                tracing::error!("no Db in the request: the PoolLayer is not installed");
                Status::internal("internal error")
            })?;
        // The cause (host:port/db, the database's own message) goes to the log; the client
        // gets a generic status, as it would from the layer's own rejection.
        let mut conn = db.conn().await.map_err(|e| {
            tracing::warn!(error = %e, "health check: no database connection");
            Status::unavailable("the database is unavailable")
        })?;
        let status = if M::ping(&mut conn).await {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        Ok(Response::new(HealthCheckResponse {
            status: status.into(),
        }))
    }

    type WatchStream =
        Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch is not offered; poll Check"))
    }
}

async fn serve<M: Ping>(
    pool: Pool<M>,
    addr: std::net::SocketAddr,
) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "tonic-service on {addr} (pool `{}`); try grpc.health.v1.Health/Check",
        pool.name()
    );
    tonic::transport::Server::builder()
        .layer(PoolLayer::new(pool).grpc())
        .add_service(HealthServer::new(DbHealth::<M>(std::marker::PhantomData)))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();
    let mut config = PoolConfig::from_env()?;
    if config.database_url.is_none() {
        config.database_url = Some(pool_core::DatabaseUrl::parse("sqlite::memory:")?);
    }
    let addr = std::env::var("GRPC_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:50051".into())
        .parse()?;
    match config.backend() {
        Some(pool_core::BackendKind::Postgres) => {
            serve(
                PoolBuilder::postgres().config(config).build_postgres()?,
                addr,
            )
            .await
        }
        _ => serve(PoolBuilder::sqlite().config(config).build_sqlite()?, addr).await,
    }
}
