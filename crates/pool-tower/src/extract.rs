//! The connection handle a request carries in its extensions, and the axum extractor.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use opentelemetry::trace::{Span, Status, Tracer};
use opentelemetry::{Context, KeyValue};
use pool_core::{CheckoutError, ManageConnection, Pool, PooledConnection};
use tokio::sync::{Mutex, MutexGuard};

use crate::semconv;

/// One request's claim on a pooled connection: what the layer puts into the request's
/// extensions. Clone it freely; the connection goes back to the pool when the last clone
/// that the request handed out is dropped, and at the latest when the response is ready,
/// even if a clone was kept somewhere.
///
/// In lazy mode (the default) nothing is checked out until [`Db::conn`] is first awaited,
/// so routes that never touch the database hold nothing.
///
/// ```no_run
/// # #[cfg(feature = "axum")] mod demo {
/// use pool_core::postgres::PostgresConnectionManager;
/// use pool_core::postgres::tokio_postgres::NoTls;
/// use pool_tower::{Db, DbError};
///
/// async fn count(db: Db<PostgresConnectionManager<NoTls>>) -> Result<String, DbError> {
///     let conn = db.conn().await?;
///     let n: i64 = conn
///         .query_one("select count(*) from orders", &[])
///         .await
///         .map_err(|_| DbError::Query)?
///         .get(0);
///     Ok(n.to_string())
/// }
/// # }
/// ```
pub struct Db<M: ManageConnection> {
    slot: Arc<Slot<M>>,
}

pub(crate) struct Slot<M: ManageConnection> {
    pool: Pool<M>,
    conn: Mutex<Option<PooledConnection<M>>>,
    /// Handles given to the request (not the service's own reference).
    handles: AtomicUsize,
    /// Set when the response is ready: from then on no connection is held or taken.
    released: AtomicBool,
    /// The sampled trace the request belongs to, if any: checkout spans go there.
    parent: Option<Context>,
}

impl<M: ManageConnection> Slot<M> {
    pub(crate) fn new(pool: Pool<M>, parent: Option<Context>) -> Arc<Self> {
        Arc::new(Slot {
            pool,
            conn: Mutex::new(None),
            handles: AtomicUsize::new(0),
            released: AtomicBool::new(false),
            parent,
        })
    }

    pub(crate) fn put(&self, conn: PooledConnection<M>) {
        if let Ok(mut slot) = self.conn.try_lock() {
            *slot = Some(conn);
        }
    }

    /// Returns the connection to the pool. If a guard is alive (a leaked handle still using
    /// it), the guard returns it when dropped.
    pub(crate) fn release(&self) {
        self.released.store(true, Ordering::Release);
        if let Ok(mut slot) = self.conn.try_lock() {
            slot.take();
        }
    }

    pub(crate) fn pool(&self) -> &Pool<M> {
        &self.pool
    }

    pub(crate) fn parent(&self) -> Option<&Context> {
        self.parent.as_ref()
    }
}

impl<M: ManageConnection> Db<M> {
    pub(crate) fn new(slot: Arc<Slot<M>>) -> Self {
        slot.handles.fetch_add(1, Ordering::Relaxed);
        Db { slot }
    }

    /// The connection: checked out on first use (lazy mode) or already there (eager mode).
    ///
    /// A request has one connection. While a [`DbConn`] is alive, another `conn()` on the
    /// same request (through any clone) waits for it to be dropped, so do not hold two at
    /// once in one task.
    ///
    /// # Errors
    ///
    /// [`DbError::Unavailable`] when the pool cannot provide one (timeout, open breaker);
    /// [`DbError::RequestFinished`] when used after the response was produced.
    #[track_caller]
    pub fn conn(
        &self,
    ) -> impl std::future::Future<Output = Result<DbConn<'_, M>, DbError>> + Send + '_ {
        let location = Location::caller();
        async move {
            if self.slot.released.load(Ordering::Acquire) {
                return Err(DbError::RequestFinished);
            }
            let mut guard = self.slot.conn.lock().await;
            if guard.is_none() {
                if self.slot.released.load(Ordering::Acquire) {
                    return Err(DbError::RequestFinished);
                }
                let conn = checkout(&self.slot.pool, self.slot.parent(), location).await?;
                *guard = Some(conn);
            }
            Ok(DbConn {
                guard,
                released: &self.slot.released,
            })
        }
    }

    /// The pool behind this handle.
    pub fn pool(&self) -> &Pool<M> {
        &self.slot.pool
    }

    /// Returns the connection to the pool now (if one is held); a later [`Db::conn`] checks
    /// out again.
    pub async fn give_back(&self) {
        self.slot.conn.lock().await.take();
    }
}

/// Checks out with a span when the request's trace is sampled; otherwise no span at all
/// (an unsampled request must not pay for one).
pub(crate) async fn checkout<M: ManageConnection>(
    pool: &Pool<M>,
    parent: Option<&Context>,
    location: &'static Location<'static>,
) -> Result<PooledConnection<M>, CheckoutError> {
    match parent {
        None => pool.get_at(location).await,
        // Boxed: the span's state stays out of the future every checkout creates and moves.
        Some(parent) => Box::pin(traced_checkout(pool, parent, location)).await,
    }
}

async fn traced_checkout<M: ManageConnection>(
    pool: &Pool<M>,
    parent: &Context,
    location: &'static Location<'static>,
) -> Result<PooledConnection<M>, CheckoutError> {
    let tracer = opentelemetry::global::tracer("pool-tower");
    let mut span = tracer
        .span_builder(semconv::SPAN_CHECKOUT)
        .with_kind(opentelemetry::trace::SpanKind::Internal)
        .with_attributes([
            KeyValue::new(semconv::POOL_NAME, pool.name().to_owned()),
            KeyValue::new("code.file.path", location.file()),
            KeyValue::new("code.line.number", i64::from(location.line())),
        ])
        .start_with_context(&tracer, parent);
    let result = pool.get_at(location).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) if e.is_circuit_open() => "circuit_open",
        Err(_) => "timeout",
    };
    span.set_attribute(KeyValue::new(semconv::CHECKOUT_OUTCOME, outcome));
    if let Err(e) = &result {
        span.set_status(Status::error(e.to_string()));
    }
    span.end();
    result
}

impl<M: ManageConnection> Clone for Db<M> {
    fn clone(&self) -> Self {
        Db::new(self.slot.clone())
    }
}

impl<M: ManageConnection> Drop for Db<M> {
    fn drop(&mut self) {
        if self.slot.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last handle the request gave out: nothing can use the connection any more.
            if let Ok(mut slot) = self.slot.conn.try_lock() {
                slot.take();
            }
        }
    }
}

impl<M: ManageConnection> fmt::Debug for Db<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("pool", &self.slot.pool.name())
            .field("released", &self.slot.released.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A checked-out connection, borrowed from a [`Db`]; dereferences to the backend's
/// connection.
pub struct DbConn<'a, M: ManageConnection> {
    guard: MutexGuard<'a, Option<PooledConnection<M>>>,
    released: &'a AtomicBool,
}

impl<M: ManageConnection> DbConn<'_, M> {
    /// The pooled connection (for [`Pool::report_error`] and
    /// [`PooledConnection::discard`]).
    pub fn pooled(&mut self) -> &mut PooledConnection<M> {
        self.guard
            .as_mut()
            .expect("a DbConn is only made around a connection")
    }
}

impl<M: ManageConnection> Deref for DbConn<'_, M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        self.guard
            .as_ref()
            .expect("a DbConn is only made around a connection")
    }
}

impl<M: ManageConnection> DerefMut for DbConn<'_, M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        self.pooled()
    }
}

impl<M: ManageConnection> Drop for DbConn<'_, M> {
    fn drop(&mut self) {
        if self.released.load(Ordering::Acquire) {
            // The response is already out; this was a leaked handle. Give the connection back.
            self.guard.take();
        }
    }
}

impl<M: ManageConnection> fmt::Debug for DbConn<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConn").finish_non_exhaustive()
    }
}

/// Why [`Db::conn`] produced no connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum DbError {
    /// The pool could not provide a connection.
    Unavailable(CheckoutError),
    /// The request's response was already produced; its connection is gone.
    RequestFinished,
    /// The layer is missing: no [`Db`] in the request's extensions.
    MissingLayer,
    /// A query failed (for handlers that want a quick `?`; answers 500).
    Query,
}

impl From<CheckoutError> for DbError {
    fn from(e: CheckoutError) -> Self {
        DbError::Unavailable(e)
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Unavailable(e) => e.fmt(f),
            DbError::RequestFinished => {
                f.write_str("the request's database connection was used after its response")
            }
            DbError::MissingLayer => f.write_str(
                "no database connection in the request: is the PoolLayer installed on this route?",
            ),
            DbError::Query => f.write_str("a database query failed"),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DbError::Unavailable(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(feature = "axum")]
mod axum_impl {
    use axum::extract::FromRequestParts;
    use axum::response::{IntoResponse, Response};
    use http::request::Parts;
    use http::StatusCode;
    use pool_core::ManageConnection;

    use super::{Db, DbError};
    use crate::response::{JsonRejection, Rejection};

    impl<S: Send + Sync, M: ManageConnection> FromRequestParts<S> for Db<M> {
        type Rejection = DbError;

        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, DbError> {
            // Taken out, not cloned: the handler's copy is then the only one, so dropping it
            // returns the connection.
            parts
                .extensions
                .remove::<Db<M>>()
                .ok_or(DbError::MissingLayer)
        }
    }

    impl IntoResponse for DbError {
        fn into_response(self) -> Response {
            match self {
                DbError::Unavailable(e) => JsonRejection.rejection(&e),
                DbError::RequestFinished | DbError::MissingLayer | DbError::Query => {
                    tracing::error!(error = %self, "database handle misuse or query failure");
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }
            }
        }
    }
}
