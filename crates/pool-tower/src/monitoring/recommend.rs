//! Rules over [`PoolStats`]: a health verdict and recommendations with their evidence.

use std::time::Duration;

use pool_core::{BreakerState, PoolStats, UtilizationLevel};
use serde::Serialize;
use serde_json::{json, Value};

/// A pool's overall health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Serving normally.
    Healthy,
    /// Serving, but something needs attention (high utilization, timeouts, leaks, probing).
    Degraded,
    /// Not serving: the breaker is open.
    Unhealthy,
}

/// How urgent a recommendation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Act soon.
    Warning,
    /// Act now.
    Critical,
}

/// One piece of advice, with the numbers that triggered it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recommendation {
    /// A stable identifier of the rule (`high_utilization`, `checkout_timeouts`, …).
    pub rule: &'static str,
    /// How urgent it is.
    pub severity: Severity,
    /// What to do.
    pub message: String,
    /// The stats behind it.
    pub evidence: Value,
}

/// How far back the verdict and the recommendations look: what happened longer ago than
/// this (a timeout, an exhaustion, the breaker closing again after it opened) no longer
/// makes a pool `degraded`, so a pool that has been fine for this long is `healthy` again;
/// a leak report is still recommended on for this long after it was made. The same as [`pool_core::RECENT_ERROR`], the age up to which a
/// connection error is offered as the cause of a timeout.
pub const HEALTH_WINDOW: Duration = pool_core::RECENT_ERROR;

fn within(age: Option<Duration>) -> bool {
    age.is_some_and(|age| age < HEALTH_WINDOW)
}

fn seconds(age: Option<Duration>) -> Option<f64> {
    age.map(|age| age.as_secs_f64())
}

/// Whether the breaker closed within the window, having opened at some point (the last
/// transition to closed may also be a `reset_breaker` after a forced open or a disable).
fn recovered_recently(s: &PoolStats) -> bool {
    s.breaker.opened > 0
        && matches!(s.breaker.state, BreakerState::Closed)
        && within(s.breaker.last_transition_age)
}

/// The health verdict for one pool, about now and the last [`HEALTH_WINDOW`]:
///
/// - `unhealthy` while the breaker is open (or forced open);
/// - `degraded` while it is half-open, while the pool is exhausted, its utilization level is
///   above normal or a connection is held past the leak threshold, and for
///   [`HEALTH_WINDOW`] after a checkout timed out, the pool was exhausted or the breaker
///   closed again after opening;
/// - `healthy` otherwise.
pub fn verdict(s: &PoolStats) -> Health {
    match s.breaker.state {
        BreakerState::Open | BreakerState::ForcedOpen => return Health::Unhealthy,
        BreakerState::HalfOpen => return Health::Degraded,
        _ => {}
    }
    if s.exhausted
        || s.utilization_level != UtilizationLevel::Normal
        || s.leaks_outstanding > 0
        || within(s.last_timeout_age)
        || within(s.last_exhausted_age)
        || recovered_recently(s)
    {
        Health::Degraded
    } else {
        Health::Healthy
    }
}

/// Every rule that fires for one pool, most urgent first. Each looks at now and the last
/// [`HEALTH_WINDOW`], except `frequent_overflow`, which is advice about the configuration
/// and reads the pool's whole life.
pub fn recommendations(s: &PoolStats) -> Vec<Recommendation> {
    let mut out = Vec::new();
    let open = matches!(
        s.breaker.state,
        BreakerState::Open | BreakerState::HalfOpen | BreakerState::ForcedOpen
    );
    if open || recovered_recently(s) {
        let message = if s.breaker.state == BreakerState::ForcedOpen {
            "The circuit breaker was forced open (Pool::force_open_breaker): checkouts fail \
             fast until Pool::reset_breaker."
                .to_owned()
        } else if open {
            format!(
                "The circuit breaker is {}: the database refused or dropped connections \
                 repeatedly, and checkouts fail fast while the pool probes it. Look at the \
                 database (availability, max_connections, network) before the pool.",
                s.breaker.state
            )
        } else {
            format!(
                "The circuit breaker closed {:.0} s ago (it has opened {} time(s) in all). If \
                 outages recur, look at the database (availability, max_connections, \
                 network).",
                s.breaker
                    .last_transition_age
                    .unwrap_or_default()
                    .as_secs_f64(),
                s.breaker.opened
            )
        };
        out.push(Recommendation {
            rule: "breaker_opened",
            severity: if matches!(
                s.breaker.state,
                BreakerState::Open | BreakerState::ForcedOpen
            ) {
                Severity::Critical
            } else {
                Severity::Warning
            },
            message,
            evidence: json!({
                "state": s.breaker.state,
                "last_transition_age_seconds": seconds(s.breaker.last_transition_age),
                "opened": s.breaker.opened,
                "rejected": s.breaker.rejected,
                "connection_failures": s.connection_failures,
                "last_error": s.last_error,
                "last_error_age_seconds": seconds(s.last_error_age),
            }),
        });
    }
    if s.exhausted
        || s.utilization_level != UtilizationLevel::Normal
        || within(s.last_exhausted_age)
    {
        let critical = s.exhausted || s.utilization_level == UtilizationLevel::Critical;
        let when = if s.exhausted {
            "The pool is exhausted now".to_owned()
        } else if let Some(age) = s
            .last_exhausted_age
            .filter(|_| within(s.last_exhausted_age))
        {
            format!(
                "The pool was exhausted {:.0} s ago (level now {})",
                age.as_secs_f64(),
                s.utilization_level
            )
        } else {
            format!("Utilization is at the {} level", s.utilization_level)
        };
        out.push(Recommendation {
            rule: "high_utilization",
            severity: if critical {
                Severity::Critical
            } else {
                Severity::Warning
            },
            message: format!(
                "{when} ({:.0}%: {} of {} in use, {} waiting). If this recurs, raise the base \
                 size (DB_POOL_SIZE) or the overflow (DB_MAX_OVERFLOW), or shorten how long \
                 requests hold connections.",
                s.utilization * 100.0,
                s.in_use,
                s.max_size,
                s.pending
            ),
            evidence: json!({
                "utilization": s.utilization,
                "level": s.utilization_level,
                "in_use": s.in_use,
                "max_size": s.max_size,
                "pending": s.pending,
                "exhausted": s.exhausted,
                "last_exhausted_age_seconds": seconds(s.last_exhausted_age),
                "exhaustion_episodes": s.exhaustion_episodes,
            }),
        });
    }
    if within(s.last_timeout_age) {
        out.push(Recommendation {
            rule: "checkout_timeouts",
            severity: Severity::Warning,
            message: format!(
                "A checkout timed out waiting for a connection {:.0} s ago ({} in all). Raise \
                 the pool size, or find the slow queries that hold connections (see use time).",
                s.last_timeout_age.unwrap_or_default().as_secs_f64(),
                s.checkout_timeouts
            ),
            evidence: json!({
                "last_timeout_age_seconds": seconds(s.last_timeout_age),
                "checkout_timeouts": s.checkout_timeouts,
                "wait_time_max_recent_seconds": s.wait_time_max_recent.as_secs_f64(),
                "max_size": s.max_size,
            }),
        });
    }
    // Connections above the base close once idle for the idle timeout (or, opened by a
    // top-up that load overtook, at once): many of those mean the base is too small for the
    // load, or the idle timeout too short for its pauses.
    let overflow = s.connections_closed.idle_timeout + s.connections_closed.overflow;
    if overflow >= 10 && overflow * 2 >= s.connections_created {
        out.push(Recommendation {
            rule: "frequent_overflow",
            severity: Severity::Info,
            message: format!(
                "{overflow} of {} connections opened were above the base and closed again. \
                 Raising the base size (DB_POOL_SIZE), or the idle timeout \
                 (DB_POOL_IDLE_TIMEOUT) for bursty load, keeps them open and saves the \
                 reconnects.",
                s.connections_created
            ),
            evidence: json!({
                "closed_idle_timeout": s.connections_closed.idle_timeout,
                "closed_overflow": s.connections_closed.overflow,
                "connections_created": s.connections_created,
                "base_size": s.base_size,
            }),
        });
    }
    if s.leaks_outstanding > 0 || within(s.last_leak_age) {
        out.push(Recommendation {
            rule: "connection_leaks",
            severity: if s.leaks_outstanding > 0 {
                Severity::Warning
            } else {
                Severity::Info
            },
            message: format!(
                "{} connection(s) were held longer than the leak threshold ({} still held). The \
                 warnings in the log name the source location of each checkout.",
                s.leaks_suspected, s.leaks_outstanding
            ),
            evidence: json!({
                "leaks_suspected": s.leaks_suspected,
                "leaks_outstanding": s.leaks_outstanding,
                "last_leak_age_seconds": seconds(s.last_leak_age),
            }),
        });
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.severity));
    out
}
