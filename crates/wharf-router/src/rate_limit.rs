//! Throttling with `governor`: at most a [`Quota`] of handler calls
//! (shared by every clone of the service, so by all lanes of a route).
//! Lanes wait in `poll_ready` until the limiter allows the next call, so
//! messages are held back rather than failed.
//!
//! The limiter runs on tokio's clock ([`TokioClock`]), so tests drive it
//! with the paused clock.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
pub use governor::Quota;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::outcome::{HandlerError, Outcome};
use crate::request::Request;

/// A `governor` clock reading tokio's time (paused in tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;
    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

type Limiter =
    governor::RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>;

/// Throttles handler calls to a quota; see the [module docs](self).
///
/// ```
/// use std::num::NonZeroU32;
/// use wharf_router::rate_limit::{Quota, RateLimitLayer};
/// let layer = RateLimitLayer::new(Quota::per_second(NonZeroU32::new(100).unwrap()));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<Limiter>,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer").finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// Allows calls at `quota` (rate and burst).
    pub fn new(quota: Quota) -> Self {
        RateLimitLayer {
            limiter: Arc::new(governor::RateLimiter::direct_with_clock(quota, TokioClock)),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
            sleep: None,
            allowed: false,
        }
    }
}

/// The service made by [`RateLimitLayer`].
pub struct RateLimit<S> {
    inner: S,
    limiter: Arc<Limiter>,
    sleep: Option<Pin<Box<Sleep>>>,
    allowed: bool,
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            sleep: None,
            allowed: false,
        }
    }
}

impl<S> std::fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl<S> Service<Request> for RateLimit<S>
where
    S: Service<Request, Response = Outcome, Error = HandlerError>,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        while !self.allowed {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
            }
            match self.limiter.check() {
                Ok(()) => self.allowed = true,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(TokioClock.now());
                    self.sleep = Some(Box::pin(tokio::time::sleep(wait)));
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        debug_assert!(self.allowed, "call without poll_ready");
        self.allowed = false;
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use wharf_core::Message;

    use super::*;
    use crate::handler_fn;
    use crate::testing::{call, ctx};

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_the_quota_wait_for_the_next_slot() {
        let quota = Quota::per_second(NonZeroU32::new(10).unwrap())
            .allow_burst(NonZeroU32::new(2).unwrap());
        let svc =
            RateLimitLayer::new(quota).layer(handler_fn(|_r: Request| async { Ok(Outcome::Ack) }));
        let (c, _) = ctx();
        let start = tokio::time::Instant::now();
        let mut at = Vec::new();
        for _ in 0..6 {
            call(
                svc.clone(),
                Request::test("t", Message::new("x"), c.clone()),
            )
            .await
            .unwrap();
            at.push(start.elapsed().as_millis());
        }
        // Burst of 2 at once, then one every 100 ms.
        assert_eq!(at, vec![0, 0, 100, 200, 300, 400]);
    }
}
