#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod breaker;
mod builder;
mod clock;
mod config;
mod connection;
mod env;
mod error;
mod handoff;
mod monitor;
mod observer;
mod pool;
#[cfg(feature = "postgres")]
pub mod postgres;
mod shared;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod stats;
mod url;

pub use bb8::ManageConnection;
pub use breaker::{
    Admission, BreakerState, CircuitBreaker, Probe, Transition, TransitionReason, FIRST_PROBE_DELAY,
};
pub use builder::PoolBuilder;
pub use config::{BreakerConfig, ConfigError, ConfigProblem, PoolConfig, Profile};
pub use connection::{ConnectFailure, PooledConnection, ResetFn};
pub use env::parse_duration;
pub use error::{BuildError, CheckoutError, ConnectError, PoolSnapshot, RunError, RECENT_ERROR};
pub use observer::{CheckoutOutcome, CloseReason, PoolEvent, PoolObserver, UtilizationLevel};
pub use pool::{Pool, RecycleReport, WeakPool};
#[cfg(feature = "postgres")]
pub use postgres::PostgresPool;
pub use shared::LEVEL_WINDOW;
#[cfg(feature = "sqlite")]
pub use sqlite::SqlitePool;
pub use stats::{BreakerStats, ClosedConnections, MonitorStatus, PoolStats};
pub use url::{BackendKind, DatabaseUrl, UrlError};

/// `true` when this build reads tokio's clock (the `test-util` feature); benchmarks check it
/// so they never measure the test clock.
#[doc(hidden)]
pub fn uses_test_clock() -> bool {
    cfg!(feature = "test-util")
}
