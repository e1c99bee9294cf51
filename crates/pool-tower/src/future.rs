//! [`ResponseFuture`] for [`PoolService`](crate::PoolService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;
use pool_core::ManageConnection;

use crate::extract::Slot;

type BoxedEager<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

pin_project! {
    /// The response future of [`PoolService`](crate::PoolService). When it completes, the
    /// request's connection (if any) is back in the pool.
    pub struct ResponseFuture<F, M: ManageConnection, B, E> {
        #[pin]
        kind: Kind<F, M, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, M: ManageConnection, B, E> {
        Lazy {
            #[pin]
            future: F,
            // Taken (and so released) when the response is ready; dropped midway otherwise.
            slot: Option<ReleaseOnDrop<M>>,
        },
        // Boxed because it awaits the pool's checkout, whose future type cannot be named.
        Eager {
            future: BoxedEager<B, E>,
        },
    }
}

impl<F, M: ManageConnection, B, E> ResponseFuture<F, M, B, E> {
    pub(crate) fn lazy(future: F, slot: Arc<Slot<M>>) -> Self {
        ResponseFuture {
            kind: Kind::Lazy {
                future,
                slot: Some(ReleaseOnDrop(slot)),
            },
        }
    }

    pub(crate) fn eager(future: BoxedEager<B, E>) -> Self {
        ResponseFuture {
            kind: Kind::Eager { future },
        }
    }
}

impl<F, M, B, E> Future for ResponseFuture<F, M, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    M: ManageConnection,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Lazy { future, slot } => {
                let output = ready!(future.poll(cx));
                drop(slot.take());
                Poll::Ready(output)
            }
            KindProj::Eager { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, M: ManageConnection, B, E> fmt::Debug for ResponseFuture<F, M, B, E> {
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
