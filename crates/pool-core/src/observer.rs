//! The observer seam: everything the pool does, as events, for telemetry and tests.
//!
//! pool-core knows nothing of metrics or tracing exporters. An observer attached with
//! [`PoolBuilder::observer`](crate::PoolBuilder::observer) sees every checkout, return,
//! connection opened or closed, breaker transition, utilization level change and suspected
//! leak. `pool-tower`'s OpenTelemetry telemetry is one such observer.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use pool_core::{PoolEvent, PoolObserver};
//!
//! #[derive(Debug, Default)]
//! struct CountCloses(AtomicU64);
//!
//! impl PoolObserver for CountCloses {
//!     fn on_event(&self, _pool: &str, event: &PoolEvent<'_>) {
//!         if let PoolEvent::ConnectionClosed { .. } = event {
//!             self.0.fetch_add(1, Ordering::Relaxed);
//!         }
//!     }
//! }
//! ```

use std::any::Any;
use std::fmt;
use std::panic::Location;
use std::time::Duration;

use crate::breaker::Transition;

/// Receives the pool's events.
///
/// Callbacks run inline on the task that caused the event, sometimes while the pool's
/// internal lock is held: keep them short, never block, and never call back into the pool
/// (no [`Pool::stats`](crate::Pool::stats) from inside a callback). A panic in a callback is
/// caught and logged; it does not reach the pool.
pub trait PoolObserver: Send + Sync + 'static {
    /// One event of the pool named `pool`.
    fn on_event(&self, pool: &str, event: &PoolEvent<'_>);

    /// Called on the borrower's task at each checkout while leak detection is on: whatever
    /// ties a later leak report to the borrower (the current trace context, say). It comes
    /// back to this observer as `context` in that checkout's [`PoolEvent::LeakSuspected`].
    /// Keep it cheap (it runs on every checkout) and return `None` when there is nothing to
    /// keep; the default keeps nothing.
    fn checkout_context(&self, pool: &str) -> Option<Box<dyn Any + Send + Sync>> {
        let _ = pool;
        None
    }
}

/// Something the pool did.
#[derive(Debug)]
#[non_exhaustive]
pub enum PoolEvent<'a> {
    /// A checkout finished (successfully or not) after waiting `waited`.
    Checkout {
        /// Time from the call to the outcome.
        waited: Duration,
        /// What came of it.
        outcome: CheckoutOutcome,
    },
    /// A checked-out connection came back after being held `held`.
    Returned {
        /// Time between checkout and return.
        held: Duration,
    },
    /// The pool tried to open a connection.
    ConnectionCreated {
        /// How long the attempt took.
        took: Duration,
        /// `None` on success, else the error (passwords hidden).
        error: Option<&'a str>,
    },
    /// A connection was closed.
    ConnectionClosed {
        /// Why.
        reason: CloseReason,
    },
    /// The circuit breaker changed state.
    BreakerTransition(Transition),
    /// The utilization level changed (see [`UtilizationLevel`]).
    UtilizationChanged {
        /// The level before.
        from: UtilizationLevel,
        /// The level now.
        to: UtilizationLevel,
        /// In use / max when it was measured.
        utilization: f64,
    },
    /// A connection has been held longer than the leak threshold.
    LeakSuspected {
        /// How long it has been held.
        held: Duration,
        /// Where it was checked out.
        location: &'static Location<'static>,
        /// The span that was current at checkout (the request, the job).
        span: &'a tracing::Span,
        /// What this observer's [`PoolObserver::checkout_context`] returned at checkout.
        context: Option<&'a (dyn Any + Send + Sync)>,
    },
    /// A connection reported as leaked came back.
    LeakReturned {
        /// How long it was held in all.
        held: Duration,
        /// Where it was checked out.
        location: &'static Location<'static>,
    },
    /// [`Pool::force_recycle`](crate::Pool::force_recycle) ran.
    ForcedRecycle {
        /// Idle connections closed at once.
        idle_closed: u64,
        /// Checked-out connections that will close on return.
        checked_out: u64,
    },
    /// The monitor probed an idle pool.
    HealthCheck {
        /// Whether checkout and ping worked.
        ok: bool,
    },
}

/// How a checkout ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CheckoutOutcome {
    /// A connection was handed out.
    Ok,
    /// The checkout timeout passed.
    Timeout,
    /// The circuit breaker turned it away.
    CircuitOpen,
}

impl CheckoutOutcome {
    /// `ok`, `timeout` or `circuit_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckoutOutcome::Ok => "ok",
            CheckoutOutcome::Timeout => "timeout",
            CheckoutOutcome::CircuitOpen => "circuit_open",
        }
    }
}

/// Why a connection was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum CloseReason {
    /// Older than its (jittered) maximum lifetime.
    MaxLifetime,
    /// Above `base_size` and idle for the idle timeout (closed by the pool's reaper).
    IdleTimeout,
    /// Opened by a top-up that load had already overtaken (surplus above the maximum).
    Overflow,
    /// Found closed or broken by the driver, or given up on: its operation ran past the
    /// operation timeout, or it was lent out when its request or `Pool::run` was dropped.
    Broken,
    /// Failed or timed out its validation (pre-ping or health probe), or its checkout was
    /// abandoned mid-validation.
    Invalid,
    /// Closed by [`Pool::force_recycle`](crate::Pool::force_recycle).
    Forced,
}

impl CloseReason {
    /// Every reason, in a fixed order.
    pub const ALL: [CloseReason; 6] = [
        CloseReason::MaxLifetime,
        CloseReason::IdleTimeout,
        CloseReason::Overflow,
        CloseReason::Broken,
        CloseReason::Invalid,
        CloseReason::Forced,
    ];

    /// The lowercase name used in stats and metric attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::MaxLifetime => "max_lifetime",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Overflow => "overflow",
            CloseReason::Broken => "broken",
            CloseReason::Invalid => "invalid",
            CloseReason::Forced => "forced",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How full the pool is, against the warn and critical thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum UtilizationLevel {
    /// Below the warn threshold.
    Normal,
    /// At or above the warn threshold (default 80 %).
    Warning,
    /// At or above the critical threshold (default 95 %).
    Critical,
}

impl UtilizationLevel {
    /// `normal`, `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            UtilizationLevel::Normal => "normal",
            UtilizationLevel::Warning => "warning",
            UtilizationLevel::Critical => "critical",
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            2 => UtilizationLevel::Critical,
            1 => UtilizationLevel::Warning,
            _ => UtilizationLevel::Normal,
        }
    }
}

impl fmt::Display for UtilizationLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
