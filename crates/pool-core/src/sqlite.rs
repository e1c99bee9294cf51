//! The embedded SQLite backend (rusqlite with SQLite bundled): zero setup, no server.
//!
//! SQLite calls block, so every call runs on Tokio's blocking pool through
//! [`SqliteConnection::call`]; the async workers never wait on the disk.
//!
//! ```
//! use pool_core::PoolBuilder;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = PoolBuilder::sqlite().database_url("sqlite::memory:").build_sqlite()?;
//! let mut conn = pool.get().await?;
//! let n: i64 = conn.call(|c| c.query_row("select 40 + 2", [], |r| r.get(0))).await?;
//! assert_eq!(n, 42);
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

pub use rusqlite;
use rusqlite::{ffi, Connection, OpenFlags};

use crate::builder::PoolBuilder;
use crate::config::PoolConfig;
use crate::error::BuildError;
use crate::pool::Pool;
use crate::url::BackendKind;

/// A SQLite pool.
pub type SqlitePool = Pool<SqliteManager>;

/// Opens SQLite connections to one database file, or to one shared in-memory database.
pub struct SqliteManager {
    target: String,
    flags: OpenFlags,
    /// Keeps a shared in-memory database alive while every pooled connection is closed
    /// (recycling would otherwise wipe it).
    _keeper: Option<Mutex<Connection>>,
}

impl fmt::Debug for SqliteManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteManager")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

static MEMORY_DATABASES: AtomicU64 = AtomicU64::new(0);

impl SqliteManager {
    /// A manager for `path`, or for a fresh in-memory database shared by the pool's
    /// connections when `path` is `:memory:`.
    ///
    /// File databases run in WAL mode with a 5 s busy timeout, so readers and a writer work
    /// side by side. A shared in-memory database locks whole tables: with several connections,
    /// concurrent writes fail with `SQLITE_LOCKED` instead of waiting, so give a pool that
    /// writes concurrently a file.
    ///
    /// # Errors
    ///
    /// The error of opening the in-memory database's keeper connection.
    pub fn new(path: &str) -> Result<Self, rusqlite::Error> {
        let base = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if path == ":memory:" {
            let id = MEMORY_DATABASES.fetch_add(1, Relaxed);
            let target = format!(
                "file:pool-core-memory-{}-{id}?mode=memory&cache=shared",
                std::process::id()
            );
            let flags = base | OpenFlags::SQLITE_OPEN_URI;
            let keeper = Connection::open_with_flags(&target, flags)?;
            Ok(SqliteManager {
                target,
                flags,
                _keeper: Some(Mutex::new(keeper)),
            })
        } else {
            Ok(SqliteManager {
                target: path.to_owned(),
                flags: base,
                _keeper: None,
            })
        }
    }
}

/// A pooled SQLite connection. Use [`SqliteConnection::call`] to run blocking work on it.
pub struct SqliteConnection {
    conn: Option<Connection>,
}

impl fmt::Debug for SqliteConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteConnection")
            .field("usable", &self.conn.is_some())
            .finish()
    }
}

fn unusable() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        ffi::Error::new(ffi::SQLITE_MISUSE),
        Some("connection lost: an earlier call was cancelled mid-flight".to_owned()),
    )
}

impl SqliteConnection {
    /// Runs `f` with the connection on Tokio's blocking pool.
    ///
    /// If the returned future is dropped before `f` finishes, the connection is closed when
    /// it is returned to the pool instead of being reused. A panic in `f` is resumed here.
    ///
    /// # Errors
    ///
    /// What `f` returns, or `SQLITE_MISUSE` on a connection lost to a cancelled call.
    pub async fn call<T, F>(&mut self, f: F) -> Result<T, rusqlite::Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        let mut conn = self.conn.take().ok_or_else(unusable)?;
        let joined = tokio::task::spawn_blocking(move || {
            let result = f(&mut conn);
            (conn, result)
        })
        .await;
        match joined {
            Ok((conn, result)) => {
                self.conn = Some(conn);
                result
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(unusable()),
        }
    }
}

impl bb8::ManageConnection for SqliteManager {
    type Connection = SqliteConnection;
    type Error = rusqlite::Error;

    async fn connect(&self) -> Result<SqliteConnection, rusqlite::Error> {
        let target = self.target.clone();
        let flags = self.flags;
        let in_memory = self._keeper.is_some();
        tokio::task::spawn_blocking(move || {
            let conn = Connection::open_with_flags(&target, flags)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            if !in_memory {
                conn.pragma_update(None, "journal_mode", "WAL")?;
            }
            conn.pragma_update(None, "foreign_keys", "ON")?;
            Ok(SqliteConnection { conn: Some(conn) })
        })
        .await
        .map_err(|_| unusable())?
    }

    async fn is_valid(&self, conn: &mut SqliteConnection) -> Result<(), rusqlite::Error> {
        conn.call(|c| c.query_row("select 1", [], |r| r.get::<_, i64>(0)))
            .await
            .map(drop)
    }

    fn has_broken(&self, conn: &mut SqliteConnection) -> bool {
        conn.conn.is_none()
    }
}

/// Whether a SQLite error means the database itself is unusable (cannot open, I/O error,
/// corrupt, not a database, disk full) rather than a problem with one statement.
pub fn is_connection_error(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{
        CannotOpen, DatabaseCorrupt, DiskFull, NotADatabase, SystemIoFailure,
    };
    matches!(
        error.sqlite_error_code(),
        Some(CannotOpen | SystemIoFailure | DatabaseCorrupt | NotADatabase | DiskFull)
    )
}

impl PoolBuilder<SqliteManager> {
    /// A builder for a SQLite pool with the SQLite profile's defaults (one connection).
    pub fn sqlite() -> Self {
        PoolBuilder::new().config(PoolConfig::sqlite())
    }

    /// Builds the pool from the configured `sqlite:` URL.
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build`], plus [`BuildError::Url`] without a SQLite URL.
    pub fn build_sqlite(self) -> Result<SqlitePool, BuildError> {
        let url = self.require_url(BackendKind::Sqlite)?;
        let path = url.sqlite_path().unwrap_or(":memory:");
        let manager = SqliteManager::new(path).map_err(|e| BuildError::Driver(Box::new(e)))?;
        self.backend_name("sqlite")
            .classify_errors(is_connection_error)
            .describe_errors(|e| e.to_string())
            .build(manager)
    }
}
