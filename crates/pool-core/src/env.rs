//! Reading [`PoolConfig`] from environment variables.

use std::time::Duration;

use crate::config::{
    ConfigError, ConfigProblem, PoolConfig, Profile, Setting, MAX_LIFETIME, MAX_POOL_SIZE,
    MAX_THRESHOLD, MAX_TIMEOUT,
};
use crate::url::{redact, BackendKind, DatabaseUrl};

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

        let url = reader.raw("DATABASE_URL").and_then(|text| {
            DatabaseUrl::parse(&text)
                .map_err(|e| {
                    reader.problems.push(ConfigProblem::new(
                        "DATABASE_URL",
                        Some(redact(&text)),
                        &format!("a postgres:// or sqlite: URL ({e})"),
                    ))
                })
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
        let before = breaker.success_threshold;
        reader.threshold(Setting::BreakerSuccesses, &mut breaker.success_threshold);
        if breaker.half_open_max_probes == before {
            breaker.half_open_max_probes = breaker.success_threshold;
        }
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
    /// The variable's text; an empty or blank value is a problem of its own.
    fn raw(&mut self, key: &str) -> Option<String> {
        let value = (self.lookup)(key)?;
        if value.trim().is_empty() {
            self.problems.push(ConfigProblem::new(
                key,
                Some(value),
                "a value (the variable is set but empty; unset it to use the default)",
            ));
            return None;
        }
        Some(value.trim().to_owned())
    }

    fn fail(&mut self, key: &str, value: &str, expected: &str) {
        self.problems
            .push(ConfigProblem::new(key, Some(shorten(value)), expected));
    }

    fn profile(&mut self, backend: Option<BackendKind>) -> Profile {
        if backend != Some(BackendKind::Postgres) {
            return Profile::Sqlite;
        }
        for key in ["DB_POOL_PROFILE", "APP_ENV"] {
            if let Some(value) = self.raw(key) {
                return match value.to_ascii_lowercase().as_str() {
                    "production" | "prod" => Profile::Production,
                    "development" | "dev" | "test" | "testing" | "local" => Profile::Development,
                    _ => {
                        let hint = if key == "APP_ENV" {
                            "production or development (set DB_POOL_PROFILE to override APP_ENV)"
                        } else {
                            "production or development"
                        };
                        self.fail(key, &value, hint);
                        Profile::Development
                    }
                };
            }
        }
        Profile::Development
    }

    fn size(&mut self, setting: Setting, out: &mut u32) {
        let key = setting.label();
        let Some(text) = self.raw(key) else { return };
        let expected = "a whole number from 0 to 10000";
        match text.parse::<i64>() {
            Ok(n) if (0..=i64::from(MAX_POOL_SIZE)).contains(&n) => *out = n as u32,
            Ok(n) if n < 0 && setting == Setting::MaxOverflow => self.fail(
                key,
                &text,
                "a whole number from 0 to 10000 (unlimited overflow is not supported)",
            ),
            _ => self.fail(key, &text, expected),
        }
    }

    fn threshold(&mut self, setting: Setting, out: &mut u32) {
        let key = setting.label();
        let Some(text) = self.raw(key) else { return };
        match text.parse::<i64>() {
            Ok(n) if (1..=i64::from(MAX_THRESHOLD)).contains(&n) => *out = n as u32,
            _ => self.fail(key, &text, "a whole number from 1 to 10000"),
        }
    }

    fn duration(&mut self, setting: Setting, max: Duration, out: &mut Duration) {
        let key = setting.label();
        let Some(text) = self.raw(key) else { return };
        match parse_duration(&text) {
            Ok(d) if !d.is_zero() && d <= max => *out = d,
            Ok(_) => self.fail(
                key,
                &text,
                "a duration above 0 and at most 1 day, e.g. 15, 2.5, 500ms, 2m",
            ),
            Err(why) => self.fail(key, &text, &format!("{why}, e.g. 15, 2.5, 500ms, 2m")),
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
        let off = if minus_one {
            "-1, 0 or off"
        } else {
            "0 or off"
        };
        match parse_duration(&text) {
            Ok(d) if !d.is_zero() && d <= MAX_LIFETIME => *out = Some(d),
            Ok(_) => self.fail(
                key,
                &text,
                &format!("a duration above 0 and at most 30 days, or {off} to turn it off"),
            ),
            Err(why) => self.fail(key, &text, &format!("{why}, or {off} to turn it off")),
        }
    }

    fn fraction(&mut self, setting: Setting, out: &mut f64) {
        let key = setting.label();
        let Some(text) = self.raw(key) else { return };
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 && v <= 1.0 => *out = v,
            _ => self.fail(key, &text, "a fraction above 0 and at most 1, e.g. 0.80"),
        }
    }

    fn boolean(&mut self, key: &str, out: &mut bool) {
        let Some(text) = self.raw(key) else { return };
        match text.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => *out = true,
            "0" | "false" | "no" | "off" => *out = false,
            _ => self.fail(key, &text, "true or false (also 1/0, yes/no, on/off)"),
        }
    }
}

fn shorten(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        value.to_owned()
    } else {
        let mut s: String = value.chars().take(MAX).collect();
        s.push('…');
        s
    }
}

/// Parses `15`, `30.0` (seconds) or a number with one unit: `us`, `ms`, `s`, `m`, `h`.
///
/// # Errors
///
/// A short description of what was wrong (negative, not a number, unknown unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number = number.trim();
    if number.is_empty() {
        return Err("not a number of seconds or a duration".to_owned());
    }
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
        "h" | "hr" | "hour" | "hours" => 3600.0,
        other => return Err(format!("unknown unit `{other}` (use us, ms, s, m or h)")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| "not a number of seconds or a duration".to_owned())?;
    if !value.is_finite() {
        return Err("not a finite duration".to_owned());
    }
    if value < 0.0 {
        return Err("a negative duration".to_owned());
    }
    let secs = value * scale;
    // Anything beyond a century is a typo, and Duration would overflow far above it.
    if secs > 3.2e9 {
        return Err("an absurdly long duration".to_owned());
    }
    Ok(Duration::from_secs_f64(secs))
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
        assert!(parse_duration("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("-3").unwrap_err().contains("negative"));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("99999999999")
            .unwrap_err()
            .contains("absurdly"));
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
            config(&[PG, ("APP_ENV", "staging"), ("DB_POOL_PROFILE", "prod")]).unwrap();
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
        ])
        .unwrap();
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
        assert_eq!(c.breaker.half_open_max_probes, 2);
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
        let cases: &[(&str, &str, &str)] = &[
            ("DB_POOL_SIZE", "", "set but empty"),
            ("DB_POOL_SIZE", "ten", "whole number from 0 to 10000"),
            ("DB_POOL_SIZE", "-4", "whole number from 0 to 10000"),
            ("DB_POOL_SIZE", "99999999", "whole number from 0 to 10000"),
            (
                "DB_MAX_OVERFLOW",
                "-1",
                "unlimited overflow is not supported",
            ),
            ("DB_POOL_TIMEOUT", "0", "above 0"),
            ("DB_POOL_TIMEOUT", "-5", "negative"),
            (
                "DB_POOL_TIMEOUT",
                "3 fortnights",
                "unknown unit `fortnights`",
            ),
            ("DB_POOL_TIMEOUT", "100000000", "at most 1 day"),
            ("DB_POOL_CONNECT_TIMEOUT", "soon", "not a number"),
            ("DB_POOL_RECYCLE", "-7", "negative"),
            ("DB_POOL_LEAK_THRESHOLD", "9999h", "at most 30 days"),
            ("DB_POOL_PRE_PING", "maybe", "true or false"),
            (
                "DB_POOL_WARN_UTILIZATION",
                "80",
                "fraction above 0 and at most 1",
            ),
            ("DB_POOL_CRITICAL_UTILIZATION", "0", "fraction above 0"),
            (
                "DB_CIRCUIT_BREAKER_FAILURE_THRESHOLD",
                "0",
                "from 1 to 10000",
            ),
            (
                "DB_CIRCUIT_BREAKER_SUCCESS_THRESHOLD",
                "1.5",
                "from 1 to 10000",
            ),
            ("DB_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "NaN", "not a number"),
            ("DB_POOL_PROFILE", "qa", "production or development"),
        ];
        for (key, value, expected) in cases {
            let p = problem_for(&[PG, (key, value)], key);
            assert_eq!(p.value.as_deref(), Some(*value), "{key}={value}");
            assert!(
                p.expected.contains(expected),
                "{key}={value}: {}",
                p.expected
            );
            assert!(p.to_string().starts_with(&format!("{key}=")), "{p}");
        }
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
        assert!(p.expected.contains("below the critical"), "{p}");
        let p = problem_for(
            &[PG, ("DB_POOL_SIZE", "0"), ("DB_MAX_OVERFLOW", "0")],
            "DB_POOL_SIZE",
        );
        assert!(p.expected.contains("at least 1"), "{p}");
        let p = problem_for(
            &[
                PG,
                ("DB_POOL_IDLE_TIMEOUT", "2h"),
                ("DB_POOL_RECYCLE", "1h"),
            ],
            "DB_POOL_IDLE_TIMEOUT",
        );
        assert!(
            p.expected.contains("shorter than the maximum lifetime"),
            "{p}"
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
