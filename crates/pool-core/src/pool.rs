//! The pool handle: checkout, `run`, stats, recycling and breaker administration.

use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bb8::ManageConnection;

use crate::breaker::BreakerState;
use crate::builder::PoolBuilder;
use crate::clock::Stamp;
use crate::connection::{Managed, PooledConnection, Tracked, Verdict};
use crate::error::{CheckoutError, ConnectError, PoolSnapshot, RunError};
use crate::handoff::{Given, Lent, Queue};
use crate::observer::{CheckoutOutcome, CloseReason, PoolEvent};
use crate::shared::Shared;
use crate::stats::{BreakerStats, MonitorStatus, PoolStats};

pub(crate) type Classify<E> = Arc<dyn Fn(&E) -> bool + Send + Sync>;

/// A connection pool: bb8 underneath, with SQLAlchemy-style sizing, a circuit breaker,
/// recycling, leak detection, a utilization monitor and complete stats.
///
/// Cheap to clone: clones share one pool. The background monitor stops when the last clone
/// is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use pool_core::{PoolBuilder, PoolConfig};
///
/// let pool = PoolBuilder::postgres()
///     .config(PoolConfig::from_env()?)
///     .build_postgres()?;
/// let conn = pool.get().await?;
/// let row = conn.query_one("select 1::int4", &[]).await?;
/// assert_eq!(row.get::<_, i32>(0), 1);
/// # Ok(()) }
/// ```
pub struct Pool<M: ManageConnection> {
    pub(crate) inner: Arc<PoolInner<M>>,
}

pub(crate) struct PoolInner<M: ManageConnection> {
    pub(crate) bb8: bb8::Pool<Managed<M>>,
    pub(crate) shared: Arc<Shared>,
    /// The manager bb8 holds, the same one (validation, pings and top-ups go through it).
    pub(crate) managed: Managed<M>,
    pub(crate) classify: Classify<M::Error>,
}

impl<M: ManageConnection> PoolInner<M> {
    /// Walks the idle connections once: each is taken (a ready, synchronous step), and
    /// those for which `retire` names a reason are closed when put back. Used for forced
    /// recycling, the idle reaper and, without a reaper, for retiring idle connections past
    /// their lifetime.
    ///
    /// bb8's idle queue is a stack (LIFO): a connection put back at once would be the next
    /// one taken, so all are held until the walk ends and then put back oldest first, which
    /// keeps the stack's order. bb8 is never asked for more than it has idle: a `get` on an
    /// empty queue would open a connection.
    pub(crate) fn walk_idle(
        &self,
        mut retire: impl FnMut(&Tracked<M::Connection>) -> Option<CloseReason>,
    ) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut taken = Vec::new();
        while self.bb8.state().idle_connections > 0 {
            let mut get = pin!(self.bb8.get());
            match get.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(mut conn)) => {
                    if let Some(reason) = retire(&conn) {
                        conn.meta.close.get_or_insert(reason);
                    }
                    taken.push(conn);
                }
                _ => break,
            }
        }
        while let Some(conn) = taken.pop() {
            drop(conn);
        }
    }

    /// [`PoolInner::top_up`] in the background.
    /// Adds a connection opened outside a checkout (a top-up's, a recovery probe's) to the
    /// pool. One that finds the pool full (load filled it meanwhile) is closed as surplus;
    /// one bb8 refuses as broken was marked with its reason by `has_broken`.
    pub(crate) fn add(&self, conn: Tracked<M::Connection>) {
        if let Err(bb8::AddError::NoCapacity(mut conn)) = self.bb8.add(conn) {
            conn.meta.close.get_or_insert(CloseReason::Overflow);
        }
    }

    pub(crate) fn spawn_top_up(self: &Arc<Self>) {
        let inner = self.clone();
        tokio::spawn(async move { inner.top_up().await });
    }

    /// Opens connections until `base_size` are open (SQLAlchemy keeps its base the same way:
    /// by total, not by idle count; bb8's `min_idle` would keep `base_size` idle *beyond* the
    /// ones in use, and every return would then close one as overflow).
    pub(crate) async fn top_up(&self) -> Result<(), ConnectError<M::Error>> {
        let shared = &self.shared;
        // One top-up at a time; a caller that arrives meanwhile waits for it and then finds
        // nothing missing.
        let _one_at_a_time = shared.top_up.lock().await;
        let missing = shared
            .config
            .base_size
            .saturating_sub(self.bb8.state().connections);
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..missing {
            let managed = self.managed.clone();
            connects.spawn(async move { managed.connect().await.map(|c| Unclaimed(Some(c))) });
        }
        let mut first_error = None;
        while let Some(joined) = connects.join_next().await {
            match joined {
                Ok(Ok(conn)) => {
                    self.add(conn.claim());
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {}
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl<M: ManageConnection> Drop for PoolInner<M> {
    fn drop(&mut self) {
        self.shared.closing.store(true, Relaxed);
        self.shared
            .monitor_status
            .store(MonitorStatus::Stopped as u8, Relaxed);
        // Wakes the recovery prober and the level watcher, which then see `closing` and end.
        self.shared.breaker_changed.notify_waiters();
        self.shared.level_raised.notify_one();
    }
}

impl<M: ManageConnection> Clone for Pool<M> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

impl<M: ManageConnection> fmt::Debug for Pool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.bb8.state();
        f.debug_struct("Pool")
            .field("name", &self.inner.shared.name)
            .field("backend", &self.inner.shared.backend)
            .field("size", &state.connections)
            .field("idle", &state.idle_connections)
            .finish_non_exhaustive()
    }
}

/// A reference to a [`Pool`] that does not keep it alive (for telemetry callbacks and
/// registries that must not outlive the pool).
pub struct WeakPool<M: ManageConnection> {
    inner: std::sync::Weak<PoolInner<M>>,
}

impl<M: ManageConnection> WeakPool<M> {
    /// The pool, if it still exists.
    pub fn upgrade(&self) -> Option<Pool<M>> {
        self.inner.upgrade().map(|inner| Pool { inner })
    }
}

impl<M: ManageConnection> Clone for WeakPool<M> {
    fn clone(&self) -> Self {
        WeakPool {
            inner: self.inner.clone(),
        }
    }
}

impl<M: ManageConnection> fmt::Debug for WeakPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakPool").finish_non_exhaustive()
    }
}

/// What [`Pool::force_recycle`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecycleReport {
    /// Idle connections closed at once.
    pub idle_closed: u64,
    /// Checked-out connections that will be closed when returned.
    pub checked_out: u64,
}

impl<M: ManageConnection> Pool<M> {
    /// A builder with the development profile's defaults.
    pub fn builder() -> PoolBuilder<M> {
        PoolBuilder::new()
    }

    /// Opens connections until `base_size` are open, and waits for them. The pool does this
    /// in the background when it is built and on every monitor tick; await it at start-up to
    /// find out at once whether the database is reachable.
    ///
    /// # Errors
    ///
    /// The first connection error (the others are counted in the stats).
    pub async fn warm_up(&self) -> Result<(), ConnectError<M::Error>> {
        self.inner.top_up().await
    }

    /// A reference that does not keep the pool alive.
    pub fn downgrade(&self) -> WeakPool<M> {
        WeakPool {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.inner.shared.name
    }

    /// A number no other pool built in this process has: clones of one pool share it, two
    /// pools built with the same name do not (sinks use it to refuse a second pool under a
    /// name already taken).
    pub fn id(&self) -> u64 {
        self.inner.shared.id
    }

    /// The configuration the pool was built with.
    pub fn config(&self) -> &crate::PoolConfig {
        &self.inner.shared.config
    }

    /// Checks out a connection, waiting in a FIFO queue up to the checkout timeout.
    ///
    /// The queue is strict: while checkouts wait, a returned connection goes to the one that
    /// has waited longest, and a checkout that arrives meanwhile (a client's next request)
    /// queues behind them instead of taking it.
    ///
    /// Fails at once with [`CheckoutError::CircuitOpen`] while the breaker is open, and
    /// waiting checkouts fail the moment it opens. Dropping the future at any point leaves
    /// nothing behind: no slot is leaked and the pending count falls.
    ///
    /// The caller's location is recorded for leak reports.
    ///
    /// # Errors
    ///
    /// [`CheckoutError::Timeout`] (with the pool's state and the last connection error) or
    /// [`CheckoutError::CircuitOpen`] (with `retry_after`).
    #[track_caller]
    pub fn get(
        &self,
    ) -> impl Future<Output = Result<PooledConnection<M>, CheckoutError>> + Send + '_ {
        self.get_at(Location::caller())
    }

    /// [`Pool::get`] recording `location` instead of the caller's, for wrappers that check
    /// out on behalf of their own caller (a request extension, a job runner).
    ///
    /// # Errors
    ///
    /// As [`Pool::get`].
    pub fn get_at(
        &self,
        location: &'static Location<'static>,
    ) -> impl Future<Output = Result<PooledConnection<M>, CheckoutError>> + Send + '_ {
        self.checkout(location)
    }

    fn checkout(&self, location: &'static Location<'static>) -> Checkout<'_, M> {
        Checkout {
            pool: self,
            location,
            slow: None,
        }
    }

    #[inline]
    fn hand_out(
        &self,
        conn: bb8::PooledConnection<'static, Managed<M>>,
        now: Stamp,
        waited: Duration,
        // Not queued for a connection (a pre-ping or a reset may still have taken time).
        direct: bool,
        location: &'static Location<'static>,
    ) -> PooledConnection<M> {
        let shared = &self.inner.shared;
        let counters = &shared.counters;
        let in_use = counters.count_checkout();
        if !direct {
            counters.checkouts_waited.fetch_add(1, Relaxed);
        }
        if !waited.is_zero() {
            counters.record_wait(waited);
        }
        shared.check_rise(in_use);
        if shared.has_observers() {
            shared.emit(&PoolEvent::Checkout {
                waited,
                outcome: CheckoutOutcome::Ok,
            });
        }
        let leak_id = shared.register_leak(location, now);
        PooledConnection::new(conn, now, leak_id)
    }

    /// The slow path's start: counted as pending (and the exhaustion episode started, if
    /// every connection is out), and the deadline.
    fn begin_slow(&self, start: Stamp) -> (Waiting<'_>, tokio::time::Instant) {
        let shared = &*self.inner.shared;
        let waiting = Waiting::new(shared);
        // Exhausted if every connection is out as this one starts to wait; or later, when a
        // checkout takes the last one while this one still waits (see `check_rise`).
        if shared.counters.in_use() >= u64::from(shared.config.max_size()) {
            shared.exhaustion_started();
        }
        let deadline = tokio::time::Instant::now()
            + shared
                .config
                .checkout_timeout
                .saturating_sub(shared.clock.now().saturating_since(start));
        (waiting, deadline)
    }

    /// A checkout that found no usable idle connection: waits its turn in the queue.
    async fn checkout_queued(
        &self,
        start: Stamp,
        location: &'static Location<'static>,
    ) -> Result<PooledConnection<M>, CheckoutError> {
        let (waiting, deadline) = self.begin_slow(start);
        let result = self.wait_turn(deadline).await;
        self.finish_slow(result, waiting, start, false, location)
    }

    /// A checkout whose idle connection needs a ping or a session reset first: validates
    /// it, and waits its turn in the queue if it fails. Its own future, so that waiting
    /// checkouts do not carry room for the candidate.
    async fn checkout_candidate(
        &self,
        start: Stamp,
        location: &'static Location<'static>,
        mut conn: Lent<M>,
    ) -> Result<PooledConnection<M>, CheckoutError> {
        let (waiting, deadline) = self.begin_slow(start);
        let now = self.inner.shared.clock.now();
        let validation =
            tokio::time::timeout_at(deadline, self.inner.managed.validate(&mut conn, now));
        let (result, queued) = match validation.await {
            Ok(true) => (Ok(conn), false),
            // Condemned: dropping it closes it. Wait for another.
            Ok(false) => {
                drop(conn);
                (Box::pin(self.wait_turn(deadline)).await, true)
            }
            // Condemned until validated, so closed when dropped here.
            Err(_elapsed) => (Err(None), false),
        };
        self.finish_slow(result, waiting, start, !queued, location)
    }

    /// Waits in the queue (turned away if the breaker opens meanwhile), validates what it
    /// gets, and goes on with another connection until `deadline`. `Err(None)`: timed out.
    async fn wait_turn(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<Lent<M>, Option<CheckoutError>> {
        let shared = &*self.inner.shared;
        let managed = &self.inner.managed;
        // A checkout that had its turn and got a connection it could not use keeps its
        // place: it joins the queue again at the front.
        let mut front = false;
        loop {
            // Turned away before joining, if the breaker has opened (a failed validation
            // may have opened it): no pump is started for it.
            if let Some(retry_after) = shared.open_retry_after() {
                return Err(Some(shared.reject(retry_after)));
            }
            let next = self.next_connection(std::mem::replace(&mut front, true));
            let mut conn = match tokio::time::timeout_at(deadline, next).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(rejected)) => return Err(Some(rejected)),
                Err(_elapsed) => return Err(None),
            };
            let now = shared.clock.now();
            match managed.verdict(&mut conn, now) {
                Verdict::Valid => return Ok(conn),
                // Condemned (reason set): dropping it closes it. Try another.
                Verdict::Retired => continue,
                Verdict::Ping | Verdict::Reset => {}
            }
            // Boxed: rare, and it would otherwise enlarge every waiting checkout.
            let validation = Box::pin(tokio::time::timeout_at(
                deadline,
                managed.validate(&mut conn, now),
            ));
            match validation.await {
                Ok(true) => return Ok(conn),
                // Condemned: dropping it closes it. Try another.
                Ok(false) => continue,
                // Condemned until validated, so closed when dropped here.
                Err(_elapsed) => return Err(None),
            }
        }
    }

    /// The slow path's end: the connection handed out, or the timeout counted and
    /// reported (with the pool's state and the last connection error, if recent).
    fn finish_slow(
        &self,
        result: Result<Lent<M>, Option<CheckoutError>>,
        mut waiting: Waiting<'_>,
        start: Stamp,
        direct: bool,
        location: &'static Location<'static>,
    ) -> Result<PooledConnection<M>, CheckoutError> {
        let shared = &*self.inner.shared;
        let counters = &shared.counters;
        let now = shared.clock.now();
        let waited = now.saturating_since(start);
        match result {
            Ok(conn) => {
                waiting.done();
                Ok(self.hand_out(conn, now, waited, direct, location))
            }
            Err(Some(rejected)) => Err(rejected),
            Err(None) => {
                let state = self.inner.bb8.state();
                let snapshot = PoolSnapshot {
                    total: state.connections,
                    in_use: state.connections - state.idle_connections,
                    idle: state.idle_connections,
                    waiting: counters.pending.load(Relaxed),
                    max: shared.config.max_size(),
                };
                waiting.done();
                counters.timeouts.fetch_add(1, Relaxed);
                shared.recent.lock().timeout = Some(now);
                counters.record_wait(waited);
                let (last_error, last_error_age) = match shared.last_error_aged() {
                    (Some(text), Some(age)) if age <= crate::error::RECENT_ERROR => {
                        (Some(text), Some(age))
                    }
                    _ => (None, None),
                };
                shared.emit(&PoolEvent::Checkout {
                    waited,
                    outcome: CheckoutOutcome::Timeout,
                });
                tracing::warn!(
                    pool = %shared.name,
                    waited_ms = waited.as_millis() as u64,
                    total = snapshot.total,
                    in_use = snapshot.in_use,
                    idle = snapshot.idle,
                    waiting = snapshot.waiting,
                    "checkout timed out"
                );
                Err(CheckoutError::Timeout {
                    pool: shared.name.clone(),
                    waited,
                    snapshot,
                    last_error,
                    last_error_age,
                })
            }
        }
    }

    /// A turn in the pool's queue (at the front for a checkout that keeps its place), with
    /// the pumps it may need started: its connection, unless the breaker turns it away.
    fn next_connection(&self, front: bool) -> NextConnection<'_, M> {
        let inner = &*self.inner;
        let queue = Queue::<M>::of(&inner.shared);
        let given = queue.join(&inner.shared, front);
        queue.pump(&inner.bb8, &inner.shared);
        NextConnection {
            inner,
            given,
            polled: false,
        }
    }

    /// Checks out a connection, runs `op` on it within the breaker's operation timeout, and
    /// reports the outcome to the breaker: connection-class errors and timeouts count as
    /// failures (and the connection is closed rather than reused); other errors, such as a
    /// unique violation, do not.
    ///
    /// ```no_run
    /// # async fn demo(pool: pool_core::PostgresPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let n: i64 = pool
    ///     .run(|conn| Box::pin(async move {
    ///         conn.query_one("select count(*) from orders", &[]).await.map(|r| r.get(0))
    ///     }))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`RunError::Checkout`], [`RunError::TimedOut`] or [`RunError::Operation`].
    #[track_caller]
    pub fn run<'p, T, F>(
        &'p self,
        op: F,
    ) -> impl Future<Output = Result<T, RunError<M::Error>>> + Send + 'p
    where
        T: Send + 'p,
        F: for<'c> FnOnce(
                &'c mut M::Connection,
            )
                -> Pin<Box<dyn Future<Output = Result<T, M::Error>> + Send + 'c>>
            + Send
            + 'p,
    {
        let location = Location::caller();
        async move {
            let mut conn = self.checkout(location).await.map_err(RunError::Checkout)?;
            let limit = self.inner.shared.config.breaker.operation_timeout;
            // If this future is dropped mid-operation (its caller gave up), the connection
            // may be mid-query: it is closed on return, not reused.
            conn.operation_started();
            let outcome = tokio::time::timeout(limit, op(&mut conn)).await;
            conn.done();
            match outcome {
                Ok(Ok(value)) => {
                    self.inner.shared.record_success();
                    Ok(value)
                }
                Ok(Err(e)) => {
                    self.report_error(&mut conn, &e);
                    Err(RunError::Operation(e))
                }
                Err(_) => {
                    conn.report_operation_timeout(limit);
                    Err(RunError::TimedOut(limit))
                }
            }
        }
    }

    /// Tells the breaker about an error an operation got on a pooled connection. A
    /// connection-class error counts as a failure and the connection is closed on return;
    /// returns whether it counted.
    pub fn report_error(&self, conn: &mut PooledConnection<M>, error: &M::Error) -> bool {
        let counts = (self.inner.classify)(error);
        if counts {
            conn.report_connection_failure(&(self.inner.managed.describe)(error));
        }
        counts
    }

    /// Whether `error` is a connection-class error (counts toward the breaker).
    pub fn is_connection_error(&self, error: &M::Error) -> bool {
        (self.inner.classify)(error)
    }

    /// Closes every idle connection now and every checked-out one when it is returned (after
    /// a failover or a credential rotation). The pool then re-opens up to its base size.
    pub fn force_recycle(&self) -> RecycleReport {
        let shared = &self.inner.shared;
        let closed_before = shared.counters.closed[CloseReason::Forced.index()].load(Relaxed);
        shared.generation.fetch_add(1, Relaxed);
        let checked_out = shared.counters.in_use();
        self.inner.walk_idle(|_| Some(CloseReason::Forced));
        let idle_closed =
            shared.counters.closed[CloseReason::Forced.index()].load(Relaxed) - closed_before;
        tracing::warn!(
            pool = %shared.name,
            idle_closed,
            checked_out,
            "forced recycle: idle connections closed, checked-out ones close on return"
        );
        shared.emit(&PoolEvent::ForcedRecycle {
            idle_closed,
            checked_out,
        });
        self.inner.spawn_top_up();
        RecycleReport {
            idle_closed,
            checked_out,
        }
    }

    /// The breaker's current state.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.shared.breaker_state()
    }

    /// Opens the breaker until [`Pool::reset_breaker`] (maintenance windows, drills).
    pub fn force_open_breaker(&self) {
        self.inner.shared.with_breaker(|b| b.force_open());
    }

    /// Closes the breaker and clears its counts.
    pub fn reset_breaker(&self) {
        self.inner.shared.with_breaker(|b| b.reset());
    }

    /// Turns the breaker off; [`Pool::reset_breaker`] turns it on again.
    pub fn disable_breaker(&self) {
        self.inner.shared.with_breaker(|b| b.disable());
    }

    /// A consistent snapshot of the pool.
    pub fn stats(&self) -> PoolStats {
        let shared = &self.inner.shared;
        let c = &shared.counters;
        let state = self.inner.bb8.state();
        let config = &shared.config;
        let max = config.max_size();
        let in_use = state.connections - state.idle_connections;
        let pending = c.pending.load(Relaxed);
        let (breaker_state, failures, transitions, until) = shared.breaker_snapshot();
        // One count of rejections, the same here, in the breaker's report and in the metric:
        // checkouts turned away at admission and waiting ones failed when it opened.
        let rejected = c.rejected.load(Relaxed);
        let (last_error, last_error_age) = shared.last_error_aged();
        let [last_timeout_age, last_exhausted_age, last_leak_age, last_transition_age] =
            shared.recent_ages();
        let leaks_outstanding = shared.leaks.as_ref().map_or(0, |l| {
            l.entries.lock().values().filter(|e| e.reported).count() as u64
        });
        PoolStats {
            name: shared.name.to_string(),
            backend: shared.backend.clone(),
            max_size: max,
            base_size: config.base_size,
            max_overflow: config.max_overflow,
            size: state.connections,
            in_use,
            idle: state.idle_connections,
            overflow_in_use: state.connections.saturating_sub(config.base_size),
            pending,
            utilization: f64::from(in_use) / f64::from(max.max(1)),
            utilization_level: shared.level(),
            exhausted: in_use >= max && pending > 0,
            exhaustion_episodes: c.exhaustion_episodes.load(Relaxed),
            last_exhausted_age,
            checkouts_direct: c
                .checkouts
                .load(Relaxed)
                .saturating_sub(c.checkouts_waited.load(Relaxed)),
            checkouts_waited: c.checkouts_waited.load(Relaxed),
            checkout_timeouts: c.timeouts.load(Relaxed),
            last_timeout_age,
            checkouts_rejected: rejected,
            wait_time_total: Duration::from_micros(c.wait_total_us.load(Relaxed)),
            wait_time_max_recent: c.wait_max_recent(),
            connections_created: c.created.load(Relaxed),
            connection_failures: c.create_failures.load(Relaxed),
            connections_closed: c.closed(),
            health_checks_ok: c.health_ok.load(Relaxed),
            health_checks_failed: c.health_failed.load(Relaxed),
            leaks_suspected: c.leaks.load(Relaxed),
            sessions_reset: c.sessions_reset.load(Relaxed),
            leaks_outstanding,
            last_leak_age,
            breaker: BreakerStats {
                state: breaker_state,
                consecutive_failures: failures,
                transitions,
                last_transition_age,
                opened: c.breaker_opened.load(Relaxed),
                rejected,
                next_probe_in: until,
            },
            last_error,
            last_error_age,
            monitor: MonitorStatus::from_u8(shared.monitor_status.load(Relaxed)),
        }
    }
}

type SlowCheckout<'a, M> =
    Pin<Box<dyn Future<Output = Result<PooledConnection<M>, CheckoutError>> + Send + 'a>>;

/// The future of [`Pool::get`]. Its first poll tries the common case, an idle connection
/// used within the bypass window, in place: bb8's checkout future lives on the stack for
/// that one poll, so this future stays a few words (it is created and moved by every
/// checkout, and nested in the futures of whoever awaits it). Anything else (a wait, a
/// pre-ping, a reset, a retired connection) continues in the slow path, boxed.
struct Checkout<'a, M: ManageConnection> {
    pool: &'a Pool<M>,
    location: &'static Location<'static>,
    slow: Option<SlowCheckout<'a, M>>,
}

impl<M: ManageConnection> Future for Checkout<'_, M> {
    type Output = Result<PooledConnection<M>, CheckoutError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(slow) = &mut self.slow {
            return slow.as_mut().poll(cx);
        }
        let (pool, location) = (self.pool, self.location);
        let shared = &pool.inner.shared;
        shared.admit()?;
        let start = shared.clock.now();
        // Checkouts queued (this one goes behind them), or every open connection out (the
        // pool under load): the queue at once. A stale read only sends a checkout down the
        // other path, which also works.
        let counters = &shared.counters;
        let candidate = if shared.queued.load(Relaxed) > 0
            || counters.open.load(Relaxed) <= counters.in_use()
        {
            None
        } else {
            let mut get = pin!(pool.inner.bb8.get_owned());
            match get.as_mut().poll(cx) {
                Poll::Ready(Ok(mut conn)) => match pool.inner.managed.verdict(&mut conn, start) {
                    Verdict::Valid => {
                        return Poll::Ready(Ok(pool.hand_out(
                            conn,
                            start,
                            Duration::ZERO,
                            true,
                            location,
                        )))
                    }
                    Verdict::Ping | Verdict::Reset => Some(conn),
                    Verdict::Retired => None,
                },
                _ => None,
            }
            // A `get` still pending ends here (nothing was idle after all): the queue's
            // pumps wait in bb8 instead. bb8 may have started opening a connection for this
            // `get`; that one joins bb8's idle list, where a pump or the next checkout takes
            // it.
        };
        let mut slow: SlowCheckout<'_, M> = match candidate {
            None => Box::pin(pool.checkout_queued(start, location)),
            Some(conn) => Box::pin(pool.checkout_candidate(start, location, conn)),
        };
        let polled = slow.as_mut().poll(cx);
        self.slow = Some(slow);
        polled
    }
}

/// The future of `next_connection`: a waiting checkout holds its place in the queue and
/// nothing else, which is most of what a waiter costs in memory. The breaker turns queued
/// checkouts away through the queue itself (see `handoff::Queue::turn_away`).
struct NextConnection<'a, M: ManageConnection> {
    inner: &'a PoolInner<M>,
    given: tokio::sync::oneshot::Receiver<Given<M>>,
    polled: bool,
}

impl<M: ManageConnection> Future for NextConnection<'_, M> {
    type Output = Result<Lent<M>, CheckoutError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let this = &mut *self;
            let inner = this.inner;
            let shared = &*inner.shared;
            // Also covers a checkout that joined just after the breaker turned the queue
            // away: the state it opened with is visible here.
            if let Some(retry_after) = shared.open_retry_after() {
                return Poll::Ready(Err(shared.reject(retry_after)));
            }
            if !std::mem::replace(&mut this.polled, true) {
                // The breaker may have opened and closed again between the join and here,
                // with the join's pumps refused while it was open: ask again.
                Queue::<M>::of(shared).pump(&inner.bb8, &inner.shared);
            }
            let given = std::task::ready!(Pin::new(&mut this.given).poll(cx));
            match given.ok().and_then(Given::claim) {
                Some(conn) => return Poll::Ready(Ok(conn)),
                // Turned away by a breaker that has closed again since (looked at above),
                // or, not expected, an entry dropped unsent: back in the queue. At the
                // back, so that checkouts turned away together keep their order.
                None => {
                    this.given = Queue::<M>::of(shared).join(shared, false);
                    this.polled = false;
                }
            }
        }
    }
}

/// A connection a top-up opened, until the top-up takes it: if the top-up is abandoned
/// first (a `warm_up` whose caller gave up), the connection is closed as surplus, like one
/// that load had overtaken, not counted as broken.
struct Unclaimed<C>(Option<Tracked<C>>);

impl<C> Unclaimed<C> {
    fn claim(mut self) -> Tracked<C> {
        match self.0.take() {
            Some(conn) => conn,
            None => unreachable!("an unclaimed connection is claimed once"),
        }
    }
}

impl<C> Drop for Unclaimed<C> {
    fn drop(&mut self) {
        if let Some(conn) = &mut self.0 {
            conn.meta.close.get_or_insert(CloseReason::Overflow);
        }
    }
}

/// Counts a checkout as pending while it waits; if the future is dropped mid-wait the count
/// still falls.
struct Waiting<'a> {
    shared: &'a Shared,
    finished: bool,
}

impl<'a> Waiting<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.counters.pending.fetch_add(1, Relaxed);
        Waiting {
            shared,
            finished: false,
        }
    }

    fn done(&mut self) {
        self.finished = true;
        self.stop();
    }

    /// The last waiter to stop waiting ends the exhaustion episode going on, if any.
    fn stop(&self) {
        if self.shared.counters.pending.fetch_sub(1, Relaxed) == 1 {
            self.shared.exhaustion_may_end();
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.stop();
        }
    }
}
