//! In-process retry: runs the handler again after a backoff (exponential
//! with full jitter by default) while the [`Policy`] says the failure is
//! retryable, up to a number of attempts and an elapsed-time budget.
//!
//! When it gives up on an error it returns
//! [`HandlerError::RetriesExhausted`], which is permanent, so a
//! [`crate::dead_letter`] layer outside it parks the message. The message is
//! held by this consumer while it waits: for long delays use
//! [`crate::retry_topics`] instead, which never blocks the partition.

mod backoff;
mod layer;
mod policy;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::Service;

pub use backoff::{Backoff, ExponentialBackoff};
pub use layer::RetryLayer;
pub use policy::{Policy, RetryableErrors};

use crate::outcome::{HandlerError, HandlerResult, Outcome};
use crate::request::Request;

/// The service made by [`RetryLayer`].
#[derive(Clone)]
pub struct Retry<S, P, B> {
    inner: S,
    layer: RetryLayer<P, B>,
    retried: metrics::Counter,
}

impl<S, P, B> std::fmt::Debug for Retry<S, P, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("max_attempts", &self.layer.max_attempts)
            .field("max_elapsed", &self.layer.max_elapsed)
            .finish_non_exhaustive()
    }
}

impl<S, P, B> Service<Request> for Retry<S, P, B>
where
    S: Service<Request, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send,
    P: Policy,
    B: Backoff,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // Use the service that was made ready; keep a clone for next time.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let retried = self.retried.clone();
        Box::pin(async move {
            let start = Instant::now();
            let mut req = Some(req);
            let mut attempt = 1u32;
            loop {
                // Copy the request only while another attempt may follow.
                let this = if attempt >= layer.max_attempts {
                    req.take()
                } else {
                    req.clone()
                }
                .expect("the request is kept until the last attempt");
                if attempt > 1 {
                    futures_util::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
                }
                let result = inner.call(this).await;
                if !layer.policy.should_retry(&result) {
                    return result;
                }
                let delay = layer.backoff.delay(attempt);
                let over_budget = layer
                    .max_elapsed
                    .is_some_and(|limit| start.elapsed() + delay > limit);
                if attempt >= layer.max_attempts || over_budget {
                    return match result {
                        Err(last) => Err(HandlerError::RetriesExhausted {
                            attempts: attempt,
                            last: Box::new(last),
                        }),
                        ok => ok,
                    };
                }
                if let Err(e) = &result {
                    tracing::debug!(attempt, ?delay, error = %e, "retrying handler");
                }
                retried.increment(1);
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tower::Layer;
    use wharf_core::Message;

    use super::*;
    use crate::handler_fn;
    use crate::testing::{call, ctx};

    /// A handler failing its first `fails` calls with `err()`, recording when each call started.
    fn flaky(
        fails: u32,
        err: fn() -> HandlerError,
    ) -> (
        impl Service<Request, Response = Outcome, Error = HandlerError, Future = impl Send>
            + Clone
            + Send
            + 'static,
        Arc<Mutex<Vec<Duration>>>,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let times: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let start = Instant::now();
        let t = times.clone();
        let svc = handler_fn(move |_req: Request| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            t.lock().unwrap().push(start.elapsed());
            async move {
                if n < fails {
                    Err(err())
                } else {
                    Ok(Outcome::Ack)
                }
            }
        });
        (svc, times)
    }

    fn transient() -> HandlerError {
        HandlerError::retryable("db down")
    }

    fn fixed(ms: u64) -> ExponentialBackoff {
        ExponentialBackoff::new(Duration::from_millis(ms), Duration::from_secs(60)).without_jitter()
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_error_is_retried_with_exponential_backoff_until_success() {
        let (svc, times) = flaky(3, transient);
        let svc = RetryLayer::new()
            .max_attempts(5)
            .backoff(fixed(100))
            .layer(svc);
        let (c, _) = ctx();
        let r = call(svc, Request::test("t", Message::new("x"), c)).await;
        assert_eq!(r.unwrap(), Outcome::Ack);
        let ms: Vec<u128> = times
            .lock()
            .unwrap()
            .iter()
            .map(Duration::as_millis)
            .collect();
        assert_eq!(ms, vec![0, 100, 300, 700]);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_error_is_not_retried() {
        let (svc, times) = flaky(10, || HandlerError::permanent("bad"));
        let svc = RetryLayer::new().max_attempts(5).layer(svc);
        let (c, _) = ctx();
        let r = call(svc, Request::test("t", Message::new("x"), c)).await;
        assert!(matches!(r, Err(HandlerError::Permanent { .. })));
        assert_eq!(times.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_with_a_permanent_exhausted_error() {
        let (svc, times) = flaky(10, transient);
        let svc = RetryLayer::new()
            .max_attempts(3)
            .backoff(fixed(10))
            .layer(svc);
        let (c, _) = ctx();
        let err = call(svc, Request::test("t", Message::new("x"), c))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, HandlerError::RetriesExhausted { attempts: 3, last } if last.is_retryable())
        );
        assert!(!err.is_retryable());
        assert_eq!(times.lock().unwrap().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_the_next_wait_would_exceed_max_elapsed() {
        let (svc, times) = flaky(10, transient);
        let svc = RetryLayer::new()
            .max_attempts(100)
            .max_elapsed(Duration::from_millis(1000))
            .backoff(fixed(100))
            .layer(svc);
        let (c, _) = ctx();
        let err = call(svc, Request::test("t", Message::new("x"), c))
            .await
            .unwrap_err();
        // Starts at 0, 100, 300, 700; the next would start at 1500 > 1000.
        assert!(matches!(
            err,
            HandlerError::RetriesExhausted { attempts: 4, .. }
        ));
        assert_eq!(times.lock().unwrap().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn custom_policy_can_retry_outcomes() {
        let calls = Arc::new(AtomicU32::new(0));
        let c2 = calls.clone();
        let svc = handler_fn(move |_req: Request| {
            let n = c2.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok(if n == 0 {
                    Outcome::retry()
                } else {
                    Outcome::Ack
                })
            }
        });
        let svc = RetryLayer::new()
            .policy(|r: &HandlerResult| matches!(r, Ok(Outcome::Retry { .. })))
            .layer(svc);
        let (c, _) = ctx();
        let r = call(svc, Request::test("t", Message::new("x"), c)).await;
        assert_eq!(r.unwrap(), Outcome::Ack);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn each_retry_is_counted_in_the_retried_metric() {
        let rec = crate::metrics::test_recorder::TestRecorder::default();
        let _guard = metrics::set_default_local_recorder(&rec);
        let (svc, _) = flaky(2, transient);
        let svc = RetryLayer::new()
            .max_attempts(5)
            .backoff(fixed(10))
            .layer(svc);
        let (c, _) = ctx();
        call(svc, Request::test("t", Message::new("x"), c))
            .await
            .unwrap();
        assert_eq!(rec.counter(crate::metrics::RETRIED), 2);
    }
}
