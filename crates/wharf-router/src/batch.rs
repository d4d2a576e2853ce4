//! Batch handlers: a [`BatchRoute`] hands its service up to `max` messages
//! at once, or whatever arrived within `linger` of the first, and settles
//! each message by its own [`Outcome`] (some acked, some retried, some
//! rejected).
//!
//! A batch route handles one batch at a time, in subscription order.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tower::Service;
use wharf_core::{Capability, Delivery, SubscribeOptions, Subscription};

use crate::outcome::{HandlerError, Outcome};
use crate::request::{Context, Request};
use crate::router::{needed_by_options, AnyRoute, Running, StartEnv};
use crate::router::{settle, At, Counter, LaneCounters};

/// The messages of one batch, in delivery order.
#[derive(Debug)]
pub struct Batch {
    /// One request per message.
    pub requests: Vec<Request>,
}

/// A batch handler made from an async function; see [`batch_fn`].
#[derive(Clone, Copy, Debug)]
pub struct BatchFn<F> {
    f: F,
}

/// Makes a batch handler from `async fn(Batch) -> Result<Vec<Outcome>, HandlerError>`.
///
/// Return one outcome per request, in order; requests without an outcome
/// (a short vector) are retried. An error applies to the whole batch.
pub fn batch_fn<F, Fut>(f: F) -> BatchFn<F>
where
    F: Fn(Batch) -> Fut,
    Fut: Future<Output = Result<Vec<Outcome>, HandlerError>>,
{
    BatchFn { f }
}

impl<F, Fut> Service<Batch> for BatchFn<F>
where
    F: Fn(Batch) -> Fut,
    Fut: Future<Output = Result<Vec<Outcome>, HandlerError>>,
{
    type Response = Vec<Outcome>;
    type Error = HandlerError;
    type Future = Fut;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: Batch) -> Fut {
        (self.f)(batch)
    }
}

/// A batch handler bound to a subscription.
#[must_use]
pub struct BatchRoute<S> {
    options: SubscribeOptions,
    service: S,
    max: usize,
    linger: Duration,
    requires: Vec<Capability>,
}

impl<S> BatchRoute<S>
where
    S: Service<Batch, Response = Vec<Outcome>, Error = HandlerError> + Send + 'static,
    S::Future: Send,
{
    /// Batches of up to `max` messages (≥ 1), waiting at most `linger` after
    /// the first for more.
    pub fn new(options: SubscribeOptions, service: S, max: usize, linger: Duration) -> Self {
        BatchRoute {
            options,
            service,
            max: max.max(1),
            linger,
            requires: Vec::new(),
        }
    }

    /// Refuse to start unless the backend has `capability`.
    pub fn requires(mut self, capability: Capability) -> Self {
        self.requires.push(capability);
        self
    }
}

impl<S> AnyRoute for BatchRoute<S>
where
    S: Service<Batch, Response = Vec<Outcome>, Error = HandlerError> + Send + 'static,
    S::Future: Send,
{
    fn options(&self) -> &SubscribeOptions {
        &self.options
    }

    fn requirements(&self) -> Vec<Capability> {
        let mut caps = needed_by_options(&self.options);
        caps.extend(self.requires.iter().copied());
        caps
    }

    fn start(self: Box<Self>, sub: Subscription, env: StartEnv) -> Running {
        let route = *self;
        let fetched = Arc::new(Counter::default());
        let fetch_errors = Arc::new(Counter::default());
        let counters = Arc::new(LaneCounters::default());
        let task = tokio::spawn(batch_loop(
            sub,
            route.service,
            route.max.min(route.options.max_in_flight_limit()),
            route.linger,
            env,
            fetched.clone(),
            fetch_errors.clone(),
            counters.clone(),
        ));
        Running {
            pattern: route.options.pattern().to_owned(),
            tasks: vec![Some(task)],
            fetched,
            fetch_errors,
            counters: vec![counters],
        }
    }
}

/// Collects up to `max` deliveries: waits for one, then for more until
/// `linger` has passed. Returns `false` when the subscription ended or the
/// router is stopping and nothing was collected.
async fn collect(
    sub: &mut Subscription,
    max: usize,
    linger: Duration,
    stop: &CancellationToken,
    out: &mut Vec<Delivery>,
    fetch_errors: &Counter,
) -> bool {
    let first = tokio::select! {
        biased;
        () = stop.cancelled() => return false,
        r = sub.next_batch(max, out) => r,
    };
    match first {
        Ok(0) => return !out.is_empty(),
        Ok(_) => {}
        Err(e) => {
            fetch_errors.add(1);
            tracing::warn!(error = %e, "fetching a batch failed");
            return !out.is_empty() || !matches!(e, wharf_core::Error::Closed { .. });
        }
    }
    let deadline = tokio::time::Instant::now() + linger;
    while out.len() < max {
        let more = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            r = tokio::time::timeout_at(deadline, sub.next_batch(max - out.len(), out)) => r,
        };
        match more {
            Err(_) | Ok(Ok(0)) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                fetch_errors.add(1);
                tracing::warn!(error = %e, "fetching a batch failed");
                break;
            }
        }
    }
    true
}

#[allow(clippy::too_many_arguments)]
async fn batch_loop<S>(
    mut sub: Subscription,
    mut svc: S,
    max: usize,
    linger: Duration,
    env: StartEnv,
    fetched: Arc<Counter>,
    fetch_errors: Arc<Counter>,
    counters: Arc<LaneCounters>,
) where
    S: Service<Batch, Response = Vec<Outcome>, Error = HandlerError>,
{
    let StartEnv { ctx, stop, done } = env;
    let _done = done;
    let keep_copy = !ctx.capabilities().contains(Capability::DeadLetter);
    // Collected, not yet handed to the handler: given back unseen if the
    // task is aborted while it waits for more (no attempt counted).
    let mut deliveries = Collected(Vec::with_capacity(max));
    loop {
        let before = deliveries.0.len();
        let go_on = collect(
            &mut sub,
            max,
            linger,
            &stop,
            &mut deliveries.0,
            &fetch_errors,
        )
        .await;
        fetched.add((deliveries.0.len() - before) as u64);
        if deliveries.0.is_empty() {
            if go_on && !stop.is_cancelled() {
                continue;
            }
            break;
        }
        handle_batch(&mut svc, &mut deliveries.0, keep_copy, &ctx, &counters).await;
        if !go_on {
            break;
        }
    }
    if let Err(e) = sub.close().await {
        tracing::debug!(error = %e, "closing the subscription failed");
    }
}

/// Deliveries a batch route collected; dropped with some left, it gives them
/// back with [`Delivery::release_unseen`].
struct Collected(Vec<Delivery>);

impl Drop for Collected {
    fn drop(&mut self) {
        for d in self.0.drain(..) {
            d.release_unseen();
        }
    }
}

async fn handle_batch<S>(
    svc: &mut S,
    deliveries: &mut Vec<Delivery>,
    keep_copy: bool,
    ctx: &Context,
    counters: &LaneCounters,
) where
    S: Service<Batch, Response = Vec<Outcome>, Error = HandlerError>,
{
    let mut copies = Vec::new();
    let mut settlers = Vec::with_capacity(deliveries.len());
    let requests = deliveries
        .drain(..)
        .map(|d| {
            let (m, info, settler) = d.into_parts();
            if keep_copy {
                copies.push(Box::new((m.clone(), info.clone())));
            }
            settlers.push((settler, At::of(&info)));
            Request::new(m, info, ctx.clone())
        })
        .collect();
    let result = async {
        futures_util::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
        svc.call(Batch { requests }).await
    }
    .await;
    counters.handled.add(settlers.len() as u64);
    let mut copies = copies.into_iter();
    match result {
        Ok(outcomes) => {
            let mut outcomes = outcomes.into_iter();
            for (s, at) in settlers {
                let o = outcomes.next().unwrap_or_else(Outcome::retry);
                settle(s, at, Ok(o), copies.next(), ctx, counters).await;
            }
        }
        Err(e) => {
            let retryable = e.is_retryable();
            let reason = e.to_string();
            for (s, at) in settlers {
                let r = if retryable {
                    Err(HandlerError::retryable(reason.clone()))
                } else {
                    Err(HandlerError::permanent(reason.clone()))
                };
                settle(s, at, r, copies.next(), ctx, counters).await;
            }
        }
    }
}
