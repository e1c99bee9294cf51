//! The circuit breaker's pure state machine.

use std::fmt;
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;

/// Where the breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum BreakerState {
    /// Calls pass; failures are counted.
    Closed,
    /// Calls fail at once until the recovery timeout has passed.
    Open,
    /// A bounded number of probe calls pass; their outcome decides.
    HalfOpen,
    /// Opened by an operator; stays open until [`CircuitBreaker::reset`].
    ForcedOpen,
    /// Turned off: every call passes and nothing is counted.
    Disabled,
}

impl BreakerState {
    /// Every state, in a fixed order (for gauges that report 1 for one state and 0 for the rest).
    pub const ALL: [BreakerState; 5] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
        BreakerState::ForcedOpen,
        BreakerState::Disabled,
    ];

    /// The lowercase name used in logs, stats and metric attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::Disabled => "disabled",
        }
    }

    pub(crate) const fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        Self::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(BreakerState::Closed)
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the breaker changed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum TransitionReason {
    /// `failure_threshold` consecutive failures while closed.
    FailureThreshold,
    /// The recovery timeout passed while open.
    RecoveryTimeout,
    /// `success_threshold` probe successes while half-open.
    ProbesSucceeded,
    /// A failure while half-open.
    ProbeFailed,
    /// [`CircuitBreaker::force_open`].
    ForcedOpen,
    /// [`CircuitBreaker::reset`].
    Reset,
    /// [`CircuitBreaker::disable`].
    Disabled,
}

impl TransitionReason {
    /// The lowercase name used in logs and attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            TransitionReason::FailureThreshold => "failure_threshold",
            TransitionReason::RecoveryTimeout => "recovery_timeout",
            TransitionReason::ProbesSucceeded => "probes_succeeded",
            TransitionReason::ProbeFailed => "probe_failed",
            TransitionReason::ForcedOpen => "forced_open",
            TransitionReason::Reset => "reset",
            TransitionReason::Disabled => "disabled",
        }
    }
}

impl fmt::Display for TransitionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of state, with what caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
    /// Why.
    pub reason: TransitionReason,
    /// Consecutive failures counted when it happened.
    pub consecutive_failures: u32,
}

/// Whether a call may go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed or disabled: go ahead.
    Allowed,
    /// Half-open: go ahead as a probe, and report the outcome with
    /// [`CircuitBreaker::on_probe_success`], [`CircuitBreaker::on_failure`] or
    /// [`CircuitBreaker::probe_abandoned`].
    Probe,
    /// Open: fail now and try again after `retry_after`.
    Rejected {
        /// Time until the breaker admits probes (for `Retry-After`).
        retry_after: Duration,
    },
}

/// How long a caller turned away in half-open (all probes busy) is told to wait.
const HALF_OPEN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The circuit breaker: a pure state machine. It does no I/O and reads no clock; every call
/// takes the current time, so it is tested exhaustively without waiting.
///
/// ```
/// use std::time::{Duration, Instant};
/// use pool_core::{Admission, BreakerConfig, BreakerState, CircuitBreaker};
///
/// let mut breaker = CircuitBreaker::new(BreakerConfig {
///     failure_threshold: 2,
///     recovery_timeout: Duration::from_secs(10),
///     success_threshold: 1,
///     half_open_max_probes: 1,
///     ..BreakerConfig::default()
/// });
/// let t0 = Instant::now();
/// breaker.on_failure(t0);
/// let opened = breaker.on_failure(t0).unwrap();
/// assert_eq!((opened.from, opened.to), (BreakerState::Closed, BreakerState::Open));
/// assert!(matches!(breaker.admit(t0).0, Admission::Rejected { .. }));
///
/// let (admission, half_open) = breaker.admit(t0 + Duration::from_secs(10));
/// assert_eq!(admission, Admission::Probe);
/// assert_eq!(half_open.unwrap().to, BreakerState::HalfOpen);
/// assert_eq!(breaker.on_probe_success(t0).unwrap().to, BreakerState::Closed);
/// ```
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
    probe_successes: u32,
    probes_in_flight: u32,
    opened_at: Option<Instant>,
    transitions: u64,
    rejected: u64,
}

impl CircuitBreaker {
    /// A closed breaker (or a disabled one, if `config.enabled` is false).
    pub fn new(config: BreakerConfig) -> Self {
        let state = if config.enabled {
            BreakerState::Closed
        } else {
            BreakerState::Disabled
        };
        CircuitBreaker {
            config,
            state,
            consecutive_failures: 0,
            probe_successes: 0,
            probes_in_flight: 0,
            opened_at: None,
            transitions: 0,
            rejected: 0,
        }
    }

    /// The current state (an open breaker whose recovery timeout has passed still reads
    /// `Open` until the next [`CircuitBreaker::admit`]).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Failures counted since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Transitions so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// Calls turned away so far.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Time left until an open breaker admits probes; `None` unless open.
    pub fn time_until_half_open(&self, now: Instant) -> Option<Duration> {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(at)) => {
                Some((at + self.config.recovery_timeout).saturating_duration_since(now))
            }
            _ => None,
        }
    }

    /// Decides whether a call may go ahead. An open breaker whose recovery timeout has
    /// passed turns half-open here (the returned transition).
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        let mut transition = None;
        if self.state == BreakerState::Open
            && self.time_until_half_open(now).is_some_and(|d| d.is_zero())
        {
            self.probe_successes = 0;
            self.probes_in_flight = 0;
            transition = Some(self.go(BreakerState::HalfOpen, TransitionReason::RecoveryTimeout));
        }
        let admission = match self.state {
            BreakerState::Closed | BreakerState::Disabled => Admission::Allowed,
            BreakerState::HalfOpen if self.probes_in_flight < self.config.half_open_max_probes => {
                self.probes_in_flight += 1;
                Admission::Probe
            }
            BreakerState::HalfOpen => self.reject(HALF_OPEN_RETRY_AFTER),
            BreakerState::Open => {
                let retry_after = self.time_until_half_open(now).unwrap_or_default();
                self.reject(retry_after)
            }
            BreakerState::ForcedOpen => self.reject(self.config.recovery_timeout),
        };
        (admission, transition)
    }

    fn reject(&mut self, retry_after: Duration) -> Admission {
        self.rejected += 1;
        Admission::Rejected { retry_after }
    }

    /// A success outside a probe (a connect or ping that worked): clears the failure count
    /// while closed, and is ignored otherwise (only probes decide in half-open).
    pub fn on_success(&mut self) {
        if self.state == BreakerState::Closed {
            self.consecutive_failures = 0;
        }
    }

    /// A probe admitted by [`CircuitBreaker::admit`] succeeded.
    pub fn on_probe_success(&mut self, _now: Instant) -> Option<Transition> {
        if self.state != BreakerState::HalfOpen {
            return None;
        }
        self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        self.probe_successes += 1;
        if self.probe_successes >= self.config.success_threshold {
            self.consecutive_failures = 0;
            self.probe_successes = 0;
            self.probes_in_flight = 0;
            self.opened_at = None;
            return Some(self.go(BreakerState::Closed, TransitionReason::ProbesSucceeded));
        }
        None
    }

    /// A probe ended without an outcome (its caller gave up): its slot is freed.
    pub fn probe_abandoned(&mut self) {
        if self.state == BreakerState::HalfOpen {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
    }

    /// A failure that counts (connect error, connect timeout, failed ping, classified
    /// operation error). Opens a closed breaker at the threshold; reopens a half-open one.
    pub fn on_failure(&mut self, now: Instant) -> Option<Transition> {
        match self.state {
            BreakerState::Closed => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.consecutive_failures >= self.config.failure_threshold {
                    self.opened_at = Some(now);
                    return Some(self.go(BreakerState::Open, TransitionReason::FailureThreshold));
                }
                None
            }
            BreakerState::HalfOpen => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.opened_at = Some(now);
                self.probe_successes = 0;
                self.probes_in_flight = 0;
                Some(self.go(BreakerState::Open, TransitionReason::ProbeFailed))
            }
            BreakerState::Open | BreakerState::ForcedOpen | BreakerState::Disabled => None,
        }
    }

    /// Opens the breaker until [`CircuitBreaker::reset`] (maintenance, failover drills).
    pub fn force_open(&mut self) -> Option<Transition> {
        (self.state != BreakerState::ForcedOpen)
            .then(|| self.go(BreakerState::ForcedOpen, TransitionReason::ForcedOpen))
    }

    /// Closes the breaker and clears its counts, whatever its state.
    pub fn reset(&mut self) -> Option<Transition> {
        self.consecutive_failures = 0;
        self.probe_successes = 0;
        self.probes_in_flight = 0;
        self.opened_at = None;
        (self.state != BreakerState::Closed)
            .then(|| self.go(BreakerState::Closed, TransitionReason::Reset))
    }

    /// Turns the breaker off: every call passes. [`CircuitBreaker::reset`] turns it on again.
    pub fn disable(&mut self) -> Option<Transition> {
        (self.state != BreakerState::Disabled)
            .then(|| self.go(BreakerState::Disabled, TransitionReason::Disabled))
    }

    fn go(&mut self, to: BreakerState, reason: TransitionReason) -> Transition {
        let from = self.state;
        self.state = to;
        self.transitions += 1;
        Transition {
            from,
            to,
            reason,
            consecutive_failures: self.consecutive_failures,
        }
    }
}

#[cfg(test)]
mod tests;
