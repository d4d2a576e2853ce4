//! Concurrency limit: at most N handler calls at once across every clone
//! of the service (so one limit can span all lanes of a route, or several
//! routes sharing a database pool). Lanes wait in `poll_ready` for a slot.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tower::{Layer, Service};

use crate::outcome::{HandlerError, Outcome};
use crate::request::Request;

/// Limits concurrent handler calls; see the [module docs](self). Services
/// made by one layer value share its limit.
#[derive(Clone, Debug)]
pub struct ConcurrencyLimitLayer {
    semaphore: Arc<Semaphore>,
}

impl ConcurrencyLimitLayer {
    /// At most `max` calls at once (≥ 1).
    pub fn new(max: usize) -> Self {
        ConcurrencyLimitLayer {
            semaphore: Arc::new(Semaphore::new(max.max(1))),
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;
    fn layer(&self, inner: S) -> ConcurrencyLimit<S> {
        ConcurrencyLimit {
            inner,
            semaphore: PollSemaphore::new(self.semaphore.clone()),
            permit: None,
        }
    }
}

/// The service made by [`ConcurrencyLimitLayer`].
#[derive(Debug)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    semaphore: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
}

impl<S: Clone> Clone for ConcurrencyLimit<S> {
    fn clone(&self) -> Self {
        // A clone shares the limit but not the slot this one may hold.
        ConcurrencyLimit {
            inner: self.inner.clone(),
            semaphore: self.semaphore.clone(),
            permit: None,
        }
    }
}

impl<S> Service<Request> for ConcurrencyLimit<S>
where
    S: Service<Request, Response = Outcome, Error = HandlerError>,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = LimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        if self.permit.is_none() {
            match self.semaphore.poll_acquire(cx) {
                Poll::Ready(Some(p)) => self.permit = Some(p),
                Poll::Ready(None) => unreachable!("the semaphore is never closed"),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let permit = self.permit.take();
        debug_assert!(permit.is_some(), "call without poll_ready");
        LimitFuture {
            inner: self.inner.call(req),
            _permit: permit,
        }
    }
}

pin_project! {
    /// Future of [`ConcurrencyLimit`]: holds the slot until it completes.
    pub struct LimitFuture<F> {
        #[pin]
        inner: F,
        _permit: Option<OwnedSemaphorePermit>,
    }
}

impl<F: Future<Output = Result<Outcome, HandlerError>>> Future for LimitFuture<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use wharf_core::Message;

    use super::*;
    use crate::handler_fn;
    use crate::testing::{call, ctx};

    #[tokio::test(start_paused = true)]
    async fn no_more_than_the_limit_run_at_once_across_clones() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (r, p) = (running.clone(), peak.clone());
        let svc = ConcurrencyLimitLayer::new(2).layer(handler_fn(move |_req: Request| {
            let (r, p) = (r.clone(), p.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok(Outcome::Ack)
            }
        }));
        let (c, _) = ctx();
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                tokio::spawn(call(
                    svc.clone(),
                    Request::test("t", Message::new("x"), c.clone()),
                ))
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Outcome::Ack);
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }
}
