//! Every metric, attribute and span name this crate emits, in one place.
//!
//! The `db.client.connection.*` metrics and the two attribute keys are the OpenTelemetry
//! semantic conventions for connection pools. Names this crate adds live under
//! `db.client.connection.pool.*`. After the Collector's Prometheus exporter, dots become
//! underscores and units become suffixes: `db.client.connection.wait_time` (unit `s`) is
//! `db_client_connection_wait_time_seconds_bucket`, `db.client.connection.timeouts` is
//! `db_client_connection_timeouts_total`.

/// Connections by state (`idle`, `used`). Observable up-down counter, `{connection}`.
pub const CONNECTION_COUNT: &str = "db.client.connection.count";
/// The maximum number of open connections. Observable up-down counter, `{connection}`.
pub const CONNECTION_MAX: &str = "db.client.connection.max";
/// The maximum number of idle connections. Observable up-down counter, `{connection}`.
pub const CONNECTION_IDLE_MAX: &str = "db.client.connection.idle.max";
/// The minimum number of idle connections. Observable up-down counter, `{connection}`.
pub const CONNECTION_IDLE_MIN: &str = "db.client.connection.idle.min";
/// Checkouts waiting for a connection. Observable up-down counter, `{request}`.
pub const CONNECTION_PENDING_REQUESTS: &str = "db.client.connection.pending_requests";
/// Checkouts that timed out. Counter, `{timeout}`.
pub const CONNECTION_TIMEOUTS: &str = "db.client.connection.timeouts";
/// Time to open a connection. Histogram, `s`.
pub const CONNECTION_CREATE_TIME: &str = "db.client.connection.create_time";
/// Time to obtain a connection from the pool. Histogram, `s`.
pub const CONNECTION_WAIT_TIME: &str = "db.client.connection.wait_time";
/// Time between checkout and return. Histogram, `s`.
pub const CONNECTION_USE_TIME: &str = "db.client.connection.use_time";

/// Connections closed, by [`CLOSE_REASON`]. Counter, `{connection}`.
pub const POOL_CLOSED: &str = "db.client.connection.pool.closed";
/// Connection attempts that failed. Counter, `{connection}`.
pub const POOL_CREATE_FAILURES: &str = "db.client.connection.pool.create_failures";
/// In use / max. Observable gauge, `1`.
pub const POOL_UTILIZATION: &str = "db.client.connection.pool.utilization";
/// Connections held past the leak threshold. Counter, `{connection}`.
pub const POOL_LEAKS: &str = "db.client.connection.pool.leaks";
/// Idle health probes, by [`HEALTH_CHECK_RESULT`]. Counter, `{check}`.
pub const POOL_HEALTH_CHECKS: &str = "db.client.connection.pool.health_checks";
/// The breaker's state: 1 for the current state, 0 for the others, by [`BREAKER_STATE`].
/// Observable gauge, `{state}`. Named `…breaker.status` so that the metric and its
/// attribute (`…breaker.state`) differ (in Prometheus: `db_client_connection_pool_breaker_status`
/// with the label `db_client_connection_pool_breaker_state`).
pub const BREAKER_STATE_METRIC: &str = "db.client.connection.pool.breaker.status";
/// Breaker transitions, by [`BREAKER_FROM`] and [`BREAKER_TO`]. Counter, `{transition}`.
pub const BREAKER_TRANSITIONS: &str = "db.client.connection.pool.breaker.transitions";
/// Checkouts turned away by an open breaker. Counter, `{request}`.
pub const BREAKER_REJECTED: &str = "db.client.connection.pool.breaker.rejected";

/// The pool's name (semantic conventions).
pub const POOL_NAME: &str = "db.client.connection.pool.name";
/// `idle` or `used` (semantic conventions).
pub const STATE: &str = "db.client.connection.state";
/// Why a connection was closed: `max_lifetime`, `idle_timeout`, `overflow`, `broken`,
/// `invalid`, `forced`.
pub const CLOSE_REASON: &str = "db.client.connection.pool.close.reason";
/// A breaker state: `closed`, `open`, `half_open`, `forced_open`, `disabled`.
pub const BREAKER_STATE: &str = "db.client.connection.pool.breaker.state";
/// The state a transition left.
pub const BREAKER_FROM: &str = "db.client.connection.pool.breaker.from";
/// The state a transition entered.
pub const BREAKER_TO: &str = "db.client.connection.pool.breaker.to";
/// Why a transition happened.
pub const BREAKER_REASON: &str = "db.client.connection.pool.breaker.reason";
/// `ok` or `failed`.
pub const HEALTH_CHECK_RESULT: &str = "db.client.connection.pool.health_check.result";
/// How a checkout ended: `ok`, `timeout`, `circuit_open`.
pub const CHECKOUT_OUTCOME: &str = "db.client.connection.pool.checkout.outcome";
/// Consecutive failures when the breaker changed state (transition spans).
pub const BREAKER_CONSECUTIVE_FAILURES: &str =
    "db.client.connection.pool.breaker.consecutive_failures";
/// How long a suspected leak had been held, in seconds (leak spans).
pub const LEAK_HELD: &str = "db.client.connection.pool.held";
/// Idle connections a forced recycle closed at once (forced-recycle spans).
pub const RECYCLE_IDLE_CLOSED: &str = "db.client.connection.pool.idle_closed";
/// Checked-out connections a forced recycle will close on return (forced-recycle spans).
pub const RECYCLE_CHECKED_OUT: &str = "db.client.connection.pool.checked_out";
/// Where a connection was checked out: the source file (semantic conventions, `code.*`).
pub const CODE_FILE_PATH: &str = "code.file.path";
/// Where a connection was checked out: the line (semantic conventions, `code.*`).
pub const CODE_LINE_NUMBER: &str = "code.line.number";

/// The name of the tracer this crate's spans come from.
pub const TRACER: &str = "pool-tower";

/// The span around one request's checkout (only for sampled traces).
pub const SPAN_CHECKOUT: &str = "db.client.connection.pool.checkout";
/// A breaker transition.
pub const SPAN_BREAKER_TRANSITION: &str = "db.client.connection.pool.breaker.transition";
/// A forced recycle.
pub const SPAN_FORCED_RECYCLE: &str = "db.client.connection.pool.force_recycle";
/// A suspected connection leak.
pub const SPAN_LEAK: &str = "db.client.connection.pool.leak";

/// Bucket boundaries (seconds) for the three time histograms: sub-millisecond to 10 s.
/// The SDK's default buckets are millisecond-scale and would put every sample in the first.
pub const TIME_BUCKETS: [f64; 15] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
