//! State shared by the pool handle, its connections, the wrapped manager and the background
//! tasks: counters, the breaker, the observers, the leak registry.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU64;
use std::panic::{catch_unwind, AssertUnwindSafe, Location};
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicU8,
    Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst},
};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::breaker::{
    Admission, BreakerState, CircuitBreaker, Probe, Transition, FIRST_PROBE_DELAY,
};
use crate::clock::{Clock, Stamp};
use crate::config::PoolConfig;
use crate::error::CheckoutError;
use crate::observer::{CheckoutOutcome, PoolEvent, PoolObserver, UtilizationLevel};
use crate::stats::Counters;
use crate::url::DatabaseUrl;

/// How far utilization must fall below a threshold before the level drops again, so a pool
/// hovering at the threshold does not report every tick.
pub(crate) const HYSTERESIS: f64 = 0.05;

/// See [`Shared::cancel`].
pub(crate) type CancelHook = Arc<dyn Fn(&dyn std::any::Any) + Send + Sync>;

/// Connect failures that end within this of one already counted are the same event.
pub(crate) const FAILURE_WAVE: Duration = Duration::from_millis(250);

/// See [`Shared::reset`]: a `ResetHooks<C>` for the pool's connection type.
pub(crate) type ResetHook = Arc<dyn std::any::Any + Send + Sync>;

/// How long utilization must stay below a level (minus a 5-point hysteresis band) before
/// the level falls: the level is that of the highest utilization seen in the last one to two
/// windows.
/// Short enough that the level is about now; long enough that a small pool, where one
/// checkout is a large step, does not flip between levels on every request.
pub const LEVEL_WINDOW: Duration = Duration::from_secs(2);

/// When notable things last happened, for a verdict about the recent past.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    pub(crate) timeout: Option<Stamp>,
    /// The start of the exhaustion now going on, or the end of the last one.
    pub(crate) exhausted: Option<Stamp>,
    pub(crate) leak: Option<Stamp>,
    pub(crate) transition: Option<Stamp>,
}

pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    /// Unique to this pool in the process (see [`Pool::id`](crate::Pool::id)).
    pub(crate) id: u64,
    pub(crate) backend: String,
    pub(crate) config: PoolConfig,
    pub(crate) counters: Counters,
    /// The checkout path's clock.
    pub(crate) clock: Clock,
    breaker: Mutex<CircuitBreaker>,
    /// Mirror of the breaker's state and failure count, so the closed fast path takes no lock.
    breaker_state: AtomicU8,
    breaker_failures: AtomicU32,
    /// Woken on every breaker transition: waiting checkouts fail fast when it opens.
    pub(crate) breaker_changed: Notify,
    /// Transitions waiting to be announced, queued under the breaker's lock (so in the order
    /// they happened) and announced outside it by whoever holds `announcing`.
    transitions: Mutex<VecDeque<Transition>>,
    /// Failure events recorded (see [`Shared::record_failure_since`]), and when the last
    /// connect failure was counted.
    failure_events: AtomicU64,
    last_failure_event: Mutex<Option<Instant>>,
    announcing: Mutex<()>,
    /// Set by a failed ping, cleared by the next connect attempt: a run of dead pooled
    /// connections (a database restart kills them all at once) counts as one failure; the
    /// reconnect that follows is what judges the database.
    validation_failure_counted: AtomicBool,
    observers: Vec<Arc<dyn PoolObserver>>,
    /// The last connection error (passwords hidden), and when it happened.
    last_error: Mutex<Option<(String, Stamp)>>,
    pub(crate) generation: AtomicU64,
    level: AtomicU8,
    /// The highest in-use count at or above the warn threshold since the level watcher last
    /// looked (see [`LEVEL_WINDOW`]).
    pub(crate) level_peak: AtomicU64,
    /// Woken when the level rises, so the watcher starts looking.
    pub(crate) level_raised: Notify,
    pub(crate) recent: Mutex<Recent>,
    pub(crate) monitor_status: AtomicU8,
    pub(crate) closing: AtomicBool,
    pub(crate) top_up: tokio::sync::Mutex<()>,
    pub(crate) leaks: Option<LeakRegistry>,
    url: Option<DatabaseUrl>,
    /// Asks the database to stop what a connection runs (PostgreSQL: a cancel request), for
    /// an operation given up on; the connection is handed over as `&dyn Any`.
    pub(crate) cancel: Option<CancelHook>,
    /// Cleans a returned connection's session (PostgreSQL: rolls back an open transaction).
    pub(crate) reset: Option<ResetHook>,
    /// The queue of waiting checkouts (a `handoff::Queue` of the pool's connection type).
    pub(crate) queue: crate::handoff::AnyQueue,
    /// Entries in `queue`, including those of checkouts that have given up since (skipped
    /// when reached). Every return reads it, without the queue's lock.
    pub(crate) queued: std::sync::atomic::AtomicUsize,
    /// The runtime the pool was built on, for the tasks it spawns from synchronous code
    /// (a reset on return), which must not depend on the borrower's runtime.
    pub(crate) runtime: tokio::runtime::Handle,
    /// The smallest in-use count at or above the warn threshold (an integer compare on the
    /// checkout path instead of a division).
    warn_in_use: u64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

pub(crate) struct LeakRegistry {
    pub(crate) threshold: Duration,
    next_id: AtomicU64,
    pub(crate) entries: Mutex<HashMap<NonZeroU64, LeakEntry>>,
}

pub(crate) struct LeakEntry {
    pub(crate) since: Stamp,
    pub(crate) location: &'static Location<'static>,
    pub(crate) span: tracing::Span,
    /// Each observer's [`PoolObserver::checkout_context`], in observer order; `None` when
    /// none kept anything (no allocation).
    pub(crate) contexts: Option<Box<[ObserverContext]>>,
    pub(crate) reported: bool,
}

pub(crate) type ObserverContext = Option<Box<dyn std::any::Any + Send + Sync>>;

impl Shared {
    /// Registers a checkout with the leak registry (when leak detection is on).
    #[inline]
    pub(crate) fn register_leak(
        &self,
        location: &'static Location<'static>,
        since: Stamp,
    ) -> Option<NonZeroU64> {
        let leaks = self.leaks.as_ref()?;
        Some(self.register_leak_in(leaks, location, since))
    }

    fn register_leak_in(
        &self,
        leaks: &LeakRegistry,
        location: &'static Location<'static>,
        since: Stamp,
    ) -> NonZeroU64 {
        let id = NonZeroU64::MIN.saturating_add(leaks.next_id.fetch_add(1, Relaxed));
        let mut contexts = None;
        for (i, observer) in self.observers.iter().enumerate() {
            let captured = catch_unwind(AssertUnwindSafe(|| observer.checkout_context(&self.name)))
                .ok()
                .flatten();
            if let Some(captured) = captured {
                let all = contexts.get_or_insert_with(|| {
                    (0..self.observers.len())
                        .map(|_| None)
                        .collect::<Box<[_]>>()
                });
                all[i] = Some(captured);
            }
        }
        let entry = LeakEntry {
            since,
            location,
            span: tracing::Span::current(),
            contexts,
            reported: false,
        };
        leaks.entries.lock().insert(id, entry);
        id
    }

    /// Records `location` as where the connection under `id` is used from.
    pub(crate) fn relocate_leak(&self, id: NonZeroU64, location: &'static Location<'static>) {
        if let Some(leaks) = &self.leaks {
            if let Some(entry) = leaks.entries.lock().get_mut(&id) {
                entry.location = location;
            }
        }
    }

    /// Tells each observer of a suspected leak, with what it kept at checkout.
    pub(crate) fn emit_leak(
        &self,
        held: Duration,
        location: &'static Location<'static>,
        span: &tracing::Span,
        contexts: Option<&[ObserverContext]>,
    ) {
        for (i, observer) in self.observers.iter().enumerate() {
            let context = contexts
                .and_then(|all| all.get(i))
                .and_then(|c| c.as_deref());
            let event = PoolEvent::LeakSuspected {
                held,
                location,
                span,
                context,
            };
            if catch_unwind(AssertUnwindSafe(|| observer.on_event(&self.name, &event))).is_err() {
                tracing::error!(pool = %self.name, "a pool observer panicked; event dropped");
            }
        }
    }
}

impl Shared {
    pub(crate) fn new(
        name: String,
        backend: String,
        config: PoolConfig,
        observers: Vec<Arc<dyn PoolObserver>>,
        cancel: Option<CancelHook>,
        reset: Option<ResetHook>,
        queue: crate::handoff::AnyQueue,
    ) -> Self {
        let breaker = CircuitBreaker::new(config.breaker.clone());
        let leaks = config.leak_threshold.map(|threshold| LeakRegistry {
            threshold,
            next_id: AtomicU64::new(0),
            entries: Mutex::new(HashMap::new()),
        });
        let warn_in_use =
            (config.warn_utilization * f64::from(config.max_size().max(1)) - 1e-9).ceil() as u64;
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Shared {
            warn_in_use,
            id: NEXT_ID.fetch_add(1, Relaxed),
            name: name.into(),
            backend,
            url: config.database_url.clone(),
            cancel,
            reset,
            queue,
            queued: std::sync::atomic::AtomicUsize::new(0),
            runtime: tokio::runtime::Handle::current(),
            breaker_state: AtomicU8::new(breaker.state().to_u8()),
            breaker: Mutex::new(breaker),
            breaker_failures: AtomicU32::new(0),
            breaker_changed: Notify::new(),
            transitions: Mutex::new(VecDeque::new()),
            failure_events: AtomicU64::new(0),
            last_failure_event: Mutex::new(None),
            announcing: Mutex::new(()),
            validation_failure_counted: AtomicBool::new(false),
            config,
            counters: Counters::default(),
            clock: Clock::new(),
            observers,
            last_error: Mutex::new(None),
            generation: AtomicU64::new(0),
            level: AtomicU8::new(0),
            level_peak: AtomicU64::new(0),
            level_raised: Notify::new(),
            recent: Mutex::new(Recent::default()),
            monitor_status: AtomicU8::new(0),
            closing: AtomicBool::new(false),
            top_up: tokio::sync::Mutex::new(()),
            leaks,
        }
    }

    /// Hands `event` to every observer; a panicking observer is logged, never propagated.
    #[inline]
    pub(crate) fn emit(&self, event: &PoolEvent<'_>) {
        for observer in &self.observers {
            if catch_unwind(AssertUnwindSafe(|| observer.on_event(&self.name, event))).is_err() {
                tracing::error!(pool = %self.name, "a pool observer panicked; event dropped");
            }
        }
    }

    pub(crate) fn has_observers(&self) -> bool {
        !self.observers.is_empty()
    }

    pub(crate) fn scrub(&self, text: &str) -> String {
        match &self.url {
            Some(url) => url.scrub(text),
            None => text.to_owned(),
        }
    }

    /// Stores `text` (passwords hidden) as the last error and returns the stored text.
    pub(crate) fn set_last_error(&self, text: &str) -> String {
        let text = self.scrub(text);
        *self.last_error.lock() = Some((text.clone(), self.clock.now()));
        text
    }

    /// The last connection error and how long ago it happened.
    pub(crate) fn last_error_aged(&self) -> (Option<String>, Option<Duration>) {
        match &*self.last_error.lock() {
            Some((text, at)) => (
                Some(text.clone()),
                Some(self.clock.now().saturating_since(*at)),
            ),
            None => (None, None),
        }
    }

    pub(crate) fn breaker_state(&self) -> BreakerState {
        BreakerState::from_u8(self.breaker_state.load(Relaxed))
    }

    /// Asks the breaker whether a checkout may proceed.
    #[inline]
    pub(crate) fn admit(&self) -> Result<(), CheckoutError> {
        let state = self.breaker_state.load(Relaxed);
        if state == BreakerState::Closed.to_u8() || state == BreakerState::Disabled.to_u8() {
            return Ok(());
        }
        self.admit_slow()
    }

    #[cold]
    fn admit_slow(&self) -> Result<(), CheckoutError> {
        match self.locked(|b| (b.admit(Instant::now().into_std()), None)) {
            Admission::Allowed => Ok(()),
            Admission::Rejected { retry_after } => Err(self.reject(retry_after)),
        }
    }

    /// A checkout turned away: counted, reported, returned as the error.
    pub(crate) fn reject(&self, retry_after: Duration) -> CheckoutError {
        self.counters.rejected.fetch_add(1, Relaxed);
        self.emit(&PoolEvent::Checkout {
            waited: Duration::ZERO,
            outcome: CheckoutOutcome::CircuitOpen,
        });
        let (last_error, last_error_age) = self.last_error_aged();
        CheckoutError::CircuitOpen {
            pool: self.name.clone(),
            retry_after,
            last_error,
            last_error_age,
        }
    }

    /// While open (or half-open, or forced open), waiting checkouts give up at once:
    /// nothing will come for them.
    pub(crate) fn open_retry_after(&self) -> Option<Duration> {
        match self.breaker_state() {
            BreakerState::Open | BreakerState::HalfOpen => Some(
                self.breaker
                    .lock()
                    .next_probe_in(Instant::now().into_std())
                    .unwrap_or_default()
                    .max(FIRST_PROBE_DELAY),
            ),
            BreakerState::ForcedOpen => Some(self.config.breaker.recovery_timeout),
            _ => None,
        }
    }

    /// Whether the pool may open connections for callers (only while closed or disabled;
    /// while open, only the recovery probes connect).
    pub(crate) fn connect_allowed(&self) -> bool {
        matches!(
            self.breaker_state(),
            BreakerState::Closed | BreakerState::Disabled
        )
    }

    /// Failure events recorded so far: read before a connect, passed to
    /// [`Shared::record_failure_since`] when it fails.
    pub(crate) fn failure_epoch(&self) -> u64 {
        self.failure_events.load(Acquire)
    }

    /// A connect that started at `epoch` failed. Attempts that fail together (a wave of
    /// parallel connects at start-up or in a top-up) are one failure event: an attempt
    /// counts unless another was counted since it started and less than [`FAILURE_WAVE`]
    /// ago. So attempts one after another count one each, and so do overlapping ones that end
    /// apart (connects timing out one by one). `fatal` (a wrong password, a missing database)
    /// always counts and opens the breaker at once.
    pub(crate) fn record_failure_since(&self, epoch: u64, fatal: bool) {
        let now = Instant::now();
        self.with_breaker(|b| {
            let mut last = self.last_failure_event.lock();
            let events = self.failure_events.load(Acquire);
            let together = events != epoch
                && last.is_some_and(|at| now.saturating_duration_since(at) < FAILURE_WAVE);
            if together && !fatal {
                return None;
            }
            self.failure_events.store(events + 1, Release);
            *last = Some(now);
            if fatal {
                b.on_fatal_failure(now.into_std())
            } else {
                b.on_failure(now.into_std())
            }
        });
    }

    pub(crate) fn record_success(&self) {
        // Closed with no failures counted (almost always): nothing to clear, no lock.
        if self.breaker_failures.load(Relaxed) != 0 {
            self.with_breaker(|b| {
                b.on_success();
                None
            });
        }
    }

    /// A failure event with no start to compare (a classified operation error, a timed-out
    /// operation, a failed validation).
    pub(crate) fn record_failure(&self) {
        self.failure_events.fetch_add(1, AcqRel);
        self.with_breaker(|b| b.on_failure(Instant::now().into_std()));
    }

    /// Called after every connect attempt, whatever its outcome.
    pub(crate) fn connect_attempted(&self) {
        self.validation_failure_counted.store(false, Relaxed);
    }

    pub(crate) fn record_validation_failure(&self) {
        if !self.validation_failure_counted.swap(true, Relaxed) {
            self.record_failure();
        }
    }

    /// The next recovery probe, if one is due; else how long until one may be (`None`:
    /// the breaker is not waiting for probes).
    pub(crate) fn next_probe(&self) -> Result<Probe, Option<Duration>> {
        let now = Instant::now().into_std();
        let mut breaker = self.breaker.lock();
        match breaker.start_probe(now) {
            Some(probe) => Ok(probe),
            None => Err(breaker.next_probe_in(now)),
        }
    }

    /// A recovery probe's outcome.
    pub(crate) fn probe_done(&self, probe: Probe, reached: bool) {
        self.with_breaker(|b| b.on_probe(probe, reached, Instant::now().into_std()));
    }

    /// Runs `f` on the breaker and announces the transition if there was one.
    pub(crate) fn with_breaker(&self, f: impl FnOnce(&mut CircuitBreaker) -> Option<Transition>) {
        self.locked(|b| ((), f(b)));
    }

    /// Runs `f` on the breaker under its lock. Still under the lock, the lock-free mirrors
    /// that checkouts read (state, failure count) are set from the breaker itself and a
    /// transition is queued, so neither can land out of order; the queue is announced (logs,
    /// observers, waiters) after the lock is released.
    fn locked<R>(&self, f: impl FnOnce(&mut CircuitBreaker) -> (R, Option<Transition>)) -> R {
        let result = {
            let mut breaker = self.breaker.lock();
            let (result, transition) = f(&mut breaker);
            self.breaker_failures
                .store(breaker.consecutive_failures(), Relaxed);
            self.breaker_state.store(breaker.state().to_u8(), Relaxed);
            if let Some(t) = transition {
                self.transitions.lock().push_back(t);
            }
            result
        };
        self.announce();
        result
    }

    /// Announces queued transitions in order. One thread announces at a time; a thread that
    /// finds another announcing leaves its transition to it, and the announcer looks again
    /// after letting go, so none is left behind. A transition caused by an observer while it
    /// is being told of another is announced after it.
    fn announce(&self) {
        loop {
            let Some(announcing) = self.announcing.try_lock() else {
                return;
            };
            loop {
                let next = self.transitions.lock().pop_front();
                match next {
                    Some(t) => self.on_transition(t),
                    None => break,
                }
            }
            drop(announcing);
            if self.transitions.lock().is_empty() {
                return;
            }
        }
    }

    pub(crate) fn breaker_snapshot(&self) -> (BreakerState, u32, u64, Option<Duration>) {
        let breaker = self.breaker.lock();
        (
            breaker.state(),
            breaker.consecutive_failures(),
            breaker.transitions(),
            breaker.next_probe_in(Instant::now().into_std()),
        )
    }

    fn on_transition(&self, t: Transition) {
        self.recent.lock().transition = Some(self.clock.now());
        if t.to == BreakerState::Open {
            self.counters.breaker_opened.fetch_add(1, Relaxed);
        }
        match t.to {
            BreakerState::Open | BreakerState::ForcedOpen => tracing::error!(
                pool = %self.name,
                from = t.from.as_str(),
                to = t.to.as_str(),
                reason = t.reason.as_str(),
                consecutive_failures = t.consecutive_failures,
                max_probe_interval_s = self.config.breaker.recovery_timeout.as_secs_f64(),
                "circuit breaker opened: checkouts fail fast while the pool probes the database"
            ),
            _ => tracing::warn!(
                pool = %self.name,
                from = t.from.as_str(),
                to = t.to.as_str(),
                reason = t.reason.as_str(),
                consecutive_failures = t.consecutive_failures,
                "circuit breaker changed state"
            ),
        }
        self.emit(&PoolEvent::BreakerTransition(t));
        // Checkouts are turned away in every state but closed (and disabled).
        if !matches!(t.to, BreakerState::Closed | BreakerState::Disabled) {
            self.queue.turn_away(self);
        }
        self.breaker_changed.notify_waiters();
    }

    pub(crate) fn level(&self) -> UtilizationLevel {
        UtilizationLevel::from_u8(self.level.load(Relaxed))
    }

    /// The level for `utilization`, given the current one: rising takes the threshold,
    /// falling takes the threshold minus [`HYSTERESIS`].
    pub(crate) fn level_for(
        &self,
        utilization: f64,
        current: UtilizationLevel,
    ) -> UtilizationLevel {
        let (warn, critical) = (
            self.config.warn_utilization,
            self.config.critical_utilization,
        );
        let band = |threshold: f64, level: UtilizationLevel| {
            if current >= level {
                threshold - HYSTERESIS
            } else {
                threshold
            }
        };
        if utilization >= band(critical, UtilizationLevel::Critical) {
            UtilizationLevel::Critical
        } else if utilization >= band(warn, UtilizationLevel::Warning) {
            UtilizationLevel::Warning
        } else {
            UtilizationLevel::Normal
        }
    }

    /// On checkout, at or above the warn threshold (`in_use` counts this checkout): a rise
    /// is reported at once, so a spike is never missed; the peak is kept for the level
    /// watcher, which reports the fall. A checkout that takes the last connection while
    /// others wait starts an exhaustion episode (however the pool came to be full).
    pub(crate) fn check_rise(&self, in_use: u64) {
        if in_use < self.warn_in_use {
            return;
        }
        self.check_rise_slow(in_use);
    }

    #[cold]
    fn check_rise_slow(&self, in_use: u64) {
        let max = self.config.max_size().max(1);
        if in_use >= u64::from(max) && self.counters.pending.load(Relaxed) > 0 {
            self.exhaustion_started();
        }
        self.level_peak.fetch_max(in_use, Relaxed);
        let utilization = in_use as f64 / f64::from(max);
        let current = self.level();
        let next = self.level_for(utilization, current);
        if next > current {
            self.set_level(current, next, utilization);
            self.level_raised.notify_one();
        }
    }

    /// Every connection is in use and a checkout waits: a new episode unless one is going on.
    /// Starts and ends are decided under one lock, each re-reading the waiters there, so a
    /// start racing the last waiter's departure cannot leave an episode going on with nobody
    /// waiting (nor an end miss a waiter that arrived meanwhile).
    pub(crate) fn exhaustion_started(&self) {
        let mut recent = self.recent.lock();
        let counters = &self.counters;
        if counters.pending.load(SeqCst) > 0 && counters.exhausted.swap(1, SeqCst) == 0 {
            counters.exhaustion_episodes.fetch_add(1, Relaxed);
            recent.exhausted = Some(self.clock.now());
        }
    }

    /// With nobody waiting any more, the episode going on, if any, is over.
    #[inline]
    pub(crate) fn exhaustion_may_end(&self) {
        let counters = &self.counters;
        if counters.exhausted.load(SeqCst) != 0 {
            self.exhaustion_ended();
        }
    }

    #[cold]
    fn exhaustion_ended(&self) {
        let mut recent = self.recent.lock();
        let counters = &self.counters;
        if counters.pending.load(SeqCst) == 0 && counters.exhausted.swap(0, SeqCst) != 0 {
            recent.exhausted = Some(self.clock.now());
        }
    }

    /// One look of the level watcher: the level of the highest utilization since the last
    /// look (or now, if higher) replaces a higher level; a rise is left to checkouts.
    pub(crate) fn level_look(&self) {
        let in_use = self.counters.in_use();
        let peak = self.level_peak.swap(in_use, Relaxed).max(in_use);
        let utilization = peak as f64 / f64::from(self.config.max_size().max(1));
        let current = self.level();
        let next = self.level_for(utilization, current);
        if next < current {
            let max = f64::from(self.config.max_size().max(1));
            self.set_level(current, next, in_use as f64 / max);
            // A checkout that reached a level while this look was lowering it saw the old
            // level and did not raise it: look once more.
            let in_use = self.counters.in_use();
            let peak = self.level_peak.load(Relaxed).max(in_use);
            let again = self.level_for(peak as f64 / max, next);
            if again > next {
                self.set_level(next, again, peak as f64 / max);
            }
        }
    }

    /// When a checkout last timed out, the pool was last exhausted, a leak was last
    /// reported and the breaker last changed state, as ages.
    pub(crate) fn recent_ages(&self) -> [Option<Duration>; 4] {
        let now = self.clock.now();
        let recent = self.recent.lock();
        let exhausted_now = self.counters.exhausted.load(Relaxed) != 0;
        let age = |at: Option<Stamp>| at.map(|at| now.saturating_since(at));
        [
            age(recent.timeout),
            if exhausted_now {
                Some(Duration::ZERO)
            } else {
                age(recent.exhausted)
            },
            age(recent.leak),
            age(recent.transition),
        ]
    }

    pub(crate) fn set_level(&self, from: UtilizationLevel, to: UtilizationLevel, utilization: f64) {
        if self
            .level
            .compare_exchange(from as u8, to as u8, Relaxed, Relaxed)
            .is_err()
        {
            return;
        }
        let pct = utilization * 100.0;
        match to {
            UtilizationLevel::Critical => tracing::error!(
                pool = %self.name,
                utilization = pct,
                threshold = self.config.critical_utilization * 100.0,
                "connection pool utilization is critical"
            ),
            UtilizationLevel::Warning if from < to => tracing::warn!(
                pool = %self.name,
                utilization = pct,
                threshold = self.config.warn_utilization * 100.0,
                "connection pool utilization is high"
            ),
            _ => tracing::info!(
                pool = %self.name,
                utilization = pct,
                level = to.as_str(),
                "connection pool utilization recovered"
            ),
        }
        self.emit(&PoolEvent::UtilizationChanged {
            from,
            to,
            utilization,
        });
    }
}
