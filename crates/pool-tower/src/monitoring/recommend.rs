//! Rules over [`PoolStats`]: a health verdict and recommendations with their evidence.

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

/// The health verdict for one pool.
pub fn verdict(s: &PoolStats) -> Health {
    match s.breaker.state {
        BreakerState::Open | BreakerState::ForcedOpen => return Health::Unhealthy,
        BreakerState::HalfOpen => return Health::Degraded,
        _ => {}
    }
    if s.exhausted
        || s.utilization_level != UtilizationLevel::Normal
        || s.leaks_outstanding > 0
        || s.checkout_timeouts > 0 && s.wait_time_max_recent > std::time::Duration::ZERO
    {
        Health::Degraded
    } else {
        Health::Healthy
    }
}

/// Every rule that fires for one pool, most urgent first.
pub fn recommendations(s: &PoolStats) -> Vec<Recommendation> {
    let mut out = Vec::new();
    if s.breaker.state == BreakerState::Open || s.breaker.opened > 0 {
        out.push(Recommendation {
            rule: "breaker_opened",
            severity: if s.breaker.state == BreakerState::Open {
                Severity::Critical
            } else {
                Severity::Warning
            },
            message: format!(
                "The circuit breaker has opened {} time(s): the database refused or dropped \
                 connections repeatedly. Look at the database (availability, max_connections, \
                 network) before the pool.",
                s.breaker.opened
            ),
            evidence: json!({
                "state": s.breaker.state,
                "opened": s.breaker.opened,
                "rejected": s.breaker.rejected,
                "connection_failures": s.connection_failures,
                "last_error": s.last_error,
            }),
        });
    }
    if s.exhausted || s.utilization_level != UtilizationLevel::Normal {
        let critical = s.exhausted || s.utilization_level == UtilizationLevel::Critical;
        out.push(Recommendation {
            rule: "high_utilization",
            severity: if critical {
                Severity::Critical
            } else {
                Severity::Warning
            },
            message: format!(
                "Utilization reached the {} level since the last monitor check (now {:.0}%: {} \
                 of {} in use, {} waiting). If it stays there, raise the base size \
                 (DB_POOL_SIZE) or the overflow (DB_MAX_OVERFLOW), or shorten how long requests \
                 hold connections.",
                s.utilization_level,
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
                "exhaustion_episodes": s.exhaustion_episodes,
            }),
        });
    }
    if s.checkout_timeouts > 0 {
        out.push(Recommendation {
            rule: "checkout_timeouts",
            severity: Severity::Warning,
            message: format!(
                "{} checkout(s) timed out waiting for a connection. Raise the pool size, or find \
                 the slow queries that hold connections (see use time).",
                s.checkout_timeouts
            ),
            evidence: json!({
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
    if s.leaks_suspected > 0 {
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
            }),
        });
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.severity));
    out
}
