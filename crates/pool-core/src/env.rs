//! Reading [`PoolConfig`] from environment variables.

use std::time::Duration;

use crate::config::{
    duration_problem, fraction_problem, shorten, ConfigError, ConfigProblem, PoolConfig, Profile,
    Setting, DURATION_RANGE, FRACTION_RANGE, MAX_LIFETIME, MAX_POOL_SIZE, MAX_THRESHOLD,
    MAX_TIMEOUT, SIZE_RANGE, THRESHOLD_RANGE,
};
use crate::url::{BackendKind, DatabaseUrl};

impl PoolConfig {
    /// Reads the configuration from the process environment.
    ///
    /// The profile comes from `DB_POOL_PROFILE` (or, failing that, `APP_ENV`):
    /// `production` or `development` (the default). A SQLite `DATABASE_URL`, or none at all,
    /// selects the SQLite profile. Each variable of the table in the crate docs then overrides
    /// its default. Durations are seconds (`15`, `30.0`) or carry a unit (`500ms`, `2m`, `1h`).
    ///
    /// ```
    /// # use pool_core::PoolConfig;
    /// let vars = [
    ///     ("DATABASE_URL", "postgres://app:pw@db:5432/orders"),
    ///     ("DB_POOL_PROFILE", "production"),
    ///     ("DB_POOL_SIZE", "20"),
    ///     ("DB_POOL_TIMEOUT", "2.5"),
    /// ];
    /// let config = PoolConfig::from_env_with(|key| {
    ///     vars.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_string())
    /// })
    /// .unwrap();
    /// assert_eq!(config.base_size, 20);
    /// assert_eq!(config.max_overflow, 25);
    /// assert_eq!(config.checkout_timeout.as_millis(), 2500);
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError`] listing every variable that could not be used (missing values are
    /// fine; they keep the default) and every broken cross-field rule.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_with(|key| std::env::var_os(key).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Like [`PoolConfig::from_env`] with a prefix before every pool variable, for a second
    /// pool in the same process: with prefix `REPLICA_` the URL is `REPLICA_DATABASE_URL`
    /// and the size `REPLICA_DB_POOL_SIZE`. The profile selectors `DB_POOL_PROFILE` and
    /// `APP_ENV` are read with the prefix first and then without it.
    ///
    /// # Errors
    ///
    /// As [`PoolConfig::from_env`].
    pub fn from_env_prefixed(prefix: &str) -> Result<Self, ConfigError> {
        Self::from_env_with(|key| {
            let prefixed = std::env::var_os(format!("{prefix}{key}"));
            let value = if prefixed.is_none() && matches!(key, "DB_POOL_PROFILE" | "APP_ENV") {
                std::env::var_os(key)
            } else {
                prefixed
            };
            value.map(|v| v.to_string_lossy().into_owned())
        })
    }

    /// Like [`PoolConfig::from_env`], reading variables through `lookup` instead of the
    /// process environment (for tests, or configuration from another source).
    ///
    /// # Errors
    ///
    /// As [`PoolConfig::from_env`].
    pub fn from_env_with(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut reader = Reader {
            lookup: &lookup,
            problems: Vec::new(),
        };

        // Untrimmed: DatabaseUrl::parse knows where whitespace is part of the DSN.
        let url = reader.raw_untrimmed("DATABASE_URL").and_then(|text| {
            DatabaseUrl::parse(&text)
                .map_err(|e| reader.problems.push(ConfigProblem::url("DATABASE_URL", &e)))
                .ok()
        });
        let profile = reader.profile(url.as_ref().map(DatabaseUrl::kind));

        let mut config = PoolConfig::for_profile(profile);
        config.database_url = url;
        if let Some(name) = reader.raw(Setting::Name.label()) {
            config.name = Some(name);
        }
        reader.size(Setting::PoolSize, &mut config.base_size);
        reader.size(Setting::MaxOverflow, &mut config.max_overflow);
        reader.duration(
            Setting::PoolTimeout,
            MAX_TIMEOUT,
            &mut config.checkout_timeout,
        );
        reader.optional_duration(Setting::Recycle, &mut config.max_lifetime, true);
        reader.duration(
            Setting::ConnectTimeout,
            MAX_TIMEOUT,
            &mut config.connect_timeout,
        );
        reader.duration(
            Setting::HealthInterval,
            MAX_TIMEOUT,
            &mut config.health_interval,
        );
        reader.boolean("DB_POOL_PRE_PING", &mut config.pre_ping);
        reader.optional_duration(Setting::IdleTimeout, &mut config.idle_timeout, false);
        reader.optional_duration(Setting::LeakThreshold, &mut config.leak_threshold, false);
        reader.duration(
            Setting::ValidationTimeout,
            MAX_TIMEOUT,
            &mut config.validation_timeout,
        );
        reader.optional_duration(Setting::TcpKeepalive, &mut config.tcp_keepalive, false);
        reader.optional_duration(Setting::TcpUserTimeout, &mut config.tcp_user_timeout, false);
        reader.fraction(Setting::WarnUtilization, &mut config.warn_utilization);
        reader.fraction(
            Setting::CriticalUtilization,
            &mut config.critical_utilization,
        );
        let breaker = &mut config.breaker;
        reader.threshold(Setting::BreakerFailures, &mut breaker.failure_threshold);
        reader.duration(
            Setting::BreakerRecovery,
            MAX_TIMEOUT,
            &mut breaker.recovery_timeout,
        );
        reader.threshold(Setting::BreakerSuccesses, &mut breaker.success_threshold);
        reader.duration(
            Setting::BreakerTimeout,
            MAX_TIMEOUT,
            &mut breaker.operation_timeout,
        );

        let mut problems = reader.problems;
        // Cross-field rules only for fields that parsed: a bad value is reported once.
        let bad: Vec<String> = problems.iter().map(|p| p.setting.clone()).collect();
        let mut cross = Vec::new();
        config.collect_problems(&mut cross);
        problems.extend(cross.into_iter().filter(|p| !bad.contains(&p.setting)));
        ConfigError::from_problems(problems)?;
        Ok(config)
    }
}

struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<ConfigProblem>,
}

impl Reader<'_> {
    /// The variable's text, trimmed; an empty or blank value is a problem of its own.
    fn raw(&mut self, key: &str) -> Option<String> {
        self.raw_untrimmed(key).map(|value| value.trim().to_owned())
    }

    fn raw_untrimmed(&mut self, key: &str) -> Option<String> {
        let value = (self.lookup)(key)?;
        if value.trim().is_empty() {
            // Not shown: for DATABASE_URL it could be a password made of spaces.
            self.problems.push(ConfigProblem::new(
                key,
                None,
                "set but empty",
                "a value (unset the variable to use the default)",
            ));
            return None;
        }
        Some(value)
    }

    fn fail(&mut self, key: &str, value: &str, problem: &str, expected: &str) {
        self.problems.push(ConfigProblem::new(
            key,
            Some(shorten(value)),
            problem,
            expected,
        ));
    }

    /// `DB_POOL_PROFILE` is the pool's own and strict; `APP_ENV` belongs to the application,
    /// so a value the pool does not know selects the default profile (and says so).
    fn profile(&mut self, backend: Option<BackendKind>) -> Profile {
        if backend != Some(BackendKind::Postgres) {
            return Profile::Sqlite;
        }
        if let Some(value) = self.raw("DB_POOL_PROFILE") {
            return profile_named(&value).unwrap_or_else(|| {
                self.fail(
                    "DB_POOL_PROFILE",
                    &value,
                    "not a profile",
                    "production (or prod) or development (or dev, test, testing, local)",
                );
                Profile::Development
            });
        }
        let app_env = (self.lookup)("APP_ENV").unwrap_or_default();
        let app_env = app_env.trim();
        if app_env.is_empty() {
            return Profile::Development;
        }
        profile_named(app_env).unwrap_or_else(|| {
            tracing::warn!(
                app_env = %shorten(app_env),
                "APP_ENV names no pool profile; using the development defaults (set \
                 DB_POOL_PROFILE=production or development to choose)"
            );
            Profile::Development
        })
    }

    fn size(&mut self, setting: Setting, out: &mut u32) {
        let key = setting.label();
        let Some(text) = self.raw(key) else { return };
        let problem = match text.parse::<i64>() {
            Ok(n) if (0..=i64::from(MAX_POOL_SIZE)).contains(&n) => {
                *out = n as u32;
                return;
            }
            Ok(n) if n < 0 && setting == Setting::MaxOverflow => {
                "negative (unlimited overflow is not supported)"
            }
            Ok(n) if n < 0 => "negative",
            Ok(_) => "too large",
            Err(_) => whole_number_problem(&text),
        };
        self.fail(key, &text, problem, SIZE_RANGE);
    }

    fn threshold(&mut self, setting: Setting, out: &mut u32) {
        let key = setting.label();
        let Some(text) = self.raw(key) else { return };
        let problem = match text.parse::<i64>() {
            Ok(n) if (1..=i64::from(MAX_THRESHOLD)).contains(&n) => {
                *out = n as u32;
                return;
            }
            Ok(0) => "zero",
            Ok(n) if n < 0 => "negative",
            Ok(_) => "too large",
            Err(_) => whole_number_problem(&text),
        };
        self.fail(key, &text, problem, THRESHOLD_RANGE);
    }

    fn duration(&mut self, setting: Setting, max: Duration, out: &mut Duration) {
        let key = setting.label();
        let Some(text) = self.raw(key) else { return };
        match parse_duration(&text) {
            Ok(d) if !d.is_zero() && d <= max => *out = d,
            Ok(d) => self.fail(key, &text, &duration_problem(d, max), DURATION_RANGE),
            Err(problem) => self.fail(key, &text, &problem, DURATION_RANGE),
        }
    }

    /// `off`, `none`, `0` (and `-1` where SQLAlchemy uses it for "never") turn it off.
    fn optional_duration(&mut self, setting: Setting, out: &mut Option<Duration>, minus_one: bool) {
        let key = setting.label();
        let Some(text) = self.raw(key) else { return };
        let lower = text.to_ascii_lowercase();
        if matches!(lower.as_str(), "off" | "none" | "never" | "0") || (minus_one && lower == "-1")
        {
            *out = None;
            return;
        }
        let expected = if minus_one {
            "a duration above 0 and at most 30 days (2.5, 90s, 1h 30m), or -1, 0 or off to \
             turn it off"
        } else {
            "a duration above 0 and at most 30 days (2.5, 90s, 1h 30m), or 0 or off to turn it \
             off"
        };
        match parse_duration(&text) {
            Ok(d) if !d.is_zero() && d <= MAX_LIFETIME => *out = Some(d),
            Ok(d) => self.fail(key, &text, &duration_problem(d, MAX_LIFETIME), expected),
            Err(problem) => self.fail(key, &text, &problem, expected),
        }
    }

    fn fraction(&mut self, setting: Setting, out: &mut f64) {
        let key = setting.label();
        let Some(text) = self.raw(key) else { return };
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 && v <= 1.0 => *out = v,
            Ok(v) => self.fail(key, &text, fraction_problem(v), FRACTION_RANGE),
            Err(_) => self.fail(key, &text, "not a number", FRACTION_RANGE),
        }
    }

    fn boolean(&mut self, key: &str, out: &mut bool) {
        let Some(text) = self.raw(key) else { return };
        match text.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => *out = true,
            "0" | "false" | "no" | "off" => *out = false,
            _ => self.fail(
                key,
                &text,
                "not a boolean",
                "true or false (also 1/0, yes/no, on/off)",
            ),
        }
    }
}

fn profile_named(value: &str) -> Option<Profile> {
    match value.to_ascii_lowercase().as_str() {
        "production" | "prod" => Some(Profile::Production),
        "development" | "dev" | "test" | "testing" | "local" => Some(Profile::Development),
        _ => None,
    }
}

/// Why text that `i64` refused is not a whole number.
fn whole_number_problem(text: &str) -> &'static str {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        "too large"
    } else if text.parse::<f64>().is_ok() {
        "not a whole number"
    } else {
        "not a number"
    }
}

/// Parses a duration: plain seconds as the seed writes them (`15`, `30.0`, `2.5`), or
/// [`humantime`]'s units, alone or compound (`500ms`, `2m`, `2m30s`, `1h 5m`, `1.5h`).
///
/// ```
/// use std::time::Duration;
/// use pool_core::parse_duration;
///
/// assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
/// assert_eq!(parse_duration("2m30s"), Ok(Duration::from_secs(150)));
/// assert_eq!(parse_duration("-1").unwrap_err(), "a negative duration");
/// assert_eq!(parse_duration("10x").unwrap_err(), "unknown unit \"x\"");
/// ```
///
/// # Errors
///
/// What is wrong, in a few words: `a negative duration`, `unknown unit "x"`, `too long to
/// represent`, `not a number of seconds or a duration`.
///
/// humantime's units are case sensitive: `m` is minutes, `M` months, and `S` or `MS` are not
/// units.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty".to_owned());
    }
    if text.starts_with('-') {
        return Err("a negative duration".to_owned());
    }
    if let Ok(seconds) = text.parse::<f64>() {
        if !seconds.is_finite() {
            return Err("not a finite number".to_owned());
        }
        return Duration::try_from_secs_f64(seconds).map_err(|_| "too long to represent".into());
    }
    humantime::parse_duration(text).map_err(|e| match e {
        humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
            "a number without a unit after one with a unit".to_owned()
        }
        humantime::DurationError::UnknownUnit { unit, .. } => format!("unknown unit {unit:?}"),
        // humantime reports a fraction finer than a nanosecond as an overflow too.
        humantime::DurationError::NumberOverflow if text.contains('.') => {
            "too long, or finer than a nanosecond, to represent".to_owned()
        }
        humantime::DurationError::NumberOverflow => "too long to represent".to_owned(),
        _ => "not a number of seconds or a duration".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<PoolConfig, ConfigError> {
        PoolConfig::from_env_with(|key| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    const PG: (&str, &str) = ("DATABASE_URL", "postgres://app:pa55word@db:5432/app");

    #[test]
    fn durations_accept_seconds_and_units() {
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("30.0").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5 h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("2m30s").unwrap(), Duration::from_secs(150));
        assert_eq!(parse_duration("1h 5m").unwrap(), Duration::from_secs(3900));
        assert_eq!(
            parse_duration("5 parsecs").unwrap_err(),
            "unknown unit \"parsecs\""
        );
        assert_eq!(parse_duration("-3").unwrap_err(), "a negative duration");
        assert_eq!(parse_duration("-3s").unwrap_err(), "a negative duration");
        assert_eq!(
            parse_duration("ten").unwrap_err(),
            "not a number of seconds or a duration"
        );
        assert_eq!(parse_duration("inf").unwrap_err(), "not a finite number");
        assert_eq!(
            parse_duration("1h 30").unwrap_err(),
            "a number without a unit after one with a unit"
        );
        assert_eq!(
            parse_duration("1.5ns").unwrap_err(),
            "too long, or finer than a nanosecond, to represent"
        );
        assert_eq!(
            parse_duration("1e300").unwrap_err(),
            "too long to represent"
        );
        assert_eq!(
            parse_duration("99999999999999999999h").unwrap_err(),
            "too long to represent"
        );
    }

    #[test]
    fn configuration_errors_say_what_is_wrong_then_what_is_expected() {
        let expected_duration = "expected a duration above 0 and at most 1 day: seconds (15, \
                                 2.5) or with units (500ms, 2m30s, 1h 5m)";
        for (key, value, line) in [
            (
                "DB_POOL_TIMEOUT",
                "-1",
                format!("DB_POOL_TIMEOUT=\"-1\": a negative duration; {expected_duration}"),
            ),
            (
                "DB_POOL_TIMEOUT",
                "10x",
                format!("DB_POOL_TIMEOUT=\"10x\": unknown unit \"x\"; {expected_duration}"),
            ),
            (
                "DB_POOL_CONNECT_TIMEOUT",
                "99999999999999999999h",
                format!(
                    "DB_POOL_CONNECT_TIMEOUT=\"99999999999999999999h\": too long to represent; \
                     {expected_duration}"
                ),
            ),
            (
                "DB_POOL_TIMEOUT",
                "2d",
                format!("DB_POOL_TIMEOUT=\"2d\": longer than 1 day; {expected_duration}"),
            ),
            (
                "DB_POOL_SIZE",
                "ten",
                "DB_POOL_SIZE=\"ten\": not a number; expected a whole number from 0 to 10000"
                    .to_owned(),
            ),
            (
                "DB_POOL_SIZE",
                "99999999999999999999",
                "DB_POOL_SIZE=\"99999999999999999999\": too large; expected a whole number from \
                 0 to 10000"
                    .to_owned(),
            ),
        ] {
            let err = config(&[PG, (key, value)]).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid pool configuration (1 problem):\n  {line}")
            );
        }
    }

    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_unknown_app_env_selects_the_default_profile_but_db_pool_profile_is_strict() {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .finish();
        let c = tracing::subscriber::with_default(subscriber, || {
            config(&[PG, ("APP_ENV", "staging")]).unwrap()
        });
        assert_eq!(c.profile, Profile::Development);
        let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(
            logged.contains("WARN")
                && logged.contains("APP_ENV names no pool profile; using the development defaults")
                && logged.contains("app_env=staging"),
            "{logged}"
        );
        let c = config(&[PG, ("APP_ENV", "")]).unwrap();
        assert_eq!(c.profile, Profile::Development);
        let c = config(&[PG, ("APP_ENV", "Prod")]).unwrap();
        assert_eq!(c.profile, Profile::Production);
        let err = config(&[
            PG,
            ("APP_ENV", "production"),
            ("DB_POOL_PROFILE", "staging"),
        ])
        .unwrap_err();
        assert_eq!(
            err.problems()[0].to_string(),
            "DB_POOL_PROFILE=\"staging\": not a profile; expected production (or prod) or \
             development (or dev, test, testing, local)"
        );
    }

    #[test]
    fn no_variables_gives_the_sqlite_profile() {
        assert_eq!(config(&[]).unwrap(), PoolConfig::sqlite());
    }

    #[test]
    fn a_postgres_url_defaults_to_development_and_app_env_selects_production() {
        let dev = config(&[PG]).unwrap();
        assert_eq!(dev.profile, Profile::Development);
        assert_eq!((dev.base_size, dev.max_overflow), (10, 20));
        let prod = config(&[PG, ("APP_ENV", "production")]).unwrap();
        assert_eq!(prod.profile, Profile::Production);
        let overridden =
            config(&[PG, ("APP_ENV", "development"), ("DB_POOL_PROFILE", "prod")]).unwrap();
        assert_eq!(overridden.profile, Profile::Production);
    }

    #[test]
    fn every_variable_of_the_table_is_read() {
        let c = config(&[
            PG,
            ("DB_POOL_PROFILE", "production"),
            ("DB_POOL_NAME", "primary"),
            ("DB_POOL_SIZE", "7"),
            ("DB_MAX_OVERFLOW", "3"),
            ("DB_POOL_TIMEOUT", "2.5"),
            ("DB_POOL_RECYCLE", "-1"),
            ("DB_POOL_CONNECT_TIMEOUT", "750ms"),
            ("DB_POOL_HEALTH_INTERVAL", "2m"),
            ("DB_POOL_PRE_PING", "off"),
            ("DB_POOL_IDLE_TIMEOUT", "10m"),
            ("DB_POOL_LEAK_THRESHOLD", "30s"),
            ("DB_POOL_WARN_UTILIZATION", "0.7"),
            ("DB_POOL_CRITICAL_UTILIZATION", "0.9"),
            ("DB_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "4"),
            ("DB_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "5"),
            ("DB_CIRCUIT_BREAKER_SUCCESS_THRESHOLD", "2"),
            ("DB_CIRCUIT_BREAKER_TIMEOUT", "12.5"),
            ("DB_POOL_VALIDATION_TIMEOUT", "1500ms"),
            ("DB_POOL_TCP_KEEPALIVE", "off"),
            ("DB_POOL_TCP_USER_TIMEOUT", "20s"),
        ])
        .unwrap();
        assert_eq!(c.validation_timeout, Duration::from_millis(1500));
        assert_eq!(c.tcp_keepalive, None);
        assert_eq!(c.tcp_user_timeout, Some(Duration::from_secs(20)));
        assert_eq!(c.name.as_deref(), Some("primary"));
        assert_eq!((c.base_size, c.max_overflow), (7, 3));
        assert_eq!(c.checkout_timeout, Duration::from_millis(2500));
        assert_eq!(c.max_lifetime, None);
        assert_eq!(c.connect_timeout, Duration::from_millis(750));
        assert_eq!(c.health_interval, Duration::from_secs(120));
        assert!(!c.pre_ping);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(600)));
        assert_eq!(c.leak_threshold, Some(Duration::from_secs(30)));
        assert_eq!((c.warn_utilization, c.critical_utilization), (0.7, 0.9));
        assert_eq!(c.breaker.failure_threshold, 4);
        assert_eq!(c.breaker.recovery_timeout, Duration::from_secs(5));
        assert_eq!(c.breaker.success_threshold, 2);
        assert_eq!(c.breaker.operation_timeout, Duration::from_millis(12_500));
    }

    fn problem_for(vars: &[(&str, &str)], key: &str) -> ConfigProblem {
        let err = config(vars).unwrap_err();
        err.problems()
            .iter()
            .find(|p| p.setting == key)
            .cloned()
            .unwrap_or_else(|| panic!("no problem for {key} in {err}"))
    }

    #[test]
    fn bad_values_are_rejected_with_the_variable_the_value_and_what_is_allowed() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "DB_POOL_SIZE",
                "ten",
                "not a number",
                "whole number from 0 to 10000",
            ),
            (
                "DB_POOL_SIZE",
                "-4",
                "negative",
                "whole number from 0 to 10000",
            ),
            (
                "DB_POOL_SIZE",
                "2.5",
                "not a whole number",
                "from 0 to 10000",
            ),
            ("DB_POOL_SIZE", "99999999", "too large", "from 0 to 10000"),
            (
                "DB_MAX_OVERFLOW",
                "-1",
                "unlimited overflow is not supported",
                "from 0 to 10000",
            ),
            ("DB_POOL_TIMEOUT", "0", "zero", "above 0"),
            ("DB_POOL_TIMEOUT", "-5", "a negative duration", "above 0"),
            (
                "DB_POOL_TIMEOUT",
                "3 fortnights",
                "unknown unit \"fortnights\"",
                "500ms, 2m30s",
            ),
            (
                "DB_POOL_TIMEOUT",
                "100000000",
                "longer than 1 day",
                "at most 1 day",
            ),
            (
                "DB_POOL_CONNECT_TIMEOUT",
                "soon",
                "not a number of seconds",
                "2.5",
            ),
            (
                "DB_POOL_RECYCLE",
                "-7",
                "a negative duration",
                "or -1, 0 or off",
            ),
            (
                "DB_POOL_LEAK_THRESHOLD",
                "9999h",
                "longer than 30 days",
                "0 or off",
            ),
            (
                "DB_POOL_PRE_PING",
                "maybe",
                "not a boolean",
                "true or false",
            ),
            (
                "DB_POOL_WARN_UTILIZATION",
                "80",
                "not a percentage",
                "at most 1",
            ),
            (
                "DB_POOL_CRITICAL_UTILIZATION",
                "0",
                "not above 0",
                "above 0",
            ),
            (
                "DB_POOL_CRITICAL_UTILIZATION",
                "x",
                "not a number",
                "above 0",
            ),
            (
                "DB_CIRCUIT_BREAKER_FAILURE_THRESHOLD",
                "0",
                "zero",
                "from 1 to 10000",
            ),
            (
                "DB_CIRCUIT_BREAKER_SUCCESS_THRESHOLD",
                "1.5",
                "not a whole number",
                "from 1 to 10000",
            ),
            (
                "DB_CIRCUIT_BREAKER_RECOVERY_TIMEOUT",
                "NaN",
                "not a finite number",
                "above 0",
            ),
            ("DB_POOL_PROFILE", "qa", "not a profile", "production"),
        ];
        for (key, value, problem, expected) in cases {
            let p = problem_for(&[PG, (key, value)], key);
            assert_eq!(p.value.as_deref(), Some(*value), "{key}={value}");
            assert!(p.problem.contains(problem), "{key}={value}: {}", p.problem);
            assert!(
                p.expected.contains(expected),
                "{key}={value}: {}",
                p.expected
            );
            assert_eq!(
                p.to_string(),
                format!("{key}={value:?}: {}; expected {}", p.problem, p.expected)
            );
        }
        let p = problem_for(&[PG, ("DB_POOL_SIZE", " ")], "DB_POOL_SIZE");
        assert_eq!(
            p.to_string(),
            "DB_POOL_SIZE: set but empty; expected a value (unset the variable to use the default)"
        );
    }

    #[test]
    fn contradicting_pairs_are_rejected() {
        let p = problem_for(
            &[
                PG,
                ("DB_POOL_WARN_UTILIZATION", "0.9"),
                ("DB_POOL_CRITICAL_UTILIZATION", "0.8"),
            ],
            "DB_POOL_WARN_UTILIZATION",
        );
        assert_eq!(p.problem, "not below the critical threshold", "{p}");
        let p = problem_for(
            &[PG, ("DB_POOL_SIZE", "0"), ("DB_MAX_OVERFLOW", "0")],
            "DB_POOL_SIZE",
        );
        assert_eq!(
            p.to_string(),
            "DB_POOL_SIZE=\"0 (with DB_MAX_OVERFLOW = 0)\": a pool of no connections; expected \
             base size + overflow of at least 1"
        );
        // The idle timeout applies above the base only: it may exceed the lifetime.
        config(&[
            PG,
            ("DB_POOL_IDLE_TIMEOUT", "2h"),
            ("DB_POOL_RECYCLE", "1h"),
        ])
        .unwrap();
        let p = problem_for(
            &[PG, ("DB_POOL_TCP_KEEPALIVE", "500ms")],
            "DB_POOL_TCP_KEEPALIVE",
        );
        assert_eq!(
            p.to_string(),
            "DB_POOL_TCP_KEEPALIVE=\"0.5s\": not a whole number of seconds from 1 to 32767; \
             expected whole seconds from 1 to 32767 (e.g. 10 or 30s), or 0 or off"
        );
    }

    #[test]
    fn all_problems_are_reported_together() {
        let err = config(&[
            PG,
            ("DB_POOL_SIZE", "x"),
            ("DB_POOL_TIMEOUT", "-1"),
            ("DB_POOL_PRE_PING", "2"),
        ])
        .unwrap_err();
        let keys: Vec<_> = err.problems().iter().map(|p| p.setting.as_str()).collect();
        assert_eq!(
            keys,
            ["DB_POOL_SIZE", "DB_POOL_TIMEOUT", "DB_POOL_PRE_PING"]
        );
    }

    #[test]
    fn the_dsn_password_appears_in_no_error_or_debug_output() {
        let secret = "pa55word";
        let ok = config(&[PG]).unwrap();
        assert!(!format!("{ok:?}").contains(secret));
        let err = config(&[
            ("DATABASE_URL", "postgres://app:pa55word@db:5432/app"),
            ("DB_POOL_SIZE", "-1"),
        ])
        .unwrap_err();
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(secret), "{text}");
        }
        let err = config(&[("DATABASE_URL", "mysql://app:pa55word@db/app")]).unwrap_err();
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(secret), "{text}");
            assert!(text.contains("DATABASE_URL"), "{text}");
        }
        let err = config(&[
            ("DATABASE_URL", "host=db password=pa55word"),
            ("DB_POOL_SIZE", "q"),
        ])
        .unwrap_err();
        assert!(!format!("{err} {err:?}").contains(secret));
    }
}
