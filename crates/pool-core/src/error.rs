//! The errors a pool hands out. Each says what happened in words an operator can act on,
//! and none carries a password.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ConfigError;

/// The pool's state when a checkout gave up, as in HikariCP's
/// "(total=25, active=25, idle=0, waiting=37)".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// Open connections.
    pub total: u32,
    /// Connections checked out.
    pub in_use: u32,
    /// Connections idle.
    pub idle: u32,
    /// Checkouts waiting, this one included.
    pub waiting: u64,
    /// The size limit.
    pub max: u32,
}

/// Why the pool could not serve a request: no connection in time, an open breaker, or (from
/// pool-tower's layer) an operation that ran past the operation timeout.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum CheckoutError {
    /// No connection became available within the checkout timeout.
    Timeout {
        /// The pool's name.
        pool: Arc<str>,
        /// How long the checkout waited.
        waited: Duration,
        /// The pool when it gave up.
        snapshot: PoolSnapshot,
        /// The most recent connect or ping error, passwords hidden, if it is recent (at most
        /// [`RECENT_ERROR`] before the timeout): then it is usually the reason no connection
        /// came. An older one is left out: it is not the cause of this timeout (a pool
        /// exhausted by its own load, or by a lock, long after an outage).
        last_error: Option<String>,
        /// How long before the timeout `last_error` happened.
        last_error_age: Option<Duration>,
    },
    /// The circuit breaker is open (the database is failing, or an operator forced it), so
    /// the pool did not wait.
    CircuitOpen {
        /// The pool's name.
        pool: Arc<str>,
        /// Time until the pool's next recovery probe, at least 100 ms (use it for
        /// `Retry-After`).
        retry_after: Duration,
        /// The most recent connection error, passwords hidden: why the breaker opened
        /// (`password authentication failed for user "app"`, `Connection refused`).
        last_error: Option<String>,
        /// How long ago `last_error` happened.
        last_error_age: Option<Duration>,
    },
    /// The connection a request held was busy with one operation for longer than the
    /// breaker's operation timeout (`DB_CIRCUIT_BREAKER_TIMEOUT`): pool-tower's layer
    /// cancelled the request, closed the connection and counted a breaker failure. The
    /// layer's default rejections answer it with 504 (HTTP) or DEADLINE_EXCEEDED (gRPC).
    OperationTimedOut {
        /// The pool's name.
        pool: Arc<str>,
        /// The operation timeout that ran out.
        limit: Duration,
    },
}

impl CheckoutError {
    /// How long a client should wait before trying again: the remaining open time, or the
    /// checkout timeout's order of magnitude for an exhausted pool (1 s).
    pub fn retry_after(&self) -> Duration {
        match self {
            CheckoutError::Timeout { .. } | CheckoutError::OperationTimedOut { .. } => {
                Duration::from_secs(1)
            }
            CheckoutError::CircuitOpen { retry_after, .. } => *retry_after,
        }
    }

    /// `true` for [`CheckoutError::OperationTimedOut`].
    pub fn is_operation_timeout(&self) -> bool {
        matches!(self, CheckoutError::OperationTimedOut { .. })
    }

    /// `true` for [`CheckoutError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, CheckoutError::Timeout { .. })
    }

    /// `true` for [`CheckoutError::CircuitOpen`].
    pub fn is_circuit_open(&self) -> bool {
        matches!(self, CheckoutError::CircuitOpen { .. })
    }
}

impl fmt::Display for CheckoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckoutError::Timeout {
                pool,
                waited,
                snapshot: s,
                last_error,
                last_error_age,
            } => {
                write!(
                    f,
                    "connection is not available in pool `{pool}`, request timed out after {}ms \
                     (total={}, active={}, idle={}, waiting={}, max={})",
                    waited.as_millis(),
                    s.total,
                    s.in_use,
                    s.idle,
                    s.waiting,
                    s.max
                )?;
                write_last_error(f, last_error.as_deref(), *last_error_age)
            }
            CheckoutError::CircuitOpen {
                pool,
                retry_after,
                last_error,
                last_error_age,
            } => {
                write!(
                    f,
                    "circuit breaker of pool `{pool}` is open; retry after {:.1}s",
                    retry_after.as_secs_f64()
                )?;
                write_last_error(f, last_error.as_deref(), *last_error_age)
            }
            CheckoutError::OperationTimedOut { pool, limit } => write!(
                f,
                "an operation on a connection of pool `{pool}` ran past the operation timeout \
                 of {}ms; the request was cancelled and the connection closed",
                limit.as_millis()
            ),
        }
    }
}

/// How old a connection error may be and still be offered as the cause of a checkout
/// timeout.
pub const RECENT_ERROR: Duration = Duration::from_secs(60);

/// `; last connection error (1.2s ago): …`, when there is one.
fn write_last_error(
    f: &mut fmt::Formatter<'_>,
    error: Option<&str>,
    age: Option<Duration>,
) -> fmt::Result {
    match (error, age) {
        (Some(e), Some(age)) => write!(
            f,
            "; last connection error ({:.1}s ago): {e}",
            age.as_secs_f64()
        ),
        (Some(e), None) => write!(f, "; last connection error: {e}"),
        (None, _) => Ok(()),
    }
}

impl StdError for CheckoutError {}

/// Why [`Pool::run`](crate::Pool::run) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RunError<E> {
    /// No connection could be checked out.
    Checkout(CheckoutError),
    /// The operation took longer than the breaker's operation timeout.
    TimedOut(Duration),
    /// The operation returned an error.
    Operation(E),
}

impl<E: fmt::Display> fmt::Display for RunError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Checkout(e) => e.fmt(f),
            RunError::TimedOut(after) => {
                write!(
                    f,
                    "database operation timed out after {}ms",
                    after.as_millis()
                )
            }
            RunError::Operation(e) => write!(f, "database operation failed: {e}"),
        }
    }
}

impl<E: StdError + 'static> StdError for RunError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            RunError::Checkout(e) => Some(e),
            RunError::TimedOut(_) => None,
            RunError::Operation(e) => Some(e),
        }
    }
}

/// Why a pool could not be built. Nothing is left running when this is returned.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// The configuration breaks a rule.
    Config(ConfigError),
    /// The configuration has no `DATABASE_URL`, or one for another backend.
    Url(String),
    /// The driver rejected the connection settings.
    Driver(Box<dyn StdError + Send + Sync>),
    /// `build` was called outside a Tokio runtime.
    NoRuntime,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Config(e) => e.fmt(f),
            BuildError::Url(why) => f.write_str(why),
            BuildError::Driver(e) => write!(f, "the database driver rejected the settings: {e}"),
            BuildError::NoRuntime => f.write_str("a pool must be built inside a Tokio runtime"),
        }
    }
}

impl StdError for BuildError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            BuildError::Config(e) => Some(e),
            BuildError::Driver(e) => Some(&**e),
            BuildError::Url(_) | BuildError::NoRuntime => None,
        }
    }
}

impl From<ConfigError> for BuildError {
    fn from(e: ConfigError) -> Self {
        BuildError::Config(e)
    }
}

/// The error type of the connection manager the pool wraps around yours.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectError<E> {
    /// The backend's own error.
    Backend(E),
    /// Opening the connection took longer than the connect timeout.
    Timeout(Duration),
    /// The breaker is open, so no connection was attempted.
    CircuitOpen,
    /// The connection was closed by the pool (lifetime, forced recycle, broken).
    Retired,
}

impl<E: fmt::Debug> fmt::Display for ConnectError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Backend(e) => write!(f, "{e:?}"),
            ConnectError::Timeout(d) => write!(f, "connect timed out after {}ms", d.as_millis()),
            ConnectError::CircuitOpen => f.write_str("circuit breaker open; connect skipped"),
            ConnectError::Retired => f.write_str("connection retired by the pool"),
        }
    }
}

impl<E: fmt::Debug> StdError for ConnectError<E> {}
