//! Pool behaviour on an in-memory connection manager and paused Tokio time: the rules that
//! depend on time (bypass window, lifetimes, leak threshold, monitor ticks, breaker recovery)
//! and on faults a real server cannot be told to produce on cue (a ping that fails, a connect
//! refused N times exactly). The same behaviours run against PostgreSQL in `postgres.rs`.

mod common;

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use common::{LogCapture, MemManager, Recorded, Recorder};
use pool_core::{
    BreakerConfig, BreakerState, CheckoutError, CloseReason, MonitorStatus, Pool, PoolBuilder,
    PoolEvent, PoolObserver, RunError, UtilizationLevel, FIRST_PROBE_DELAY, LEVEL_WINDOW,
};

/// A pool of `base` connections and `overflow` more on the in-memory manager, with the
/// suite's other settings ([`builder`]).
fn sized(base: u32, overflow: u32) -> (Pool<MemManager>, Arc<common::MemState>) {
    let (manager, state) = MemManager::new();
    let pool = builder()
        .base_size(base)
        .max_overflow(overflow)
        .build(manager)
        .unwrap();
    (pool, state)
}

fn builder() -> PoolBuilder<MemManager> {
    Pool::builder()
        .name("mem")
        .base_size(2)
        .max_overflow(3)
        .checkout_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(1))
        .health_interval(Duration::from_secs(3600))
}

#[tokio::test(start_paused = true)]
async fn a_checkout_that_waits_opens_one_connection_not_two() {
    let (manager, state) = MemManager::new();
    let pool = builder().base_size(1).build(manager).unwrap();
    pool.warm_up().await.unwrap();
    let _held = pool.get().await.unwrap();
    // No idle connection: the checkout waits while bb8 opens one for it. Its first attempt
    // must not stay queued beside the second, or bb8 opens a connection for each.
    let _second = pool.get().await.unwrap();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let s = pool.stats();
    assert_eq!(state.connects.load(SeqCst), 2);
    assert_eq!((s.size, s.in_use, s.idle), (2, 2, 0));
}

#[tokio::test(start_paused = true)]
async fn overflow_connections_linger_until_idle_for_the_idle_timeout_then_the_base_remains() {
    let (manager, state) = MemManager::new();
    let recorder = Recorder::new();
    let pool = builder()
        .idle_timeout(Duration::from_secs(60))
        .observer(recorder.clone())
        .build(manager)
        .unwrap();
    pool.warm_up().await.unwrap();
    assert_eq!(pool.stats().idle, 2, "the base is opened up front");

    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(pool.get().await.unwrap());
    }
    let s = pool.stats();
    assert_eq!((s.size, s.in_use, s.idle, s.max_size), (5, 5, 0, 5));
    assert_eq!(s.overflow_in_use, 3);
    assert_eq!(s.utilization, 1.0);
    drop(held);
    let s = pool.stats();
    assert_eq!(
        (s.size, s.in_use, s.idle),
        (5, 0, 5),
        "overflow stays open on return"
    );
    assert_eq!(s.connections_closed.total(), 0);

    // Steady load above the base within the idle timeout reuses them: nothing is opened.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let burst: Vec<_> = futures_join(&pool, 5).await;
        drop(burst);
    }
    assert_eq!(
        state.connects.load(SeqCst),
        5,
        "no connection opened under steady load"
    );

    // At rest: back to the base within the idle timeout plus the reaper's period.
    tokio::time::sleep(Duration::from_secs(60 + 5)).await;
    let s = pool.stats();
    assert_eq!((s.size, s.in_use, s.idle), (2, 0, 2));
    assert_eq!(s.connections_closed.idle_timeout, 3);
    assert_eq!(s.connections_closed.total(), 3);
    assert_eq!(s.connections_created, 5);
    assert_eq!(
        recorder.count(|e| *e == Recorded::Closed(CloseReason::IdleTimeout)),
        3
    );
    assert_eq!(recorder.count(|e| *e == Recorded::Returned), 55);
    // And stays there.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(pool.stats().size, 2);
    assert_eq!(state.connects.load(SeqCst), 5);
}

/// `n` checkouts held at once.
async fn futures_join(
    pool: &Pool<MemManager>,
    n: usize,
) -> Vec<pool_core::PooledConnection<MemManager>> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.get().await.unwrap());
    }
    held
}

#[tokio::test(start_paused = true)]
async fn after_a_burst_light_load_lets_the_pool_shrink_to_its_base() {
    let (manager, state) = MemManager::new();
    let pool = builder()
        .idle_timeout(Duration::from_secs(60))
        .build(manager)
        .unwrap();
    drop(futures_join(&pool, 5).await);
    assert_eq!(pool.stats().size, 5);
    // One request every 10 s: the most recently used connection serves it each time, so
    // the others stay idle and those above the base are reaped.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(pool.get().await.unwrap());
    }
    let s = pool.stats();
    assert_eq!((s.size, s.idle), (2, 2), "{s:?}");
    assert_eq!(s.connections_closed.idle_timeout, 3);
    assert_eq!(state.connects.load(SeqCst), 5, "nothing reopened");
}

#[tokio::test(start_paused = true)]
async fn without_an_idle_timeout_overflow_connections_stay() {
    let (manager, _state) = MemManager::new();
    let pool = builder().idle_timeout(None).build(manager).unwrap();
    drop(futures_join(&pool, 5).await);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(pool.stats().size, 5);
    assert_eq!(pool.stats().connections_closed.total(), 0);
}

#[tokio::test(start_paused = true)]
async fn pings_are_skipped_for_connections_used_within_the_bypass_window() {
    let (pool, state) = sized(1, 0);
    drop(pool.get().await.unwrap());
    let pings_after_first = state.pings.load(SeqCst);
    drop(pool.get().await.unwrap());
    assert_eq!(
        state.pings.load(SeqCst),
        pings_after_first,
        "returned 0 ms ago: no ping"
    );
    tokio::time::advance(Duration::from_millis(499)).await;
    drop(pool.get().await.unwrap());
    assert_eq!(
        state.pings.load(SeqCst),
        pings_after_first,
        "499 ms: still no ping"
    );
    tokio::time::advance(Duration::from_millis(500)).await;
    drop(pool.get().await.unwrap());
    assert_eq!(
        state.pings.load(SeqCst),
        pings_after_first + 1,
        "500 ms: one ping"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_ping_replaces_the_connection_without_an_error() {
    let (manager, state) = MemManager::new();
    let pool = builder()
        .base_size(1)
        .max_overflow(0)
        .validation_bypass(Duration::ZERO)
        .build(manager)
        .unwrap();
    let first = pool.get().await.unwrap().id;
    state.broken_upto.store(first, SeqCst);
    let replacement = pool.get().await.unwrap().id;
    assert_ne!(first, replacement);
    let s = pool.stats();
    assert_eq!(s.connections_closed.invalid, 1);
    assert_eq!(s.breaker.state, BreakerState::Closed);
    assert_eq!(s.last_error.as_deref(), Some("MemError(\"ping failed\")"));
}

#[tokio::test(start_paused = true)]
async fn a_ping_that_never_answers_is_cut_off_by_the_validation_timeout_and_the_connection_closed()
{
    let (manager, state) = MemManager::new();
    let pool = builder()
        .base_size(1)
        .max_overflow(0)
        .validation_bypass(Duration::ZERO)
        .validation_timeout(Duration::from_secs(2))
        .build(manager)
        .unwrap();
    let first = pool.get().await.unwrap().id;
    state.hung_upto.store(first, SeqCst);
    let start = tokio::time::Instant::now();
    let conn = pool.get().await.unwrap();
    assert_ne!(conn.id, first, "a fresh connection replaced the hung one");
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(2),
        "after the validation timeout"
    );
    drop(conn);
    let s = pool.stats();
    assert_eq!(s.connections_closed.invalid, 1);
    assert_eq!(
        s.last_error.as_deref(),
        Some("validation timed out after 2000ms")
    );
}

#[tokio::test(start_paused = true)]
async fn a_checkout_abandoned_during_its_ping_closes_the_connection_instead_of_returning_it() {
    let (manager, state) = MemManager::new();
    let pool = builder()
        .base_size(1)
        .max_overflow(0)
        .validation_bypass(Duration::ZERO)
        .validation_timeout(Duration::from_secs(10))
        .build(manager)
        .unwrap();
    let first = pool.get().await.unwrap().id;
    state.hung_upto.store(first, SeqCst);
    // The caller gives up after 1 s, mid-ping.
    let gave_up = tokio::time::timeout(Duration::from_secs(1), pool.get()).await;
    assert!(gave_up.is_err());
    let s = pool.stats();
    assert_eq!(s.connections_closed.invalid, 1, "closed, not put back");
    assert_eq!(s.in_use, 0);
    let next = pool.get().await.unwrap();
    assert_ne!(next.id, first);
}

#[tokio::test(start_paused = true)]
async fn run_abandoned_mid_operation_closes_the_connection() {
    let (pool, _state) = sized(1, 0);
    let first = pool.get().await.unwrap().id;
    // The caller gives up after 1 s on an operation that never ends.
    let gave_up = tokio::time::timeout(
        Duration::from_secs(1),
        pool.run(|_conn| Box::pin(std::future::pending::<Result<(), common::MemError>>())),
    )
    .await;
    assert!(gave_up.is_err());
    let s = pool.stats();
    assert_eq!(
        s.connections_closed.broken, 1,
        "closed, not handed back busy"
    );
    assert_eq!(
        s.breaker.consecutive_failures, 0,
        "the caller gave up; no database failure"
    );
    assert_ne!(pool.get().await.unwrap().id, first);
    // A completed run leaves its connection reusable.
    let id = pool
        .run(|conn| Box::pin(async move { Ok::<_, common::MemError>(conn.id) }))
        .await
        .unwrap();
    assert_eq!(pool.get().await.unwrap().id, id);
}

#[tokio::test(start_paused = true)]
async fn lifetimes_end_between_97_5_and_100_percent_of_the_maximum() {
    let (manager, _state) = MemManager::new();
    let pool = builder()
        .base_size(1)
        .max_overflow(0)
        .max_lifetime(Duration::from_secs(1000))
        .build(manager)
        .unwrap();
    let id = pool.get().await.unwrap().id;
    tokio::time::advance(Duration::from_millis(974_900)).await;
    assert_eq!(pool.get().await.unwrap().id, id, "97.49 %: still alive");
    tokio::time::advance(Duration::from_millis(25_100)).await;
    let next = pool.get().await.unwrap().id;
    assert_ne!(next, id, "100 %: replaced");
    assert_eq!(pool.stats().connections_closed.max_lifetime, 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_thousand_waiting_checkouts_leaves_nothing_pending() {
    let (pool, _state) = sized(1, 1);
    let held = [pool.get().await.unwrap(), pool.get().await.unwrap()];

    let mut waiting: Vec<Pin<Box<dyn Future<Output = _> + Send + '_>>> =
        (0..1000).map(|_| Box::pin(pool.get()) as _).collect();
    for fut in &mut waiting {
        let polled = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_pending())).await;
        assert!(polled, "the pool is exhausted, so every checkout waits");
    }
    let s = pool.stats();
    assert_eq!(s.pending, 1000);
    assert!(s.exhausted);
    assert_eq!(s.exhaustion_episodes, 1);
    drop(waiting);

    let s = pool.stats();
    assert_eq!(s.pending, 0);
    assert_eq!((s.size, s.in_use, s.idle), (2, 2, 0));
    drop(held);
    let s = pool.stats();
    assert_eq!((s.size, s.in_use, s.idle), (2, 0, 2));
    assert_eq!(s.checkout_timeouts, 0);
    // The pool still serves at once.
    drop(pool.get().await.unwrap());
}

/// Polls `fut` once; `true` if it is still pending.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> bool {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx).is_pending())).await
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn waiting_checkouts_are_served_first_come_first_served() {
    let (pool, _state) = sized(1, 0);
    pool.warm_up().await.unwrap();
    let held = pool.get().await.unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let (waiter, order) = (pool.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let conn = waiter.get().await.unwrap();
            order.lock().unwrap().push(i);
            tokio::task::yield_now().await;
            drop(conn);
        }));
        // Queued before the next one starts.
        for _ in 0..10 {
            if pool.stats().pending == i + 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.stats().pending, i + 1);
    }
    // The borrower gives its connection back and at once asks again, as a client's next
    // request does: the connection goes to the first in the queue, and the borrower is
    // sixth, not first.
    drop(held);
    let again = pool.get().await.unwrap();
    order.lock().unwrap().push(5);
    drop(again);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4, 5]);
    let s = pool.stats();
    assert_eq!((s.size, s.in_use, s.idle, s.pending), (1, 0, 1, 0));
    assert_eq!((s.checkouts_direct, s.checkouts_waited), (1, 6));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_connection_handed_to_a_checkout_that_gives_up_goes_to_the_next_one() {
    let (pool, state) = sized(1, 0);
    pool.warm_up().await.unwrap();
    let held = pool.get().await.unwrap();
    let mut first = Box::pin(pool.get());
    let mut second = Box::pin(pool.get());
    assert!(poll_once(&mut first).await);
    assert!(poll_once(&mut second).await);
    // The connection is handed to the first, which gives up before it is polled again.
    drop(held);
    drop(first);
    let conn = tokio::time::timeout(Duration::from_secs(1), second)
        .await
        .expect("the second checkout gets the connection")
        .unwrap();
    assert_eq!(pool.stats().in_use, 1);
    drop(conn);
    let s = pool.stats();
    assert_eq!((s.size, s.in_use, s.idle, s.pending), (1, 0, 1, 0));
    assert_eq!(s.checkout_timeouts, 0);
    assert_eq!(state.connects.load(SeqCst), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_opened_breaker_wakes_queued_checkouts_and_turns_them_away_at_once() {
    let (pool, state) = sized(1, 0);
    pool.warm_up().await.unwrap();
    let held = pool.get().await.unwrap();
    // Tasks of their own, so that only the pool can wake them: left waiting, they would
    // time out (paused time jumps to the checkout timeout once every task is idle).
    let queued: Vec<_> = (0..5)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(drop) })
        })
        .collect();
    for _ in 0..100 {
        if pool.stats().pending == 5 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(pool.stats().pending, 5);

    let start = tokio::time::Instant::now();
    pool.force_open_breaker();
    for task in queued {
        let err = task.await.unwrap().unwrap_err();
        assert!(err.is_circuit_open(), "{err}");
    }
    assert_eq!(start.elapsed(), Duration::ZERO, "turned away at once");
    let s = pool.stats();
    assert_eq!(s.pending, 0);
    assert_eq!(s.checkouts_rejected, 5);
    assert_eq!(s.checkout_timeouts, 0);

    // Closed again, the pool serves at once from the connection given back.
    pool.reset_breaker();
    drop(held);
    let s = pool.stats();
    assert_eq!((s.size, s.in_use, s.idle, s.pending), (1, 0, 1, 0));
    drop(pool.get().await.unwrap());
    assert_eq!(pool.stats().checkouts_waited, 0);
    assert_eq!(state.connects.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_checkout_timeout_says_how_long_it_waited_and_what_the_pool_looked_like() {
    let (manager, state) = MemManager::new();
    let pool = builder()
        .base_size(1)
        .max_overflow(0)
        .checkout_timeout(Duration::from_millis(1500))
        .build(manager)
        .unwrap();
    let _held = pool.get().await.unwrap();
    state.fail_connect.store(true, SeqCst);
    let err = pool.get().await.unwrap_err();
    let CheckoutError::Timeout {
        waited, snapshot, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*waited, Duration::from_millis(1500));
    assert_eq!(
        (
            snapshot.total,
            snapshot.in_use,
            snapshot.idle,
            snapshot.waiting
        ),
        (1, 1, 0, 1)
    );
    assert_eq!(
        err.to_string(),
        "connection is not available in pool `mem`, request timed out after 1500ms \
         (total=1, active=1, idle=0, waiting=1, max=1)"
    );
    let s = pool.stats();
    assert_eq!(s.checkout_timeouts, 1);
    assert_eq!(s.wait_time_total, Duration::from_millis(1500));
    assert_eq!(s.wait_time_max_recent, Duration::from_millis(1500));
    // Exhaustion is load, not a database failure.
    assert_eq!(s.breaker.consecutive_failures, 0);
}

fn breaker(failures: u32) -> BreakerConfig {
    BreakerConfig {
        failure_threshold: failures,
        recovery_timeout: Duration::from_secs(1),
        success_threshold: 2,
        ..BreakerConfig::default()
    }
}

/// A pool with no base and a breaker that opens on one failure, opened by a checkout whose
/// connect was refused (the manager still refuses); with its state and a recorder.
async fn opened_by_a_refused_connect() -> (Pool<MemManager>, Arc<common::MemState>, Arc<Recorder>) {
    opened_by_a_refused_connect_with(|b| b).await
}

/// [`opened_by_a_refused_connect`] with `adjust` applied to the builder first.
async fn opened_by_a_refused_connect_with(
    adjust: impl FnOnce(PoolBuilder<MemManager>) -> PoolBuilder<MemManager>,
) -> (Pool<MemManager>, Arc<common::MemState>, Arc<Recorder>) {
    let (manager, state) = MemManager::new();
    let recorder = Recorder::new();
    let pool = adjust(builder())
        .base_size(0)
        .breaker(breaker(1))
        .observer(recorder.clone())
        .build(manager)
        .unwrap();
    state.fail_connect.store(true, SeqCst);
    assert!(pool.get().await.unwrap_err().is_circuit_open());
    (pool, state, recorder)
}

/// Waits (on paused time) until the breaker has announced a transition to `to`.
async fn wait_for_state(recorder: &Recorder, to: BreakerState, limit: Duration) {
    recorder
        .wait_for(
            limit,
            |e| matches!(e, Recorded::Breaker { to: t, .. } if *t == to),
        )
        .await;
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_after_the_threshold_and_waiting_checkouts_fail_fast() {
    let (manager, state) = MemManager::new();
    let recorder = Recorder::new();
    let pool = builder()
        .base_size(0)
        .max_overflow(2)
        .checkout_timeout(Duration::from_secs(30))
        .breaker(breaker(3))
        .observer(recorder.clone())
        .build(manager)
        .unwrap();
    state.fail_connect.store(true, SeqCst);

    let start = tokio::time::Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(err.is_circuit_open(), "{err}");
    // bb8 retried the connect with back-off (400 ms, then 800 ms): three failures one after
    // another are three events, and the third opened the breaker, which woke this checkout
    // long before the 30 s checkout timeout.
    assert_eq!(start.elapsed(), Duration::from_millis(1200));
    let s = pool.stats();
    assert_eq!(s.connection_failures, 3);
    assert_eq!(s.breaker.state, BreakerState::Open);
    assert_eq!(s.breaker.next_probe_in, Some(FIRST_PROBE_DELAY));
    assert_eq!(
        s.last_error.as_deref(),
        Some("MemError(\"connection refused\")")
    );

    let err = pool.get().await.unwrap_err();
    let CheckoutError::CircuitOpen {
        retry_after,
        last_error,
        last_error_age,
        ..
    } = &err
    else {
        panic!("expected CircuitOpen")
    };
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(1200),
        "no waiting while open"
    );
    assert_eq!(*retry_after, FIRST_PROBE_DELAY, "until the first probe");
    // The cause travels with the rejection, with its age.
    assert_eq!(
        last_error.as_deref(),
        Some("MemError(\"connection refused\")")
    );
    assert_eq!(*last_error_age, Some(Duration::ZERO));
    assert_eq!(
        err.to_string(),
        "circuit breaker of pool `mem` is open; retry after 0.1s; last connection error (0.0s ago): MemError(\"connection refused\")"
    );
    assert_eq!(pool.stats().checkouts_rejected, 2);

    // Probes run in the background while the database stays down: 100 ms, then 200 ms,
    // 400 ms, 800 ms, then every second (the recovery timeout).
    tokio::time::sleep(Duration::from_millis(5_450)).await;
    let s = pool.stats();
    assert_eq!(s.breaker.state, BreakerState::Open);
    assert_eq!(
        s.connection_failures,
        3 + 7,
        "probes 0.1, 0.3, 0.7, 1.5, 2.5, 3.5 and 4.5 s after it opened"
    );

    state.fail_connect.store(false, SeqCst);
    let back = tokio::time::Instant::now();
    wait_for_state(&recorder, BreakerState::Closed, Duration::from_secs(2)).await;
    assert!(
        back.elapsed() <= Duration::from_secs(1),
        "{:?}",
        back.elapsed()
    );
    use BreakerState::*;
    assert_eq!(
        recorder.transitions(),
        [(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
    );
    // No checkout was a probe (both were turned away), and the probes' connections joined
    // the pool: it serves at once.
    let s = pool.stats();
    assert!(s.idle >= 1 && s.size == s.idle, "{s:?}");
    assert_eq!(s.checkouts_rejected, 2);
    assert_eq!(s.breaker.rejected, 2, "one count of rejections");
    drop(pool.get().await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_while_half_open_reopens_the_breaker_and_probing_goes_on() {
    let (pool, state, recorder) = opened_by_a_refused_connect().await;
    // One probe gets through, the next does not.
    state.fail_after.store(1, SeqCst);
    state.fail_connect.store(false, SeqCst);
    wait_for_state(&recorder, BreakerState::HalfOpen, Duration::from_secs(1)).await;
    recorder
        .wait_for(Duration::from_secs(1), |e| {
            matches!(
                e,
                Recorded::Breaker {
                    from: BreakerState::HalfOpen,
                    to: BreakerState::Open,
                    ..
                }
            )
        })
        .await;
    assert!(pool.get().await.unwrap_err().is_circuit_open());
    state.fail_after.store(0, SeqCst);
    wait_for_state(&recorder, BreakerState::Closed, Duration::from_secs(2)).await;
    use BreakerState::*;
    assert_eq!(
        recorder.transitions(),
        [
            (Closed, Open),
            (Open, HalfOpen),
            (HalfOpen, Open),
            (Open, HalfOpen),
            (HalfOpen, Closed)
        ]
    );
    drop(pool.get().await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn after_outages_of_a_second_a_minute_and_an_hour_the_breaker_closes_within_a_second() {
    for outage in [1, 60, 3600].map(Duration::from_secs) {
        let (manager, state) = MemManager::new();
        let recorder = Recorder::new();
        let pool = builder()
            .base_size(0)
            .health_interval(Duration::from_secs(3600 * 24))
            .breaker(BreakerConfig {
                success_threshold: 3,
                ..breaker(1)
            })
            .observer(recorder.clone())
            .build(manager)
            .unwrap();
        state.fail_connect.store(true, SeqCst);
        assert!(pool.get().await.unwrap_err().is_circuit_open());
        tokio::time::sleep(outage).await;
        let probes = pool.stats().connection_failures - 1;
        state.fail_connect.store(false, SeqCst);
        let back = tokio::time::Instant::now();
        wait_for_state(&recorder, BreakerState::Closed, Duration::from_secs(2)).await;
        let late = back.elapsed();
        assert!(
            late <= Duration::from_secs(1),
            "{outage:?}: closed {late:?} after"
        );
        // One probe a second once the backoff has grown (four in the first 1.5 s).
        assert!(
            probes <= outage.as_secs() + 4,
            "{outage:?}: {probes} probes against the database while it was down"
        );
        println!("outage {outage:?}: {probes} probes while down, closed {late:?} after it ended");
        assert_eq!(
            pool.stats().connections_created,
            3,
            "the three probes' connections"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn connects_that_fail_together_are_one_failure_event() {
    let (manager, state) = MemManager::new();
    let pool = builder()
        .base_size(10)
        .max_overflow(0)
        .breaker(breaker(5))
        .build(manager)
        .unwrap();
    state.connect_ms.store(5, SeqCst);
    state.fail_connect.store(true, SeqCst);
    // Ten connects in parallel, failing together: one event, not ten.
    assert!(pool.warm_up().await.is_err());
    let s = pool.stats();
    assert_eq!(s.connection_failures, 10);
    assert_eq!(s.breaker.state, BreakerState::Closed);
    assert_eq!(s.breaker.consecutive_failures, 1);
    // Attempts one after another still count one each, so a dead database opens it.
    for _ in 0..4 {
        let _ = pool.warm_up().await;
    }
    assert_eq!(pool.stats().breaker.state, BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn connects_that_overlap_but_time_out_apart_each_count() {
    let (manager, state) = MemManager::new();
    let pool = builder()
        .base_size(0)
        .max_overflow(5)
        .checkout_timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(1))
        .breaker(breaker(3))
        .build(manager)
        .unwrap();
    // A host that does not answer: every connect runs into the 1 s connect timeout.
    state.connect_ms.store(60_000, SeqCst);
    // Three checkouts 300 ms apart: their connects overlap, but end 300 ms apart.
    let start = tokio::time::Instant::now();
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let pool = pool.clone();
        waiting.push(tokio::spawn(async move { pool.get().await.map(drop) }));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for w in waiting {
        assert!(w.await.unwrap().unwrap_err().is_circuit_open());
    }
    // Opened when the third timed out (1.6 s), not a connect timeout per event later.
    assert_eq!(start.elapsed(), Duration::from_millis(1_600));
    assert_eq!(pool.stats().breaker.state, BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_probe_refused_for_capacity_has_reached_the_database() {
    let (_pool, state, recorder) =
        opened_by_a_refused_connect_with(|b| b.connect_failures(common::mem_connect_failure)).await;
    // Back, but full: the server answers, so the breaker closes and checkouts wait for a
    // connection instead of being turned away.
    state.fail_connect.store(false, SeqCst);
    state.at_capacity.store(true, SeqCst);
    wait_for_state(&recorder, BreakerState::Closed, Duration::from_secs(2)).await;
}

#[tokio::test(start_paused = true)]
async fn with_no_connection_a_server_at_capacity_fails_checkouts_fast() {
    let (manager, state) = MemManager::new();
    let pool = builder()
        .base_size(0)
        .checkout_timeout(Duration::from_secs(30))
        .connect_failures(common::mem_connect_failure)
        .breaker(breaker(3))
        .build(manager)
        .unwrap();
    state.at_capacity.store(true, SeqCst);
    let start = tokio::time::Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(err.is_circuit_open(), "{err}");
    assert!(err.to_string().contains("too many connections"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "not the checkout timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_panics_is_a_failed_probe_and_probing_goes_on() {
    let (pool, state, recorder) = opened_by_a_refused_connect().await;
    state.fail_connect.store(false, SeqCst);
    state.panic_connect.store(true, SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pool.breaker_state(), BreakerState::Open);
    state.panic_connect.store(false, SeqCst);
    wait_for_state(&recorder, BreakerState::Closed, Duration::from_secs(2)).await;
}

#[tokio::test(start_paused = true)]
async fn a_wrong_password_fails_the_first_checkout_at_once_naming_the_cause() {
    let (manager, state) = MemManager::new();
    let pool = builder()
        .base_size(2)
        .checkout_timeout(Duration::from_secs(30))
        .connect_failures(common::mem_connect_failure)
        .build(manager)
        .unwrap();
    state.wrong_password.store(true, SeqCst);
    let start = tokio::time::Instant::now();
    let err = pool.get().await.unwrap_err();
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no retries, no waiting for a timeout"
    );
    assert!(err.is_circuit_open(), "{err}");
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
}

/// `requests` checkouts at once, each holding its connection for 100 ms; every one must be
/// served.
async fn take_turns(pool: &Pool<MemManager>, requests: usize) {
    let requests: Vec<_> = (0..requests)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let conn = pool.get().await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
                drop(conn);
                Ok::<_, CheckoutError>(())
            })
        })
        .collect();
    for r in requests {
        r.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_password_rotated_under_a_running_pool_leaves_its_connections_serving() {
    let (manager, state) = MemManager::new();
    let pool = builder()
        .base_size(1)
        .max_overflow(3)
        .connect_failures(common::mem_connect_failure)
        .breaker(breaker(2))
        .build(manager)
        .unwrap();
    pool.warm_up().await.unwrap();
    state.wrong_password.store(true, SeqCst);
    take_turns(&pool, 4).await;
    let s = pool.stats();
    assert!(s.connection_failures > 0, "the pool did try to grow");
    assert_eq!(s.breaker.state, BreakerState::Closed);
    assert_eq!(s.checkouts_rejected, 0);
}

#[tokio::test(start_paused = true)]
async fn a_server_at_capacity_is_not_an_outage_the_working_connection_serves_every_request() {
    let (manager, state) = MemManager::new();
    let recorder = Recorder::new();
    let pool = builder()
        .base_size(1)
        .max_overflow(3)
        .checkout_timeout(Duration::from_secs(5))
        .connect_failures(common::mem_connect_failure)
        .breaker(breaker(2))
        .observer(recorder.clone())
        .build(manager)
        .unwrap();
    pool.warm_up().await.unwrap();
    state.at_capacity.store(true, SeqCst);
    // Eight requests at once, each holding the one connection for 100 ms: the pool tries to
    // grow, the server refuses for capacity, and the requests take turns on the one
    // connection instead of being turned away.
    take_turns(&pool, 8).await;
    let s = pool.stats();
    assert!(s.connection_failures > 0, "the pool did try to grow");
    assert_eq!(s.breaker.state, BreakerState::Closed);
    assert_eq!(s.breaker.consecutive_failures, 0);
    assert_eq!(s.checkouts_rejected, 0);
    assert!(recorder.transitions().is_empty());
    assert_eq!(
        s.last_error.as_deref(),
        Some("MemError(\"too many connections\")")
    );
}

#[tokio::test(start_paused = true)]
async fn run_counts_only_connection_class_errors_and_times_out_operations() {
    let (manager, _state) = MemManager::new();
    let pool = builder()
        .breaker(BreakerConfig {
            operation_timeout: Duration::from_secs(2),
            ..breaker(2)
        })
        .classify_errors(|e| e.0 == "connection reset")
        .build(manager)
        .unwrap();
    let user_error = pool
        .run(|_| Box::pin(async { Err::<(), _>(common::MemError("unique violation")) }))
        .await;
    assert!(matches!(user_error, Err(RunError::Operation(_))));
    assert_eq!(pool.stats().breaker.consecutive_failures, 0);

    let slow = pool
        .run(|_| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(())
            })
        })
        .await;
    assert!(matches!(slow, Err(RunError::TimedOut(d)) if d == Duration::from_secs(2)));
    assert_eq!(pool.stats().breaker.consecutive_failures, 1);
    assert_eq!(
        pool.stats().connections_closed.broken,
        1,
        "a timed-out connection is not reused"
    );

    // A connection-class error counts and condemns the connection. (The reconnect for this
    // run succeeded and cleared the earlier timeout: failures must be consecutive.)
    let reset = pool
        .run(|_| Box::pin(async { Err::<(), _>(common::MemError("connection reset")) }))
        .await;
    assert!(matches!(reset, Err(RunError::Operation(_))));
    let s = pool.stats();
    assert_eq!(s.breaker.consecutive_failures, 1);
    assert_eq!(s.connections_closed.broken, 2);
    let mut conn = pool.get().await.unwrap();
    assert!(pool.report_error(&mut conn, &common::MemError("connection reset")));
    assert!(!pool.report_error(&mut conn, &common::MemError("syntax error")));
    drop(conn);
    // The checkout's reconnect cleared the count again; the reported error is the one failure.
    assert_eq!(pool.stats().breaker.consecutive_failures, 1);
    assert_eq!(pool.stats().connections_closed.broken, 3);
    let answer = pool
        .run(|conn| Box::pin(async move { Ok(conn.id + 41) }))
        .await;
    assert!(answer.unwrap() > 41);
}

#[tokio::test(start_paused = true)]
async fn force_recycle_closes_idle_connections_now_and_checked_out_ones_on_return() {
    let (manager, _state) = MemManager::new();
    let recorder = Recorder::new();
    let pool = builder()
        .base_size(2)
        .max_overflow(0)
        .observer(recorder.clone())
        .build(manager)
        .unwrap();
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    let old = [a.id, b.id];
    drop(a);
    let report = pool.force_recycle();
    assert_eq!((report.idle_closed, report.checked_out), (1, 1));
    assert_eq!(pool.stats().connections_closed.forced, 1);
    drop(b);
    assert_eq!(pool.stats().connections_closed.forced, 2);
    let fresh = pool.get().await.unwrap();
    assert!(!old.contains(&fresh.id));
    assert!(recorder.events().contains(&Recorded::Recycle {
        idle_closed: 1,
        checked_out: 1
    }));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_connection_held_past_the_leak_threshold_is_reported_once_with_its_location() {
    let logs = LogCapture::default();
    let _guard = logs.install();
    let (manager, _state) = MemManager::new();
    let recorder = Recorder::new();
    let pool = builder()
        .leak_threshold(Duration::from_secs(2))
        .observer(recorder.clone())
        .build(manager)
        .unwrap();
    let line = line!() + 1;
    let leaked = pool.get().await.unwrap();
    let event = recorder
        .wait_for(Duration::from_secs(10), |e| {
            matches!(e, Recorded::Leak { .. })
        })
        .await;
    let Recorded::Leak { location } = event else {
        unreachable!()
    };
    assert!(location.file().ends_with("pool.rs"), "{location}");
    assert_eq!(location.line(), line);
    // Hold it through many more scans: still one report.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(recorder.count(|e| matches!(e, Recorded::Leak { .. })), 1);
    assert_eq!(pool.stats().leaks_outstanding, 1);
    drop(leaked);
    assert_eq!(
        recorder.count(|e| matches!(e, Recorded::LeakReturned { .. })),
        1
    );
    let s = pool.stats();
    assert_eq!((s.leaks_suspected, s.leaks_outstanding), (1, 0));
    let text = logs.text();
    let warnings: Vec<_> = text
        .lines()
        .filter(|l| l.contains("possible leak"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains(&format!("tests/pool.rs:{line}")),
        "{}",
        warnings[0]
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_monitor_reports_utilization_levels_with_hysteresis() {
    let logs = LogCapture::default();
    let _guard = logs.install();
    let (manager, _state) = MemManager::new();
    let recorder = Recorder::new();
    let pool = builder()
        .base_size(0)
        .max_overflow(20)
        .health_interval(Duration::from_secs(10))
        .observer(recorder.clone())
        .build(manager)
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(pool.get().await.unwrap());
    }
    // 16/20 = 80 %: warning, seen on checkout without waiting for a tick.
    assert_eq!(pool.stats().utilization_level, UtilizationLevel::Warning);
    for _ in 0..3 {
        held.push(pool.get().await.unwrap());
    }
    assert_eq!(pool.stats().utilization_level, UtilizationLevel::Critical);
    held.truncate(18); // 90 %: inside the hysteresis band below 95 %
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(pool.stats().utilization_level, UtilizationLevel::Critical);
    held.truncate(16); // 80 %: below the band, above the warning threshold
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(pool.stats().utilization_level, UtilizationLevel::Warning);
    held.truncate(15); // 75 %: inside the band below 80 %
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(pool.stats().utilization_level, UtilizationLevel::Warning);
    held.clear();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(pool.stats().utilization_level, UtilizationLevel::Normal);

    use UtilizationLevel::*;
    let levels = recorder.levels();
    assert_eq!(
        levels,
        [
            (Normal, Warning),
            (Warning, Critical),
            (Critical, Warning),
            (Warning, Normal)
        ]
    );
    let text = logs.text();
    assert_eq!(text.matches("utilization is high").count(), 1, "{text}");
    assert_eq!(text.matches("utilization is critical").count(), 1, "{text}");
    assert_eq!(text.matches("utilization recovered").count(), 2, "{text}");
}

#[tokio::test(start_paused = true)]
async fn the_monitor_probes_an_idle_pool_and_stops_with_it() {
    let (manager, state) = MemManager::new();
    let recorder = Recorder::new();
    let pool = builder()
        .base_size(1)
        .max_overflow(0)
        .health_interval(Duration::from_secs(5))
        .observer(recorder.clone())
        .build(manager)
        .unwrap();
    drop(pool.get().await.unwrap());
    assert_eq!(pool.stats().monitor, MonitorStatus::Running);
    recorder
        .wait_for(Duration::from_secs(6), |e| *e == Recorded::Health(true))
        .await;
    state.fail_ping.store(true, SeqCst);
    recorder
        .wait_for(Duration::from_secs(6), |e| *e == Recorded::Health(false))
        .await;
    let s = pool.stats();
    assert_eq!((s.health_checks_ok, s.health_checks_failed), (1, 1));
    assert_eq!(s.connections_closed.invalid, 1);

    let weak_state = Arc::downgrade(&state);
    drop(pool);
    drop(state);
    // The monitor holds only a weak reference: once it notices, the manager is freed.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        weak_state.upgrade().is_none(),
        "the pool and its tasks are gone"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_observer_does_not_reach_the_pool() {
    #[derive(Debug)]
    struct Panics;
    impl PoolObserver for Panics {
        fn on_event(&self, _: &str, _: &PoolEvent<'_>) {
            panic!("observer bug");
        }
    }
    let (manager, _state) = MemManager::new();
    let pool = builder().observer(Arc::new(Panics)).build(manager).unwrap();
    drop(pool.get().await.unwrap());
    assert_eq!(
        pool.stats().checkouts_direct + pool.stats().checkouts_waited,
        1
    );
}

#[tokio::test(start_paused = true)]
async fn several_named_pools_live_side_by_side() {
    let (m1, _) = MemManager::new();
    let (m2, _) = MemManager::new();
    let primary = builder().name("primary").build(m1).unwrap();
    let replica = builder().name("replica").base_size(1).build(m2).unwrap();
    let _a = primary.get().await.unwrap();
    let _b = primary.get().await.unwrap();
    let _c = replica.get().await.unwrap();
    assert_eq!((primary.name(), primary.stats().in_use), ("primary", 2));
    assert_eq!((replica.name(), replica.stats().in_use), ("replica", 1));
}

#[tokio::test(start_paused = true)]
async fn stats_serialize_to_json_with_every_field() {
    let (manager, _state) = MemManager::new();
    let pool = builder().build(manager).unwrap();
    pool.warm_up().await.unwrap();
    drop(pool.get().await.unwrap());
    let json = serde_json::to_value(pool.stats()).unwrap();
    let object = json.as_object().unwrap();
    assert!(object.len() >= 29, "{} fields", object.len());
    assert_eq!(json["name"], "mem");
    assert_eq!(json["backend"], "custom");
    assert_eq!(json["in_use"], 0);
    assert_eq!(json["connections_closed"]["overflow"], 0);
    assert_eq!(json["breaker"]["state"], "closed");
    assert_eq!(json["monitor"], "running");
    assert_eq!(json["utilization_level"], "normal");
    assert!(json["wait_time_total_seconds"].is_f64());
    assert!(json["wait_time_max_recent_seconds"].is_f64());
    // Every duration names its unit (present, in seconds, `null` when there is none yet),
    // and none is there under its bare name.
    let durations = [
        "wait_time_total",
        "wait_time_max_recent",
        "last_error_age",
        "last_exhausted_age",
        "last_timeout_age",
        "last_leak_age",
    ];
    for key in durations {
        assert!(
            object.contains_key(&format!("{key}_seconds")),
            "{key}_seconds"
        );
        assert!(!object.contains_key(key), "{key} without its unit");
    }
    let breaker = json["breaker"].as_object().unwrap();
    for key in ["next_probe_in", "last_transition_age"] {
        assert!(
            breaker.contains_key(&format!("{key}_seconds")),
            "{key}_seconds"
        );
        assert!(!breaker.contains_key(key), "{key} without its unit");
    }
    assert!(json["breaker"]["next_probe_in_seconds"].is_null());
    assert!(json["last_error_age_seconds"].is_null());
    assert!(json["last_leak_age_seconds"].is_null());
}

#[tokio::test(start_paused = true)]
async fn the_monitor_retires_idle_connections_past_their_lifetime_and_restores_the_base() {
    let (manager, state) = MemManager::new();
    let pool = builder()
        .base_size(1)
        .max_overflow(0)
        .max_lifetime(Duration::from_secs(100))
        .health_interval(Duration::from_secs(10))
        .build(manager)
        .unwrap();
    pool.warm_up().await.unwrap();
    tokio::time::sleep(Duration::from_secs(105)).await;
    let s = pool.stats();
    assert_eq!(s.connections_closed.max_lifetime, 1);
    assert_eq!((s.size, s.idle), (1, 1), "the base was re-opened");
    assert_eq!(state.connects.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn the_monitor_retires_every_expired_idle_connection_while_others_are_in_use() {
    let (manager, state) = MemManager::new();
    let pool = builder()
        .base_size(3)
        .max_overflow(0)
        .max_lifetime(Duration::from_secs(100))
        .health_interval(Duration::from_secs(10))
        .build(manager)
        .unwrap();
    pool.warm_up().await.unwrap();
    let held = pool.get().await.unwrap();
    // Past every jittered lifetime; the monitor ticks at 10 s intervals meanwhile.
    tokio::time::sleep(Duration::from_secs(105)).await;
    let s = pool.stats();
    assert_eq!(
        s.connections_closed.max_lifetime, 2,
        "both idle connections were closed without waiting for a checkout"
    );
    assert_eq!((s.size, s.in_use, s.idle), (3, 1, 2), "and replaced");
    assert_eq!(state.connects.load(SeqCst), 5);
    drop(held);
    let s = pool.stats();
    assert_eq!(
        s.connections_closed.max_lifetime, 3,
        "the held one on its return"
    );
}

/// Several threads fail, succeed, force open, reset and disable the breaker at once; once
/// they stop, the state checkouts act on is the breaker's real state, and the transitions
/// observers were told of form one unbroken chain ending there.
#[test]
fn the_published_breaker_state_is_the_real_one_after_racing_transitions() {
    let iterations: usize = std::env::var("BREAKER_RACE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for iteration in 0..iterations {
        let recorder = Recorder::new();
        let (pool, state) = {
            let _entered = runtime.enter();
            let (manager, state) = MemManager::new();
            let pool = builder()
                .base_size(4)
                .max_overflow(0)
                .checkout_timeout(Duration::from_millis(200))
                .breaker(BreakerConfig {
                    failure_threshold: 2,
                    recovery_timeout: Duration::from_millis(1),
                    success_threshold: 1,
                    ..BreakerConfig::default()
                })
                .observer(recorder.clone())
                .build(manager)
                .unwrap();
            (pool, state)
        };
        runtime.block_on(pool.warm_up()).unwrap();
        let held: Vec<_> = (0..3)
            .map(|_| runtime.block_on(pool.get()).unwrap())
            .collect();
        // Every connect fails from here on, the breaker's background probes included, so
        // only the threads move the breaker and the state is at rest once they stop.
        state.fail_connect.store(true, SeqCst);
        std::thread::scope(|scope| {
            for (thread, mut conn) in held.into_iter().enumerate() {
                let (pool, handle) = (&pool, runtime.handle());
                scope.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed((iteration * 8 + thread) as u64);
                    for _ in 0..25 {
                        match rng.u8(0..6) {
                            0 | 1 => {
                                pool.report_error(&mut conn, &common::MemError("connection reset"));
                            }
                            2 => pool.force_open_breaker(),
                            3 => pool.reset_breaker(),
                            4 => pool.disable_breaker(),
                            // A checkout: served, turned away, or failing to connect.
                            _ => drop(handle.block_on(pool.get())),
                        }
                    }
                    drop(conn);
                });
            }
        });
        // A connect bb8 started for a checkout may still fail after the threads stopped and
        // move the breaker once more: compare readings taken with no transition between them
        // (bounded).
        let mut attempts = 0;
        let (real, chain) = loop {
            let before = pool.stats().breaker.state;
            let published = pool.breaker_state();
            let chain = recorder.transitions();
            let after = pool.stats().breaker.state;
            let settled = before == after && chain.last().map(|t| t.1) == Some(after);
            if settled || (chain.is_empty() && before == after) {
                assert_eq!(
                    published, after,
                    "iteration {iteration}: checkouts act on a state that is not the breaker's"
                );
                break (after, chain);
            }
            attempts += 1;
            assert!(
                attempts < 1_000,
                "iteration {iteration}: never at rest: {chain:?}"
            );
            std::thread::yield_now();
        };
        let mut state = BreakerState::Closed;
        for (from, to) in &chain {
            assert_eq!(
                *from, state,
                "iteration {iteration}: transitions out of order: {chain:?}"
            );
            assert_ne!(from, to, "iteration {iteration}: {chain:?}");
            state = *to;
        }
        assert_eq!(
            state, real,
            "iteration {iteration}: the last transition announced is not the state: {chain:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn checkouts_that_only_pinged_did_not_wait() {
    let (manager, state) = MemManager::new();
    let pool = builder().build(manager).unwrap();
    pool.warm_up().await.unwrap();
    // Five checkouts 0.7 s apart on an idle pool: each pre-pings (past the 500 ms bypass
    // window), none queues for a connection.
    let pings = state.pings.load(SeqCst);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        drop(pool.get().await.unwrap());
    }
    assert_eq!(state.pings.load(SeqCst) - pings, 5, "each checkout pinged");
    let s = pool.stats();
    assert_eq!((s.checkouts_direct, s.checkouts_waited), (5, 0));
    // A burst to the maximum: three of the five queued while bb8 opened connections.
    let held: Vec<_> = futures_util::future::join_all((0..5).map(|_| pool.get())).await;
    assert!(held.iter().all(Result::is_ok));
    assert_eq!(pool.stats().checkouts_waited, 3);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_long_after_an_outage_does_not_blame_the_old_connection_error() {
    let (manager, state) = MemManager::new();
    let pool = builder()
        .base_size(1)
        .max_overflow(0)
        .checkout_timeout(Duration::from_millis(500))
        .breaker(breaker(5))
        .build(manager)
        .unwrap();
    // One failed connect, then the database is fine.
    state.fail_connect.store(true, SeqCst);
    assert!(pool.warm_up().await.is_err());
    state.fail_connect.store(false, SeqCst);
    pool.warm_up().await.unwrap();
    let held = pool.get().await.unwrap();
    // Exhausted by its own load 10 s later: the error is recent, so it is offered.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let CheckoutError::Timeout { last_error, .. } = pool.get().await.unwrap_err() else {
        panic!("expected a timeout")
    };
    assert!(last_error.is_some());
    // Two minutes later it is not the cause of anything.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let err = pool.get().await.unwrap_err();
    let CheckoutError::Timeout {
        last_error,
        last_error_age,
        ..
    } = &err
    else {
        panic!("expected a timeout")
    };
    assert_eq!((last_error, last_error_age), (&None, &None), "{err}");
    assert!(!err.to_string().contains("last connection error"), "{err}");
    // The stats still say what happened, and when.
    let s = pool.stats();
    assert!(s.last_error.is_some());
    assert!(s.last_error_age.unwrap() > Duration::from_secs(120));
    drop(held);
}

/// Holds every connection of `pool` while two more checkouts wait, then lets them all go.
async fn burst(pool: &Pool<MemManager>) {
    let held: Vec<_> = futures_util::future::join_all((0..5).map(|_| pool.get())).await;
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { drop(pool.get().await.unwrap()) })
        })
        .collect();
    tokio::task::yield_now().await;
    let s = pool.stats();
    assert!(s.exhausted, "{s:?}");
    assert_eq!(s.last_exhausted_age, Some(Duration::ZERO));
    assert_eq!(s.utilization_level, UtilizationLevel::Critical);
    drop(held);
    for waiter in waiters {
        waiter.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn each_burst_that_exhausts_the_pool_is_one_episode_and_the_level_falls_after_it() {
    let (manager, _state) = MemManager::new();
    let recorder = Recorder::new();
    let pool = builder().observer(recorder.clone()).build(manager).unwrap();
    pool.warm_up().await.unwrap();
    assert_eq!(pool.stats().last_exhausted_age, None);

    burst(&pool).await;
    let s = pool.stats();
    assert_eq!(
        (s.exhaustion_episodes, s.exhausted, s.in_use),
        (1, false, 0)
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = pool.stats();
    assert_eq!(s.utilization_level, UtilizationLevel::Normal, "5 s after");
    assert_eq!(s.last_exhausted_age, Some(Duration::from_secs(5)));

    burst(&pool).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = pool.stats();
    assert_eq!(s.exhaustion_episodes, 2);
    assert_eq!(s.utilization_level, UtilizationLevel::Normal);
    use UtilizationLevel::*;
    let levels = recorder.levels();
    assert_eq!(
        levels,
        [
            (Normal, Warning),
            (Warning, Critical),
            (Critical, Normal),
            (Normal, Warning),
            (Warning, Critical),
            (Critical, Normal)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_pool_that_keeps_reaching_a_level_keeps_it() {
    let (manager, _state) = MemManager::new();
    let pool = builder().build(manager).unwrap();
    pool.warm_up().await.unwrap();
    // Every connection out for a moment every half second, for ten seconds.
    for _ in 0..20 {
        let held: Vec<_> = futures_util::future::join_all((0..5).map(|_| pool.get())).await;
        drop(held);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(pool.stats().utilization_level, UtilizationLevel::Critical);
    }
    tokio::time::sleep(LEVEL_WINDOW * 2).await;
    assert_eq!(pool.stats().utilization_level, UtilizationLevel::Normal);
}

#[tokio::test(start_paused = true)]
async fn an_exhaustion_reached_while_checkouts_already_wait_is_an_episode() {
    // Four borrowers that hold on (behind a lock, a slow query) against one warm connection
    // and room for two more: three queue while the pool is not yet full, then the pool
    // fills with one of them still waiting.
    let (pool, state) = sized(1, 2);
    pool.warm_up().await.unwrap();
    state.connect_ms.store(100, SeqCst);
    let borrowers: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let conn = pool.get().await.unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
                drop(conn);
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let s = pool.stats();
    assert_eq!((s.in_use, s.pending), (3, 1), "{s:?}");
    assert!(s.exhausted);
    assert_eq!(s.exhaustion_episodes, 1);
    for borrower in borrowers {
        borrower.await.unwrap();
    }
    let s = pool.stats();
    assert_eq!((s.exhaustion_episodes, s.exhausted), (1, false));
    assert_eq!(s.checkouts_waited, 3);
}

/// Every field of the stats, pinned to what the test did, step by step (paused time, so the
/// ages are exact). Session resets are pinned by the PostgreSQL tests (they need a session).
#[tokio::test(start_paused = true)]
async fn every_stats_field_is_what_the_test_did() {
    let (manager, state) = MemManager::new();
    let pool = builder()
        .base_size(1)
        .max_overflow(1)
        .checkout_timeout(Duration::from_millis(500))
        .idle_timeout(Duration::from_secs(10))
        .max_lifetime(Duration::from_secs(3600))
        .leak_threshold(Duration::from_secs(2))
        .health_interval(Duration::from_secs(60))
        .breaker(breaker(1))
        .build(manager)
        .unwrap();
    pool.warm_up().await.unwrap();
    let mut want = pool.stats();
    assert_eq!(want.name, "mem");
    assert_eq!(
        (want.max_size, want.base_size, want.max_overflow),
        (2, 1, 1)
    );
    assert_eq!((want.size, want.in_use, want.idle), (1, 0, 1));
    assert_eq!(want.connections_created, 1);
    assert_eq!(want.monitor, MonitorStatus::Running);
    for zero in [
        want.pending,
        want.exhaustion_episodes,
        want.checkouts_direct,
        want.checkouts_waited,
        want.checkout_timeouts,
        want.checkouts_rejected,
        want.connection_failures,
        want.connections_closed.total(),
        want.health_checks_ok,
        want.health_checks_failed,
        want.leaks_suspected,
        want.leaks_outstanding,
        want.sessions_reset,
        want.breaker.transitions,
        want.breaker.opened,
        want.breaker.rejected,
    ] {
        assert_eq!(zero, 0, "{want:?}");
    }
    assert_eq!(
        (
            want.last_timeout_age,
            want.last_exhausted_age,
            want.last_leak_age
        ),
        (None, None, None)
    );
    assert_eq!(
        (want.last_error.as_deref(), want.last_error_age),
        (None, None)
    );
    assert_eq!(want.breaker.last_transition_age, None);

    // Three checkouts one after another: direct.
    for _ in 0..3 {
        drop(pool.get().await.unwrap());
    }
    want.checkouts_direct = 3;
    assert_eq!(pool.stats(), want);

    // Both connections out (the second queues while the overflow one opens), then a third
    // checkout that waits 500 ms with every connection out: one timeout, one exhaustion.
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    assert!(pool.get().await.unwrap_err().is_timeout());
    want.checkouts_direct = 4;
    want.checkouts_waited = 1;
    want.connections_created = 2;
    want.checkout_timeouts = 1;
    want.exhaustion_episodes = 1;
    want.last_timeout_age = Some(Duration::ZERO);
    // Over when the last waiter gave up: every connection is still out, but nobody waits.
    want.last_exhausted_age = Some(Duration::ZERO);
    want.wait_time_total = Duration::from_millis(500);
    want.wait_time_max_recent = Duration::from_millis(500);
    (want.size, want.in_use, want.idle, want.overflow_in_use) = (2, 2, 0, 1);
    want.utilization = 1.0;
    want.utilization_level = UtilizationLevel::Critical;
    assert_eq!(pool.stats(), want);

    // Held past the leak threshold: checked out at 0 s, the timeout ended at 0.5 s, now it
    // is 3 s; the scanner (every 0.5 s) found both at 2 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    want.leaks_suspected = 2;
    want.leaks_outstanding = 2;
    want.last_leak_age = Some(Duration::from_secs(1));
    want.last_timeout_age = Some(Duration::from_millis(2500));
    want.last_exhausted_age = Some(Duration::from_millis(2500));
    assert_eq!(pool.stats(), want);
    drop((a, b));
    tokio::time::sleep(LEVEL_WINDOW * 2).await;
    want.leaks_outstanding = 0;
    (want.size, want.in_use, want.idle) = (2, 0, 2);
    want.utilization = 0.0;
    want.utilization_level = UtilizationLevel::Normal;
    let later = LEVEL_WINDOW * 2;
    want.last_leak_age = Some(Duration::from_secs(1) + later);
    want.last_timeout_age = Some(Duration::from_millis(2500) + later);
    want.last_exhausted_age = Some(Duration::from_millis(2500) + later);
    assert_eq!(pool.stats(), want);
    // The ages from here on: events at fixed times, read at `now` (seconds since 0).
    let age = |at: f64, now: f64| Some(Duration::from_secs_f64(now - at));
    let set_ages = |want: &mut pool_core::PoolStats, now: f64| {
        want.last_timeout_age = age(0.5, now);
        want.last_exhausted_age = age(0.5, now);
        want.last_leak_age = age(2.0, now);
    };

    // Both idle since 3 s; the one above the base goes after 10 s idle, at the reaper's
    // next walk (every 2.5 s): 15 s.
    tokio::time::sleep(Duration::from_millis(8500)).await; // now 15.5 s
    want.connections_closed.idle_timeout = 1;
    (want.size, want.idle, want.overflow_in_use) = (1, 1, 0);
    set_ages(&mut want, 15.5);
    assert_eq!(pool.stats(), want);

    // A connection found broken (discarded by its borrower) and one retired by
    // `force_recycle`; the base is opened again each time.
    let mut c = pool.get().await.unwrap();
    c.discard();
    drop(c);
    pool.warm_up().await.unwrap();
    pool.force_recycle();
    pool.warm_up().await.unwrap();
    want.checkouts_direct += 1;
    want.connections_closed.broken = 1;
    want.connections_closed.forced = 1;
    want.connections_created = 4;
    assert_eq!(pool.stats(), want);

    // The monitor's health probe at 60 s finds the idle pool well.
    tokio::time::sleep(Duration::from_millis(45_600)).await; // now 61.1 s
    want.health_checks_ok = 1;
    set_ages(&mut want, 61.1);
    assert_eq!(pool.stats(), want);

    // An outage: the idle connection's pre-ping fails (closed as invalid), which opens the
    // breaker (threshold 1), so the checkout is turned away; the background probes then
    // fail until the database is back, and two in a row close the breaker.
    state.fail_ping.store(true, SeqCst);
    state.fail_connect.store(true, SeqCst);
    assert!(pool.get().await.unwrap_err().is_circuit_open());
    want.connections_closed.invalid = 1;
    (want.size, want.idle) = (0, 0);
    want.checkouts_rejected = 1;
    want.breaker.rejected = 1;
    want.breaker.opened = 1;
    want.breaker.transitions = 1;
    want.breaker.state = BreakerState::Open;
    want.breaker.consecutive_failures = 1;
    want.breaker.last_transition_age = Some(Duration::ZERO);
    want.breaker.next_probe_in = Some(FIRST_PROBE_DELAY);
    // A custom manager's errors are described with `Debug` unless told otherwise
    // (`PoolBuilder::describe_errors`).
    want.last_error = Some(r#"MemError("ping failed")"#.into());
    want.last_error_age = Some(Duration::ZERO);
    assert_eq!(pool.stats(), want);

    // Probes 0.1, 0.3 and 0.7 s after it opened fail (they are not counted as consecutive
    // failures: those are what opened it); the next is due 0.8 s after the third, at
    // 1.5 s; the database is back at 1 s, so that probe makes it half-open and the next,
    // at once, closes it. Both probe connections join the pool.
    tokio::time::sleep(Duration::from_secs(1)).await; // now 62.1 s
    want.connection_failures = 3;
    want.breaker.next_probe_in = Some(Duration::from_millis(500));
    want.last_error = Some(r#"MemError("connection refused")"#.into());
    want.last_error_age = Some(Duration::from_millis(300));
    want.breaker.last_transition_age = Some(Duration::from_secs(1));
    set_ages(&mut want, 62.1);
    assert_eq!(pool.stats(), want);
    state.fail_ping.store(false, SeqCst);
    state.fail_connect.store(false, SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await; // now 63.1 s
    want.connections_created = 6;
    (want.size, want.idle) = (2, 2);
    want.overflow_in_use = 1;
    want.breaker.state = BreakerState::Closed;
    want.breaker.transitions = 3;
    want.breaker.consecutive_failures = 0;
    want.breaker.next_probe_in = None;
    want.breaker.last_transition_age = Some(Duration::from_millis(500));
    want.last_error_age = Some(Duration::from_millis(1300));
    set_ages(&mut want, 63.1);
    assert_eq!(pool.stats(), want);

    // An hour on: the connection above the base closes idle (10 s after 62.6 s, at the
    // reaper's walk at 75 s), the base one at the end of its lifetime (jittered, at most
    // 3600 s after 62.6 s) and is opened again; the health probe ran every minute from 120 s
    // to 3660 s, 60 times.
    tokio::time::sleep(Duration::from_secs(3600)).await; // now 3663.1 s
    want.connections_closed.idle_timeout = 2;
    want.connections_closed.max_lifetime = 1;
    want.connections_created = 7;
    (want.size, want.idle, want.overflow_in_use) = (1, 1, 0);
    want.health_checks_ok = 61;
    want.breaker.last_transition_age = Some(Duration::from_millis(3_600_500));
    want.last_error_age = Some(Duration::from_millis(3_601_300));
    // The longest recent wait: none in the last two monitor intervals.
    want.wait_time_max_recent = Duration::ZERO;
    set_ages(&mut want, 3663.1);
    assert_eq!(pool.stats(), want);
}

#[tokio::test(start_paused = true)]
async fn a_probe_connection_a_full_pool_has_no_room_for_is_closed_as_overflow() {
    // Every connection out when an operation times out and opens the breaker (threshold
    // 1): the database is fine, so the first probe connects, but the pool has no room.
    let (manager, _state) = MemManager::new();
    let pool = builder()
        .base_size(1)
        .max_overflow(1)
        .breaker(breaker(1))
        .build(manager)
        .unwrap();
    let mut a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    a.report_operation_timeout(Duration::from_secs(30));
    assert_eq!(pool.breaker_state(), BreakerState::Open);
    tokio::time::sleep(FIRST_PROBE_DELAY * 2).await;
    let s = pool.stats();
    assert_eq!(s.connections_created, 4, "two borrowed, two probes: {s:?}");
    // Both probes (half-open after the first, closed after the second) found no room.
    assert_eq!(
        s.connections_closed.overflow, 2,
        "{:?}",
        s.connections_closed
    );
    assert_eq!(s.connections_closed.total(), 2);
    assert_eq!(s.breaker.state, BreakerState::Closed);
    drop((a, b));
    // The one that timed out is closed as broken; the other goes back.
    let s = pool.stats();
    assert_eq!(s.connections_closed.broken, 1, "{:?}", s.connections_closed);
    assert_eq!(s.connections_closed.total(), 3);
    assert_eq!((s.size, s.idle), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_new_connection_is_asked_whether_it_is_broken_before_it_joins_the_pool() {
    let (manager, state) = MemManager::new();
    state.reports_broken.store(true, SeqCst);
    let pool = builder()
        .base_size(2)
        .max_overflow(0)
        .build(manager)
        .unwrap();
    // The warm-up's connections are refused as broken when they are added to the pool.
    pool.warm_up().await.unwrap();
    let s = pool.stats();
    assert_eq!(s.connections_created, 2, "{s:?}");
    assert_eq!(s.connections_closed.broken, 2, "{s:?}");
    assert_eq!(s.connections_closed.overflow, 0);
    assert_eq!(s.size, 0);

    state.reports_broken.store(false, SeqCst);
    pool.warm_up().await.unwrap();
    let s = pool.stats();
    assert_eq!((s.size, s.idle), (2, 2));
    assert_eq!(s.connections_closed.broken, s.connections_created - 2);
}

#[tokio::test(start_paused = true)]
async fn connections_of_an_abandoned_warm_up_are_closed_as_surplus_not_broken() {
    let (manager, state) = MemManager::new();
    state.connect_ms.store(100, SeqCst);
    let pool = builder()
        .base_size(2)
        .max_overflow(0)
        .build(manager)
        .unwrap();
    // The warm-up starts its two connects (before the build's own top-up runs), and its
    // caller gives up once they have finished but before the warm-up took them.
    let mut warm = Box::pin(pool.warm_up());
    let first = poll_fn(|cx| Poll::Ready(warm.as_mut().poll(cx).is_pending())).await;
    assert!(first, "connecting");
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(warm);
    // The build's top-up then opens the base.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = pool.stats();
    assert_eq!(s.connections_created, 4, "{s:?}");
    assert_eq!(
        s.connections_closed.overflow, 2,
        "{:?}",
        s.connections_closed
    );
    assert_eq!(s.connections_closed.broken, 0);
    assert_eq!((s.size, s.idle), (2, 2));
}
