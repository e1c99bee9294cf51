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

/// One pool a sink (the telemetry, the monitoring API) reports, held weakly.
#[derive(Clone)]
pub(crate) struct Registered {
    pub(crate) name: std::sync::Arc<str>,
    pub(crate) id: u64,
    pub(crate) stats: StatsSource,
    alive: std::sync::Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Registered {
    pub(crate) fn new<M: pool_core::ManageConnection>(pool: &pool_core::Pool<M>) -> Self {
        let weak = pool.downgrade();
        Registered {
            name: pool.name().into(),
            id: pool.id(),
            stats: stats_source(pool),
            alive: std::sync::Arc::new(move || weak.upgrade().is_some()),
        }
    }

    /// Adds `self` to `pools` (dropping pools that are gone first): `Ok(false)` if this very
    /// pool is there already, an error if another live pool has its name.
    pub(crate) fn join(
        self,
        pools: &mut Vec<Registered>,
        sink: &'static str,
    ) -> Result<bool, NameInUse> {
        pools.retain(|p| (p.alive)());
        match pools.iter().find(|p| p.name == self.name) {
            Some(p) if p.id == self.id => Ok(false),
            Some(_) => {
                let error = NameInUse {
                    name: self.name.to_string(),
                    sink,
                };
                tracing::error!(pool = %self.name, %error, "pool not reported");
                Err(error)
            }
            None => {
                pools.push(self);
                Ok(true)
            }
        }
    }
}

/// A second pool under a name that a live pool already has in the same
/// [`PoolTelemetry`] or [`Monitoring`]: two pools under one name would be merged into one
/// series and one report. The refused pool's gauges and report are left out, but the
/// observer attached to its builder ([`PoolTelemetry::observer`]) still labels its counters,
/// histograms and spans with the name: treat the error as a configuration error (fail at
/// start-up) and give each pool its own name
/// ([`PoolBuilder::name`](pool_core::PoolBuilder::name), or `DB_POOL_NAME`); the default
/// name, `host:port/database`, is the same for two pools on one database (a primary and a
/// second pool for jobs, say). A name is free again once its pool is gone (dropped, and
/// its background work done).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use pool_core::{PoolBuilder, SqlitePool};
///
/// let a: SqlitePool = PoolBuilder::sqlite().database_url("sqlite::memory:").name("jobs").build_sqlite().unwrap();
/// let b: SqlitePool = PoolBuilder::sqlite().database_url("sqlite::memory:").name("jobs").build_sqlite().unwrap();
/// let monitoring = pool_tower::Monitoring::new().pool(&a).unwrap();
/// let error = monitoring.pool(&b).unwrap_err();
/// assert_eq!(error.name(), "jobs");
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameInUse {
    name: String,
    sink: &'static str,
}

impl NameInUse {
    /// The name both pools have.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for NameInUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "another pool named \"{}\" is already reported by this {}; two pools under one \
             name would be merged into one; give each pool its own name (PoolBuilder::name or \
             DB_POOL_NAME)",
            self.name, self.sink
        )
    }
}

impl std::error::Error for NameInUse {}
