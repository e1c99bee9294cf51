//! One consistent snapshot of everything the pool knows about itself.

use std::sync::atomic::{
    AtomicU64, AtomicU8, Ordering::Acquire, Ordering::Relaxed, Ordering::SeqCst,
};
use std::time::Duration;

use crate::breaker::BreakerState;
use crate::observer::{CloseReason, UtilizationLevel};

/// A snapshot of a pool, from [`Pool::stats`](crate::Pool::stats).
///
/// Gauges (`size`, `in_use`, `idle`) come from one read of the pool's own state, so
/// `size == in_use + idle` always holds. Counters only grow. With the `serde` feature the
/// snapshot serializes to JSON (every duration in seconds, its name ending in `_seconds`).
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct PoolStats {
    /// The pool's name.
    pub name: String,
    /// `postgresql`, `sqlite`, or what a custom manager was given.
    pub backend: String,
    /// `base_size + max_overflow`.
    pub max_size: u32,
    /// Connections kept warm.
    pub base_size: u32,
    /// Connections allowed above the base.
    pub max_overflow: u32,
    /// Connections open now (in use + idle).
    pub size: u32,
    /// Connections checked out now.
    pub in_use: u32,
    /// Connections idle in the pool now.
    pub idle: u32,
    /// Open connections above the base size.
    pub overflow_in_use: u32,
    /// Checkouts waiting now.
    pub pending: u64,
    /// `in_use / max_size`, from 0 to 1.
    pub utilization: f64,
    /// The utilization level: raised by the checkout that reaches a threshold, lowered once
    /// utilization has stayed below it (minus a 5-point hysteresis band) for a
    /// [`LEVEL_WINDOW`](crate::LEVEL_WINDOW), so 2 to 4 s after it falls.
    pub utilization_level: UtilizationLevel,
    /// Every connection in use and checkouts waiting.
    pub exhausted: bool,
    /// How many times the pool became exhausted: every connection in use with a checkout
    /// waiting, however it came about (a burst, slow queries, a lock). An episode ends when
    /// no checkout waits any more (each got a connection, timed out or gave up).
    pub exhaustion_episodes: u64,
    /// How long ago the pool was last exhausted: zero while it is, else since the last
    /// episode ended; `None` if it never was (`last_exhausted_age_seconds` in JSON).
    #[cfg_attr(
        feature = "serde",
        serde(rename = "last_exhausted_age_seconds", serialize_with = "opt_secs")
    )]
    pub last_exhausted_age: Option<Duration>,
    /// Checkouts served without queueing for a connection (an idle one was there; its
    /// pre-ping, if due, does not make it a wait).
    pub checkouts_direct: u64,
    /// Checkouts that queued for a connection: none was idle when they asked, or others
    /// were already queued (the queue is first come, first served), or the idle one they
    /// found had to be closed.
    pub checkouts_waited: u64,
    /// Checkouts that hit the checkout timeout.
    pub checkout_timeouts: u64,
    /// How long ago the last checkout timed out; `None` if none has
    /// (`last_timeout_age_seconds` in JSON).
    #[cfg_attr(
        feature = "serde",
        serde(rename = "last_timeout_age_seconds", serialize_with = "opt_secs")
    )]
    pub last_timeout_age: Option<Duration>,
    /// Checkouts turned away by the circuit breaker.
    pub checkouts_rejected: u64,
    /// Total time checkouts spent waiting for a usable connection (`wait_time_total_seconds`
    /// in JSON).
    #[cfg_attr(
        feature = "serde",
        serde(rename = "wait_time_total_seconds", serialize_with = "secs")
    )]
    pub wait_time_total: Duration,
    /// The longest wait in the current and the previous monitor interval
    /// (`wait_time_max_recent_seconds` in JSON).
    #[cfg_attr(
        feature = "serde",
        serde(rename = "wait_time_max_recent_seconds", serialize_with = "secs")
    )]
    pub wait_time_max_recent: Duration,
    /// Connections opened.
    pub connections_created: u64,
    /// Connection attempts that failed (errors and connect timeouts).
    pub connection_failures: u64,
    /// Connections closed, by reason.
    pub connections_closed: ClosedConnections,
    /// Idle health probes that worked.
    pub health_checks_ok: u64,
    /// Idle health probes that failed.
    pub health_checks_failed: u64,
    /// Connections held past the leak threshold so far (each counted once, when the leak
    /// scanner first sees it past the threshold).
    pub leaks_suspected: u64,
    /// Connections held past the leak threshold right now.
    pub leaks_outstanding: u64,
    /// How long ago the last suspected leak was reported; `None` if none was
    /// (`last_leak_age_seconds` in JSON).
    #[cfg_attr(
        feature = "serde",
        serde(rename = "last_leak_age_seconds", serialize_with = "opt_secs")
    )]
    pub last_leak_age: Option<Duration>,
    /// Connections returned with their session not clean (a transaction left open or
    /// failed) and reset before reuse; each is a borrower that did not finish its
    /// transaction.
    pub sessions_reset: u64,
    /// The circuit breaker.
    pub breaker: BreakerStats,
    /// The last connect or ping error, passwords hidden, as the backend describes it
    /// (PostgreSQL and SQLite: the driver's message; a custom manager: its `Debug` text
    /// unless [`PoolBuilder::describe_errors`](crate::PoolBuilder::describe_errors) says
    /// otherwise).
    pub last_error: Option<String>,
    /// How long ago `last_error` happened (`last_error_age_seconds` in JSON).
    #[cfg_attr(
        feature = "serde",
        serde(rename = "last_error_age_seconds", serialize_with = "opt_secs")
    )]
    pub last_error_age: Option<Duration>,
    /// The background monitor task.
    pub monitor: MonitorStatus,
}

/// Closed connections by [`CloseReason`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ClosedConnections {
    /// Older than the maximum lifetime.
    pub max_lifetime: u64,
    /// Above the base and idle for the idle timeout.
    pub idle_timeout: u64,
    /// Opened by a top-up that load had already overtaken.
    pub overflow: u64,
    /// Found broken, timed out mid-operation, or lent out when its request was dropped.
    pub broken: u64,
    /// Failed or timed out its validation.
    pub invalid: u64,
    /// Closed by `force_recycle`.
    pub forced: u64,
}

impl ClosedConnections {
    /// The count for one reason.
    pub fn get(&self, reason: CloseReason) -> u64 {
        match reason {
            CloseReason::MaxLifetime => self.max_lifetime,
            CloseReason::IdleTimeout => self.idle_timeout,
            CloseReason::Overflow => self.overflow,
            CloseReason::Broken => self.broken,
            CloseReason::Invalid => self.invalid,
            CloseReason::Forced => self.forced,
        }
    }

    /// All reasons added up.
    pub fn total(&self) -> u64 {
        CloseReason::ALL.iter().map(|r| self.get(*r)).sum()
    }
}

/// The circuit breaker's part of [`PoolStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct BreakerStats {
    /// The current state.
    pub state: BreakerState,
    /// Failures counted toward opening it since the last success (failed recovery probes
    /// are not counted here; they show in `connection_failures` and `next_probe_in`).
    pub consecutive_failures: u32,
    /// State changes so far.
    pub transitions: u64,
    /// How long ago the state last changed (how long it has been in this state); `None`
    /// if it never changed (`last_transition_age_seconds` in JSON).
    #[cfg_attr(
        feature = "serde",
        serde(rename = "last_transition_age_seconds", serialize_with = "opt_secs")
    )]
    pub last_transition_age: Option<Duration>,
    /// How many times it opened (from closed or half-open).
    pub opened: u64,
    /// Checkouts turned away: at once, or while waiting when it opened. The same count as
    /// [`PoolStats::checkouts_rejected`] and the rejection metric.
    pub rejected: u64,
    /// Time until the next background recovery probe (zero while one runs); `None` unless
    /// open or half-open (`next_probe_in_seconds` in JSON).
    #[cfg_attr(
        feature = "serde",
        serde(rename = "next_probe_in_seconds", serialize_with = "opt_secs")
    )]
    pub next_probe_in: Option<Duration>,
}

/// What the background monitor is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum MonitorStatus {
    /// Not started yet.
    NotStarted,
    /// Running.
    Running,
    /// Stopped (the pool is shutting down).
    Stopped,
}

impl MonitorStatus {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => MonitorStatus::Running,
            2 => MonitorStatus::Stopped,
            _ => MonitorStatus::NotStarted,
        }
    }
}

#[cfg(feature = "serde")]
fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[cfg(feature = "serde")]
fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// The counters behind [`PoolStats`]; relaxed atomics, bumped on the hot path.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Connections handed out, and handed back; in use is the difference (two counters
    /// keep the checkout path to one atomic add each way).
    pub(crate) checkouts: AtomicU64,
    pub(crate) returns: AtomicU64,
    pub(crate) checkouts_waited: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) wait_total_us: AtomicU64,
    pub(crate) wait_max_us: AtomicU64,
    pub(crate) wait_max_prev_us: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) open: AtomicU64,
    pub(crate) created: AtomicU64,
    pub(crate) create_failures: AtomicU64,
    pub(crate) closed: [AtomicU64; 6],
    pub(crate) health_ok: AtomicU64,
    pub(crate) health_failed: AtomicU64,
    pub(crate) leaks: AtomicU64,
    pub(crate) exhaustion_episodes: AtomicU64,
    pub(crate) exhausted: AtomicU8,
    pub(crate) breaker_opened: AtomicU64,
    pub(crate) sessions_reset: AtomicU64,
}

impl Counters {
    /// Connections checked out and not yet returned: exact at rest; while checkouts and
    /// returns race it may count one that is just being returned, never one too few.
    ///
    /// Returns are counted with (at least) Release and always read with Acquire, first:
    /// whoever sees a return then sees its checkout too.
    pub(crate) fn in_use(&self) -> u64 {
        let returns = self.returns.load(Acquire);
        self.checkouts.load(Relaxed).saturating_sub(returns)
    }

    /// Counts a checkout; in use, this one included.
    pub(crate) fn count_checkout(&self) -> u64 {
        let returns = self.returns.load(Acquire);
        (self.checkouts.fetch_add(1, Relaxed) + 1).saturating_sub(returns)
    }

    /// Counts a return. SeqCst: a return then looks at the queue of waiting checkouts, and a
    /// checkout that joins the queue then reads this count (see `handoff`).
    pub(crate) fn count_return(&self) {
        self.returns.fetch_add(1, SeqCst);
    }

    /// [`Counters::in_use`], read in the total order of the returns that count themselves
    /// before looking at the queue.
    pub(crate) fn in_use_now(&self) -> u64 {
        let returns = self.returns.load(SeqCst);
        self.checkouts.load(SeqCst).saturating_sub(returns)
    }

    pub(crate) fn record_wait(&self, waited: Duration) {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.wait_total_us.fetch_add(us, Relaxed);
        self.wait_max_us.fetch_max(us, Relaxed);
    }

    /// Starts a new "recent" window for the max wait (called by the monitor each tick).
    pub(crate) fn roll_wait_window(&self) {
        let current = self.wait_max_us.swap(0, Relaxed);
        self.wait_max_prev_us.store(current, Relaxed);
    }

    pub(crate) fn closed(&self) -> ClosedConnections {
        let get = |r: CloseReason| self.closed[r.index()].load(Relaxed);
        ClosedConnections {
            max_lifetime: get(CloseReason::MaxLifetime),
            idle_timeout: get(CloseReason::IdleTimeout),
            overflow: get(CloseReason::Overflow),
            broken: get(CloseReason::Broken),
            invalid: get(CloseReason::Invalid),
            forced: get(CloseReason::Forced),
        }
    }

    pub(crate) fn wait_max_recent(&self) -> Duration {
        let us = self
            .wait_max_us
            .load(Relaxed)
            .max(self.wait_max_prev_us.load(Relaxed));
        Duration::from_micros(us)
    }
}
