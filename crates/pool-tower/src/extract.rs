//! The connection handle a request carries in its extensions, and the axum extractor.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use opentelemetry::context::FutureExt;
use opentelemetry::trace::{Span, Status, Tracer};
use opentelemetry::{Context, KeyValue};
use pool_core::{CheckoutError, CheckoutOutcome, ManageConnection, Pool, PooledConnection};
use tokio::sync::Notify;

use crate::semconv;

/// One request's claim on a pooled connection: what the layer puts into the request's
/// extensions. Clone it freely; the connection goes back to the pool when the last clone
/// that the request handed out is dropped, and at the latest when the response is ready,
/// even if a clone was kept somewhere.
///
/// In lazy mode (the default) nothing is checked out until [`Db::conn`] is first awaited,
/// so routes that never touch the database hold nothing.
///
/// Every operation is bounded without the handler doing anything: while a [`DbConn`] is
/// alive, the layer runs the breaker's operation timeout (`DB_CIRCUIT_BREAKER_TIMEOUT`,
/// 30 s by default) from the moment it was lent. If it runs out (a query that never
/// answers, a network black hole), the request is cancelled, answered with the rejection of
/// [`CheckoutError::OperationTimedOut`](pool_core::CheckoutError::OperationTimedOut) (504
/// by default, DEADLINE_EXCEEDED for gRPC), and the connection is closed and counted as a
/// breaker failure. Drop the `DbConn` between operations if the handler does other slow work.
///
/// ```no_run
/// # #[cfg(feature = "axum")] mod demo {
/// use pool_core::postgres::PostgresManager;
/// use pool_core::postgres::tokio_postgres::NoTls;
/// use pool_tower::{Db, DbError};
///
/// async fn count(db: Db<PostgresManager<NoTls>>) -> Result<String, DbError> {
///     let mut conn = db.conn().await?;
///     // A failed query: reported to the breaker, answered 500, its cause logged.
///     let row = conn.check(conn.query_one("select count(*) from orders", &[]).await)?;
///     Ok(row.get::<_, i64>(0).to_string())
/// }
/// # }
/// ```
pub struct Db<M: ManageConnection> {
    slot: Arc<Slot<M>>,
}

pub(crate) struct Slot<M: ManageConnection> {
    pool: Pool<M>,
    state: parking_lot::Mutex<State<M>>,
    /// Woken when a lent connection comes back (or a checkout gives up), for a second
    /// `conn()` on the same request.
    returned: Notify,
    /// `conn()` calls waiting on `returned`: counted under the state lock, so a change of
    /// state that reads zero there has nobody to wake (the usual case) and skips the wake-up.
    waiting: AtomicUsize,
    /// Handles given to the request (not the service's own reference).
    handles: AtomicUsize,
    /// Counts lends and returns of the connection: odd while a `DbConn` is out (an operation
    /// may be running). The response future runs the operation timeout while it is odd, from
    /// the lend whose number it saw.
    lends: AtomicU32,
    /// Set by the response future when the lent connection ran past the operation timeout:
    /// the `DbConn`, dropped with the cancelled request, then closes its connection.
    timed_out: AtomicBool,
    /// Set when the request was dropped before its response (the client hung up): a lent
    /// connection may be mid-query, so its `DbConn` closes it.
    abandoned: AtomicBool,
    /// The sampled trace the request belongs to, if any: checkout spans go there.
    parent: Option<Context>,
}

/// Where the request's connection is. A plain lock, held only for these transitions (never
/// across an await), instead of an async mutex on every `conn()`.
enum State<M: ManageConnection> {
    /// None checked out yet.
    Empty,
    /// Lent to a `DbConn`, or being checked out by one `conn()` call.
    Busy,
    /// Checked out and idle between uses.
    Held(PooledConnection<M>),
    /// The response is ready: nothing may be held or taken any more.
    Released,
}

impl<M: ManageConnection> Slot<M> {
    pub(crate) fn new(pool: Pool<M>, parent: Option<Context>) -> Arc<Self> {
        Arc::new(Slot {
            pool,
            state: parking_lot::Mutex::new(State::Empty),
            returned: Notify::new(),
            waiting: AtomicUsize::new(0),
            handles: AtomicUsize::new(0),
            lends: AtomicU32::new(0),
            timed_out: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            parent,
        })
    }

    pub(crate) fn put(&self, conn: PooledConnection<M>) {
        let mut state = self.state.lock();
        if matches!(*state, State::Empty) {
            *state = State::Held(conn);
        }
    }

    /// Returns the connection to the pool. If it is lent out (a leaked handle still using
    /// it), the `DbConn` returns it when dropped. Only the first call does anything.
    pub(crate) fn release(&self) {
        self.change(|state| {
            (!matches!(*state, State::Released)).then(|| std::mem::replace(state, State::Released))
        });
    }

    /// Changes the state under the lock, then wakes the `conn()` calls waiting for it, if any.
    /// `change` returns what the old state let go (dropped after the lock: a connection going
    /// back runs the pool's bookkeeping), or `None` if it changed nothing.
    fn change<T>(&self, change: impl FnOnce(&mut State<M>) -> Option<T>) {
        let (released, wake) = {
            let mut state = self.state.lock();
            let released = change(&mut state);
            let wake = released.is_some() && self.waiting.load(Ordering::Relaxed) > 0;
            (released, wake)
        };
        drop(released);
        if wake {
            // All of them, not one: a waiter whose future is kept but never polled again
            // would swallow a single wake-up. The others find the slot busy and wait on.
            self.returned.notify_waiters();
        }
    }

    /// Gives back a held connection (the request no longer needs it).
    fn take_back(&self) {
        let held = {
            let mut state = self.state.lock();
            match std::mem::replace(&mut *state, State::Empty) {
                State::Held(conn) => Some(conn),
                other => {
                    *state = other;
                    None
                }
            }
        };
        drop(held);
    }

    pub(crate) fn pool(&self) -> &Pool<M> {
        &self.pool
    }

    pub(crate) fn parent(&self) -> Option<&Context> {
        self.parent.as_ref()
    }

    /// The lend in progress, if a `DbConn` is out (numbered, so a new lend restarts the
    /// operation timeout).
    pub(crate) fn lend_in_progress(&self) -> Option<u32> {
        let lends = self.lends.load(Ordering::Acquire);
        (lends & 1 == 1).then_some(lends)
    }

    /// The lent connection ran past the operation timeout; it is closed when its `DbConn`
    /// is dropped (with the request, which the response future cancels).
    pub(crate) fn time_out(&self) {
        self.timed_out.store(true, Ordering::Relaxed);
    }

    /// The request was dropped before its response.
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }

    fn lend<'a>(&'a self, conn: PooledConnection<M>) -> DbConn<'a, M> {
        self.lends.fetch_add(1, Ordering::Release);
        DbConn {
            conn: Some(conn),
            slot: self,
        }
    }
}

/// A `conn()` counted as waiting; uncounted when it wakes or is abandoned.
struct Waiter<'a, M: ManageConnection>(&'a Slot<M>);

impl<'a, M: ManageConnection> Waiter<'a, M> {
    /// Counts a waiter; call with the state lock held.
    fn count(slot: &'a Slot<M>) -> Self {
        slot.waiting.fetch_add(1, Ordering::Relaxed);
        Waiter(slot)
    }
}

impl<M: ManageConnection> Drop for Waiter<'_, M> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Marks the slot `Busy` while one `conn()` checks out; if that call is abandoned or fails,
/// the slot goes back to `Empty` and a waiting `conn()` may try.
struct Claim<'a, M: ManageConnection>(Option<&'a Slot<M>>);

impl<M: ManageConnection> Drop for Claim<'_, M> {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            slot.change(|state| {
                if matches!(*state, State::Busy) {
                    *state = State::Empty;
                }
                Some(())
            });
        }
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
            let slot = &*self.slot;
            loop {
                let waiting = {
                    let mut state = slot.state.lock();
                    match std::mem::replace(&mut *state, State::Busy) {
                        State::Held(mut conn) => {
                            // Checked out ahead (eager mode): this line is where it is used.
                            conn.set_location(location);
                            return Ok(slot.lend(conn));
                        }
                        State::Empty => None,
                        // Counted and listening before the lock is let go: whoever changes
                        // the state next sees the count and wakes this call.
                        State::Busy => Some((Waiter::count(slot), slot.returned.notified())),
                        State::Released => {
                            *state = State::Released;
                            return Err(DbError::RequestFinished);
                        }
                    }
                };
                let Some((waiter, returned)) = waiting else {
                    let mut claim = Claim(Some(slot));
                    let conn = checkout(&slot.pool, slot.parent(), location).await?;
                    // Checked out: the slot stays `Busy`, lent to the `DbConn`.
                    claim.0 = None;
                    return Ok(slot.lend(conn));
                };
                returned.await;
                drop(waiter);
            }
        }
    }

    /// The pool behind this handle.
    pub fn pool(&self) -> &Pool<M> {
        &self.slot.pool
    }

    /// Returns the connection to the pool now (if one is held); a later [`Db::conn`] checks
    /// out again.
    pub fn give_back(&self) {
        self.slot.take_back();
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
    let tracer = opentelemetry::global::tracer(semconv::TRACER);
    let mut span = tracer
        .span_builder(semconv::SPAN_CHECKOUT)
        .with_kind(opentelemetry::trace::SpanKind::Internal)
        .with_attributes([
            KeyValue::new(semconv::POOL_NAME, pool.name().to_owned()),
            KeyValue::new(semconv::CODE_FILE_PATH, location.file()),
            KeyValue::new(semconv::CODE_LINE_NUMBER, i64::from(location.line())),
        ])
        .start_with_context(&tracer, parent);
    // The request's context is current while checking out, so what observers keep for a
    // leak report (see `PoolObserver::checkout_context`) is the request's.
    let result = pool.get_at(location).with_context(parent.clone()).await;
    let outcome = match &result {
        Ok(_) => CheckoutOutcome::Ok,
        Err(e) if e.is_circuit_open() => CheckoutOutcome::CircuitOpen,
        Err(_) => CheckoutOutcome::Timeout,
    };
    span.set_attribute(KeyValue::new(semconv::CHECKOUT_OUTCOME, outcome.as_str()));
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
            self.slot.take_back();
        }
    }
}

impl<M: ManageConnection> fmt::Debug for Db<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("pool", &self.slot.pool.name())
            .field(
                "released",
                &matches!(*self.slot.state.lock(), State::Released),
            )
            .finish_non_exhaustive()
    }
}

/// A checked-out connection, borrowed from a [`Db`]; dereferences to the backend's
/// connection. Dropping it hands the connection back to the request (or, after the response,
/// to the pool).
pub struct DbConn<'a, M: ManageConnection> {
    conn: Option<PooledConnection<M>>,
    slot: &'a Slot<M>,
}

impl<M: ManageConnection> DbConn<'_, M> {
    /// A query's result, made ready for `?`: an error is reported to the pool's breaker
    /// (a connection-class error counts as a failure and the connection is closed rather
    /// than reused, as with [`Pool::report_error`]) and becomes [`DbError::Query`], which
    /// keeps it as its cause and answers 500 (the cause is logged, never sent).
    ///
    /// ```no_run
    /// # #[cfg(feature = "axum")] mod demo {
    /// use pool_core::postgres::PostgresManager;
    /// use pool_core::postgres::tokio_postgres::NoTls;
    /// use pool_tower::{Db, DbError};
    ///
    /// async fn count(db: Db<PostgresManager<NoTls>>) -> Result<String, DbError> {
    ///     let mut conn = db.conn().await?;
    ///     let row = conn.check(conn.query_one("select count(*) from orders", &[]).await)?;
    ///     Ok(row.get::<_, i64>(0).to_string())
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`DbError::Query`] with `result`'s error.
    pub fn check<T>(&mut self, result: Result<T, M::Error>) -> Result<T, DbError>
    where
        M::Error: std::error::Error + Send + Sync + 'static,
    {
        result.map_err(|error| {
            let slot = self.slot;
            slot.pool.report_error(self.pooled(), &error);
            DbError::query(error)
        })
    }

    /// The pooled connection (for [`Pool::report_error`] and
    /// [`PooledConnection::discard`]).
    pub fn pooled(&mut self) -> &mut PooledConnection<M> {
        self.conn
            .as_mut()
            .expect("a DbConn holds its connection until dropped")
    }
}

impl<M: ManageConnection> Deref for DbConn<'_, M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        self.conn
            .as_ref()
            .expect("a DbConn holds its connection until dropped")
    }
}

impl<M: ManageConnection> DerefMut for DbConn<'_, M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        self.pooled()
    }
}

impl<M: ManageConnection> Drop for DbConn<'_, M> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let slot = self.slot;
        slot.lends.fetch_add(1, Ordering::Release);
        slot.change(|state| {
            // Read under the state lock, which the response future takes (releasing the
            // slot) after it sets them.
            if slot.timed_out.load(Ordering::Relaxed) {
                conn.report_operation_timeout(slot.pool.config().breaker.operation_timeout);
            } else if slot.abandoned.load(Ordering::Relaxed) {
                // Dropped with an abandoned request, perhaps mid-query: not reusable.
                conn.abandon_operation();
            }
            Some(if matches!(*state, State::Released) {
                // The response is already out (a leaked handle): back to the pool.
                Some(conn)
            } else {
                *state = State::Held(conn);
                None
            })
        });
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
    /// A query failed, with the driver's error (answers 500; the error is logged, not sent
    /// to the client). Made by [`DbError::query`]: `.map_err(DbError::query)?`.
    Query(Box<dyn std::error::Error + Send + Sync>),
}

impl DbError {
    /// A failed query, keeping its cause: `conn.execute(…).await.map_err(DbError::query)?`.
    pub fn query(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> DbError {
        DbError::Query(error.into())
    }
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
            DbError::Query(e) => write!(f, "a database query failed: {e}"),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DbError::Unavailable(e) => Some(e),
            DbError::Query(e) => Some(&**e),
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
                DbError::RequestFinished | DbError::MissingLayer | DbError::Query(_) => {
                    tracing::error!(error = %self, "database handle misuse or query failure");
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }
            }
        }
    }
}
