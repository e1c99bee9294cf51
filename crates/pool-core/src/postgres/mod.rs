//! The PostgreSQL backend: tokio-postgres connections whose sessions are reset on return,
//! with connection-class error classification.
//!
//! A connection handed back with a transaction still open or failed (a `BEGIN` without
//! `COMMIT`, a handler that returned early) is rolled back before the next borrower gets it;
//! the pool learns the session's state from the protocol stream itself, so a clean return
//! costs no round trip (see [`PostgresManager`] and [`PostgresConnection::session_state`]).
//! Only the transaction is undone: session settings (`SET`), temporary tables, advisory
//! locks, `LISTEN`s and prepared statements stay with the connection, as with any pool that
//! does not run `DISCARD ALL`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pool_core::PoolBuilder;
//!
//! let pool = PoolBuilder::postgres()
//!     .database_url("postgres://app:secret@127.0.0.1:5432/app")
//!     .base_size(2)
//!     .max_overflow(3)
//!     .build_postgres()?;
//! let conn = pool.get().await?;
//! conn.batch_execute("create table if not exists t (id int)").await?;
//! # Ok(()) }
//! ```

use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use tokio_postgres;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::NoTls;

mod manager;
mod wire;

pub use manager::{CancelToken, PgSocket, PostgresConnection, PostgresManager};
pub use wire::SessionState;

use crate::builder::PoolBuilder;
use crate::config::PoolConfig;
use crate::connection::ConnectFailure;
use crate::error::BuildError;
use crate::pool::Pool;
use crate::url::BackendKind;

/// A PostgreSQL pool without TLS (the common case behind a private network or a sidecar).
pub type PostgresPool<Tls = NoTls> = Pool<PostgresManager<Tls>>;

/// Whether a PostgreSQL operation error means the connection or the server is unusable (and
/// so counts toward the circuit breaker): closed connections, I/O errors, SQLSTATE class 08
/// (connection exception) and 57P01–57P03 (shutdown, crash, cannot connect now). Query
/// errors such as a unique violation do not count. (Connect errors are judged by
/// [`connect_failure`]: 53300, too many connections, is capacity, not an outage.)
pub fn is_connection_error(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(code) = error.code() {
        return code.code().starts_with("08")
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW;
    }
    // No SQLSTATE: the driver's error kinds are private, so tell transport failures from
    // client-side ones (a bad column, a conversion) by the kind's fixed message.
    let text = error.to_string();
    [
        "error communicating with the server",
        "unexpected message from server",
        "error performing TLS handshake",
        "error parsing response from server",
        "error connecting to server",
        "timeout waiting for server",
        "authentication error",
    ]
    .iter()
    .any(|kind| text.starts_with(kind))
}

/// What a failed connect says about the database: authentication failures (SQLSTATE class
/// 28) and a database that does not exist (3D000) are fatal, `too many connections` (53300)
/// is capacity, everything else transient.
pub fn connect_failure(error: &tokio_postgres::Error) -> ConnectFailure {
    match error.code() {
        Some(code) if code.code().starts_with("28") || *code == SqlState::INVALID_CATALOG_NAME => {
            ConnectFailure::Fatal
        }
        Some(code) if *code == SqlState::TOO_MANY_CONNECTIONS => ConnectFailure::Capacity,
        _ => ConnectFailure::Transient,
    }
}

fn describe(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// tokio-postgres' keepalive idle time when the DSN names none.
const DRIVER_KEEPALIVE_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// TCP keepalives and the TCP user timeout from the pool's configuration, so that a peer
/// that vanished (a network black hole, a host that died) errors out instead of hanging;
/// settings the DSN makes itself win. tokio-postgres' own defaults are a first keepalive
/// probe after two hours and no user timeout.
///
/// The driver's parse cannot tell an explicit default from an absent setting, so a DSN's
/// `keepalives_idle=7200` (its default) and `tcp_user_timeout=0` read as unset; `keepalives=0`
/// is honoured.
fn apply_socket_settings(config: &PoolConfig, pg: &mut tokio_postgres::Config) {
    let dsn_sets_keepalive = !pg.get_keepalives()
        || pg.get_keepalives_idle() != DRIVER_KEEPALIVE_IDLE
        || pg.get_keepalives_interval().is_some()
        || pg.get_keepalives_retries().is_some();
    if !dsn_sets_keepalive {
        match config.tcp_keepalive {
            Some(idle) => {
                pg.keepalives(true)
                    .keepalives_idle(idle)
                    .keepalives_interval((idle / 2).max(Duration::from_secs(1)))
                    .keepalives_retries(3);
            }
            None => {
                pg.keepalives(false);
            }
        }
    }
    if let (None, Some(timeout)) = (pg.get_tcp_user_timeout(), config.tcp_user_timeout) {
        pg.tcp_user_timeout(timeout);
    }
}

/// On return: a session the stream shows not idle (a transaction open or failed, a request
/// unanswered) needs a reset before reuse.
fn needs_reset(conn: &PostgresConnection) -> bool {
    conn.session_state() != SessionState::Idle
}

/// On checkout, the same check: a connection returned while its driver had work queued (a
/// request queued by a future dropped just before the connection came back) was parked until
/// the driver had written it (see [`park`]), so the stream shows it by now.
fn needs_reset_at_checkout(conn: &PostgresConnection) -> bool {
    conn.session_state() != SessionState::Idle
}

/// On return, a connection whose driver has been woken since it last ran (it has work the
/// stream has not shown yet) waits with its driver, which releases it after its next run.
fn park(conn: &PostgresConnection) -> Option<Arc<dyn crate::connection::Park>> {
    conn.unsettled().then(|| conn.parking())
}

fn reset(
    conn: &mut PostgresConnection,
) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send + '_>> {
    Box::pin(async move { conn.reset().await.map_err(|e| describe(&e)) })
}

impl PoolBuilder<PostgresManager<NoTls>> {
    /// A builder for a PostgreSQL pool with the development profile's defaults.
    pub fn postgres() -> Self {
        PoolBuilder::new().config(PoolConfig::development())
    }

    /// Builds the pool from the configured `DATABASE_URL`, without TLS.
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build`] (a URL the driver rejects is a [`BuildError::Config`]
    /// problem for `DATABASE_URL`), plus [`BuildError::Url`] when there is no PostgreSQL URL.
    pub fn build_postgres(self) -> Result<PostgresPool, BuildError> {
        self.build_postgres_with_tls(NoTls)
    }
}

impl<Tls> PoolBuilder<PostgresManager<Tls>>
where
    Tls: MakeTlsConnect<PgSocket> + Clone + Send + Sync + 'static,
    Tls::Stream: Send + Sync + 'static,
    Tls::TlsConnect: Send + 'static,
    <Tls::TlsConnect as TlsConnect<PgSocket>>::Future: Send + 'static,
{
    /// Builds the pool from the configured `DATABASE_URL` with a TLS connector (one that
    /// wraps a [`PgSocket`]; the `postgres-openssl`, `postgres-native-tls` and
    /// `tokio-postgres-rustls` connectors wrap any stream).
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build_postgres`].
    pub fn build_postgres_with_tls(self, tls: Tls) -> Result<PostgresPool<Tls>, BuildError> {
        let url = self.require_url(BackendKind::Postgres)?;
        let mut pg_config = url
            .postgres_config()
            .expect("require_url checked that the URL is a PostgreSQL one")
            .clone();
        if let Err(problem) = manager::check_hosts(&pg_config) {
            return Err(BuildError::Url(format!(
                "DATABASE_URL `{}`: {problem}",
                url.redacted()
            )));
        }
        apply_socket_settings(self.current_config(), &mut pg_config);
        let limit = self.current_config().connect_timeout;
        let cancel_tls = tls.clone();
        let manager = PostgresManager::new(pg_config, tls);
        self.backend_name("postgresql")
            .cancel_with(move |conn: &PostgresConnection| {
                // A cancel request on a connection of its own, bounded like a connect: the
                // server would otherwise run the abandoned query to its end.
                let cancel = conn.cancel_token().cancel_query(cancel_tls.clone());
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        let _ = tokio::time::timeout(limit, cancel).await;
                    });
                }
            })
            .reset_and_park_with(needs_reset, needs_reset_at_checkout, reset, park)
            .classify_errors(is_connection_error)
            .connect_failures(connect_failure)
            .describe_errors(describe)
            .build(manager)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Building a pool needs a runtime to start its background tasks in.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_malformed_url_names_the_problem_without_the_password() {
        let rt = runtime();
        let _guard = rt.enter();
        let err = PoolBuilder::postgres()
            .database_url("postgres://u:sekrit@host:notaport/db")
            .build_postgres()
            .unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains("invalid"), "{text}");
        assert!(!text.contains("sekrit"), "{text}");
    }

    #[test]
    fn a_sqlite_url_is_refused_by_the_postgres_builder() {
        let rt = runtime();
        let _guard = rt.enter();
        let err = PoolBuilder::postgres()
            .database_url("sqlite::memory:")
            .build_postgres()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "DATABASE_URL points at sqlite (`sqlite::memory:`) but a postgresql pool was asked for"
        );
    }

    fn socket_settings(dsn: &str, config: &PoolConfig) -> tokio_postgres::Config {
        let mut pg = crate::DatabaseUrl::parse(dsn)
            .unwrap()
            .postgres_config()
            .unwrap()
            .clone();
        apply_socket_settings(config, &mut pg);
        pg
    }

    #[test]
    fn connections_get_keepalives_and_a_user_timeout_by_default() {
        let pg = socket_settings("postgres://u@db/app", &PoolConfig::production());
        assert!(pg.get_keepalives());
        assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(10));
        assert_eq!(pg.get_keepalives_interval(), Some(Duration::from_secs(5)));
        assert_eq!(pg.get_keepalives_retries(), Some(3));
        assert_eq!(pg.get_tcp_user_timeout(), Some(&Duration::from_secs(10)));
    }

    #[test]
    fn the_dsn_s_own_socket_settings_win_and_off_turns_them_off() {
        let pg = socket_settings(
            "postgres://u@db/app?keepalives_idle=60&tcp_user_timeout=30",
            &PoolConfig::production(),
        );
        assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(pg.get_keepalives_interval(), None);
        assert_eq!(pg.get_tcp_user_timeout(), Some(&Duration::from_secs(30)));
        let off = PoolConfig {
            tcp_keepalive: None,
            tcp_user_timeout: None,
            ..PoolConfig::production()
        };
        let pg = socket_settings("postgres://u@db/app", &off);
        assert!(!pg.get_keepalives());
        assert_eq!(pg.get_tcp_user_timeout(), None);
        let pg = socket_settings("host=db keepalives=0", &PoolConfig::production());
        assert!(!pg.get_keepalives(), "the DSN's keepalives=0 is honoured");
    }

    #[test]
    fn building_outside_a_runtime_is_an_error_not_a_panic() {
        let err = PoolBuilder::postgres()
            .database_url("postgres://127.0.0.1/db")
            .build_postgres()
            .unwrap_err();
        assert!(matches!(err, BuildError::NoRuntime), "{err:?}");
    }
}
