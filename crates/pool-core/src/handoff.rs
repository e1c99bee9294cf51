//! The pool's own queue of waiting checkouts, in front of bb8's.
//!
//! bb8 wakes one waiter per returned connection, and a woken waiter that finds the connection
//! taken (by a checkout that arrived meanwhile, or another waiter) waits again at the back of
//! bb8's queue: under load, waiters are overtaken by hundreds. The pool therefore keeps its
//! own first-come-first-served queue:
//!
//! - A checkout that finds no idle connection, or that arrives while others wait, joins the
//!   back of the queue.
//! - A returned connection goes to the checkout at the front of the queue, without passing
//!   through bb8 (bb8 still counts it as out), when one waits; otherwise back to bb8.
//! - Connections bb8 has idle or can open while checkouts wait are fetched by pumps: tasks
//!   that each wait in bb8 on the queue's behalf (so bb8 opens one connection per pump, as it
//!   would for a waiter of its own) and hand what they get to the front of the queue. A pump
//!   is started only while the queue has fewer pumps than queued checkouts and than
//!   connections the pool could still hand out (both estimates, from counters that may count
//!   a checkout that has just given up), and stops once the queue is empty.
//!
//! A waiting checkout holds a receiver and its place in the queue, not a bb8 checkout, which
//! is most of what it costs in memory. A connection handed to a checkout is its own until
//! that checkout takes it or gives up: a checkout future that is kept but no longer polled
//! keeps it (with bb8 it kept only its place).
//!
//! Entries of checkouts that gave up stay in the queue until a return reaches them, or until
//! the queue has doubled in length since it was last swept of them.

use std::any::Any;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::pin::pin;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;

use bb8::ManageConnection;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use crate::connection::Managed;
use crate::shared::Shared;

/// A connection as bb8 lends it.
pub(crate) type Lent<M> = bb8::PooledConnection<'static, Managed<M>>;

/// The queue of waiting checkouts, stored type-erased in [`Shared`].
pub(crate) struct Queue<M: ManageConnection> {
    /// Its length is [`Shared::queued`], which every return reads without the lock.
    waiters: Mutex<Waiting<M>>,
    /// Pumps running (see the module docs).
    pumps: AtomicUsize,
    /// Woken when the queue empties: pumps parked in bb8 then look whether they are still
    /// wanted (instead of staying bb8 waiters until bb8's own timeout).
    drained: Notify,
}

struct Waiting<M: ManageConnection> {
    entries: VecDeque<oneshot::Sender<Given<M>>>,
    /// The length at which entries of checkouts that gave up are swept out next.
    sweep_at: usize,
}

/// The shortest queue that is swept of given-up entries.
const SWEEP_FROM: usize = 64;

/// The queue as [`Shared`] holds it, whatever the connection type.
pub(crate) type AnyQueue = Box<dyn Waiters>;

/// What the pool needs of its queue without knowing its connection type.
pub(crate) trait Waiters: Send + Sync {
    fn as_any(&self) -> &dyn Any;

    /// Turns away every queued checkout: the breaker has opened.
    fn turn_away(&self, shared: &Shared);
}

impl<M: ManageConnection> Waiters for Queue<M> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn turn_away(&self, shared: &Shared) {
        let turned_away = {
            let mut waiters = self.waiters.lock();
            shared.queued.store(0, SeqCst);
            std::mem::take(&mut waiters.entries)
        };
        self.drained.notify_waiters();
        for tx in turned_away {
            // A checkout that has given up meanwhile needs no answer.
            let _ = tx.send(Given(None));
        }
    }
}

impl<M: ManageConnection> Queue<M> {
    pub(crate) fn boxed() -> AnyQueue {
        Box::new(Queue::<M> {
            waiters: Mutex::new(Waiting {
                entries: VecDeque::new(),
                sweep_at: SWEEP_FROM,
            }),
            pumps: AtomicUsize::new(0),
            drained: Notify::new(),
        })
    }

    pub(crate) fn of(shared: &Shared) -> &Queue<M> {
        match shared.queue.as_any().downcast_ref::<Queue<M>>() {
            Some(queue) => queue,
            None => unreachable!("a pool's queue holds its own connection type"),
        }
    }

    /// Joins the queue: at the back, or at the front for a checkout that already had its
    /// turn and got a connection it could not use (it keeps its place).
    pub(crate) fn join(&self, shared: &Shared, front: bool) -> oneshot::Receiver<Given<M>> {
        let (tx, rx) = oneshot::channel();
        let mut waiters = self.waiters.lock();
        let Waiting { entries, sweep_at } = &mut *waiters;
        if front {
            entries.push_front(tx);
        } else {
            entries.push_back(tx);
        }
        if entries.len() >= *sweep_at {
            // Checkouts that gave up (timed out, dropped) while nothing came back: swept out
            // once the queue has doubled since the last sweep, so each costs O(1) overall.
            let before = entries.len();
            entries.retain(|tx| !tx.is_closed());
            shared.queued.fetch_sub(before - entries.len(), SeqCst);
            *sweep_at = SWEEP_FROM.max(2 * entries.len());
        }
        // SeqCst, against a return that counts itself and then looks at `queued` (see
        // `give_back`): either the return sees this entry, or the pumps this checkout then
        // asks for see the connection as idle.
        shared.queued.fetch_add(1, SeqCst);
        rx
    }

    /// Hands `conn` to the checkout at the front of the queue; `Some(conn)` if none waits.
    pub(crate) fn deliver(&self, shared: &Shared, mut conn: Lent<M>) -> Option<Lent<M>> {
        loop {
            let (next, emptied) = {
                let mut waiters = self.waiters.lock();
                let next = waiters.entries.pop_front();
                if next.is_some() {
                    shared.queued.fetch_sub(1, SeqCst);
                }
                (next, waiters.entries.is_empty())
            };
            if emptied {
                self.drained.notify_waiters();
            }
            let Some(tx) = next else {
                return Some(conn);
            };
            match tx.send(Given(Some(conn))) {
                Ok(()) => return None,
                // That checkout has given up: the next one.
                Err(mut given) => match given.0.take() {
                    Some(back) => conn = back,
                    None => return None,
                },
            }
        }
    }

    /// How many pumps the queue could use: one per queued checkout (at most the queue's
    /// length and the pending count, which leave out most checkouts that gave up), at most
    /// one per connection the pool could still hand out; none while the breaker turns
    /// checkouts away or the pool is closing.
    fn wanted(&self, shared: &Shared) -> u64 {
        if !shared.connect_allowed() || shared.closing.load(SeqCst) {
            return 0;
        }
        let counters = &shared.counters;
        // `queued` first: a checkout counts itself pending before it joins, so whoever sees
        // its entry sees it pending too.
        let queued = shared.queued.load(SeqCst) as u64;
        let max = u64::from(shared.config.max_size());
        queued
            .min(counters.pending.load(Relaxed))
            .min(max.saturating_sub(counters.in_use_now()))
    }

    /// Starts the pumps the queue could use and does not have.
    pub(crate) fn pump(&self, bb8: &bb8::Pool<Managed<M>>, shared: &Arc<Shared>) {
        loop {
            let running = self.pumps.load(SeqCst);
            if running as u64 >= self.wanted(shared) {
                return;
            }
            if self
                .pumps
                .compare_exchange(running, running + 1, SeqCst, SeqCst)
                .is_ok()
            {
                // The slot travels with the task: a task that never runs (its runtime shut
                // down) or panics still gives it back.
                let slot = PumpSlot::<M> {
                    shared: shared.clone(),
                    held: true,
                    _queue: PhantomData,
                };
                shared.runtime.spawn(run_pump(bb8.clone(), slot));
            }
        }
    }

    /// A pump that has done its turn: `true` to go on, `false` once it has stopped
    /// counting itself (the queue has as many pumps as it can use without it; its slot is
    /// then no longer held).
    fn keep_pumping(&self, shared: &Shared, slot: &mut PumpSlot<M>) -> bool {
        let keep = self.keep_pumping_inner(shared);
        slot.held = keep;
        keep
    }

    fn keep_pumping_inner(&self, shared: &Shared) -> bool {
        loop {
            let running = self.pumps.load(SeqCst);
            if running as u64 <= self.wanted(shared) {
                return true;
            }
            if self
                .pumps
                .compare_exchange(running, running - 1, SeqCst, SeqCst)
                .is_ok()
            {
                // A checkout that joined meanwhile may have seen this pump as running and
                // started none: take the place back if the queue now wants it.
                let after = running - 1;
                return (after as u64) < self.wanted(shared)
                    && self
                        .pumps
                        .compare_exchange(after, after + 1, SeqCst, SeqCst)
                        .is_ok();
            }
        }
    }
}

/// A pump's place in [`Queue::pumps`], given back when the pump ends however it ends.
struct PumpSlot<M: ManageConnection> {
    shared: Arc<Shared>,
    held: bool,
    _queue: PhantomData<fn() -> M>,
}

impl<M: ManageConnection> Drop for PumpSlot<M> {
    fn drop(&mut self) {
        if self.held {
            Queue::<M>::of(&self.shared).pumps.fetch_sub(1, SeqCst);
        }
    }
}

/// One pump: waits in bb8 for a connection (bb8 opens one for it if the pool has room) and
/// hands it to the front of the queue, as long as the queue can use it. Its bb8 checkout is
/// kept across breaker transitions (each new one could have bb8 open another connection);
/// at a transition, and when the queue empties, it looks whether the queue still wants it
/// (not with nobody queued, nor while the breaker turns checkouts away, nor once the pool
/// closes).
async fn run_pump<M: ManageConnection>(bb8: bb8::Pool<Managed<M>>, mut slot: PumpSlot<M>) {
    let shared = slot.shared.clone();
    let queue = Queue::<M>::of(&shared);
    loop {
        let mut get = pin!(bb8.get_owned());
        let got = loop {
            let changed = shared.breaker_changed.notified();
            let drained = queue.drained.notified();
            if queue.wanted(&shared) == 0 {
                break None;
            }
            tokio::select! {
                got = get.as_mut() => break got.ok(),
                () = changed => {}
                () = drained => {}
            }
        };
        if let Some(conn) = got {
            if let Some(conn) = queue.deliver(&shared, conn) {
                // Nobody waits any more: back to bb8's idle connections.
                drop(conn);
            }
        }
        if !queue.keep_pumping(&shared, &mut slot) {
            return;
        }
    }
}

/// A connection handed to a waiting checkout, or `None` when the breaker turned it away.
/// Dropped unclaimed (the checkout gave up just as it came), the connection goes to the next
/// in the queue, or back to bb8.
pub(crate) struct Given<M: ManageConnection>(Option<Lent<M>>);

impl<M: ManageConnection> Given<M> {
    /// The connection; `None`: turned away.
    pub(crate) fn claim(mut self) -> Option<Lent<M>> {
        self.0.take()
    }
}

impl<M: ManageConnection> Drop for Given<M> {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            let shared = conn.meta.shared.clone();
            drop(Queue::<M>::of(&shared).deliver(&shared, conn));
        }
    }
}

/// Where a connection goes when its borrower is done with it (counted back already): to the
/// front of the queue if a checkout waits, else back to bb8.
pub(crate) fn give_back<M: ManageConnection>(conn: Lent<M>) {
    if conn.meta.shared.queued.load(SeqCst) == 0 {
        return drop(conn);
    }
    let shared = conn.meta.shared.clone();
    drop(Queue::<M>::of(&shared).deliver(&shared, conn));
}
