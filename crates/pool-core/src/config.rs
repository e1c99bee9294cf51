//! Pool configuration: plain data with documented defaults, profiles and validation.

use std::fmt;
use std::time::Duration;

use crate::url::{BackendKind, DatabaseUrl, UrlError};

/// A set of defaults (the columns of the table in the crate docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Profile {
    /// PostgreSQL in production: 15 kept warm, 25 overflow, 15 s checkout timeout.
    Production,
    /// PostgreSQL in development: 10 kept warm, 20 overflow, 20 s checkout timeout.
    Development,
    /// Embedded SQLite: one connection, no overflow.
    Sqlite,
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::Production => "production",
            Profile::Development => "development",
            Profile::Sqlite => "sqlite",
        })
    }
}

/// Circuit-breaker settings.
///
/// `Default` is the same in every profile: 5 failure events open it, background probes back
/// off to once a second while it is open, 3 of them in a row reaching the database close it,
/// operations run through [`Pool::run`](crate::Pool::run) time out after 30 s.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct BreakerConfig {
    /// `false` turns the breaker off (state `disabled`). Defaults to `true`.
    pub enabled: bool,
    /// Failure events in a row that open the breaker (`DB_CIRCUIT_BREAKER_FAILURE_THRESHOLD`;
    /// connects that fail together are one event). Defaults to 5.
    pub failure_threshold: u32,
    /// The longest wait between two recovery probes while the breaker is open
    /// (`DB_CIRCUIT_BREAKER_RECOVERY_TIMEOUT`): the pool probes the database in the
    /// background 100 ms after the breaker opens, then after each failed probe waits twice as
    /// long as before, up to this. So the breaker closes at most this long (plus the time a
    /// probe takes) after the database is back, for an outage of any length, and a database
    /// that stays down is tried once per this period plus a probe's time. Defaults to 1 s.
    pub recovery_timeout: Duration,
    /// Recovery probes in a row that must reach the database to close the breaker
    /// (`DB_CIRCUIT_BREAKER_SUCCESS_THRESHOLD`); after the first, the next runs at once.
    /// Defaults to 3.
    pub success_threshold: u32,
    /// Time limit for an operation run through [`Pool::run`](crate::Pool::run), and for
    /// how long pool-tower's layer lets a request keep its connection lent out to one
    /// operation (`DB_CIRCUIT_BREAKER_TIMEOUT`); a timed-out operation closes its connection
    /// and counts as a breaker failure. Defaults to 30 s.
    pub operation_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            failure_threshold: 5,
            recovery_timeout: Duration::from_secs(1),
            success_threshold: 3,
            operation_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything a [`Pool`](crate::Pool) needs to know, as plain data.
///
/// Build it from a profile and change what you need, read it from the environment with
/// [`PoolConfig::from_env`], or set knobs on [`PoolBuilder`](crate::PoolBuilder). Every
/// construction path ends in [`PoolConfig::validate`], which reports all problems at once.
///
/// ```
/// use std::time::Duration;
/// use pool_core::PoolConfig;
///
/// let config = PoolConfig {
///     base_size: 4,
///     max_overflow: 6,
///     checkout_timeout: Duration::from_secs(2),
///     ..PoolConfig::production()
/// };
/// assert_eq!(config.max_size(), 10);
/// config.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PoolConfig {
    /// The profile the defaults came from.
    pub profile: Profile,
    /// Where to connect (`DATABASE_URL`). The pool constructors of the backends need it;
    /// [`PoolBuilder::build`](crate::PoolBuilder::build) with your own manager does not.
    pub database_url: Option<DatabaseUrl>,
    /// The pool's name in logs, stats and metrics (`DB_POOL_NAME`). Defaults to
    /// `server.address:server.port/db.namespace` of the URL, or `"default"`.
    pub name: Option<String>,
    /// Connections kept open and idle (`DB_POOL_SIZE`).
    pub base_size: u32,
    /// Connections allowed above `base_size`; they are closed once idle for the idle timeout
    /// (`DB_MAX_OVERFLOW`).
    pub max_overflow: u32,
    /// How long a checkout waits in the queue (`DB_POOL_TIMEOUT`).
    pub checkout_timeout: Duration,
    /// Maximum age of a connection; `None` keeps connections forever (`DB_POOL_RECYCLE`,
    /// where `-1` or `0` mean `None`). Each connection gets up to 2.5 % less, at random.
    /// Checked on checkout and return, and for idle connections on every monitor tick.
    ///
    /// Lifetimes, the bypass window and the leak threshold are measured on the pool's own
    /// clock (the CPU's counter): paused tokio time moves them only with the `test-util`
    /// feature.
    pub max_lifetime: Option<Duration>,
    /// Limit for opening one connection (`DB_POOL_CONNECT_TIMEOUT`).
    pub connect_timeout: Duration,
    /// Period of the monitor task (`DB_POOL_HEALTH_INTERVAL`).
    pub health_interval: Duration,
    /// Ping a connection before handing it out, unless it was used within `validation_bypass`
    /// (`DB_POOL_PRE_PING`). Defaults to `true`.
    pub pre_ping: bool,
    /// A connection returned this recently is handed out without a ping (HikariCP's
    /// alive-bypass window), so a busy pool pays no round trip per checkout. Defaults to
    /// 500 ms; `Duration::ZERO` pings on every checkout.
    pub validation_bypass: Duration,
    /// Limit for one validation: the pre-ping on checkout, the monitor's health probe and
    /// the reset of a session returned unclean (`DB_POOL_VALIDATION_TIMEOUT`). A connection
    /// whose validation or reset times out, or whose checkout is abandoned while it is being
    /// validated, is closed (counted as `invalid`), never put back. Defaults to 3 s.
    pub validation_timeout: Duration,
    /// TCP keepalive for PostgreSQL connections: idle time before the first probe, then
    /// probes every half of it (`DB_POOL_TCP_KEEPALIVE`, whole seconds from 1 to 32767; `0`
    /// or `off` turns keepalives off). Applied by `build_postgres`; a DSN's own keepalive
    /// settings win. Defaults to 10 s.
    pub tcp_keepalive: Option<Duration>,
    /// TCP user timeout for PostgreSQL connections (Linux `TCP_USER_TIMEOUT`): how long sent
    /// data may stay unacknowledged before the kernel gives up on the peer
    /// (`DB_POOL_TCP_USER_TIMEOUT`; `0` or `off` for the system's default). Applied by
    /// `build_postgres`; a DSN's own `tcp_user_timeout` wins. Defaults to 10 s.
    pub tcp_user_timeout: Option<Duration>,
    /// How long a connection above `base_size` may sit idle before it is closed
    /// (`DB_POOL_IDLE_TIMEOUT`; `0` or `off`: never). Overflow connections are not closed the
    /// moment they come back, so steady load between the base and the maximum does not open
    /// and close a connection per request; at rest the pool shrinks to its base within this
    /// timeout plus the reaper's period (a quarter of it, at least 250 ms and at most 5 s).
    /// The base itself is kept. Defaults to 60 s.
    pub idle_timeout: Option<Duration>,
    /// Warn when a connection is held longer than this (`DB_POOL_LEAK_THRESHOLD`).
    /// Defaults to `None` (off).
    pub leak_threshold: Option<Duration>,
    /// Utilization (in use / max) at which the monitor warns (`DB_POOL_WARN_UTILIZATION`).
    /// Defaults to 0.80.
    pub warn_utilization: f64,
    /// Utilization at which the monitor reports critical (`DB_POOL_CRITICAL_UTILIZATION`).
    /// Defaults to 0.95.
    pub critical_utilization: f64,
    /// Circuit-breaker settings.
    pub breaker: BreakerConfig,
}

impl PoolConfig {
    /// Defaults for PostgreSQL in production: base 15, overflow 25, checkout timeout 15 s,
    /// recycle 1800 s, connect timeout 10 s, health interval 60 s.
    pub fn production() -> Self {
        PoolConfig {
            profile: Profile::Production,
            database_url: None,
            name: None,
            base_size: 15,
            max_overflow: 25,
            checkout_timeout: Duration::from_secs(15),
            max_lifetime: Some(Duration::from_secs(1800)),
            connect_timeout: Duration::from_secs(10),
            health_interval: Duration::from_secs(60),
            pre_ping: true,
            validation_bypass: Duration::from_millis(500),
            validation_timeout: Duration::from_secs(3),
            tcp_keepalive: Some(Duration::from_secs(10)),
            tcp_user_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(60)),
            leak_threshold: None,
            warn_utilization: 0.80,
            critical_utilization: 0.95,
            breaker: BreakerConfig::default(),
        }
    }

    /// Defaults for PostgreSQL in development: base 10, overflow 20, checkout timeout 20 s,
    /// recycle 1800 s, connect timeout 10 s, health interval 300 s.
    pub fn development() -> Self {
        PoolConfig {
            profile: Profile::Development,
            base_size: 10,
            max_overflow: 20,
            checkout_timeout: Duration::from_secs(20),
            health_interval: Duration::from_secs(300),
            ..Self::production()
        }
    }

    /// Defaults for embedded SQLite: base 1, overflow 0, checkout timeout 15 s, recycle 3600 s,
    /// connect timeout 5 s, health interval 300 s.
    pub fn sqlite() -> Self {
        PoolConfig {
            profile: Profile::Sqlite,
            base_size: 1,
            max_overflow: 0,
            checkout_timeout: Duration::from_secs(15),
            max_lifetime: Some(Duration::from_secs(3600)),
            connect_timeout: Duration::from_secs(5),
            health_interval: Duration::from_secs(300),
            ..Self::production()
        }
    }

    /// The defaults of `profile`.
    pub fn for_profile(profile: Profile) -> Self {
        match profile {
            Profile::Production => Self::production(),
            Profile::Development => Self::development(),
            Profile::Sqlite => Self::sqlite(),
        }
    }

    /// `base_size + max_overflow`.
    pub fn max_size(&self) -> u32 {
        self.base_size.saturating_add(self.max_overflow)
    }

    /// The name the pool will use: [`PoolConfig::name`], else the URL's default name, else
    /// `"default"`.
    pub fn effective_name(&self) -> String {
        self.name
            .clone()
            .or_else(|| {
                self.database_url
                    .as_ref()
                    .map(DatabaseUrl::default_pool_name)
            })
            .unwrap_or_else(|| "default".to_owned())
    }

    /// The backend of [`PoolConfig::database_url`], if one is set.
    pub fn backend(&self) -> Option<BackendKind> {
        self.database_url.as_ref().map(DatabaseUrl::kind)
    }

    /// Checks every rule and reports every problem found.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] listing each field that breaks a rule, what it holds and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.collect_problems(&mut problems);
        ConfigError::from_problems(problems)
    }

    pub(crate) fn collect_problems(&self, out: &mut Vec<ConfigProblem>) {
        let mut check = |ok: bool, setting: Setting, value: String, problem: &str, expected| {
            if !ok {
                out.push(ConfigProblem::new(
                    setting.label(),
                    Some(value),
                    problem,
                    expected,
                ));
            }
        };
        let secs = |d: Duration| format!("{}s", d.as_secs_f64());
        for (setting, value) in [
            (Setting::PoolSize, self.base_size),
            (Setting::MaxOverflow, self.max_overflow),
        ] {
            check(
                value <= MAX_POOL_SIZE,
                setting,
                value.to_string(),
                "too large",
                SIZE_RANGE,
            );
        }
        check(
            self.max_size() >= 1,
            Setting::PoolSize,
            format!(
                "{} (with {} = {})",
                self.base_size,
                Setting::MaxOverflow.label(),
                self.max_overflow
            ),
            "a pool of no connections",
            "base size + overflow of at least 1",
        );
        for (setting, value) in [
            (Setting::PoolTimeout, self.checkout_timeout),
            (Setting::ConnectTimeout, self.connect_timeout),
            (Setting::HealthInterval, self.health_interval),
            (Setting::BreakerRecovery, self.breaker.recovery_timeout),
            (Setting::BreakerTimeout, self.breaker.operation_timeout),
            (Setting::ValidationTimeout, self.validation_timeout),
        ] {
            check(
                !value.is_zero() && value <= MAX_TIMEOUT,
                setting,
                secs(value),
                &duration_problem(value, MAX_TIMEOUT),
                DURATION_RANGE,
            );
        }
        for (setting, value) in [
            (Setting::Recycle, self.max_lifetime),
            (Setting::IdleTimeout, self.idle_timeout),
            (Setting::LeakThreshold, self.leak_threshold),
            (Setting::TcpKeepalive, self.tcp_keepalive),
            (Setting::TcpUserTimeout, self.tcp_user_timeout),
        ] {
            if let Some(value) = value {
                check(
                    !value.is_zero() && value <= MAX_LIFETIME,
                    setting,
                    secs(value),
                    &duration_problem(value, MAX_LIFETIME),
                    "a duration above 0 and at most 30 days, or off",
                );
            }
        }
        for (setting, value) in [
            (Setting::BreakerFailures, self.breaker.failure_threshold),
            (Setting::BreakerSuccesses, self.breaker.success_threshold),
        ] {
            check(
                (1..=MAX_THRESHOLD).contains(&value),
                setting,
                value.to_string(),
                if value == 0 { "zero" } else { "too large" },
                THRESHOLD_RANGE,
            );
        }
        let unit = |v: f64| v.is_finite() && v > 0.0 && v <= 1.0;
        for (setting, value) in [
            (Setting::WarnUtilization, self.warn_utilization),
            (Setting::CriticalUtilization, self.critical_utilization),
        ] {
            check(
                unit(value),
                setting,
                value.to_string(),
                fraction_problem(value),
                FRACTION_RANGE,
            );
        }
        if unit(self.warn_utilization) && unit(self.critical_utilization) {
            check(
                self.warn_utilization < self.critical_utilization,
                Setting::WarnUtilization,
                format!(
                    "{} (with {} = {})",
                    self.warn_utilization,
                    Setting::CriticalUtilization.label(),
                    self.critical_utilization
                ),
                "not below the critical threshold",
                "a warning threshold below the critical threshold",
            );
        }
        // The kernel takes the keepalive idle time in whole seconds, at most 32767.
        if let Some(idle) = self.tcp_keepalive {
            check(
                idle.subsec_nanos() == 0 && (1..=32_767).contains(&idle.as_secs()),
                Setting::TcpKeepalive,
                secs(idle),
                "not a whole number of seconds from 1 to 32767",
                "whole seconds from 1 to 32767 (e.g. 10 or 30s), or 0 or off",
            );
        }
        check(
            self.validation_bypass <= Duration::from_secs(60),
            Setting::ValidationBypass,
            secs(self.validation_bypass),
            "longer than 60 s",
            "a validation bypass window of at most 60 s",
        );
        if let Some(name) = &self.name {
            let problem = if name.trim().is_empty() {
                "empty"
            } else if name.chars().count() > 128 {
                "longer than 128 characters"
            } else {
                "holds control characters"
            };
            check(
                !name.trim().is_empty()
                    && name.chars().count() <= 128
                    && !name.chars().any(char::is_control),
                Setting::Name,
                shorten(name),
                problem,
                "1 to 128 printable characters",
            );
        }
    }
}

/// What is wrong with a duration outside `(0, max]`.
pub(crate) fn duration_problem(value: Duration, max: Duration) -> String {
    if value.is_zero() {
        return "zero".to_owned();
    }
    let days = max.as_secs() / 86_400;
    match days {
        1 => "longer than 1 day".to_owned(),
        n if n > 1 && max.as_secs().is_multiple_of(86_400) => format!("longer than {n} days"),
        _ => format!("longer than {} s", max.as_secs_f64()),
    }
}

/// At most 64 characters of a value, for messages.
pub(crate) fn shorten(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        value.to_owned()
    } else {
        let mut s: String = value.chars().take(MAX).collect();
        s.push('…');
        s
    }
}

/// What is wrong with a utilization threshold outside `(0, 1]`.
pub(crate) fn fraction_problem(value: f64) -> &'static str {
    if !value.is_finite() {
        "not a finite number"
    } else if value <= 0.0 {
        "not above 0"
    } else {
        "above 1 (a fraction, not a percentage)"
    }
}

impl Default for PoolConfig {
    /// The development profile.
    fn default() -> Self {
        Self::development()
    }
}

pub(crate) const MAX_POOL_SIZE: u32 = 10_000;
pub(crate) const MAX_THRESHOLD: u32 = 10_000;
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

pub(crate) const SIZE_RANGE: &str = "a whole number from 0 to 10000";
pub(crate) const THRESHOLD_RANGE: &str = "a whole number from 1 to 10000";
pub(crate) const FRACTION_RANGE: &str = "a fraction above 0 and at most 1, e.g. 0.80";
pub(crate) const DURATION_RANGE: &str =
    "a duration above 0 and at most 1 day: seconds (15, 2.5) or with units (500ms, 2m30s, 1h 5m)";

/// The settings, named by their environment variables so an error points at what to fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Setting {
    PoolSize,
    MaxOverflow,
    PoolTimeout,
    Recycle,
    ConnectTimeout,
    HealthInterval,
    IdleTimeout,
    LeakThreshold,
    WarnUtilization,
    CriticalUtilization,
    BreakerFailures,
    BreakerRecovery,
    BreakerSuccesses,
    BreakerTimeout,
    Name,
    ValidationBypass,
    ValidationTimeout,
    TcpKeepalive,
    TcpUserTimeout,
}

impl Setting {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Setting::PoolSize => "DB_POOL_SIZE",
            Setting::MaxOverflow => "DB_MAX_OVERFLOW",
            Setting::PoolTimeout => "DB_POOL_TIMEOUT",
            Setting::Recycle => "DB_POOL_RECYCLE",
            Setting::ConnectTimeout => "DB_POOL_CONNECT_TIMEOUT",
            Setting::HealthInterval => "DB_POOL_HEALTH_INTERVAL",
            Setting::IdleTimeout => "DB_POOL_IDLE_TIMEOUT",
            Setting::LeakThreshold => "DB_POOL_LEAK_THRESHOLD",
            Setting::WarnUtilization => "DB_POOL_WARN_UTILIZATION",
            Setting::CriticalUtilization => "DB_POOL_CRITICAL_UTILIZATION",
            Setting::BreakerFailures => "DB_CIRCUIT_BREAKER_FAILURE_THRESHOLD",
            Setting::BreakerRecovery => "DB_CIRCUIT_BREAKER_RECOVERY_TIMEOUT",
            Setting::BreakerSuccesses => "DB_CIRCUIT_BREAKER_SUCCESS_THRESHOLD",
            Setting::BreakerTimeout => "DB_CIRCUIT_BREAKER_TIMEOUT",
            Setting::Name => "DB_POOL_NAME",
            Setting::ValidationBypass => "validation_bypass",
            Setting::ValidationTimeout => "DB_POOL_VALIDATION_TIMEOUT",
            Setting::TcpKeepalive => "DB_POOL_TCP_KEEPALIVE",
            Setting::TcpUserTimeout => "DB_POOL_TCP_USER_TIMEOUT",
        }
    }
}

/// One setting that broke a rule: which, what it held, what is wrong, what is allowed.
///
/// Displays as `DB_POOL_TIMEOUT="-1": a negative duration; expected a duration above 0 …`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigProblem {
    /// The environment variable (or field) at fault, e.g. `DB_POOL_SIZE`.
    pub setting: String,
    /// What it held; `None` when it is not shown (`DATABASE_URL`, which may hold a password).
    pub value: Option<String>,
    /// What is wrong with it, e.g. `a negative duration`.
    pub problem: String,
    /// What would have been accepted.
    pub expected: String,
}

impl ConfigProblem {
    pub(crate) fn new(setting: &str, value: Option<String>, problem: &str, expected: &str) -> Self {
        ConfigProblem {
            setting: setting.to_owned(),
            value,
            problem: problem.to_owned(),
            expected: expected.to_owned(),
        }
    }

    /// `DATABASE_URL` (or `setting`) could not be used; its value is never shown.
    pub(crate) fn url(setting: &str, error: &UrlError) -> Self {
        ConfigProblem::new(setting, None, error.problem(), error.expected())
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.setting)?;
        if let Some(value) = &self.value {
            write!(f, "={value:?}")?;
        }
        write!(f, ": {}; expected {}", self.problem, self.expected)
    }
}

/// A configuration that cannot make a pool; lists every problem found, not just the first.
///
/// `Display` gives a heading and then one problem per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<ConfigProblem>,
}

impl ConfigError {
    pub(crate) fn from_problems(problems: Vec<ConfigProblem>) -> Result<(), ConfigError> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Every problem, in the order the settings were read.
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid pool configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_carry_the_documented_defaults() {
        let p = PoolConfig::production();
        assert_eq!((p.base_size, p.max_overflow, p.max_size()), (15, 25, 40));
        assert_eq!(p.checkout_timeout, Duration::from_secs(15));
        assert_eq!(p.health_interval, Duration::from_secs(60));
        let d = PoolConfig::development();
        assert_eq!((d.base_size, d.max_overflow), (10, 20));
        assert_eq!(d.checkout_timeout, Duration::from_secs(20));
        assert_eq!(d.health_interval, Duration::from_secs(300));
        let s = PoolConfig::sqlite();
        assert_eq!((s.base_size, s.max_overflow), (1, 0));
        assert_eq!(s.max_lifetime, Some(Duration::from_secs(3600)));
        assert_eq!(s.connect_timeout, Duration::from_secs(5));
        for c in [p, d, s] {
            c.validate().unwrap();
            assert_eq!(c.breaker, BreakerConfig::default());
            assert_eq!(c.breaker.operation_timeout, Duration::from_secs(30));
        }
    }

    #[test]
    fn validate_reports_every_problem_at_once() {
        let config = PoolConfig {
            base_size: 0,
            max_overflow: 0,
            checkout_timeout: Duration::ZERO,
            warn_utilization: 0.95,
            critical_utilization: 0.80,
            ..PoolConfig::production()
        };
        let err = config.validate().unwrap_err();
        let settings: Vec<_> = err.problems().iter().map(|p| p.setting.as_str()).collect();
        assert_eq!(
            settings,
            [
                "DB_POOL_SIZE",
                "DB_POOL_TIMEOUT",
                "DB_POOL_WARN_UTILIZATION"
            ]
        );
        assert!(err
            .to_string()
            .starts_with("invalid pool configuration (3 problems):\n  DB_POOL_SIZE=\"0 (with"));
    }
}
