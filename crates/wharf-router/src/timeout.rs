//! Timeout per message: a handler that runs longer than the limit is
//! dropped (cancelled) and fails with [`HandlerError::Timeout`], which is
//! retryable.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::outcome::{HandlerError, Outcome};
use crate::request::Request;

/// Limits each handler call to a duration; see the [module docs](self).
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    after: Duration,
}

impl TimeoutLayer {
    /// Fails handlers that take longer than `after`.
    pub fn new(after: Duration) -> Self {
        TimeoutLayer { after }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            after: self.after,
        }
    }
}

/// The service made by [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    after: Duration,
}

impl<S> Service<Request> for Timeout<S>
where
    S: Service<Request, Response = Outcome, Error = HandlerError>,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        TimeoutFuture {
            inner: self.inner.call(req),
            sleep: tokio::time::sleep(self.after),
            after: self.after,
        }
    }
}

pin_project! {
    /// Future of [`Timeout`].
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        after: Duration,
    }
}

impl<F: Future<Output = Result<Outcome, HandlerError>>> Future for TimeoutFuture<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(HandlerError::Timeout { after: *this.after })),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler_fn;
    use crate::testing::{call, ctx};
    use wharf_core::Message;

    fn sleeper() -> impl Service<Request, Response = Outcome, Error = HandlerError> + Clone {
        handler_fn(|req: Request| async move {
            let ms: u64 = std::str::from_utf8(req.message().payload())
                .unwrap()
                .parse()
                .unwrap();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Outcome::Ack)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn slow_handler_times_out_with_a_retryable_error_at_the_limit() {
        let (c, _) = ctx();
        let svc = TimeoutLayer::new(Duration::from_secs(2)).layer(sleeper());
        let start = tokio::time::Instant::now();
        let err = call(svc, Request::test("t", Message::new("5000"), c))
            .await
            .unwrap_err();
        assert!(matches!(err, HandlerError::Timeout { after } if after == Duration::from_secs(2)));
        assert!(err.is_retryable());
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn fast_handler_finishes_normally() {
        let (c, _) = ctx();
        let svc = TimeoutLayer::new(Duration::from_secs(2)).layer(sleeper());
        let r = call(svc, Request::test("t", Message::new("1999"), c)).await;
        assert_eq!(r.unwrap(), Outcome::Ack);
    }
}
