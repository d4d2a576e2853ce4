//! Poison messages: [`DeadLetterLayer`] publishes a message whose handler
//! failed permanently (or rejected it) to a dead-letter topic with headers
//! saying why and where it came from, then acks the original.
//!
//! Retryable failures pass through untouched (put [`crate::retry`] inside
//! this layer to retry them first: exhausted retries become permanent). It
//! works on any backend, with or without
//! [`wharf_core::Capability::DeadLetter`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use tower::{Layer, Service};
use wharf_core::{header, DeliveryInfo, Message, Receipt, Timestamp};

use crate::outcome::{HandlerError, Outcome};
use crate::request::{Context, Request};

/// Publishes `message` to the dead-letter topic of `info.topic` (the
/// route's configured one or `dlq.<topic>`) with the `wharf-dlq-*` and
/// `wharf-original-*` headers set.
///
/// # Errors
/// As [`wharf_core::Publisher::publish`].
pub async fn publish_dead_letter(
    ctx: &Context,
    message: Message,
    info: &DeliveryInfo,
    reason: &str,
) -> wharf_core::Result<Receipt> {
    let original_topic = message
        .headers()
        .get(header::ORIGINAL_TOPIC)
        .map_or_else(|| info.topic.to_string(), str::to_owned);
    let topic = ctx.dead_letter_topic(&original_topic);
    publish_dead_letter_to(ctx, &topic, message, info, reason).await
}

/// As [`publish_dead_letter`] to an explicit `topic`.
///
/// # Errors
/// As [`wharf_core::Publisher::publish`].
pub async fn publish_dead_letter_to(
    ctx: &Context,
    topic: &str,
    mut message: Message,
    info: &DeliveryInfo,
    reason: &str,
) -> wharf_core::Result<Receipt> {
    let h = message.headers_mut();
    h.remove(header::DELIVER_AT_MS);
    h.insert(header::DLQ_REASON, reason);
    if !h.contains(header::ORIGINAL_TOPIC) {
        h.insert(header::ORIGINAL_TOPIC, info.topic.to_string());
        h.insert(header::ORIGINAL_PARTITION, info.partition.to_string());
        if let Some(o) = info.offset {
            h.insert(header::ORIGINAL_OFFSET, o.to_string());
        }
    }
    if let Some(g) = ctx.group() {
        h.insert(header::DLQ_GROUP, g);
    }
    if !h.contains(header::ATTEMPTS) {
        h.insert(header::ATTEMPTS, info.attempt.to_string());
    }
    let now = Timestamp::now().as_millis().to_string();
    if !h.contains(header::FIRST_FAILURE_MS) {
        h.insert(header::FIRST_FAILURE_MS, now.clone());
    }
    h.insert(header::LAST_FAILURE_MS, now);
    ctx.publisher().publish(topic, message).await
}

/// Dead-letters permanent failures and rejects; see the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct DeadLetterLayer {
    topic: Option<String>,
}

impl DeadLetterLayer {
    /// Dead-letters to the route's dead-letter topic (default `dlq.<topic>`).
    pub fn new() -> Self {
        DeadLetterLayer::default()
    }

    /// Dead-letters to `topic` instead.
    #[must_use]
    pub fn to_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }
}

impl<S> Layer<S> for DeadLetterLayer {
    type Service = DeadLetter<S>;
    fn layer(&self, inner: S) -> DeadLetter<S> {
        DeadLetter {
            inner,
            topic: self.topic.clone(),
            counter: crate::metrics::dead_lettered(),
        }
    }
}

/// The service made by [`DeadLetterLayer`].
#[derive(Clone)]
pub struct DeadLetter<S> {
    inner: S,
    topic: Option<String>,
    counter: metrics::Counter,
}

impl<S> std::fmt::Debug for DeadLetter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl<S> Service<Request> for DeadLetter<S>
where
    S: Service<Request, Response = Outcome, Error = HandlerError>,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = Pin<Box<dyn Future<Output = Result<Outcome, HandlerError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let copy = req.message().clone();
        let info = req.info().clone();
        let ctx = req.context().clone();
        let topic = self.topic.clone();
        let counter = self.counter.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let reason = match fut.await {
                Ok(Outcome::Reject { reason }) => reason,
                Err(e) if !e.is_retryable() => e.to_string(),
                other => return other,
            };
            let published = match &topic {
                Some(t) => publish_dead_letter_to(&ctx, t, copy, &info, &reason).await,
                None => publish_dead_letter(&ctx, copy, &info, &reason).await,
            };
            match published {
                Ok(_) => {
                    counter.increment(1);
                    tracing::warn!(topic = %info.topic, %reason, "message dead-lettered");
                    Ok(Outcome::Ack)
                }
                // Could not park it: have it redelivered rather than lost.
                Err(e) => Err(HandlerError::Backend(e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{call, ctx};
    use crate::{handler_fn, HandlerError};

    fn failing(
        permanent: bool,
    ) -> impl Service<
        Request,
        Response = Outcome,
        Error = HandlerError,
        Future = impl Future<Output = Result<Outcome, HandlerError>> + Send + 'static,
    > + Clone {
        handler_fn(move |_req: Request| async move {
            if permanent {
                Err(HandlerError::permanent("invalid order"))
            } else {
                Err(HandlerError::retryable("db down"))
            }
        })
    }

    #[tokio::test]
    async fn permanent_failure_is_published_with_reason_headers_and_acked() {
        let (c, p) = ctx();
        let msg = Message::builder().key("k").payload("body").build();
        let id = msg.id();
        let info = DeliveryInfo {
            topic: "orders".into(),
            partition: 2,
            offset: Some(41),
            attempt: 3,
        };
        let svc = DeadLetterLayer::new().layer(failing(true));
        let r = call(svc, Request::new(msg, info, c)).await;
        assert_eq!(r.unwrap(), Outcome::Ack);
        let out = p.published();
        assert_eq!(out.len(), 1);
        let (topic, m) = &out[0];
        assert_eq!(topic, "dlq.orders");
        assert_eq!(m.id(), id);
        assert_eq!(&m.payload()[..], b"body");
        let h = m.headers();
        assert_eq!(
            h.get(header::DLQ_REASON),
            Some("permanent failure: invalid order")
        );
        assert_eq!(h.get(header::ORIGINAL_TOPIC), Some("orders"));
        assert_eq!(h.get(header::ORIGINAL_PARTITION), Some("2"));
        assert_eq!(h.get(header::ORIGINAL_OFFSET), Some("41"));
        assert_eq!(h.get(header::ATTEMPTS), Some("3"));
    }

    #[tokio::test]
    async fn retryable_failure_passes_through_untouched() {
        let (c, p) = ctx();
        let svc = DeadLetterLayer::new().layer(failing(false));
        let r = call(svc, Request::test("orders", Message::new("x"), c)).await;
        assert!(r.unwrap_err().is_retryable());
        assert!(p.published().is_empty());
    }

    #[tokio::test]
    async fn reject_outcome_goes_to_the_configured_topic() {
        let (c, p) = ctx();
        let svc =
            DeadLetterLayer::new()
                .to_topic("parking")
                .layer(handler_fn(|_r: Request| async {
                    Ok(Outcome::reject("unknown customer"))
                }));
        let r = call(svc, Request::test("orders", Message::new("x"), c)).await;
        assert_eq!(r.unwrap(), Outcome::Ack);
        let out = p.published();
        assert_eq!(out[0].0, "parking");
        assert_eq!(
            out[0].1.headers().get(header::DLQ_REASON),
            Some("unknown customer")
        );
    }

    #[tokio::test]
    async fn failed_dead_letter_publish_becomes_a_retryable_error() {
        let (c, p) = ctx();
        p.fail_next(1);
        let svc = DeadLetterLayer::new().layer(failing(true));
        let r = call(svc, Request::test("orders", Message::new("x"), c)).await;
        assert!(r.unwrap_err().is_retryable());
        assert!(p.published().is_empty());
    }

    #[tokio::test]
    async fn dead_lettering_is_counted_in_the_metric() {
        let rec = crate::metrics::test_recorder::TestRecorder::default();
        let _guard = metrics::set_default_local_recorder(&rec);
        let (c, _) = ctx();
        let svc = DeadLetterLayer::new().layer(failing(true));
        call(svc, Request::test("orders", Message::new("x"), c))
            .await
            .unwrap();
        assert_eq!(rec.counter(crate::metrics::DEAD_LETTERED), 1);
    }
}
