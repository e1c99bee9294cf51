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
