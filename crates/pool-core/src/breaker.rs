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
    /// Calls fail at once while the pool probes the database in the background.
    Open,
    /// A background probe reached the database; calls still fail at once while the next
    /// probes confirm it.
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
    /// `failure_threshold` failure events while closed.
    FailureThreshold,
    /// A connect failed for a reason no retry can fix (a wrong password, a missing
    /// database): open at once.
    FatalError,
    /// A recovery probe reached the database while open: half-open, probing on at once.
    ProbeSucceeded,
    /// `success_threshold` recovery probes in a row reached the database.
    ProbesSucceeded,
    /// A recovery probe failed while half-open.
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
            TransitionReason::FatalError => "fatal_error",
            TransitionReason::ProbeSucceeded => "probe_succeeded",
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
    /// Consecutive failure events counted when it happened.
    pub consecutive_failures: u32,
}

/// Whether a call may go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed or disabled: go ahead.
    Allowed,
    /// Open, half-open or forced open: fail now and try again after `retry_after`.
    Rejected {
        /// Time until the next recovery probe, at least [`FIRST_PROBE_DELAY`] (for
        /// `Retry-After`); the recovery timeout when forced open.
        retry_after: Duration,
    },
}

/// A recovery attempt handed out by [`CircuitBreaker::start_probe`]. It belongs to the round
/// it was started in (a round ends whenever the breaker opens, closes, is forced, reset or
/// disabled); reported after its round ended, it is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    round: u64,
}

impl Probe {
    /// The round it belongs to.
    pub fn round(self) -> u64 {
        self.round
    }
}

/// The first recovery probe runs this long after the breaker opens; after each failed probe
/// the wait doubles, up to the recovery timeout.
pub const FIRST_PROBE_DELAY: Duration = Duration::from_millis(100);

/// The circuit breaker: a pure state machine. It does no I/O and reads no clock; every call
/// takes the current time, so it is tested exhaustively without waiting.
///
/// Closed, it counts failure events; `failure_threshold` of them in a row open it (a fatal
/// one at once). Open, it turns every call away and hands out recovery probes
/// ([`CircuitBreaker::start_probe`], one at a time): the first [`FIRST_PROBE_DELAY`] after
/// opening, then, counted from the end of each failed probe, twice the previous wait, at
/// most `recovery_timeout` (and never less than [`FIRST_PROBE_DELAY`]). A probe that reaches
/// the database makes it half-open (closed at once when `success_threshold` is 1) and the
/// next probe is due at once; `success_threshold` in a row close it, a failure opens it
/// again. Only probes move it out of open: failures and successes of calls are ignored until
/// it closes.
///
/// ```
/// use std::time::{Duration, Instant};
/// use pool_core::{Admission, BreakerConfig, BreakerState, CircuitBreaker};
///
/// let mut breaker = CircuitBreaker::new(BreakerConfig {
///     failure_threshold: 2,
///     recovery_timeout: Duration::from_secs(1),
///     success_threshold: 2,
///     ..BreakerConfig::default()
/// });
/// let t0 = Instant::now();
/// breaker.on_failure(t0);
/// let opened = breaker.on_failure(t0).unwrap();
/// assert_eq!((opened.from, opened.to), (BreakerState::Closed, BreakerState::Open));
/// assert!(matches!(breaker.admit(t0), Admission::Rejected { .. }));
///
/// // The first probe is due 100 ms later; two that reach the database close it.
/// assert!(breaker.start_probe(t0).is_none());
/// let t1 = t0 + Duration::from_millis(100);
/// let probe = breaker.start_probe(t1).unwrap();
/// assert_eq!(breaker.on_probe(probe, true, t1).unwrap().to, BreakerState::HalfOpen);
/// let probe = breaker.start_probe(t1).unwrap();
/// assert_eq!(breaker.on_probe(probe, true, t1).unwrap().to, BreakerState::Closed);
/// assert_eq!(breaker.admit(t1), Admission::Allowed);
/// ```
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
    /// Probes in a row that reached the database, this round.
    probe_successes: u32,
    /// Probes in a row that failed, this round (the backoff's exponent).
    probe_failures: u32,
    /// The round of the probe running now.
    probe_in_flight: Option<u64>,
    round: u64,
    /// When the next probe is due, while open or half-open.
    next_probe_at: Option<Instant>,
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
            probe_failures: 0,
            probe_in_flight: None,
            round: 0,
            next_probe_at: None,
            transitions: 0,
            rejected: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Failure events counted since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Transitions so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// Calls this machine's [`admit`](Self::admit) turned away so far. A pool counts more
    /// than that: its [`PoolStats::checkouts_rejected`](crate::PoolStats::checkouts_rejected)
    /// also has the waiting checkouts failed when the breaker opened.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The current round (see [`Probe`]).
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Time left until the next recovery probe is due (zero when due or running); `None`
    /// unless open or half-open.
    pub fn next_probe_in(&self, now: Instant) -> Option<Duration> {
        self.next_probe_at
            .map(|at| at.saturating_duration_since(now))
    }

    /// The wait before the probe after `failures` failed ones.
    fn backoff(&self, failures: u32) -> Duration {
        let cap = self.config.recovery_timeout.max(FIRST_PROBE_DELAY);
        FIRST_PROBE_DELAY
            .saturating_mul(1u32.checked_shl(failures).unwrap_or(u32::MAX))
            .min(cap)
    }

    /// Decides whether a call may go ahead.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            BreakerState::Closed | BreakerState::Disabled => Admission::Allowed,
            // Never "retry now": a probe due or running still takes its time.
            BreakerState::Open | BreakerState::HalfOpen => {
                let retry_after = self
                    .next_probe_in(now)
                    .unwrap_or_default()
                    .max(FIRST_PROBE_DELAY);
                self.reject(retry_after)
            }
            BreakerState::ForcedOpen => self.reject(self.config.recovery_timeout),
        }
    }

    fn reject(&mut self, retry_after: Duration) -> Admission {
        self.rejected += 1;
        Admission::Rejected { retry_after }
    }

    /// Hands out the next recovery probe if one is due: open or half-open, none running, and
    /// its time has come. Report it with [`CircuitBreaker::on_probe`].
    pub fn start_probe(&mut self, now: Instant) -> Option<Probe> {
        let due = self.next_probe_at.is_some_and(|at| now >= at);
        if !matches!(self.state, BreakerState::Open | BreakerState::HalfOpen)
            || self.probe_in_flight.is_some()
            || !due
        {
            return None;
        }
        self.probe_in_flight = Some(self.round);
        Some(Probe { round: self.round })
    }

    /// A probe's outcome: `reached` when it opened a connection and the database answered on
    /// it. A probe from an earlier round changes nothing.
    pub fn on_probe(&mut self, probe: Probe, reached: bool, now: Instant) -> Option<Transition> {
        if self.probe_in_flight == Some(probe.round) {
            self.probe_in_flight = None;
        }
        if probe.round != self.round
            || !matches!(self.state, BreakerState::Open | BreakerState::HalfOpen)
        {
            return None;
        }
        if reached {
            self.probe_successes += 1;
            self.probe_failures = 0;
            if self.probe_successes >= self.config.success_threshold {
                self.consecutive_failures = 0;
                return Some(self.enter(
                    BreakerState::Closed,
                    TransitionReason::ProbesSucceeded,
                    now,
                ));
            }
            self.next_probe_at = Some(now);
            return (self.state == BreakerState::Open)
                .then(|| self.go(BreakerState::HalfOpen, TransitionReason::ProbeSucceeded));
        }
        self.probe_successes = 0;
        if self.state == BreakerState::HalfOpen {
            return Some(self.enter(BreakerState::Open, TransitionReason::ProbeFailed, now));
        }
        self.probe_failures = self.probe_failures.saturating_add(1);
        self.next_probe_at = Some(now + self.backoff(self.probe_failures));
        None
    }

    /// A success outside a probe (a connect or ping that worked): clears the failure count
    /// while closed, and is ignored otherwise (only probes decide while open).
    pub fn on_success(&mut self) {
        if self.state == BreakerState::Closed {
            self.consecutive_failures = 0;
        }
    }

    /// A failure event that counts (connect error, connect timeout, failed ping, classified
    /// operation error). Opens a closed breaker at the threshold; ignored in other states.
    pub fn on_failure(&mut self, now: Instant) -> Option<Transition> {
        if self.state != BreakerState::Closed {
            return None;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        (self.consecutive_failures >= self.config.failure_threshold)
            .then(|| self.enter(BreakerState::Open, TransitionReason::FailureThreshold, now))
    }

    /// A failure no retry can fix (a wrong password, a missing database): opens a closed
    /// breaker at once, so callers get the cause instead of waiting for more attempts.
    pub fn on_fatal_failure(&mut self, now: Instant) -> Option<Transition> {
        if self.state != BreakerState::Closed {
            return None;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        Some(self.enter(BreakerState::Open, TransitionReason::FatalError, now))
    }

    /// Opens the breaker until [`CircuitBreaker::reset`] (maintenance, failover drills).
    pub fn force_open(&mut self) -> Option<Transition> {
        (self.state != BreakerState::ForcedOpen)
            .then(|| self.enter_at_rest(BreakerState::ForcedOpen, TransitionReason::ForcedOpen))
    }

    /// Closes the breaker and clears its counts, whatever its state.
    pub fn reset(&mut self) -> Option<Transition> {
        self.consecutive_failures = 0;
        if self.state == BreakerState::Closed {
            return None;
        }
        Some(self.enter_at_rest(BreakerState::Closed, TransitionReason::Reset))
    }

    /// Turns the breaker off: every call passes. [`CircuitBreaker::reset`] turns it on again.
    pub fn disable(&mut self) -> Option<Transition> {
        (self.state != BreakerState::Disabled)
            .then(|| self.enter_at_rest(BreakerState::Disabled, TransitionReason::Disabled))
    }

    /// Starts a new round in `to`: open schedules its first probe, other states none.
    fn enter(&mut self, to: BreakerState, reason: TransitionReason, now: Instant) -> Transition {
        self.round += 1;
        self.probe_successes = 0;
        self.probe_failures = 0;
        self.next_probe_at = (to == BreakerState::Open).then(|| now + FIRST_PROBE_DELAY);
        self.go(to, reason)
    }

    fn enter_at_rest(&mut self, to: BreakerState, reason: TransitionReason) -> Transition {
        self.round += 1;
        self.probe_successes = 0;
        self.probe_failures = 0;
        self.next_probe_at = None;
        self.go(to, reason)
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
