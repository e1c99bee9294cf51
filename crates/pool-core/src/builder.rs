//! The pool builder: knobs, observers, error policy; validates everything in `build`.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bb8::ManageConnection;

use crate::config::{PoolConfig, Profile};
use crate::connection::Managed;
use crate::error::BuildError;
use crate::monitor;
use crate::observer::PoolObserver;
use crate::pool::{Classify, Pool, PoolInner};
use crate::shared::Shared;
use crate::stats::MonitorStatus;
use crate::url::DatabaseUrl;

/// Builds a [`Pool`] around any bb8 [`ManageConnection`].
///
/// Setters never fail; [`PoolBuilder::build`] validates the whole configuration and reports
/// every problem at once, before anything is started.
///
/// ```
/// use std::time::Duration;
/// use pool_core::{PoolBuilder, PoolConfig};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let err = PoolBuilder::sqlite()
///     .base_size(0)
///     .max_overflow(0)
///     .checkout_timeout(Duration::ZERO)
///     .database_url("sqlite::memory:")
///     .build_sqlite()
///     .unwrap_err();
/// let text = err.to_string();
/// let mut lines = text.lines();
/// assert_eq!(lines.next(), Some("invalid pool configuration (2 problems):"));
/// assert_eq!(
///     lines.next(),
///     Some("  DB_POOL_SIZE=\"0 (with DB_MAX_OVERFLOW = 0)\": a pool of no connections; \
///           expected base size + overflow of at least 1")
/// );
/// assert!(lines.next().unwrap().starts_with("  DB_POOL_TIMEOUT=\"0s\": zero; expected "));
/// # }
/// ```
pub struct PoolBuilder<M: ManageConnection> {
    config: PoolConfig,
    url_error: Option<crate::url::UrlError>,
    observers: Vec<Arc<dyn PoolObserver>>,
    backend: Option<String>,
    classify: Option<Classify<M::Error>>,
    describe: fn(&M::Error) -> String,
    failure_kind: fn(&M::Error) -> crate::connection::ConnectFailure,
    cancel: Option<crate::shared::CancelHook>,
    reset: Option<crate::shared::ResetHook>,
    _manager: PhantomData<fn() -> M>,
}

impl<M: ManageConnection> fmt::Debug for PoolBuilder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("config", &self.config)
            .field("observers", &self.observers.len())
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl<M: ManageConnection> Default for PoolBuilder<M> {
    fn default() -> Self {
        Self::new()
    }
}

fn debug_text<E: fmt::Debug>(e: &E) -> String {
    format!("{e:?}")
}

impl<M: ManageConnection> PoolBuilder<M> {
    /// A builder with the development profile's defaults.
    pub fn new() -> Self {
        PoolBuilder {
            config: PoolConfig::development(),
            url_error: None,
            observers: Vec::new(),
            backend: None,
            classify: None,
            describe: debug_text::<M::Error>,
            failure_kind: |_| crate::connection::ConnectFailure::Transient,
            cancel: None,
            reset: None,
            _manager: PhantomData,
        }
    }

    /// Replaces the whole configuration (from [`PoolConfig::from_env`] or a literal).
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts again from a profile's defaults, keeping the URL and name.
    pub fn profile(mut self, profile: Profile) -> Self {
        let url = self.config.database_url.take();
        let name = self.config.name.take();
        self.config = PoolConfig {
            database_url: url,
            name,
            ..PoolConfig::for_profile(profile)
        };
        self
    }

    /// Where to connect. An unparsable URL is reported by `build`.
    pub fn database_url(mut self, url: &str) -> Self {
        match DatabaseUrl::parse(url) {
            Ok(url) => {
                self.config.database_url = Some(url);
                self.url_error = None;
            }
            Err(e) => self.url_error = Some(e),
        }
        self
    }

    /// The pool's name. Defaults to `host:port/database` of the URL.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = Some(name.into());
        self
    }

    /// Connections kept warm. Defaults to 10 (development profile).
    pub fn base_size(mut self, n: u32) -> Self {
        self.config.base_size = n;
        self
    }

    /// Connections allowed above the base. Defaults to 20 (development profile).
    pub fn max_overflow(mut self, n: u32) -> Self {
        self.config.max_overflow = n;
        self
    }

    /// How long a checkout waits. Defaults to 20 s (development profile).
    pub fn checkout_timeout(mut self, d: Duration) -> Self {
        self.config.checkout_timeout = d;
        self
    }

    /// Maximum connection age (`None` for no limit). Defaults to 1800 s. Measured on the
    /// pool's clock, which paused tokio time moves only with the `test-util` feature.
    pub fn max_lifetime(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.config.max_lifetime = d.into();
        self
    }

    /// Limit for opening one connection. Defaults to 10 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.config.connect_timeout = d;
        self
    }

    /// Period of the monitor. Defaults to 300 s (development profile).
    pub fn health_interval(mut self, d: Duration) -> Self {
        self.config.health_interval = d;
        self
    }

    /// Ping on checkout (skipped within `validation_bypass` of last use). Defaults to `true`.
    pub fn pre_ping(mut self, on: bool) -> Self {
        self.config.pre_ping = on;
        self
    }

    /// Skip the ping for connections used within this window. Defaults to 500 ms. Measured
    /// on the pool's clock, which paused tokio time moves only with the `test-util` feature.
    pub fn validation_bypass(mut self, d: Duration) -> Self {
        self.config.validation_bypass = d;
        self
    }

    /// Limit for one validation (pre-ping or health probe); a connection whose validation
    /// times out is closed. Defaults to 3 s.
    pub fn validation_timeout(mut self, d: Duration) -> Self {
        self.config.validation_timeout = d;
        self
    }

    /// TCP keepalive idle time for PostgreSQL connections (`None`: off). Defaults to 10 s.
    pub fn tcp_keepalive(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.config.tcp_keepalive = d.into();
        self
    }

    /// TCP user timeout for PostgreSQL connections (`None`: the system's). Defaults to 10 s.
    pub fn tcp_user_timeout(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.config.tcp_user_timeout = d.into();
        self
    }

    /// Close connections above the base once idle this long (`None`: never). Defaults to
    /// 60 s.
    pub fn idle_timeout(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.config.idle_timeout = d.into();
        self
    }

    /// Warn about connections held longer than this. Defaults to `None` (off). Measured on
    /// the pool's clock, which paused tokio time moves only with the `test-util` feature.
    pub fn leak_threshold(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.config.leak_threshold = d.into();
        self
    }

    /// Warn and critical utilization thresholds. Defaults to 0.80 and 0.95.
    pub fn utilization_thresholds(mut self, warn: f64, critical: f64) -> Self {
        self.config.warn_utilization = warn;
        self.config.critical_utilization = critical;
        self
    }

    /// Circuit-breaker settings. Defaults to [`BreakerConfig::default`](crate::BreakerConfig).
    pub fn breaker(mut self, breaker: crate::BreakerConfig) -> Self {
        self.config.breaker = breaker;
        self
    }

    /// Adds an observer (telemetry, a test recorder). Several may be added.
    pub fn observer(mut self, observer: Arc<dyn PoolObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    /// The backend name in stats (`postgresql`, `sqlite`). Defaults to the URL's backend,
    /// or `"custom"`.
    pub fn backend_name(mut self, name: impl Into<String>) -> Self {
        self.backend = Some(name.into());
        self
    }

    /// Decides which operation errors count toward the breaker (see [`Pool::run`]).
    /// Defaults to every error for a custom manager; the PostgreSQL and SQLite backends
    /// count only connection-class errors.
    pub fn classify_errors(
        mut self,
        f: impl Fn(&M::Error) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.classify = Some(Arc::new(f));
        self
    }

    /// How the manager's errors are turned into text for stats and logs. Defaults to `Debug`.
    pub fn describe_errors(mut self, f: fn(&M::Error) -> String) -> Self {
        self.describe = f;
        self
    }

    /// What a failed connect says about the database (see
    /// [`ConnectFailure`](crate::ConnectFailure)). Defaults to every failure being
    /// [`ConnectFailure::Transient`](crate::ConnectFailure::Transient); the PostgreSQL backend
    /// treats authentication failures and a missing database as fatal and `too many
    /// connections` (SQLSTATE 53300) as capacity.
    pub fn connect_failures(
        mut self,
        f: fn(&M::Error) -> crate::connection::ConnectFailure,
    ) -> Self {
        self.failure_kind = f;
        self
    }

    /// How to ask the database to stop what a connection is running, for an operation the
    /// pool gives up on (past the operation timeout, or abandoned by its caller) before it
    /// closes the connection; closing alone leaves the server running it. Called inside the
    /// runtime; spawn what it needs to await. The PostgreSQL backend sends a cancel request.
    /// Defaults to nothing.
    pub fn cancel_with(mut self, f: impl Fn(&M::Connection) + Send + Sync + 'static) -> Self {
        self.cancel = Some(Arc::new(move |conn: &dyn std::any::Any| {
            if let Some(conn) = conn.downcast_ref::<M::Connection>() {
                f(conn);
            }
        }));
        self
    }

    /// How to bring a returned connection back to a clean session before anyone else gets
    /// it. `on_return` is asked, without I/O, on every return, and `on_checkout` on every
    /// checkout (for what could not be seen yet at the return); when either says yes, the
    /// connection stays out of use while `reset` runs (bounded by the validation timeout). It
    /// goes back, or to the borrower, when `reset` returns `Ok(true)` (it undid something,
    /// counted in [`PoolStats::sessions_reset`](crate::PoolStats::sessions_reset)) or
    /// `Ok(false)` (nothing to undo after all); an error or the timeout closes it (counted
    /// `invalid`, and the database is asked to stop what it runs, see
    /// [`PoolBuilder::cancel_with`]).
    ///
    /// The PostgreSQL backend rolls back a transaction left open or failed, and waits out
    /// requests still queued. Defaults to none.
    pub fn reset_with(
        self,
        on_return: fn(&M::Connection) -> bool,
        on_checkout: fn(&M::Connection) -> bool,
        reset: crate::connection::ResetFn<M::Connection>,
    ) -> Self {
        self.with_reset_hooks(on_return, on_checkout, reset, None)
    }

    /// [`PoolBuilder::reset_with`], with a place to leave connections returned while their
    /// driver still has work queued (see `connection::Park`).
    #[cfg(feature = "postgres")]
    pub(crate) fn reset_and_park_with(
        self,
        on_return: fn(&M::Connection) -> bool,
        on_checkout: fn(&M::Connection) -> bool,
        reset: crate::connection::ResetFn<M::Connection>,
        park: crate::connection::ParkFn<M::Connection>,
    ) -> Self {
        self.with_reset_hooks(on_return, on_checkout, reset, Some(park))
    }

    fn with_reset_hooks(
        mut self,
        on_return: fn(&M::Connection) -> bool,
        on_checkout: fn(&M::Connection) -> bool,
        reset: crate::connection::ResetFn<M::Connection>,
        park: Option<crate::connection::ParkFn<M::Connection>>,
    ) -> Self {
        self.reset = Some(Arc::new(crate::connection::ResetHooks {
            on_return,
            on_checkout,
            reset,
            park,
        }));
        self
    }

    /// The configuration as it stands.
    pub fn current_config(&self) -> &PoolConfig {
        &self.config
    }

    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub(crate) fn require_url(&self, kind: crate::BackendKind) -> Result<DatabaseUrl, BuildError> {
        self.check()?;
        match &self.config.database_url {
            Some(url) if url.kind() == kind => Ok(url.clone()),
            Some(url) => Err(BuildError::Url(format!(
                "DATABASE_URL points at {} (`{}`) but a {} pool was asked for",
                url.kind(),
                url.redacted(),
                kind
            ))),
            None => Err(BuildError::Url(format!(
                "no DATABASE_URL: a {kind} pool needs one"
            ))),
        }
    }

    fn check(&self) -> Result<(), BuildError> {
        let mut problems = Vec::new();
        if let Some(e) = &self.url_error {
            problems.push(crate::config::ConfigProblem::url("DATABASE_URL", e));
        }
        self.config.collect_problems(&mut problems);
        crate::config::ConfigError::from_problems(problems)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BuildError::NoRuntime);
        }
        Ok(())
    }

    /// Validates the configuration and starts the pool around `manager`.
    ///
    /// Returns at once: the base connections open in the background, and the monitor starts.
    /// A database that is down does not fail the build; checkouts report it (and the breaker
    /// opens after `failure_threshold` failure events, or at once on a fatal one such as a
    /// wrong password).
    ///
    /// # Errors
    ///
    /// [`BuildError::Config`] with every problem in the configuration, or
    /// [`BuildError::NoRuntime`] outside a Tokio runtime. Nothing is started on error.
    pub fn build(self, manager: M) -> Result<Pool<M>, BuildError> {
        self.check()?;
        let config = self.config;
        let backend = self
            .backend
            .or_else(|| config.backend().map(|b| b.system_name().to_owned()))
            .unwrap_or_else(|| "custom".to_owned());
        let name = config.effective_name();
        let shared = Arc::new(Shared::new(
            name,
            backend,
            config.clone(),
            self.observers,
            self.cancel,
            self.reset,
            crate::handoff::Queue::<M>::boxed(),
        ));
        let managed = Managed {
            inner: Arc::new(manager),
            shared: shared.clone(),
            describe: self.describe,
            failure_kind: self.failure_kind,
        };
        // bb8 panics on zero sizes and durations; `check` has ruled those out. Lifetimes are
        // enforced with jitter on checkout and return and by the monitor's idle walk, not by
        // bb8 (whose unjittered check reads the OS clock on every return). Validation runs in
        // our checkout (it already knows the time), not in bb8's `test_on_check_out`. No
        // `min_idle`: the base is kept by total count (`top_up`), as SQLAlchemy does. No bb8
        // idle timeout either: its reaper would close the base too; the pool's own reaper
        // closes only connections above the base.
        let bb8 = bb8::Pool::builder()
            .max_size(config.max_size())
            .connection_timeout(config.checkout_timeout)
            .max_lifetime(None)
            .idle_timeout(None)
            .test_on_check_out(false)
            .retry_connection(true)
            // Idle connections as a stack: the most recently used goes out first, so under
            // light load the others stay idle and the reaper can close those above the base
            // (a queue would touch every one in turn and keep them all open), and the one
            // handed out is the likeliest to be within the pre-ping bypass window. Waiting
            // checkouts are served first come, first served by the pool's own queue (see
            // `handoff`); bb8's connection timeout only bounds that queue's pumps.
            .queue_strategy(bb8::QueueStrategy::Lifo)
            .build_unchecked(managed.clone());
        let classify = self
            .classify
            .unwrap_or_else(|| Arc::new(|_: &M::Error| true));
        let inner = Arc::new(PoolInner {
            bb8,
            shared: shared.clone(),
            managed,
            classify,
        });
        monitor::spawn(&inner);
        inner.spawn_top_up();
        shared
            .monitor_status
            .store(MonitorStatus::Running as u8, Relaxed);
        tracing::info!(
            pool = %shared.name,
            backend = %shared.backend,
            base_size = config.base_size,
            max_overflow = config.max_overflow,
            checkout_timeout_ms = config.checkout_timeout.as_millis() as u64,
            "connection pool started"
        );
        Ok(Pool { inner })
    }
}
