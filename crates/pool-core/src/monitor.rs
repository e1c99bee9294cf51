//! Background tasks: the utilization and health monitor, the breaker's recovery prober, the
//! idle reaper and the leak scanner.
//!
//! They hold only weak references to the pool between runs and stop when it is dropped.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bb8::ManageConnection;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::observer::{CloseReason, PoolEvent, UtilizationLevel};
use crate::pool::PoolInner;
use crate::shared::{Shared, LEVEL_WINDOW};

pub(crate) fn spawn<M: ManageConnection>(inner: &Arc<PoolInner<M>>) {
    spawn_recovery(inner);
    spawn_level_watch(inner);
    every(
        inner.shared.config.health_interval,
        Arc::downgrade(inner),
        |pool| async move {
            tick(&pool).await;
            true
        },
    );
    if let Some(idle_timeout) = inner.shared.config.idle_timeout {
        let period = (idle_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
        every(period, Arc::downgrade(inner), move |pool| async move {
            reap(&pool, idle_timeout);
            true
        });
    }
    if let Some(leaks) = &inner.shared.leaks {
        let period = (leaks.threshold / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        every(period, Arc::downgrade(&inner.shared), |shared| async move {
            if shared.closing.load(Relaxed) {
                return false;
            }
            scan_leaks(&shared);
            true
        });
    }
}

/// How often the recovery prober looks whether its pool is still alive while the breaker is
/// closed (a transition wakes it at once).
const RECOVERY_IDLE_CHECK: Duration = Duration::from_secs(5);

/// The breaker's recovery prober: while the breaker is open or half-open, runs each probe
/// the breaker hands out when it is due (one at a time: a new connection and a ping on it)
/// and reports the outcome. A connection that worked joins the pool, so the pool has one
/// ready when the breaker closes. User requests are never probes.
fn spawn_recovery<M: ManageConnection>(inner: &Arc<PoolInner<M>>) {
    let pool = Arc::downgrade(inner);
    let shared = inner.shared.clone();
    tokio::spawn(async move {
        loop {
            if shared.closing.load(Relaxed) {
                break;
            }
            // Registered before the state is read, so no transition in between is missed.
            let changed = shared.breaker_changed.notified();
            let probe = match shared.next_probe() {
                Ok(probe) => probe,
                Err(wait) => {
                    let wait = wait.unwrap_or(RECOVERY_IDLE_CHECK);
                    let _ = tokio::time::timeout(wait, changed).await;
                    continue;
                }
            };
            // The probe runs on the manager alone (it holds no reference to the pool, so a
            // pool dropped meanwhile is freed), in a task of its own: a panic in the driver
            // is a failed probe, never a breaker left waiting for an outcome.
            let Some(managed) = pool.upgrade().map(|p| p.managed.clone()) else {
                break;
            };
            let outcome = tokio::spawn(async move { managed.probe().await }).await;
            let (reached, conn) = outcome.unwrap_or((false, None));
            if let (Some(conn), Some(pool)) = (conn, pool.upgrade()) {
                pool.add(conn);
            }
            tracing::debug!(pool = %shared.name, reached, round = probe.round(), "recovery probe");
            shared.probe_done(probe, reached);
        }
    });
}

/// The utilization level's fall: checkouts raise the level the moment it rises; this task,
/// woken by a rise, looks every [`LEVEL_WINDOW`] while the level is above normal and lowers
/// it to the level of the highest utilization seen since its last look. So the level falls
/// one to two windows after utilization does, and a pool that keeps reaching a level keeps
/// it.
fn spawn_level_watch<M: ManageConnection>(inner: &Arc<PoolInner<M>>) {
    let pool = Arc::downgrade(inner);
    let shared = inner.shared.clone();
    tokio::spawn(async move {
        loop {
            if shared.closing.load(Relaxed) || pool.strong_count() == 0 {
                break;
            }
            if shared.level() == UtilizationLevel::Normal {
                // A rise in between leaves a permit: the wait ends at once.
                let _ =
                    tokio::time::timeout(RECOVERY_IDLE_CHECK, shared.level_raised.notified()).await;
                continue;
            }
            tokio::time::sleep(LEVEL_WINDOW).await;
            shared.level_look();
        }
    });
}

/// Runs `each` every `period`, the first time one period from now, while `target` is alive
/// and `each` returns `true`. Holds only a weak reference between runs.
fn every<T, F, Fut>(period: Duration, target: Weak<T>, each: F)
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    tokio::spawn(async move {
        let mut ticks = interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(target) = target.upgrade() else {
                break;
            };
            if !each(target).await {
                break;
            }
        }
    });
}

/// The reaper's walk: idle connections above the base that have been idle for the idle
/// timeout are closed, and so is every idle connection past its lifetime; then the base is
/// restored if a close took the pool below it.
fn reap<M: ManageConnection>(pool: &Arc<PoolInner<M>>, idle_timeout: Duration) {
    let shared = &pool.shared;
    let now = shared.clock.now();
    let base = shared.config.base_size;
    let mut surplus = pool.bb8.state().connections.saturating_sub(base);
    pool.walk_idle(|conn| {
        if let Some(reason) = conn.meta.retire_reason(now) {
            surplus = surplus.saturating_sub(1);
            return Some(reason);
        }
        if surplus > 0 && now.saturating_since(conn.meta.last_used) >= idle_timeout {
            surplus -= 1;
            return Some(CloseReason::IdleTimeout);
        }
        None
    });
    if pool.bb8.state().connections < base && shared.connect_allowed() {
        pool.spawn_top_up();
    }
}

/// One monitor tick: idle connections past their lifetime closed (when no reaper walks the
/// queue more often), a health probe when the pool is idle, and the base topped up.
async fn tick<M: ManageConnection>(pool: &PoolInner<M>) {
    let shared = &pool.shared;
    shared.counters.roll_wait_window();
    if shared.config.max_lifetime.is_some() && shared.config.idle_timeout.is_none() {
        let now = shared.clock.now();
        pool.walk_idle(|conn| conn.meta.retire_reason(now));
    }
    let state = pool.bb8.state();
    let in_use = state.connections - state.idle_connections;
    let idle_pool =
        in_use == 0 && state.idle_connections > 0 && shared.counters.pending.load(Relaxed) == 0;
    if idle_pool && shared.connect_allowed() {
        probe(pool).await;
    }
    if shared.connect_allowed() {
        let _ = pool.top_up().await;
    }
}

/// Checks out an idle connection and pings it, bypassing the alive window; the outcome is
/// counted and fed to the breaker like any validation.
async fn probe<M: ManageConnection>(pool: &PoolInner<M>) {
    let shared = &pool.shared;
    let limit = shared.config.connect_timeout;
    let Ok(Ok(mut conn)) = tokio::time::timeout(limit, pool.bb8.get()).await else {
        return;
    };
    // Bounded by the validation timeout, like a pre-ping.
    let ok = pool.managed.ping(&mut conn).await;
    if ok {
        shared.counters.health_ok.fetch_add(1, Relaxed);
    } else {
        shared.counters.health_failed.fetch_add(1, Relaxed);
        tracing::warn!(pool = %shared.name, "health probe failed");
    }
    shared.emit(&PoolEvent::HealthCheck { ok });
}

fn scan_leaks(shared: &Shared) {
    let Some(leaks) = &shared.leaks else { return };
    let now = shared.clock.now();
    let mut found = Vec::new();
    for entry in leaks.entries.lock().values_mut() {
        let held = now.saturating_since(entry.since);
        if !entry.reported && held >= leaks.threshold {
            entry.reported = true;
            // Each entry is reported once, so what observers kept moves out with it.
            found.push((
                held,
                entry.location,
                entry.span.clone(),
                entry.contexts.take(),
            ));
        }
    }
    // Reported outside the registry lock: observers may take their time.
    for (held, location, span, contexts) in found {
        shared.counters.leaks.fetch_add(1, Relaxed);
        shared.recent.lock().leak = Some(now);
        tracing::warn!(
            parent: &span,
            pool = %shared.name,
            held_ms = held.as_millis() as u64,
            threshold_ms = leaks.threshold.as_millis() as u64,
            checked_out_at = %location,
            "connection held longer than the leak threshold; possible leak"
        );
        shared.emit_leak(held, location, &span, contexts.as_deref());
    }
}
