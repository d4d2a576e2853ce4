//! One ordered lane: receives batches of deliveries from its route's fetch
//! task, runs the handler service on each in order, and settles it.
//!
//! Messages with one key always land in one lane, so they are handled in
//! order; lanes run concurrently. Each delivery is settled by its own
//! handler's outcome (settlement is per message, so lanes finishing out of
//! order never acknowledges a message that was not handled). Acks are
//! batched ([`wharf_core::AckBatch`]): sent together at the end of a lane
//! batch, or earlier as soon as a handler (or the service's readiness) is
//! not ready at once, and before any other settlement, so an ack never waits
//! on a slow handler or a dead-letter publish.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{mpsc, Semaphore};
use tower::Service;
use wharf_core::{AckBatch, Capability, DeliveryInfo, Message, Settler};

use crate::dead_letter;
use crate::outcome::{HandlerError, HandlerResult, Outcome};
use crate::request::{Context, Request};
use crate::router::report::LaneCounters;
use crate::router::{Spares, Unseen};

/// Runs until the channel closes (the fetch task ended) and is drained.
pub(crate) async fn run_lane<S>(
    mut rx: mpsc::Receiver<Unseen>,
    mut svc: S,
    ctx: Context,
    counters: Arc<LaneCounters>,
    window: Arc<Semaphore>,
    spares: Arc<Spares>,
    lease: Option<Duration>,
) where
    S: Service<Request, Response = Outcome, Error = HandlerError>,
{
    let keep_copy = !ctx.capabilities().contains(Capability::DeadLetter);
    // Acks of one batch go to the backend together (one `ack_many` call),
    // flushed at the end of the batch and before waiting on anything that
    // is not ready at once, so an ack never waits on a slow handler.
    let mut acks = AckBatch::new();
    while let Some(mut batch) = rx.recv().await {
        let settled = batch.0.len();
        // Counted once per batch, and still counted if the lane is aborted
        // mid-batch (the guard is dropped with the task).
        let mut tally = Tally {
            counters: &counters,
            handled: 0,
            acked: 0,
            pending: 0,
        };
        // Popped one by one: if the lane is aborted mid-batch, what is left
        // was never handed to the handler and goes back unseen.
        while let Some(delivery) = batch.0.pop_front() {
            let ready = flushing(
                std::pin::pin!(poll_ready_catching(&mut svc)),
                &mut acks,
                &mut tally,
            )
            .await;
            // The message and its facts move into the request; only the
            // settler stays here.
            let (message, info, settler) = delivery.into_parts();
            let at = At::of(&info);
            let copy = keep_copy.then(|| Box::new((message.clone(), info.clone())));
            let result = match ready {
                Ok(()) => {
                    // The request is built as the call's argument, inside
                    // the closure: one move of the message fewer.
                    let call = || svc.call(Request::new(message, info, ctx.clone()));
                    match std::panic::catch_unwind(AssertUnwindSafe(call)) {
                        Ok(fut) => {
                            // Pinned here once; `flushing` takes a reference,
                            // so the future is not moved again.
                            let fut = std::pin::pin!(AssertUnwindSafe(fut).catch_unwind());
                            match lease {
                                None => flushing(fut, &mut acks, &mut tally).await,
                                Some(lease) => {
                                    let fut = std::pin::pin!(keep_lease(&settler, lease, fut));
                                    flushing(fut, &mut acks, &mut tally).await
                                }
                            }
                            .unwrap_or_else(|p| panicked(&counters, &*p))
                        }
                        Err(p) => panicked(&counters, &*p),
                    }
                }
                Err(e) => Err(e),
            };
            tally.handled += 1;
            // The common case inline; everything else in `settle`.
            if matches!(result, Ok(Outcome::Ack)) {
                tally.pending += 1;
                acks.push_settler(settler);
            } else {
                // A nack, reject or dead-letter publish may take a round
                // trip: the acks before it go first.
                flush(&mut acks, &mut tally).await;
                settle(settler, at, result, copy, &ctx, &counters).await;
            }
        }
        flush(&mut acks, &mut tally).await;
        drop(tally);
        // Free the batch's slots in the route's in-flight window at once.
        window.add_permits(settled);
        spares.give(batch);
    }
}

/// Awaits `fut`; if it is not ready at once, first acknowledges what
/// `acks` holds.
async fn flushing<F: Future>(
    mut fut: Pin<&mut F>,
    acks: &mut AckBatch,
    tally: &mut Tally<'_>,
) -> F::Output {
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    if let Poll::Ready(out) = first {
        return out;
    }
    flush(acks, tally).await;
    fut.await
}

/// Acknowledges what `acks` holds and counts the outcome.
async fn flush(acks: &mut AckBatch, tally: &mut Tally<'_>) {
    if tally.pending == 0 {
        return;
    }
    let failed = acks.flush().await;
    tally.acked += tally.pending - failed.len() as u64;
    tally.pending = 0;
    for (_, e) in &failed {
        settle_failed(tally.counters, e);
    }
}

/// Per-batch counts, added to the lane's counters when dropped.
struct Tally<'a> {
    counters: &'a LaneCounters,
    handled: u64,
    acked: u64,
    /// Pushed to the [`AckBatch`], not yet flushed.
    pending: u64,
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.counters.handled.add(self.handled);
        self.counters.acked.add(self.acked);
    }
}

/// Awaits `fut`, extending the delivery's lease by `lease` every half
/// lease, so a slow handler is not raced by a redelivery of its message.
async fn keep_lease<F: Future>(settler: &Settler, lease: Duration, fut: F) -> F::Output {
    tokio::pin!(fut);
    let every = (lease / 2).max(Duration::from_millis(1));
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            () = tokio::time::sleep(every) => {
                if let Err(e) = settler.extend(lease).await {
                    tracing::debug!(error = %e, "extending a lease failed");
                }
            }
        }
    }
}

/// Waits for the service to be ready; a panic becomes an error.
async fn poll_ready_catching<S>(svc: &mut S) -> Result<(), HandlerError>
where
    S: Service<Request, Response = Outcome, Error = HandlerError>,
{
    futures_util::future::poll_fn(|cx| {
        std::panic::catch_unwind(AssertUnwindSafe(|| svc.poll_ready(cx))).unwrap_or_else(|p| {
            Poll::Ready(Err(HandlerError::Panicked {
                message: crate::recover::panic_message(&*p),
            }))
        })
    })
    .await
}

/// A panic payload as a handler error, counted.
fn panicked(counters: &LaneCounters, panic: &(dyn std::any::Any + Send)) -> HandlerResult {
    counters.panics.add(1);
    Err(HandlerError::Panicked {
        message: crate::recover::panic_message(panic),
    })
}

fn settle_failed(counters: &LaneCounters, e: &wharf_core::Error) {
    counters.settle_errors.add(1);
    tracing::warn!(error = %e, "settling a delivery failed; it will be redelivered");
}

/// How a delivery ended up settled, for the counters.
enum Settled {
    Acked,
    Nacked,
    Rejected,
    DeadLettered,
}

/// Where a delivery came from, kept (it is `Copy`) for the log lines of
/// failed handlers after the message and its facts moved into the request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct At {
    partition: u32,
    offset: Option<u64>,
    attempt: u32,
}

impl At {
    pub(crate) fn of(info: &DeliveryInfo) -> Self {
        At {
            partition: info.partition,
            offset: info.offset,
            attempt: info.attempt,
        }
    }
}

/// A copy of a delivered message and its facts, kept for dead-lettering on
/// backends without [`Capability::DeadLetter`].
pub(crate) type Copied = Box<(Message, DeliveryInfo)>;

/// Settles a delivery (by its `settler`) according to the handler's result.
///
/// Retryable errors nack (with the backend's redelivery and max-deliveries
/// rules applying); permanent errors reject with the error as reason. On a
/// backend without dead letters, a reject is done by publishing `copy` to the
/// dead-letter topic and acking.
pub(crate) async fn settle(
    settler: Settler,
    at: At,
    result: HandlerResult,
    copy: Option<Copied>,
    ctx: &Context,
    counters: &LaneCounters,
) {
    let caps = ctx.capabilities();
    let settled = match result {
        Ok(Outcome::Ack) => settler.ack().await.map(|()| Settled::Acked),
        Ok(Outcome::Retry { delay }) => {
            if delay.is_zero() || !caps.contains(Capability::NackWithDelay) {
                settler.nack().await
            } else {
                settler.nack_with_delay(delay).await
            }
            .map(|()| Settled::Nacked)
        }
        Ok(Outcome::Reject { reason }) => reject(settler, reason, copy, ctx).await,
        Err(e) if e.is_retryable() => {
            tracing::debug!(group = ?ctx.group(), partition = at.partition, offset = ?at.offset, attempt = at.attempt, error = %e, "handler failed; nacking");
            settler.nack().await.map(|()| Settled::Nacked)
        }
        Err(e) => {
            tracing::warn!(group = ?ctx.group(), partition = at.partition, offset = ?at.offset, attempt = at.attempt, error = %e, "handler failed permanently; rejecting");
            reject(settler, e.to_string(), copy, ctx).await
        }
    };
    match settled {
        Ok(Settled::Acked) => counters.acked.add(1),
        Ok(Settled::Nacked) => counters.nacked.add(1),
        Ok(Settled::Rejected) => counters.rejected.add(1),
        Ok(Settled::DeadLettered) => {
            counters.acked.add(1);
            counters.dead_lettered.add(1);
        }
        Err(e) => settle_failed(counters, &e),
    }
}

async fn reject(
    settler: Settler,
    reason: String,
    copy: Option<Copied>,
    ctx: &Context,
) -> wharf_core::Result<Settled> {
    let Some(copy) = copy else {
        return settler.reject(reason).await.map(|()| Settled::Rejected);
    };
    let (message, info) = *copy;
    match dead_letter::publish_dead_letter(ctx, message, &info, &reason).await {
        Ok(_) => settler.ack().await.map(|()| Settled::DeadLettered),
        Err(e) => {
            tracing::warn!(error = %e, "dead-lettering failed; nacking instead");
            settler.nack().await.map(|()| Settled::Nacked)
        }
    }
}
