#![doc = include_str!("../README.md")]

mod extract;
mod future;
mod layer;
pub mod monitoring;
mod response;
pub mod semconv;
mod service;
pub mod telemetry;

pub use extract::{Db, DbConn, DbError};
pub use future::ResponseFuture;
pub use layer::{Mode, PoolLayer};
pub use monitoring::{Monitoring, MonitoringService};
pub use pool_core;
pub use response::{GrpcRejection, JsonRejection, Rejection};
pub use service::PoolService;
pub use telemetry::PoolTelemetry;

/// Reads a pool's stats without keeping the pool alive: `None` once it is dropped. Telemetry
/// and the monitoring API both hold pools this way.
pub(crate) type StatsSource =
    std::sync::Arc<dyn Fn() -> Option<pool_core::PoolStats> + Send + Sync>;

pub(crate) fn stats_source<M: pool_core::ManageConnection>(
    pool: &pool_core::Pool<M>,
) -> StatsSource {
    let weak = pool.downgrade();
    std::sync::Arc::new(move || weak.upgrade().map(|p| p.stats()))
}
