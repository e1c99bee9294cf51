//! Database URLs that never show their password.
//!
//! A DSN is understood exactly as its driver understands it: a PostgreSQL DSN is parsed by
//! `tokio_postgres::Config` (both its URL form and its `key=value` form), and every printed
//! form (the redacted URL, the default pool name, the scrubbing of error texts) is built from
//! the fields the driver read, never from a second reading of the text. A password the driver
//! takes is therefore never mistaken for a host or a database name, whatever characters it
//! holds.

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
/// PostgreSQL DSNs are parsed by `tokio_postgres::Config`, in either of its forms: a URL
/// (`postgres://user:password@host:port/db?param=value`, several hosts separated by commas)
/// or `key=value` pairs (`host=db user=app password='a b'`). The redacted form, the default
/// pool name and [`DatabaseUrl::scrub`] are derived from what the driver read, so they cannot
/// disagree with it. The full text is only reachable through [`DatabaseUrl::expose`].
///
/// ```
/// use pool_core::DatabaseUrl;
///
/// // A password with a raw `/` (common in generated base64 passwords).
/// let url = DatabaseUrl::parse("postgres://app:s3/cr?t@db.internal:5432/orders").unwrap();
/// assert_eq!(url.to_string(), "postgres://app:***@db.internal:5432/orders");
/// assert_eq!(url.default_pool_name(), "db.internal:5432/orders");
/// assert!(!format!("{url:?}").contains("s3/cr?t"));
///
/// let url = DatabaseUrl::parse("host=db port=6432 dbname=orders password='a b'").unwrap();
/// assert_eq!(url.to_string(), "postgres://:***@db:6432/orders");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    raw: Arc<str>,
    target: Target,
    redacted: Arc<str>,
}

#[derive(Clone, PartialEq, Eq)]
enum Target {
    #[cfg(feature = "postgres")]
    Postgres(Arc<tokio_postgres::Config>),
    Sqlite(Arc<str>),
}

/// A URL that could not be used: what is wrong with it, and what would be accepted.
///
/// Its message never repeats the URL: when a driver rejects a DSN, no part of it is known to
/// be free of the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlError {
    problem: String,
    expected: &'static str,
}

/// What `DATABASE_URL` may hold, for messages.
const DSN_FORMS: &str = "postgres://user:password@host:port/db, postgresql://…, key=value pairs \
                         (host=… user=… password='…'), sqlite:path or sqlite::memory:";

impl UrlError {
    fn new(problem: impl Into<String>, expected: &'static str) -> Self {
        UrlError {
            problem: problem.into(),
            expected,
        }
    }

    /// What is wrong with the URL.
    pub fn problem(&self) -> &str {
        &self.problem
    }

    /// What would have been accepted.
    pub fn expected(&self) -> &str {
        self.expected
    }
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; expected {}", self.problem, self.expected)
    }
}

impl std::error::Error for UrlError {}

impl DatabaseUrl {
    /// Parses a PostgreSQL or SQLite URL.
    ///
    /// Accepted forms: whatever `tokio_postgres::Config` accepts (`postgres://…`,
    /// `postgresql://…`, libpq `key=value` pairs), provided it names a host;
    /// `sqlite:path/to/file.db`, `sqlite://path`, `sqlite::memory:`.
    ///
    /// A password in the URL form is read by the driver up to the first `@`, so a password
    /// containing `@` must be percent-encoded (`%40`); such a URL is refused here rather than
    /// connecting to a host made of the password's tail.
    ///
    /// # Errors
    ///
    /// [`UrlError`] when the text is empty, has an unknown scheme, is rejected by the driver,
    /// names no host, or (PostgreSQL without the `postgres` feature) cannot be parsed here.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        // Whitespace around a URL is never part of it (a trailing newline from a file). In
        // key=value form the driver skips it itself, and trimming there could change the
        // meaning: `password=secret\ ` ends with an escaped space.
        let text = text.trim_start();
        if text.is_empty() {
            return Err(UrlError::new("the database URL is empty", DSN_FORMS));
        }
        let text =
            if url_scheme(text).is_some() || strip_prefix_ignore_case(text, "sqlite:").is_some() {
                text.trim_end()
            } else {
                text
            };
        if let Some(path) = strip_prefix_ignore_case(text, "sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(UrlError::new(
                    "the SQLite URL has no path",
                    "sqlite:path/to/file.db, or sqlite::memory: for an in-memory database",
                ));
            }
            return Ok(DatabaseUrl {
                raw: text.into(),
                redacted: format!("sqlite:{path}").into(),
                target: Target::Sqlite(path.into()),
            });
        }
        if let Some(scheme) = url_scheme(text) {
            if scheme != "postgres" && scheme != "postgresql" {
                let hint = if scheme.eq_ignore_ascii_case("postgres")
                    || scheme.eq_ignore_ascii_case("postgresql")
                {
                    " (the scheme must be written in lower case)"
                } else {
                    ""
                };
                return Err(UrlError::new(
                    format!("unsupported scheme `{scheme}`{hint}"),
                    DSN_FORMS,
                ));
            }
        }
        Self::parse_postgres(text)
    }

    #[cfg(feature = "postgres")]
    fn parse_postgres(text: &str) -> Result<Self, UrlError> {
        postgres::check_at_signs(text)?;
        let config: tokio_postgres::Config = text.parse().map_err(|e| {
            UrlError::new(
                format!(
                    "the PostgreSQL driver rejected the connection string ({})",
                    postgres::describe_parse_error(&e)
                ),
                DSN_FORMS,
            )
        })?;
        postgres::check(&config)?;
        Ok(DatabaseUrl {
            raw: text.into(),
            redacted: postgres::redacted(&config).into(),
            target: Target::Postgres(Arc::new(config)),
        })
    }

    #[cfg(not(feature = "postgres"))]
    fn parse_postgres(_text: &str) -> Result<Self, UrlError> {
        Err(UrlError::new(
            "a PostgreSQL connection string, but pool-core's `postgres` feature is off",
            "sqlite:path, or a build with the `postgres` feature",
        ))
    }

    /// Replaces every occurrence of this URL's password (as the driver read it) in `text`
    /// with `***`; a last line of defence for driver error messages that might echo
    /// connection settings.
    pub fn scrub(&self, text: &str) -> String {
        match self.password() {
            Some(pw) if !pw.is_empty() && text.contains(&*pw) => text.replace(&*pw, "***"),
            _ => text.to_owned(),
        }
    }

    fn password(&self) -> Option<std::borrow::Cow<'_, str>> {
        match &self.target {
            #[cfg(feature = "postgres")]
            Target::Postgres(config) => config.get_password().map(String::from_utf8_lossy),
            Target::Sqlite(_) => None,
        }
    }

    /// The kind of database this URL points at.
    pub fn kind(&self) -> BackendKind {
        match self.target {
            #[cfg(feature = "postgres")]
            Target::Postgres(_) => BackendKind::Postgres,
            Target::Sqlite(_) => BackendKind::Sqlite,
        }
    }

    /// The URL rebuilt from the driver's reading of it, password replaced by `***`: user,
    /// hosts with their ports, and database (`postgres://app:***@db:5432/orders`); or the
    /// SQLite path. Safe for logs, errors and metrics.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The URL as given, password included. Only hand this to a driver.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The driver's own parse of a PostgreSQL URL; what the PostgreSQL backend connects with.
    #[cfg(feature = "postgres")]
    pub fn postgres_config(&self) -> Option<&tokio_postgres::Config> {
        match &self.target {
            Target::Postgres(config) => Some(config),
            Target::Sqlite(_) => None,
        }
    }

    /// The SQLite file path (or `:memory:`), for SQLite URLs.
    pub fn sqlite_path(&self) -> Option<&str> {
        match &self.target {
            Target::Sqlite(path) => Some(path),
            #[cfg(feature = "postgres")]
            Target::Postgres(_) => None,
        }
    }

    /// `server.address:server.port/db.namespace` as the driver reads them (every host, comma
    /// separated; the database defaults to the user name, as the server does), or
    /// `sqlite:path` for SQLite.
    ///
    /// Used as the pool name when none is configured. Never contains credentials.
    pub fn default_pool_name(&self) -> String {
        match &self.target {
            Target::Sqlite(path) => format!("sqlite:{path}"),
            #[cfg(feature = "postgres")]
            Target::Postgres(config) => postgres::pool_name(config),
        }
    }
}

/// The scheme of `scheme://…`, if the text starts with one (RFC 3986: a letter, then letters,
/// digits, `+`, `-` or `.`).
fn url_scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::error::Error as _;
    use std::fmt::Write as _;

    use tokio_postgres::config::Host;
    use tokio_postgres::Config;

    use super::UrlError;

    /// Parameter names of `tokio_postgres::Config`; a name the driver quotes in an error is
    /// shown only when it is one of these (an unknown "option" may be a piece of an unquoted
    /// password).
    const KNOWN_OPTIONS: &[&str] = &[
        "user",
        "password",
        "dbname",
        "options",
        "application_name",
        "sslmode",
        "sslnegotiation",
        "host",
        "hostaddr",
        "port",
        "connect_timeout",
        "tcp_user_timeout",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_retries",
        "target_session_attrs",
        "channel_binding",
        "load_balance_hosts",
    ];

    /// The driver's reason, when it is one of the messages known to quote nothing but a
    /// single character or one of the driver's own option names. An unknown "option" may be
    /// a piece of an unquoted password, so its name is never shown.
    pub(super) fn describe_parse_error(error: &tokio_postgres::Error) -> String {
        let Some(source) = error.source() else {
            return "the driver gave no reason".to_owned();
        };
        let text = source.to_string();
        if text.starts_with("unknown option") {
            return "unknown option `…` (a value with spaces or quotes must be quoted: \
                    password='a b')"
                .to_owned();
        }
        if let Some(name) = text
            .strip_prefix("invalid value for option `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            return if KNOWN_OPTIONS.contains(&name) {
                text
            } else {
                "invalid value for an option".to_owned()
            };
        }
        if text.starts_with("unexpected character") {
            // The driver names the character and its offset: a piece of the password.
            return "unexpected character (a value with spaces or quotes must be quoted: \
                    password='a b')"
                .to_owned();
        }
        const FIXED: &[&str] = &[
            "unexpected EOF",
            "unterminated quoted connection parameter value",
            "unterminated parameter",
            "invalid utf-8 sequence",
            "incomplete utf-8 byte sequence",
        ];
        if FIXED.iter().any(|fixed| text.starts_with(fixed)) {
            text
        } else {
            // A reason this code does not know may quote the DSN: it is not shown.
            "the driver's reason is not shown, as it may quote the connection string".to_owned()
        }
    }

    /// Refuses URLs whose `@` the driver would read differently from what they mean. The
    /// driver ends the user and password at the first `@` anywhere in the text, so:
    ///
    /// - a second `@` means one came from the password (or from a parameter's value) and the
    ///   rest of the password would become the host or the database;
    /// - a user part holding `/` or `?`, or credentials holding `?name=` for one of the
    ///   driver's options, mean the first `@` sat in a path or a parameter and everything
    ///   before it (a query-string password among it) would become the user name.
    ///
    /// These read the text only to find where the driver's own rule would misfire; what is
    /// printed of a DSN comes from the driver's parse.
    pub(super) fn check_at_signs(text: &str) -> Result<(), UrlError> {
        let Some(rest) = ["postgres://", "postgresql://"]
            .iter()
            .find_map(|p| text.strip_prefix(p))
        else {
            return Ok(());
        };
        let Some((credentials, after)) = rest.split_once('@') else {
            return Ok(());
        };
        if after.contains('@') {
            return Err(UrlError::new(
                "more than one `@` (the driver ends the user and password at the first `@`)",
                "every `@` in the password, or in a parameter's value, percent-encoded as %40",
            ));
        }
        let user = credentials.split_once(':').map_or(credentials, |(u, _)| u);
        let option_in_credentials = credentials.split_once('?').is_some_and(|(_, query)| {
            query.split('&').any(|pair| {
                pair.split_once('=')
                    .is_some_and(|(key, _)| KNOWN_OPTIONS.contains(&key))
            })
        });
        if user.contains(['/', '?']) || option_in_credentials {
            return Err(UrlError::new(
                "an `@` after the host, path or parameters (the driver would read everything \
                 before it as the user and password)",
                "an `@` in a parameter's value (a query-string password) percent-encoded as %40",
            ));
        }
        Ok(())
    }

    /// Refuses what the driver accepts but cannot connect with: no host, or host, hostaddr
    /// and port lists of different lengths (the driver would say so only when connecting).
    pub(super) fn check(config: &Config) -> Result<(), UrlError> {
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            return Err(UrlError::new(
                "the PostgreSQL connection string names no host",
                "postgres://user@host/db, or host=… (or hostaddr=…) in key=value form",
            ));
        }
        let hosts = config.get_hosts().len().max(config.get_hostaddrs().len());
        if !config.get_hosts().is_empty()
            && !config.get_hostaddrs().is_empty()
            && config.get_hosts().len() != config.get_hostaddrs().len()
        {
            return Err(UrlError::new(
                format!(
                    "{} hosts and {} hostaddrs",
                    config.get_hosts().len(),
                    config.get_hostaddrs().len()
                ),
                "as many hostaddrs as hosts",
            ));
        }
        if config.get_ports().len() > 1 && config.get_ports().len() != hosts {
            return Err(UrlError::new(
                format!("{hosts} hosts and {} ports", config.get_ports().len()),
                "one port for all hosts, or one per host",
            ));
        }
        Ok(())
    }

    /// `host:port` for every host the driver will try, in order, comma separated.
    fn hosts(config: &Config) -> String {
        let ports = config.get_ports();
        let count = config.get_hosts().len().max(config.get_hostaddrs().len());
        let mut out = String::new();
        for i in 0..count {
            if i > 0 {
                out.push(',');
            }
            match config.get_hosts().get(i) {
                Some(Host::Tcp(name)) if name.contains(':') => {
                    out.push('[');
                    push_printable(&mut out, name);
                    out.push(']');
                }
                Some(Host::Tcp(name)) => push_printable(&mut out, name),
                #[cfg(unix)]
                Some(Host::Unix(path)) => push_printable(&mut out, &path.to_string_lossy()),
                None => match config.get_hostaddrs().get(i) {
                    Some(std::net::IpAddr::V6(addr)) => {
                        let _ = write!(out, "[{addr}]");
                    }
                    Some(addr) => {
                        let _ = write!(out, "{addr}");
                    }
                    None => {}
                },
            }
            let port = ports.get(i).or_else(|| ports.first()).unwrap_or(&5432);
            let _ = write!(out, ":{port}");
        }
        out
    }

    /// The database the server will open: `dbname`, else the user's name (as the server
    /// defaults it).
    fn database(config: &Config) -> Option<&str> {
        config.get_dbname().or_else(|| config.get_user())
    }

    pub(super) fn pool_name(config: &Config) -> String {
        let mut name = hosts(config);
        if let Some(db) = database(config) {
            name.push('/');
            push_printable(&mut name, db);
        }
        name
    }

    /// `text` with control characters escaped (`\n`, `\u{7}`): a decoded `%0A` in a
    /// database name must not start a new log line or break a metric label.
    fn push_printable(out: &mut String, text: &str) {
        for c in text.chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
    }

    pub(super) fn redacted(config: &Config) -> String {
        let mut out = String::from("postgres://");
        let user = config.get_user();
        if let Some(user) = user {
            push_printable(&mut out, user);
        }
        if config.get_password().is_some() {
            out.push_str(":***");
        }
        if user.is_some() || config.get_password().is_some() {
            out.push('@');
        }
        out.push_str(&hosts(config));
        if let Some(db) = config.get_dbname() {
            out.push('/');
            push_printable(&mut out, db);
        }
        out
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

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use super::*;

    fn every_rendering(url: &DatabaseUrl) -> String {
        format!(
            "{url} {url:?} {} {}",
            url.redacted(),
            url.default_pool_name()
        )
    }

    #[test]
    fn password_is_hidden_in_every_rendering() {
        let url =
            DatabaseUrl::parse("postgresql://app:hunter2@10.0.0.5:6432/orders?sslmode=disable")
                .unwrap();
        assert!(!every_rendering(&url).contains("hunter2"));
        assert_eq!(url.redacted(), "postgres://app:***@10.0.0.5:6432/orders");
        assert_eq!(url.default_pool_name(), "10.0.0.5:6432/orders");
        assert_eq!(url.scrub("auth failed for hunter2"), "auth failed for ***");
    }

    #[test]
    fn raw_specials_in_a_url_password_stay_in_the_password() {
        for password in ["ab/cd", "pa?ss", "pa#ss", "a:b", "x%zz", "sp ace\tz"] {
            let url = DatabaseUrl::parse(&format!("postgres://app:{password}@127.0.0.1:1/orders"))
                .unwrap();
            let config = url.postgres_config().unwrap();
            assert_eq!(config.get_password(), Some(password.as_bytes()));
            assert_eq!(url.default_pool_name(), "127.0.0.1:1/orders", "{password}");
            assert_eq!(url.redacted(), "postgres://app:***@127.0.0.1:1/orders");
            assert_eq!(url.scrub(&format!("echo {password}!")), "echo ***!");
        }
    }

    #[test]
    fn percent_encoded_passwords_are_decoded_by_the_driver_and_scrubbed_decoded() {
        let url = DatabaseUrl::parse("postgres://app:p%40ss%2Fw@db/app").unwrap();
        assert_eq!(
            url.postgres_config().unwrap().get_password(),
            Some(&b"p@ss/w"[..])
        );
        assert_eq!(url.default_pool_name(), "db:5432/app");
        assert_eq!(url.scrub("p@ss/w"), "***");
    }

    #[test]
    fn an_at_sign_the_driver_would_misread_is_refused_without_showing_any_of_it() {
        for text in [
            // A query-string password with a raw `@`: the driver would take everything
            // before it as the user name, and the rest as the host.
            "postgres://db.internal/orders?user=app&password=S3cr@tPass",
            "postgres://db:5432/orders?password=ab@cdefgh",
            "postgres://app:ab@cdef?application_name=x@db/app",
            "postgres://app:p@ss:w0rd@db/app",
        ] {
            let err = DatabaseUrl::parse(text).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(shown.contains("%40"), "{text}: {shown}");
            for piece in ["S3cr", "tPass", "cdef", "w0rd", "orders"] {
                assert!(!shown.contains(piece), "{text}: {shown}");
            }
        }
        // A raw `?` in a password, with no option name after it, is the password's.
        let url = DatabaseUrl::parse("postgres://app:pa?ss=1@db/app").unwrap();
        assert_eq!(
            url.postgres_config().unwrap().get_password(),
            Some(&b"pa?ss=1"[..])
        );
    }

    #[test]
    fn control_characters_in_decoded_names_are_escaped() {
        let url = DatabaseUrl::parse("postgres://u%0Aforged@db/ord%0Aers").unwrap();
        assert_eq!(url.default_pool_name(), "db:5432/ord\\ners");
        assert_eq!(url.redacted(), "postgres://u\\nforged@db:5432/ord\\ners");
    }

    #[test]
    fn a_raw_at_sign_in_a_url_password_is_refused_without_showing_any_of_it() {
        let err = DatabaseUrl::parse("postgres://app:p@ssw0rd@db/app").unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains("%40"), "{text}");
        assert!(
            !text.contains("ssw0rd") && !text.contains("db/app"),
            "{text}"
        );
        // A `?` before the second `@` does not hide it: the driver took the credentials first.
        let err = DatabaseUrl::parse("postgres://app:a?b@cdef@db/app").unwrap_err();
        assert!(!format!("{err} {err:?}").contains("cdef"), "{err}");
    }

    #[test]
    fn key_value_connection_strings_are_read_as_the_driver_reads_them() {
        let url =
            DatabaseUrl::parse("host = db port=5433 dbname=app user=u password='it\\'s a\tsecret'")
                .unwrap();
        assert_eq!(url.kind(), BackendKind::Postgres);
        assert_eq!(
            url.postgres_config().unwrap().get_password(),
            Some(&b"it's a\tsecret"[..])
        );
        assert_eq!(url.redacted(), "postgres://u:***@db:5433/app");
        assert_eq!(url.default_pool_name(), "db:5433/app");
        let escaped = DatabaseUrl::parse("host=db password=a\\ b").unwrap();
        assert_eq!(
            escaped.postgres_config().unwrap().get_password(),
            Some(&b"a b"[..])
        );
    }

    #[test]
    fn several_hosts_are_all_named() {
        let url = DatabaseUrl::parse("postgres://u:pw@h1:5433,h2,[::1]:6000/app").unwrap();
        assert_eq!(url.default_pool_name(), "h1:5433,h2:5432,[::1]:6000/app");
        let url = DatabaseUrl::parse("host=h1,h2 port=7000 user=u").unwrap();
        assert_eq!(url.default_pool_name(), "h1:7000,h2:7000/u");
        let url = DatabaseUrl::parse("hostaddr=10.1.2.3 dbname=x").unwrap();
        assert_eq!(url.default_pool_name(), "10.1.2.3:5432/x");
    }

    #[test]
    fn query_string_passwords_are_redacted() {
        let url = DatabaseUrl::parse("postgres://db/app?user=u&password=pw").unwrap();
        assert_eq!(url.redacted(), "postgres://u:***@db:5432/app");
        assert_eq!(url.default_pool_name(), "db:5432/app");
    }

    #[test]
    fn driver_rejections_show_no_part_of_the_text() {
        for (text, reason) in [
            ("host=db password=sec ret", "unexpected EOF"),
            (
                "host=db password=se cr et",
                "unexpected character (a value with spaces or quotes must be quoted: \
                 password='a b')",
            ),
            (
                "host=db password=sec retz=1",
                "unknown option `…` (a value with spaces or quotes must be quoted: \
                 password='a b')",
            ),
            (
                "postgres://u:secret@db:notaport/app",
                "invalid value for option `port`",
            ),
            (
                "host=db password='unterminated",
                "unterminated quoted connection parameter value",
            ),
        ] {
            let err = DatabaseUrl::parse(text).unwrap_err();
            assert_eq!(
                err.problem(),
                format!("the PostgreSQL driver rejected the connection string ({reason})"),
                "{text}"
            );
            assert_eq!(
                err.to_string(),
                format!("{}; expected {DSN_FORMS}", err.problem())
            );
        }
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
        assert_eq!(
            DatabaseUrl::parse("sqlite:///tmp/x.db")
                .unwrap()
                .sqlite_path(),
            Some("/tmp/x.db")
        );
    }

    #[test]
    fn unknown_schemes_and_hostless_urls_are_rejected_without_the_password() {
        let err = DatabaseUrl::parse("mysql://root:topsecret@db/app").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported scheme `mysql`; expected postgres://user:password@host:port/db, \
             postgresql://…, key=value pairs (host=… user=… password='…'), sqlite:path or \
             sqlite::memory:"
        );
        let err = DatabaseUrl::parse("POSTGRES://root:topsecret@db/app").unwrap_err();
        assert!(err.to_string().contains("lower case"), "{err}");
        let err = DatabaseUrl::parse("postgres://root:topsecret@/app").unwrap_err();
        assert!(err.to_string().contains("names no host"), "{err}");
        assert!(!format!("{err:?}").contains("topsecret"));
        assert!(DatabaseUrl::parse("  ").is_err());
        assert!(DatabaseUrl::parse("sqlite:").is_err());
    }
}
