//! [`ResponseFuture`] for [`PoolService`](crate::PoolService), and the operation timeout
//! that bounds what a handler does with its connection.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::Response;
use pin_project_lite::pin_project;
use pool_core::{CheckoutError, ManageConnection};
use tokio::time::Sleep;

use crate::extract::Slot;
use crate::response::Rejection;

type BoxedEager<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

pin_project! {
    /// The response future of [`PoolService`](crate::PoolService). When it completes, the
    /// request's connection (if any) is back in the pool.
    pub struct ResponseFuture<F, M: ManageConnection, R, B, E> {
        #[pin]
        kind: Kind<F, M, R, B, E>,
    }

    // Runs before the fields are dropped: a request dropped while its connection is lent
    // out (the client hung up mid-query) leaves the connection in an unknown state, so the
    // `DbConn`, dropped next with the request, closes it instead of giving it back.
    impl<F, M: ManageConnection, R, B, E> PinnedDrop for ResponseFuture<F, M, R, B, E> {
        fn drop(this: Pin<&mut Self>) {
            if let KindProj::Lazy { future, slot: Some(slot), .. } = this.project().kind.project() {
                if future.in_flight() {
                    slot.0.abandon();
                }
            }
        }
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, M: ManageConnection, R, B, E> {
        Lazy {
            #[pin]
            future: Bounded<F>,
            // Taken (and so released) when the response is ready; dropped midway otherwise.
            slot: Option<ReleaseOnDrop<M>>,
            rejection: R,
        },
        // Boxed because it awaits the pool's checkout, whose future type cannot be named.
        Eager {
            future: BoxedEager<B, E>,
        },
    }
}

impl<F, M: ManageConnection, R, B, E> ResponseFuture<F, M, R, B, E> {
    pub(crate) fn lazy(future: F, slot: Arc<Slot<M>>, rejection: R) -> Self {
        ResponseFuture {
            kind: Kind::Lazy {
                future: Bounded::new(future),
                slot: Some(ReleaseOnDrop(slot)),
                rejection,
            },
        }
    }

    pub(crate) fn eager(future: BoxedEager<B, E>) -> Self {
        ResponseFuture {
            kind: Kind::Eager { future },
        }
    }
}

impl<F, M, R, B, E> Future for ResponseFuture<F, M, R, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    M: ManageConnection,
    R: Rejection<B>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Lazy {
                future,
                slot,
                rejection,
            } => {
                let release = slot
                    .as_ref()
                    .expect("a lazy response future is not polled after completion");
                let output = ready!(future.poll_with(cx, &release.0));
                let output =
                    output.unwrap_or_else(|limit| Ok(timed_out(&release.0, limit, &*rejection)));
                drop(slot.take());
                Poll::Ready(output)
            }
            KindProj::Eager { future } => future.as_mut().poll(cx),
        }
    }
}

/// The response for a request cancelled by the operation timeout.
pub(crate) fn timed_out<M: ManageConnection, B>(
    slot: &Slot<M>,
    limit: Duration,
    rejection: &impl Rejection<B>,
) -> Response<B> {
    let pool = slot.pool();
    tracing::warn!(
        pool = %pool.name(),
        limit_ms = limit.as_millis() as u64,
        "a database operation ran past the operation timeout; request cancelled, connection closed"
    );
    rejection.rejection(&CheckoutError::OperationTimedOut {
        pool: Arc::from(pool.name()),
        limit,
    })
}

impl<F, M: ManageConnection, R, B, E> fmt::Debug for ResponseFuture<F, M, R, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Releases the request's connection when dropped, so a response future abandoned midway
/// (a client that hung up) returns it too.
pub(crate) struct ReleaseOnDrop<M: ManageConnection>(pub(crate) Arc<Slot<M>>);

impl<M: ManageConnection> Drop for ReleaseOnDrop<M> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Marks the request abandoned when dropped before [`AbandonOnDrop::disarm`].
pub(crate) struct AbandonOnDrop<'a, M: ManageConnection>(pub(crate) Option<&'a Slot<M>>);

impl<M: ManageConnection> AbandonOnDrop<'_, M> {
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl<M: ManageConnection> Drop for AbandonOnDrop<'_, M> {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            slot.abandon();
        }
    }
}

pin_project! {
    /// The request's future under the operation timeout: while the request has its
    /// connection lent out (a [`DbConn`](crate::DbConn) is alive, so an operation may be
    /// running), a timer of the breaker's operation timeout runs from that lend. If it fires,
    /// the request is dropped on the spot, its connection closed and counted as a breaker
    /// failure, and the database asked to cancel the query (`PoolBuilder::cancel_with`).
    pub(crate) struct Bounded<F> {
        #[pin]
        run: Run<F>,
        // Boxed, and only while a lend is out across a poll: most requests never need it,
        // and an inline timer would enlarge every response future.
        timer: Option<Pin<Box<Sleep>>>,
        // The lend the timer was armed for.
        armed: Option<u32>,
    }
}

pin_project! {
    #[project = RunProj]
    enum Run<F> {
        Running { #[pin] future: F },
        // Finished, or cancelled by the timeout: the request's future is dropped.
        Done,
    }
}

impl<F> Bounded<F> {
    pub(crate) fn new(future: F) -> Self {
        Bounded {
            run: Run::Running { future },
            timer: None,
            armed: None,
        }
    }

    /// Whether the request's future has neither finished nor been cancelled.
    pub(crate) fn in_flight(&self) -> bool {
        matches!(self.run, Run::Running { .. })
    }
}

impl<F: Future> Bounded<F> {
    /// The request's output, or `Err(limit)` once the operation timeout cancelled it.
    pub(crate) fn poll_with<M: ManageConnection>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slot: &Slot<M>,
    ) -> Poll<Result<F::Output, Duration>> {
        let mut this = self.project();
        let RunProj::Running { future } = this.run.as_mut().project() else {
            let limit = slot.pool().config().breaker.operation_timeout;
            return Poll::Ready(Err(limit));
        };
        if let Poll::Ready(output) = future.poll(cx) {
            this.run.set(Run::Done);
            return Poll::Ready(Ok(output));
        }
        let Some(lend) = slot.lend_in_progress() else {
            *this.armed = None;
            return Poll::Pending;
        };
        let limit = slot.pool().config().breaker.operation_timeout;
        // The clock is read only when a lend (re)starts the timer, not on every poll.
        if *this.armed != Some(lend) {
            *this.armed = Some(lend);
            let deadline = tokio::time::Instant::now() + limit;
            match this.timer {
                // The box is kept for the request's later lends.
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => *this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let Some(sleep) = this.timer else {
            return Poll::Pending;
        };
        ready!(sleep.as_mut().poll(cx));
        slot.time_out();
        // Dropping the request here drops its `DbConn`, which closes the connection.
        this.run.set(Run::Done);
        Poll::Ready(Err(limit))
    }
}
