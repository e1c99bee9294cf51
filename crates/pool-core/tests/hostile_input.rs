//! Hostile input, fuzzed with proptest (many cases, a few seconds in all): the duration
//! parser, DSN handling and the environment reader never panic, and no error they produce
//! holds the DSN's password. Case counts scale with `HOSTILE_INPUT_CASES` (default 4000 for
//! each property; the test command runs the default).

use pool_core::{parse_duration, DatabaseUrl, PoolConfig};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn cases(scale: u32) -> Config {
    let base = std::env::var("HOSTILE_INPUT_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4000);
    Config {
        cases: base * scale,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Any text, weighted toward what the parsers look at: digits, units, separators, quotes.
fn hostile_text() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        4 => any::<char>().prop_map(String::from),
        4 => proptest::sample::select(
            vec!["1", "0", "-", ".", "e", "9999999999999999999", "ms", "s", "m", "h", "d", "M",
                 "y", "us", "µs", " ", "\t", "=", "'", "\\", "@", ":", "/", "?", "#", "%", "%4",
                 "%40", ",", "[", "]", "host", "port", "password", "postgres://", "sqlite:",
                 "NaN", "inf"]
        )
        .prop_map(str::to_owned),
    ];
    proptest::collection::vec(pieces, 0..24).prop_map(|p| p.concat())
}

/// A password from the printable range, specials included.
fn password() -> impl Strategy<Value = String> {
    "[ -~\t]{6,20}"
}

proptest! {
    #![proptest_config(cases(2))]

    #[test]
    fn the_duration_parser_never_panics_and_never_returns_a_negative_or_absurd_value(
        text in hostile_text()
    ) {
        match parse_duration(&text) {
            Ok(d) => {
                // Only what a duration may be: never a negative, never from a bare unit.
                prop_assert!(!text.trim_start().starts_with('-'), "{:?} gave {:?}", text, d);
                prop_assert!(text.chars().any(|c| c.is_ascii_digit()), "{:?} gave {:?}", text, d);
            }
            Err(problem) => {
                prop_assert!(!problem.is_empty());
                prop_assert!(!problem.contains(&text) || text.len() < 3, "{}", problem);
            }
        }
    }

    #[test]
    fn any_text_as_a_dsn_parses_or_fails_without_panicking(text in hostile_text()) {
        match DatabaseUrl::parse(&text) {
            Ok(url) => {
                let _ = (url.to_string(), url.default_pool_name(), format!("{url:?}"));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

proptest! {
    #![proptest_config(cases(1))]

    #[test]
    fn a_password_in_a_mangled_url_never_reaches_an_error(
        password in password(),
        tail in hostile_text(),
        head in proptest::sample::select(vec!["postgres://", "postgresql://", "POSTGRES://",
                                              "mysql://", "postgres:/", ""]),
    ) {
        // Shorter than 4 characters, a password is found in any fixed text.
        prop_assume!(password.trim().chars().count() >= 4);
        prop_assume!(!tail.contains(password.trim()));
        let text = format!("{head}app:{password}@{tail}");
        let shown = match DatabaseUrl::parse(&text) {
            Err(e) => format!("{e} {e:?}"),
            Ok(url) => format!("{url} {url:?} {}", url.default_pool_name()),
        };
        prop_assert!(!shown.contains(password.trim()), "{}", shown);
    }

    #[test]
    fn a_password_in_a_mangled_key_value_string_never_reaches_an_error(
        password in password(),
        before in hostile_text(),
        after in hostile_text(),
        quote in any::<bool>(),
    ) {
        let value = if quote { format!("'{password}'") } else { password.clone() };
        let whole = password.trim();
        prop_assume!(whole.chars().count() >= 4);
        prop_assume!(!before.contains(whole) && !after.contains(whole));
        let text = format!("{before} password={value} {after}");
        if let Err(e) = DatabaseUrl::parse(&text) {
            let shown = format!("{e} {e:?}");
            prop_assert!(!shown.contains(whole), "{}", shown);
        }
    }

    #[test]
    fn the_environment_reader_never_panics_and_never_shows_the_password(
        password in "[!-~]{8,20}",
        values in proptest::collection::vec(hostile_text(), 19),
        url_form in 0..3usize,
    ) {
        let encoded: String = password
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let url = match url_form {
            0 => format!("postgres://app:{encoded}@db:5432/orders"),
            1 => format!("host=db dbname=orders password='{}'", password.replace('\\', "\\\\").replace('\'', "\\'")),
            _ => format!("postgres://app:{encoded}@db:{}/orders", values[0]),
        };
        let keys = [
            "DB_POOL_SIZE", "DB_MAX_OVERFLOW", "DB_POOL_TIMEOUT", "DB_POOL_RECYCLE",
            "DB_POOL_CONNECT_TIMEOUT", "DB_POOL_HEALTH_INTERVAL",
            "DB_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "DB_CIRCUIT_BREAKER_RECOVERY_TIMEOUT",
            "DB_CIRCUIT_BREAKER_SUCCESS_THRESHOLD", "DB_CIRCUIT_BREAKER_TIMEOUT", "DB_POOL_NAME",
            "DB_POOL_PRE_PING", "DB_POOL_IDLE_TIMEOUT", "DB_POOL_LEAK_THRESHOLD",
            "DB_POOL_WARN_UTILIZATION", "DB_POOL_CRITICAL_UTILIZATION", "APP_ENV",
            "DB_POOL_PROFILE",
        ];
        let lookup = |key: &str| {
            if key == "DATABASE_URL" {
                return Some(url.clone());
            }
            keys.iter().position(|k| *k == key).map(|i| values[i + 1].clone())
        };
        match PoolConfig::from_env_with(lookup) {
            Ok(config) => {
                prop_assert!(config.validate().is_ok());
                let shown = format!("{config:?}");
                prop_assert!(!shown.contains(&password), "{}", shown);
            }
            Err(e) => {
                let shown = format!("{e} {e:?}");
                // A value the generator put in another variable is echoed as it is; only
                // the DSN's password must never be.
                let echoed = values.iter().any(|v| v.contains(&password));
                prop_assert!(echoed || !shown.contains(&password), "{}", shown);
                for problem in e.problems() {
                    let line = problem.to_string();
                    prop_assert!(line.contains(": ") && line.contains("; expected "), "{}", line);
                }
            }
        }
    }
}
