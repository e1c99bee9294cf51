//! Database URLs that never show their password.

use std::fmt;
use std::sync::Arc;

/// Which kind of database a URL points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum BackendKind {
    /// `postgres://…`, `postgresql://…` or a `key=value` connection string.
    Postgres,
    /// `sqlite:path`, `sqlite::memory:` or `sqlite://path`.
    Sqlite,
}

impl BackendKind {
    /// The `db.system.name` value of the OpenTelemetry semantic conventions.
    pub fn system_name(self) -> &'static str {
        match self {
            BackendKind::Postgres => "postgresql",
            BackendKind::Sqlite => "sqlite",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.system_name())
    }
}

/// A database URL (DSN) whose password is hidden from `Debug`, `Display` and serialization.
///
/// The full text is only reachable through [`DatabaseUrl::expose`], which the backends call
/// when they connect. Everything else, including error messages and pool names, uses
/// [`DatabaseUrl::redacted`].
///
/// ```
/// use pool_core::DatabaseUrl;
///
/// let url = DatabaseUrl::parse("postgres://app:s3cret@db.internal:5432/orders").unwrap();
/// assert_eq!(url.to_string(), "postgres://app:***@db.internal:5432/orders");
/// assert_eq!(url.default_pool_name(), "db.internal:5432/orders");
/// assert!(!format!("{url:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    raw: Arc<str>,
    redacted: Arc<str>,
    password: Option<Arc<str>>,
    kind: BackendKind,
}

/// A URL that could not be understood. Its message shows the URL with the password hidden.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlError {
    redacted: String,
    reason: &'static str,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (got `{}`)", self.reason, self.redacted)
    }
}

impl std::error::Error for UrlError {}

impl DatabaseUrl {
    /// Parses a PostgreSQL or SQLite URL.
    ///
    /// Accepted forms: `postgres://user:password@host:port/db`, `postgresql://…`, a libpq
    /// `key=value` string containing `host=` or `dbname=`, `sqlite:path/to/file.db`,
    /// `sqlite://path`, `sqlite::memory:`.
    ///
    /// # Errors
    ///
    /// [`UrlError`] when the text is empty or has an unknown scheme.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let text = text.trim();
        let redacted = redact(text);
        let fail = |reason| UrlError {
            redacted: redacted.clone(),
            reason,
        };
        if text.is_empty() {
            return Err(fail("the database URL is empty"));
        }
        let lower = text.to_ascii_lowercase();
        let kind = if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            if text
                .split_once("://")
                .is_some_and(|(_, rest)| rest.is_empty())
            {
                return Err(fail("the PostgreSQL URL has no host"));
            }
            BackendKind::Postgres
        } else if lower.starts_with("sqlite:") {
            if sqlite_path_of(text).is_empty() {
                return Err(fail(
                    "the SQLite URL has no path (use `sqlite::memory:` for memory)",
                ));
            }
            BackendKind::Sqlite
        } else if !lower.contains("://") && (lower.contains("host=") || lower.contains("dbname=")) {
            BackendKind::Postgres
        } else {
            return Err(fail(
                "unsupported database URL: expected postgres://, postgresql://, a key=value \
                 connection string, or sqlite:",
            ));
        };
        Ok(DatabaseUrl {
            raw: text.into(),
            redacted: redacted.into(),
            password: password_of(text).map(Into::into),
            kind,
        })
    }

    /// Replaces every occurrence of this URL's password in `text` with `***`; a last line of
    /// defence for driver error messages that might echo connection settings.
    pub fn scrub(&self, text: &str) -> String {
        match &self.password {
            Some(pw) if !pw.is_empty() => text.replace(&**pw, "***"),
            _ => text.to_owned(),
        }
    }

    /// The kind of database this URL points at.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The URL with its password replaced by `***`; safe for logs, errors and metrics.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The URL as given, password included. Only hand this to a driver.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The SQLite file path (or `:memory:`), for SQLite URLs.
    pub fn sqlite_path(&self) -> Option<&str> {
        (self.kind == BackendKind::Sqlite).then(|| sqlite_path_of(&self.raw))
    }

    /// `server.address:server.port/db.namespace`, or the file name for SQLite.
    ///
    /// Used as the pool name when none is configured. Never contains credentials.
    pub fn default_pool_name(&self) -> String {
        match self.kind {
            BackendKind::Sqlite => format!("sqlite:{}", sqlite_path_of(&self.raw)),
            BackendKind::Postgres => {
                if let Some((_, rest)) = self.raw.split_once("://") {
                    let rest = rest.split(['?', '#']).next().unwrap_or_default();
                    let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
                    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                    let host_port = if host_port.is_empty() {
                        "localhost"
                    } else {
                        host_port
                    };
                    let with_port = if host_port.ends_with(']') || !host_port.contains(':') {
                        format!("{host_port}:5432")
                    } else {
                        host_port.to_owned()
                    };
                    let db = if db.is_empty() { "postgres" } else { db };
                    format!("{with_port}/{db}")
                } else {
                    let field = |key: &str| {
                        self.raw.split_whitespace().find_map(|pair| {
                            pair.strip_prefix(key)
                                .and_then(|v| v.strip_prefix('='))
                                .map(str::to_owned)
                        })
                    };
                    format!(
                        "{}:{}/{}",
                        field("host").unwrap_or_else(|| "localhost".into()),
                        field("port").unwrap_or_else(|| "5432".into()),
                        field("dbname").unwrap_or_else(|| "postgres".into()),
                    )
                }
            }
        }
    }
}

fn password_of(text: &str) -> Option<String> {
    if let Some((_, rest)) = text.split_once("://") {
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let from_userinfo = rest[..authority_end]
            .rsplit_once('@')
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, pw)| pw.to_owned());
        from_userinfo.or_else(|| {
            rest.split_once('?').and_then(|(_, q)| {
                q.split('&')
                    .find_map(|p| p.strip_prefix("password=").map(str::to_owned))
            })
        })
    } else {
        text.split(' ')
            .find_map(|p| p.strip_prefix("password=").map(str::to_owned))
    }
}

fn sqlite_path_of(text: &str) -> &str {
    let rest = &text["sqlite:".len()..];
    rest.strip_prefix("//").unwrap_or(rest)
}

/// Hides the password of a URL (`user:***@`) or of a `password=` pair.
pub(crate) fn redact(text: &str) -> String {
    if let Some((scheme, rest)) = text.split_once("://") {
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let mut out = format!("{scheme}://");
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                match userinfo.split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:***@")),
                    None => out.push_str(&format!("{userinfo}@")),
                }
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        out.push_str(&redact_query_password(tail));
        out
    } else {
        redact_password_pairs(text, " ")
    }
}

/// `password=…` among `key=value` pairs separated by `separator`, hidden.
fn redact_password_pairs(text: &str, separator: &str) -> String {
    text.split(separator)
        .map(|pair| {
            if pair
                .get(..9)
                .is_some_and(|key| key.eq_ignore_ascii_case("password="))
            {
                "password=***"
            } else {
                pair
            }
        })
        .collect::<Vec<_>>()
        .join(separator)
}

fn redact_query_password(tail: &str) -> String {
    match tail.split_once('?') {
        Some((path, query)) => format!("{path}?{}", redact_password_pairs(query, "&")),
        None => tail.to_owned(),
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&&*self.redacted)
            .finish()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for DatabaseUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_hidden_in_every_rendering() {
        let url =
            DatabaseUrl::parse("postgresql://app:hunter2@10.0.0.5:6432/orders?sslmode=disable")
                .unwrap();
        for text in [
            format!("{url}"),
            format!("{url:?}"),
            url.redacted().to_owned(),
        ] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("app:***@10.0.0.5:6432/orders"), "{text}");
        }
        assert_eq!(url.default_pool_name(), "10.0.0.5:6432/orders");
        assert_eq!(url.scrub("auth failed for hunter2"), "auth failed for ***");
    }

    #[test]
    fn key_value_connection_strings_are_redacted_and_named() {
        let url = DatabaseUrl::parse("host=db port=5433 dbname=app user=u password=pw").unwrap();
        assert_eq!(url.kind(), BackendKind::Postgres);
        assert_eq!(
            url.redacted(),
            "host=db port=5433 dbname=app user=u password=***"
        );
        assert_eq!(url.default_pool_name(), "db:5433/app");
    }

    #[test]
    fn query_string_passwords_are_redacted() {
        let url = DatabaseUrl::parse("postgres://db/app?user=u&password=pw").unwrap();
        assert_eq!(url.redacted(), "postgres://db/app?user=u&password=***");
        assert_eq!(url.default_pool_name(), "db:5432/app");
    }

    #[test]
    fn sqlite_urls_name_their_path() {
        let url = DatabaseUrl::parse("sqlite:data/app.db").unwrap();
        assert_eq!(url.kind(), BackendKind::Sqlite);
        assert_eq!(url.sqlite_path(), Some("data/app.db"));
        assert_eq!(url.default_pool_name(), "sqlite:data/app.db");
        assert_eq!(
            DatabaseUrl::parse("sqlite::memory:").unwrap().sqlite_path(),
            Some(":memory:")
        );
    }

    #[test]
    fn unknown_schemes_are_rejected_without_the_password() {
        let err = DatabaseUrl::parse("mysql://root:topsecret@db/app").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unsupported database URL"), "{text}");
        assert!(text.contains("mysql://root:***@db/app"), "{text}");
        assert!(!text.contains("topsecret"));
        assert!(DatabaseUrl::parse("  ").is_err());
        assert!(DatabaseUrl::parse("sqlite:").is_err());
    }
}
