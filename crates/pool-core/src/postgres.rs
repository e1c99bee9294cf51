//! The PostgreSQL backend: bb8-postgres with connection-class error classification.
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

pub use bb8_postgres::PostgresConnectionManager;
pub use tokio_postgres;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{NoTls, Socket};

use crate::builder::PoolBuilder;
use crate::config::PoolConfig;
use crate::error::BuildError;
use crate::pool::Pool;
use crate::url::BackendKind;

/// A PostgreSQL pool without TLS (the common case behind a private network or a sidecar).
pub type PostgresPool<Tls = NoTls> = Pool<PostgresConnectionManager<Tls>>;

/// Whether a PostgreSQL error means the connection or the server is unusable (and so counts
/// toward the circuit breaker): closed connections, I/O errors, SQLSTATE class 08
/// (connection exception), 57P01–57P03 (shutdown, crash, cannot connect now) and 53300 (too
/// many connections). Query errors such as a unique violation do not count.
pub fn is_connection_error(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(code) = error.code() {
        return code.code().starts_with("08")
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::TOO_MANY_CONNECTIONS;
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

impl PoolBuilder<PostgresConnectionManager<NoTls>> {
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

impl<Tls> PoolBuilder<PostgresConnectionManager<Tls>>
where
    Tls: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    <Tls as MakeTlsConnect<Socket>>::Stream: Send + Sync,
    <Tls as MakeTlsConnect<Socket>>::TlsConnect: Send,
    <<Tls as MakeTlsConnect<Socket>>::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    /// Builds the pool from the configured `DATABASE_URL` with a TLS connector.
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build_postgres`].
    pub fn build_postgres_with_tls(self, tls: Tls) -> Result<PostgresPool<Tls>, BuildError> {
        let url = self.require_url(BackendKind::Postgres)?;
        let pg_config = url
            .postgres_config()
            .expect("require_url checked that the URL is a PostgreSQL one")
            .clone();
        let manager = PostgresConnectionManager::new(pg_config, tls);
        self.backend_name("postgresql")
            .classify_errors(is_connection_error)
            .describe_errors(describe)
            .build(manager)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_url_names_the_problem_without_the_password() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
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
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
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

    #[test]
    fn building_outside_a_runtime_is_an_error_not_a_panic() {
        let err = PoolBuilder::postgres()
            .database_url("postgres://127.0.0.1/db")
            .build_postgres()
            .unwrap_err();
        assert!(matches!(err, BuildError::NoRuntime), "{err:?}");
    }
}
