//! The manager the pool wraps around yours, and the connection guard it hands out.
//!
//! bb8 has no check-in or check-out hooks; its only callbacks are the manager's `connect`,
//! `is_valid` (on checkout, which the pool turns off to validate in its own checkout) and
//! `has_broken` (on return). Wrapping the manager is therefore how the pool sees every connect
//! (for the circuit breaker), applies lifetime jitter and forced recycling on return, and
//! counts every close by reason; the pool's checkout and monitor validate
//! through the same wrapper.

use std::fmt;
use std::future::Future;
use std::num::NonZeroU64;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Stamp;
use crate::error::ConnectError;
use crate::observer::{CloseReason, PoolEvent};
use crate::shared::Shared;
use bb8::ManageConnection;

/// Lifetimes are shortened by up to this fraction, at random, so connections opened together
/// do not all reconnect together.
const LIFETIME_JITTER: f64 = 0.025;

pub(crate) type Describe<E> = fn(&E) -> String;

/// Brings a returned connection's session back to clean: `Ok(true)` when it undid something,
/// `Ok(false)` when there was nothing to undo, `Err` (what went wrong) when the connection
/// must be closed. See [`PoolBuilder::reset_with`](crate::PoolBuilder::reset_with).
pub type ResetFn<C> =
    for<'a> fn(&'a mut C) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send + 'a>>;

/// The two halves of a reset hook, stored type-erased in `Shared`.
pub(crate) struct ResetHooks<C> {
    pub(crate) on_return: fn(&C) -> bool,
    pub(crate) on_checkout: fn(&C) -> bool,
    pub(crate) reset: ResetFn<C>,
    /// For a connection returned while its driver has work queued that the stream has not
    /// shown yet: where to leave it until the driver has run (see [`Park`]).
    pub(crate) park: Option<ParkFn<C>>,
}

/// Where a returned connection can wait for its driver, if it must (see [`Park`]).
pub(crate) type ParkFn<C> = fn(&C) -> Option<Arc<dyn Park>>;

/// What to do with a parked connection once its driver has run: check its session and put
/// it back, or reset it first.
pub(crate) type Release = Box<dyn FnOnce() + Send>;

/// Holds a returned connection until the task driving it has written what was queued on it
/// (PostgreSQL: a query queued by a future dropped just before the return), then releases
/// it, from that task. The next borrower then finds the session as the server will see it,
/// without waiting for the driver itself.
pub(crate) trait Park: Send + Sync {
    /// Keeps `release` until the driver has run; `Err(release)` if it already has (run it
    /// now).
    fn park(&self, release: Release) -> Result<(), Release>;
}

impl<C: 'static> ResetHooks<C> {
    pub(crate) fn of(shared: &Shared) -> Option<&ResetHooks<C>> {
        shared.reset.as_deref()?.downcast_ref::<ResetHooks<C>>()
    }
}

/// What a failed connect says about the database, for the circuit breaker (see
/// [`PoolBuilder::connect_failures`](crate::PoolBuilder::connect_failures)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// The database may be down or unreachable: a failure event for the breaker (attempts
    /// that fail together are one event).
    Transient,
    /// No retry can fix it (a wrong password, a missing database): with no connection open,
    /// the breaker opens at once and callers get this error as the cause; with connections
    /// open (a password rotated under a running pool) it is not counted, and those
    /// connections keep serving.
    Fatal,
    /// The server is at capacity (PostgreSQL's `too many connections`): while the pool has
    /// connections, not an outage (they keep serving, and bb8 retries the connect after a
    /// growing delay); with none, a failure like any other. A recovery probe refused for
    /// capacity has reached the database.
    Capacity,
}

/// The manager the pool hands to bb8.
pub(crate) struct Managed<M: ManageConnection> {
    pub(crate) inner: Arc<M>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) describe: Describe<M::Error>,
    pub(crate) failure_kind: fn(&M::Error) -> ConnectFailure,
}

impl<M: ManageConnection> Clone for Managed<M> {
    fn clone(&self) -> Self {
        Managed {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            describe: self.describe,
            failure_kind: self.failure_kind,
        }
    }
}

impl<M: ManageConnection> fmt::Debug for Managed<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Managed")
            .field("pool", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// A pooled connection with what the pool needs to know about it. The bookkeeping sits in
/// its own allocation (made once per connection): bb8 moves its connections by value on every
/// checkout and return, so what it moves is the driver's handle and one pointer.
pub(crate) struct Tracked<C> {
    pub(crate) conn: C,
    pub(crate) meta: Box<Meta>,
}

/// What the pool knows about one connection.
pub(crate) struct Meta {
    /// When the (jittered) lifetime ends; far in the future without a lifetime.
    expires_at: Stamp,
    pub(crate) last_used: Stamp,
    pub(crate) generation: u64,
    /// Set when the pool has decided to close this connection, and why.
    pub(crate) close: Option<CloseReason>,
    pub(crate) shared: Arc<Shared>,
}

impl Meta {
    fn expired(&self, now: Stamp) -> bool {
        now >= self.expires_at
    }

    pub(crate) fn retire_reason(&self, now: Stamp) -> Option<CloseReason> {
        if self.close.is_some() {
            self.close
        } else if self.generation != self.shared.generation.load(Relaxed) {
            Some(CloseReason::Forced)
        } else if self.expired(now) {
            Some(CloseReason::MaxLifetime)
        } else {
            None
        }
    }
}

impl<C> Drop for Tracked<C> {
    fn drop(&mut self) {
        let meta = &*self.meta;
        meta.shared.counters.open.fetch_sub(1, Relaxed);
        if meta.shared.closing.load(Relaxed) && meta.close.is_none() {
            return;
        }
        // Every close the pool decides carries its reason; bb8 drops a connection without
        // asking only when `add` refuses it (the pool marks those `Overflow` first), so an
        // unmarked close is counted as the driver's breakage.
        let reason = meta.close.unwrap_or(CloseReason::Broken);
        meta.shared.counters.closed[reason.index()].fetch_add(1, Relaxed);
        meta.shared.emit(&PoolEvent::ConnectionClosed { reason });
        tracing::debug!(pool = %meta.shared.name, reason = reason.as_str(), "connection closed");
    }
}

impl<M: ManageConnection> Managed<M> {
    /// A connect failed: counted, its text (passwords hidden) kept as the last error, and
    /// `event` (the failure epoch it started at, and whether it is fatal) reported to the
    /// breaker; `None` for failures that are not the database's (capacity, probes).
    fn failed(&self, took: Duration, text: &str, event: Option<(u64, bool)>, probe: bool) {
        let counters = &self.shared.counters;
        counters.create_failures.fetch_add(1, Relaxed);
        let text = self.shared.set_last_error(text);
        if probe {
            // One a second while the database is down: the breaker's transitions say it.
            tracing::debug!(pool = %self.shared.name, error = %text, "recovery probe could not connect");
        } else {
            tracing::warn!(pool = %self.shared.name, error = %text, "could not open a database connection");
        }
        self.shared.emit(&PoolEvent::ConnectionCreated {
            took,
            error: Some(&text),
        });
        if let Some((epoch, fatal)) = event {
            self.shared.record_failure_since(epoch, fatal);
        }
    }

    /// Opens a connection within the connect timeout and does its bookkeeping. `probe`: a
    /// recovery probe, which may connect while the breaker is open and whose outcome the
    /// prober reports itself.
    pub(crate) async fn open(
        &self,
        probe: bool,
    ) -> Result<Tracked<M::Connection>, ConnectError<M::Error>> {
        if !probe && !self.shared.connect_allowed() && !self.wait_for_breaker().await {
            return Err(ConnectError::CircuitOpen);
        }
        let epoch = self.shared.failure_epoch();
        let timeout = self.shared.config.connect_timeout;
        let start = self.shared.clock.now();
        let outcome = tokio::time::timeout(timeout, self.inner.connect()).await;
        let took = self.shared.clock.now().saturating_since(start);
        self.shared.connect_attempted();
        match outcome {
            Ok(Ok(conn)) => {
                let shared = &self.shared;
                shared.counters.created.fetch_add(1, Relaxed);
                shared.counters.open.fetch_add(1, Relaxed);
                if !probe {
                    shared.record_success();
                }
                shared.emit(&PoolEvent::ConnectionCreated { took, error: None });
                let now = shared.clock.now();
                let expires_at = match shared.config.max_lifetime {
                    Some(lifetime) => {
                        now + lifetime.mul_f64(1.0 - LIFETIME_JITTER * fastrand::f64())
                    }
                    None => Stamp::never(now),
                };
                Ok(Tracked {
                    conn,
                    meta: Box::new(Meta {
                        expires_at,
                        last_used: now,
                        generation: shared.generation.load(Relaxed),
                        close: None,
                        shared: shared.clone(),
                    }),
                })
            }
            Ok(Err(e)) => {
                let open = self.shared.counters.open.load(Relaxed);
                let event = match (self.failure_kind)(&e) {
                    _ if probe => None,
                    // Refused for capacity with connections to serve from: not an outage.
                    // With none, nothing can be served: it counts like any failure, so
                    // callers are turned away fast instead of each waiting out the checkout
                    // timeout.
                    ConnectFailure::Capacity if open > 0 => None,
                    ConnectFailure::Capacity => Some((epoch, false)),
                    // With connections open (a password rotated under a running pool), those
                    // judge the database: their failures count, this one does not.
                    ConnectFailure::Fatal if open > 0 => None,
                    ConnectFailure::Fatal => Some((epoch, true)),
                    ConnectFailure::Transient => Some((epoch, false)),
                };
                self.failed(took, &(self.describe)(&e), event, probe);
                Err(ConnectError::Backend(e))
            }
            Err(_) => {
                self.failed(
                    took,
                    &format!("connect timed out after {}ms", timeout.as_millis()),
                    (!probe).then_some((epoch, false)),
                    probe,
                );
                Err(ConnectError::Timeout(timeout))
            }
        }
    }

    /// A connect asked for while the breaker is open (bb8's own retry, holding a place for a
    /// checkout that has since been turned away) waits for it to close, at most the connect
    /// timeout, instead of failing at once: bb8 would then sleep out its backoff, and the
    /// checkouts that come after the close would wait for it. `true` once connects are
    /// allowed again.
    async fn wait_for_breaker(&self) -> bool {
        let shared = &self.shared;
        let deadline = tokio::time::Instant::now() + shared.config.connect_timeout;
        loop {
            let changed = shared.breaker_changed.notified();
            if shared.connect_allowed() {
                return true;
            }
            if shared.closing.load(Relaxed)
                || tokio::time::timeout_at(deadline, changed).await.is_err()
            {
                return shared.connect_allowed();
            }
        }
    }

    /// A recovery probe: a new connection and a ping on it, each within its timeout, so the
    /// verdict rests on real I/O with the database. Whether it reached the database (a
    /// server refusing for capacity answered: it is up), and the connection if it worked.
    pub(crate) async fn probe(&self) -> (bool, Option<Tracked<M::Connection>>) {
        let mut conn = match self.open(true).await {
            Ok(conn) => conn,
            Err(ConnectError::Backend(e)) => {
                return ((self.failure_kind)(&e) == ConnectFailure::Capacity, None)
            }
            Err(_) => return (false, None),
        };
        let limit = self.shared.config.validation_timeout;
        match tokio::time::timeout(limit, self.inner.is_valid(&mut conn.conn)).await {
            Ok(Ok(())) => (true, Some(conn)),
            Ok(Err(e)) => {
                let text = self.shared.set_last_error(&(self.describe)(&e));
                tracing::debug!(pool = %self.shared.name, error = %text, "recovery probe's ping failed");
                conn.meta.close = Some(CloseReason::Invalid);
                (false, None)
            }
            Err(_) => {
                self.shared.set_last_error(&format!(
                    "validation timed out after {}ms",
                    limit.as_millis()
                ));
                conn.meta.close = Some(CloseReason::Invalid);
                (false, None)
            }
        }
    }
}

impl<M: ManageConnection> ManageConnection for Managed<M> {
    type Connection = Tracked<M::Connection>;
    type Error = ConnectError<M::Error>;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        self.open(false).await
    }

    /// Not called by bb8 (the pool validates in its own checkout, where it already has the
    /// time); implemented for completeness. Boxed: bb8's checkout future has room for this
    /// one, and every waiting checkout holds a bb8 checkout future.
    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        match Box::pin(self.validate(conn, self.shared.clock.now())).await {
            true => Ok(()),
            false => Err(ConnectError::Retired),
        }
    }

    /// Called by bb8 when a connection comes back. Through `PooledConnection`'s drop, which
    /// has just stamped `last_used`, that stamp serves as "now" (no second clock read on the
    /// hot path); connections the pool takes out itself (the idle walk, the health probe, a
    /// rejected candidate) come back with an older stamp, which can only delay a lifetime
    /// close to their next return.
    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        let now = conn.meta.last_used;
        self.retire(conn, now)
    }
}

/// What the synchronous part of validation decided.
pub(crate) enum Verdict {
    /// Hand it out.
    Valid,
    /// Closed (the reason is set on the connection); try another.
    Retired,
    /// Not used within the bypass window: ping it first.
    Ping,
    /// Its session may not be clean (see [`PoolBuilder::reset_with`](crate::PoolBuilder::reset_with)):
    /// reset it first.
    Reset,
}

impl<M: ManageConnection> Managed<M> {
    /// Condemns `conn` (setting its close reason) if it is past its lifetime, from before a
    /// forced recycle, or broken according to the driver; no I/O.
    fn retire(&self, conn: &mut Tracked<M::Connection>, now: Stamp) -> bool {
        if let Some(reason) = conn.meta.retire_reason(now) {
            conn.meta.close = Some(reason);
            return true;
        }
        if self.inner.has_broken(&mut conn.conn) {
            conn.meta.close = Some(CloseReason::Broken);
            return true;
        }
        false
    }

    /// Lifetime, forced recycling, driver-reported breakage, a session that may need a reset,
    /// and the bypass window; no I/O.
    pub(crate) fn verdict(&self, conn: &mut Tracked<M::Connection>, now: Stamp) -> Verdict {
        if self.retire(conn, now) {
            return Verdict::Retired;
        }
        if let Some(hooks) = ResetHooks::<M::Connection>::of(&self.shared) {
            if (hooks.on_checkout)(&conn.conn) {
                return Verdict::Reset;
            }
        }
        self.ping_verdict(conn, now)
    }

    fn ping_verdict(&self, conn: &Tracked<M::Connection>, now: Stamp) -> Verdict {
        let config = &conn.meta.shared.config;
        if !config.pre_ping || now.saturating_since(conn.meta.last_used) < config.validation_bypass
        {
            Verdict::Valid
        } else {
            Verdict::Ping
        }
    }

    /// The full checkout validation; `false` means the connection was condemned (its reason
    /// is set) and the caller should drop it and try another.
    pub(crate) async fn validate(&self, conn: &mut Tracked<M::Connection>, now: Stamp) -> bool {
        match self.verdict(conn, now) {
            Verdict::Valid => true,
            Verdict::Retired => false,
            Verdict::Ping => self.ping(conn).await,
            // A reset that found nothing to do did no I/O: the connection is still due its
            // pre-ping.
            Verdict::Reset => {
                self.reset(conn).await
                    && match self.ping_verdict(conn, now) {
                        Verdict::Ping => self.ping(conn).await,
                        _ => true,
                    }
            }
        }
    }

    /// Resets `conn`'s session at checkout within the validation timeout (see
    /// [`PoolBuilder::reset_with`](crate::PoolBuilder::reset_with)). Marked for closing until
    /// it succeeds, like a ping, so a checkout dropped mid-reset closes it.
    async fn reset(&self, conn: &mut Tracked<M::Connection>) -> bool {
        let Some(hooks) = ResetHooks::<M::Connection>::of(&self.shared) else {
            return true;
        };
        let reset = hooks.reset;
        conn.meta.close = Some(CloseReason::Invalid);
        let limit = self.shared.config.validation_timeout;
        let outcome = tokio::time::timeout(limit, reset(&mut conn.conn)).await;
        finish_reset(&self.shared, conn, outcome)
    }

    /// Pings `conn` within the validation timeout.
    ///
    /// Cancellation safety: the connection is condemned before the ping starts and pardoned
    /// only when it succeeds, so a checkout dropped mid-ping (its caller gave up) leaves a
    /// connection in an unknown state that is closed when bb8 takes it back, never reused.
    pub(crate) async fn ping(&self, conn: &mut Tracked<M::Connection>) -> bool {
        let previous = conn.meta.close.replace(CloseReason::Invalid);
        let limit = self.shared.config.validation_timeout;
        let text = match tokio::time::timeout(limit, self.inner.is_valid(&mut conn.conn)).await {
            Ok(Ok(())) => {
                conn.meta.close = previous;
                conn.meta.last_used = self.shared.clock.now();
                self.shared.record_success();
                return true;
            }
            Ok(Err(e)) => (self.describe)(&e),
            Err(_) => format!("validation timed out after {}ms", limit.as_millis()),
        };
        let text = self.condemn_invalid(conn, &text);
        tracing::debug!(pool = %self.shared.name, error = %text, "validation failed; connection replaced");
        false
    }

    /// A validation failed (`text` says how): the connection is closed on return, the text
    /// (passwords hidden) becomes the last error, and the breaker hears of it. Returns the
    /// stored text.
    fn condemn_invalid(&self, conn: &mut Tracked<M::Connection>, text: &str) -> String {
        conn.meta.close = Some(CloseReason::Invalid);
        let text = self.shared.set_last_error(text);
        self.shared.record_validation_failure();
        text
    }
}

/// A connection checked out of a [`Pool`](crate::Pool). It goes back when dropped.
///
/// Dereferences to the backend's connection (`tokio_postgres::Client`,
/// [`SqliteConnection`](crate::sqlite::SqliteConnection), …).
pub struct PooledConnection<M: ManageConnection> {
    /// Always `Some` until dropped, when a connection whose session needs a reset is moved
    /// into the task that resets it.
    conn: Option<bb8::PooledConnection<'static, Managed<M>>>,
    checked_out_at: Stamp,
    /// The leak registry's key, when leak detection is on.
    leak_id: Option<NonZeroU64>,
    /// An operation the pool runs on it is in flight (see `Pool::run`): dropped now, it is
    /// given up on.
    in_flight: bool,
}

impl<M: ManageConnection> PooledConnection<M> {
    pub(crate) fn new(
        conn: bb8::PooledConnection<'static, Managed<M>>,
        checked_out_at: Stamp,
        leak_id: Option<NonZeroU64>,
    ) -> Self {
        PooledConnection {
            conn: Some(conn),
            checked_out_at,
            leak_id,
            in_flight: false,
        }
    }

    fn guard(&self) -> &bb8::PooledConnection<'static, Managed<M>> {
        match &self.conn {
            Some(conn) => conn,
            None => unreachable!("a pooled connection is taken only by its drop"),
        }
    }

    fn guard_mut(&mut self) -> &mut bb8::PooledConnection<'static, Managed<M>> {
        match &mut self.conn {
            Some(conn) => conn,
            None => unreachable!("a pooled connection is taken only by its drop"),
        }
    }

    fn shared(&self) -> &Shared {
        &self.guard().meta.shared
    }

    /// How long this connection has been checked out.
    pub fn held_for(&self) -> Duration {
        self.shared()
            .clock
            .now()
            .saturating_since(self.checked_out_at)
    }

    /// Records `location` as where this connection is used from, in place of where it was
    /// checked out: for wrappers that check out ahead of their user (an eager request
    /// extension, a job runner), so that a leak report names the user's code. Does nothing
    /// without leak detection.
    pub fn set_location(&mut self, location: &'static Location<'static>) {
        if let Some(id) = self.leak_id {
            self.shared().relocate_leak(id, location);
        }
    }

    /// Closes this connection when it is returned instead of reusing it (after a protocol
    /// error, a cancelled query, a session left in an unknown state).
    pub fn discard(&mut self) {
        self.guard_mut()
            .meta
            .close
            .get_or_insert(CloseReason::Broken);
    }

    /// An operation starts on this connection: if the connection is dropped before
    /// [`PooledConnection::done`] (the operation's future was dropped, its caller gave up),
    /// the operation is given up on, as by [`PooledConnection::abandon_operation`].
    pub(crate) fn operation_started(&mut self) {
        self.in_flight = true;
    }

    /// The operation started by [`PooledConnection::operation_started`] finished.
    pub(crate) fn done(&mut self) {
        self.in_flight = false;
    }

    /// The operation running on this connection was given up on (its caller went away): the
    /// connection is closed when returned (counted `broken`) instead of being handed, perhaps
    /// still busy, to the next borrower, and the database is asked to stop the operation
    /// (see [`PoolBuilder::cancel_with`](crate::PoolBuilder::cancel_with)).
    pub fn abandon_operation(&mut self) {
        self.discard();
        self.cancel_on_server();
    }

    fn cancel_on_server(&self) {
        if let Some(cancel) = &self.shared().cancel {
            cancel(&self.guard().conn as &dyn std::any::Any);
        }
    }

    /// An operation on this connection ran past `limit` and was abandoned: the connection
    /// is in an unknown state, so it is closed when returned, the breaker counts a failure,
    /// and the database is asked to stop the operation (see
    /// [`PoolBuilder::cancel_with`](crate::PoolBuilder::cancel_with)).
    pub fn report_operation_timeout(&mut self, limit: Duration) {
        self.report_connection_failure(&format!(
            "operation timed out after {}ms",
            limit.as_millis()
        ));
        self.cancel_on_server();
    }

    pub(crate) fn report_connection_failure(&mut self, text: &str) {
        self.discard();
        self.shared().set_last_error(text);
        self.shared().record_failure();
    }
}

impl<M: ManageConnection> Deref for PooledConnection<M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &self.guard().conn
    }
}

impl<M: ManageConnection> DerefMut for PooledConnection<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self.guard_mut().conn
    }
}

impl<M: ManageConnection> fmt::Debug for PooledConnection<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConnection")
            .field("pool", &self.shared().name)
            .field("held_for", &self.held_for())
            .finish_non_exhaustive()
    }
}

impl<M: ManageConnection> Drop for PooledConnection<M> {
    fn drop(&mut self) {
        if self.in_flight {
            self.abandon_operation();
        }
        // Works on the connection in place, then gives it to a waiting checkout or back to bb8.
        let checked_out_at = self.checked_out_at;
        let leak_id = self.leak_id;
        let guard = self.guard_mut();
        let now = guard.meta.shared.clock.now();
        guard.meta.last_used = now;
        // A session that needs a reset stays out of the pool (and in use) until it is
        // clean; one the pool closes anyway (its lifetime is over, a forced recycle) is not
        // worth the round trip.
        let (reset, park) = match ResetHooks::<M::Connection>::of(&guard.meta.shared) {
            Some(hooks)
                // The session check first: a few atomics, and almost always clean, so the
                // lifetime check (bb8's `has_broken` makes it again) is seldom repeated.
                if (hooks.on_return)(&guard.conn)
                    && guard.meta.close.is_none()
                    && guard.meta.retire_reason(now).is_none() =>
            {
                (Some(hooks.reset), None)
            }
            // A connection the pool closes anyway need not wait for its driver. The driver
            // check first (a few atomics), so the lifetime check (bb8's
            // `has_broken` makes it again) runs only for connections that would wait.
            Some(hooks) if guard.meta.close.is_none() => (
                None,
                hooks
                    .park
                    .and_then(|park| park(&guard.conn))
                    .filter(|_| guard.meta.retire_reason(now).is_none())
                    .map(|slot| (slot, hooks.on_return, hooks.reset)),
            ),
            _ => (None, None),
        };
        let meta = &mut *guard.meta;
        let shared = &*meta.shared;
        let counters = &shared.counters;
        let held = now.saturating_since(checked_out_at);
        // Overflow connections stay open when they come back (the reaper closes them once
        // idle for the idle timeout): closing them here, as SQLAlchemy's QueuePool does,
        // opens and closes a connection per request under steady load above the base.
        // A connection kept out for a reset or left with its driver is counted back when it
        // goes back to the pool, so every measure of "in use" agrees while it is away.
        if reset.is_none() && park.is_none() {
            counters.count_return();
        }
        if let (Some(id), Some(leaks)) = (leak_id, &shared.leaks) {
            let entry = leaks.entries.lock().remove(&id);
            if let Some(entry) = entry.filter(|e| e.reported) {
                tracing::warn!(
                    parent: &entry.span,
                    pool = %shared.name,
                    held_ms = held.as_millis() as u64,
                    checked_out_at = %entry.location,
                    "connection reported as leaked was returned"
                );
                shared.emit(&PoolEvent::LeakReturned {
                    held,
                    location: entry.location,
                });
            }
        }
        if shared.has_observers() {
            shared.emit(&PoolEvent::Returned { held });
        }
        if let Some(reset) = reset {
            self.start_reset(reset);
        } else if let Some((slot, on_return, reset)) = park {
            self.park(slot, on_return, reset);
        } else if shared.queued.load(std::sync::atomic::Ordering::SeqCst) != 0 {
            // Checkouts wait: to the first of them (see `handoff::give_back`). Otherwise the
            // field's own drop puts it back into bb8, with no move of the guard.
            if let Some(conn) = self.conn.take() {
                crate::handoff::give_back(conn);
            }
        }
    }
}

impl<M: ManageConnection> PooledConnection<M> {
    /// Keeps a connection whose session is not clean out of the pool until it is: a task on
    /// the pool's runtime resets it within the validation timeout, counts the return, and
    /// then gives it back (closed if the reset failed). It is marked for closing
    /// before the task exists, so a task that never runs (the runtime shutting down) closes
    /// it rather than putting it back.
    fn start_reset(&mut self, reset: ResetFn<M::Connection>) {
        if let Some(conn) = self.conn.take() {
            spawn_reset(conn, reset);
        }
    }

    /// Leaves a connection whose driver has work queued with the driver (see [`Park`]),
    /// which releases it after its next run: back to the pool if the session is then clean,
    /// else through a reset. It counts as in use until then.
    fn park(
        &mut self,
        slot: Arc<dyn Park>,
        on_return: fn(&M::Connection) -> bool,
        reset: ResetFn<M::Connection>,
    ) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let release: Release = Box::new(move || {
            if on_return(&conn.conn) {
                spawn_reset(conn, reset);
            } else {
                conn.meta.shared.counters.count_return();
                crate::handoff::give_back(conn);
            }
        });
        if let Err(release) = slot.park(release) {
            release();
        }
    }
}

/// Resets a returned connection's session in a task on the pool's runtime, counts the
/// return, then gives it back (closed if the reset failed). It is marked for closing
/// before the task exists, so a task that never runs (the runtime shutting down) closes it
/// rather than putting it back, and still counts the return.
fn spawn_reset<M: ManageConnection>(
    mut conn: bb8::PooledConnection<'static, Managed<M>>,
    reset: ResetFn<M::Connection>,
) {
    conn.meta.close = Some(CloseReason::Invalid);
    let returned = CountReturn(conn.meta.shared.clone());
    let runtime = returned.0.runtime.clone();
    runtime.spawn(async move {
        let shared = &returned.0;
        let limit = shared.config.validation_timeout;
        let outcome = tokio::time::timeout(limit, reset(&mut conn.conn)).await;
        finish_reset(shared, &mut conn, outcome);
        drop(returned);
        crate::handoff::give_back(conn);
    });
}

/// Counts a return when dropped: when its reset is done, or with a task that never ran.
struct CountReturn(Arc<Shared>);

impl Drop for CountReturn {
    fn drop(&mut self) {
        self.0.counters.count_return();
    }
}

/// What a reset's outcome means for the connection: reusable (its close mark lifted), or
/// closed with a cancel request for whatever it still runs.
pub(crate) fn finish_reset<C: 'static>(
    shared: &Shared,
    conn: &mut Tracked<C>,
    outcome: Result<Result<bool, String>, tokio::time::error::Elapsed>,
) -> bool {
    match outcome {
        Ok(Ok(undone)) => {
            conn.meta.close = None;
            if undone {
                shared.counters.sessions_reset.fetch_add(1, Relaxed);
                tracing::warn!(
                    pool = %shared.name,
                    "connection returned inside a transaction; rolled back before reuse"
                );
            }
            true
        }
        failed => {
            conn.meta.close = Some(CloseReason::Invalid);
            // Whatever still runs on it (a query its borrower abandoned) would run to its
            // end on the server after the close.
            if let Some(cancel) = &shared.cancel {
                cancel(&conn.conn as &dyn std::any::Any);
            }
            match failed {
                Ok(Err(text)) => {
                    let text = shared.scrub(&text);
                    tracing::debug!(pool = %shared.name, error = %text, "session reset failed; connection closed");
                }
                _ => tracing::debug!(
                    pool = %shared.name,
                    timeout_ms = shared.config.validation_timeout.as_millis() as u64,
                    "session reset timed out; connection closed"
                ),
            }
            false
        }
    }
}
