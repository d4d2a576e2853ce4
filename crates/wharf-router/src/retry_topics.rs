//! Non-blocking leveled retry: when the handler fails with a retryable
//! error (or returns [`Outcome::Retry`]), [`RetryTopicsLayer`] republishes the
//! message to the next retry topic (`<topic>.retry.1`, `.retry.2`, … by
//! default) to be handled again after that level's delay, and acks the
//! original. After the last level the message goes to the dead-letter topic.
//! One poison message therefore never holds up its partition.
//!
//! The same service must also consume the retry topics:
//! [`RetryTopicsLayer::subscribe_options`] lists their subscriptions.
//! Delays use delayed publish where the backend has
//! [`Capability::DelayedPublish`]; otherwise the consumer of a retry topic
//! waits for the message's due time itself (nack with delay where possible,
//! else sleeping in its lane). Headers record the level, the reason, the
//! original topic and the attempt count. Permanent errors and rejects pass
//! through (put a [`crate::dead_letter`] layer outside this one).
//!
//! Keep a [`crate::dedup`] layer *inside* this one: the retry copies keep
//! the message id.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};
use wharf_core::{header, Capability, Message, StartPosition, SubscribeOptions, Timestamp};

use crate::dead_letter::publish_dead_letter_to;
use crate::outcome::{HandlerError, HandlerResult, Outcome};
use crate::request::Request;

/// Header: the retry level a copy was published to (1 = first retry topic).
pub const RETRY_LEVEL: &str = "wharf-retry-level";
/// Header: why the previous attempt failed.
pub const RETRY_REASON: &str = "wharf-retry-reason";
/// Header: when the copy is due, in ms since the Unix epoch.
pub const RETRY_DUE_MS: &str = "wharf-retry-due-ms";

type NameFn = Arc<dyn Fn(&str, usize) -> String + Send + Sync>;

/// Leveled retry topics; see the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use wharf_router::retry_topics::RetryTopicsLayer;
/// let layer = RetryTopicsLayer::new([
///     Duration::from_secs(60),
///     Duration::from_secs(300),
///     Duration::from_secs(1800),
/// ]);
/// assert_eq!(
///     layer.retry_topics("orders"),
///     vec!["orders.retry.1", "orders.retry.2", "orders.retry.3"]
/// );
/// ```
#[derive(Clone)]
pub struct RetryTopicsLayer {
    delays: Arc<[Duration]>,
    name: NameFn,
    dead_letter_topic: Option<String>,
}

impl fmt::Debug for RetryTopicsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryTopicsLayer")
            .field("delays", &self.delays)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .finish_non_exhaustive()
    }
}

impl RetryTopicsLayer {
    /// One retry level per delay, in order.
    pub fn new(delays: impl IntoIterator<Item = Duration>) -> Self {
        RetryTopicsLayer {
            delays: delays.into_iter().collect(),
            name: Arc::new(|topic: &str, level: usize| format!("{topic}.retry.{level}")),
            dead_letter_topic: None,
        }
    }

    /// Names retry topics with `f(original_topic, level)` (level from 1).
    #[must_use]
    pub fn topic_names(
        mut self,
        f: impl Fn(&str, usize) -> String + Send + Sync + 'static,
    ) -> Self {
        self.name = Arc::new(f);
        self
    }

    /// Sends messages that failed every level to `topic` (default: the
    /// route's dead-letter topic of the original topic, `dlq.<topic>`).
    #[must_use]
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// The retry topics of `topic`, level 1 first.
    pub fn retry_topics(&self, topic: &str) -> Vec<String> {
        (1..=self.delays.len())
            .map(|l| (self.name)(topic, l))
            .collect()
    }

    /// Subscriptions for the retry topics of `base`'s topic, with `base`'s
    /// group and limits, reading from the earliest message.
    pub fn subscribe_options(&self, base: &SubscribeOptions) -> Vec<SubscribeOptions> {
        self.retry_topics(base.pattern())
            .into_iter()
            .map(|t| {
                let mut o = SubscribeOptions::new(t)
                    .start(StartPosition::Earliest)
                    .max_in_flight(base.max_in_flight_limit())
                    .mode(base.group_mode());
                if let Some(g) = base.group_name() {
                    o = o.group(g);
                }
                if let Some(v) = base.visibility_timeout_value() {
                    o = o.visibility_timeout(v);
                }
                o
            })
            .collect()
    }
}

impl<S> Layer<S> for RetryTopicsLayer {
    type Service = RetryTopics<S>;
    fn layer(&self, inner: S) -> RetryTopics<S> {
        RetryTopics {
            inner,
            layer: self.clone(),
            retried: crate::metrics::retried(),
            dead_lettered: crate::metrics::dead_lettered(),
        }
    }
}

/// The service made by [`RetryTopicsLayer`].
#[derive(Clone)]
pub struct RetryTopics<S> {
    inner: S,
    layer: RetryTopicsLayer,
    retried: metrics::Counter,
    dead_lettered: metrics::Counter,
}

impl<S> fmt::Debug for RetryTopics<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryTopics")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

fn header_u64(m: &Message, name: &str) -> Option<u64> {
    m.headers().get(name).and_then(|v| v.parse().ok())
}

impl<S> Service<Request> for RetryTopics<S>
where
    S: Service<Request, Response = Outcome, Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let this = self.clone();
        Box::pin(async move {
            let level = header_u64(req.message(), RETRY_LEVEL).unwrap_or(0) as usize;
            let caps = req.context().capabilities();
            // Without delayed publish the copy arrived early: wait for its
            // due time (once; a redelivery is due by construction).
            if level > 0 && !caps.contains(Capability::DelayedPublish) && req.attempt() == 1 {
                if let Some(due) = header_u64(req.message(), RETRY_DUE_MS) {
                    let now = Timestamp::now().as_millis();
                    if due > now {
                        let wait = Duration::from_millis(due - now);
                        if caps.contains(Capability::NackWithDelay) {
                            return Ok(Outcome::retry_after(wait));
                        }
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            let copy = req.message().clone();
            let info = req.info().clone();
            let ctx = req.context().clone();
            let result = inner.call(req).await;
            let reason = match &result {
                Err(e) if e.is_retryable() => e.to_string(),
                Ok(Outcome::Retry { .. }) => "handler asked for a retry".to_owned(),
                _ => return result,
            };
            let original = copy
                .headers()
                .get(header::ORIGINAL_TOPIC)
                .map_or_else(|| info.topic.to_string(), str::to_owned);
            let attempts = header_u64(&copy, header::ATTEMPTS).unwrap_or(0) + 1;
            let now = Timestamp::now();
            let mut b = copy
                .to_builder()
                .header(header::ORIGINAL_TOPIC, original.clone())
                .header(header::ATTEMPTS, attempts.to_string())
                .header(RETRY_REASON, reason.clone())
                .header(header::LAST_FAILURE_MS, now.as_millis().to_string());
            if !copy.headers().contains(header::FIRST_FAILURE_MS) {
                b = b.header(header::FIRST_FAILURE_MS, now.as_millis().to_string());
            }
            let next = level + 1;
            if next > this.layer.delays.len() {
                let mut m = b.build();
                m.headers_mut().remove(RETRY_DUE_MS);
                m.headers_mut().remove(RETRY_LEVEL);
                let dlq = this
                    .layer
                    .dead_letter_topic
                    .clone()
                    .unwrap_or_else(|| ctx.dead_letter_topic(&original));
                let reason = format!("retries exhausted after {attempts} attempts: {reason}");
                publish_dead_letter_to(&ctx, &dlq, m, &info, &reason).await?;
                this.dead_lettered.increment(1);
                tracing::warn!(topic = %original, %dlq, "message dead-lettered after the last retry level");
                return Ok(Outcome::Ack);
            }
            let delay = this.layer.delays[next - 1];
            let topic = (this.layer.name)(&original, next);
            b = b.header(RETRY_LEVEL, next.to_string()).header(
                RETRY_DUE_MS,
                now.saturating_add(delay).as_millis().to_string(),
            );
            if caps.contains(Capability::DelayedPublish) {
                b = b.deliver_after(delay);
            }
            ctx.publisher().publish(&topic, b.build()).await?;
            this.retried.increment(1);
            tracing::debug!(%topic, level = next, ?delay, "message sent to retry topic");
            Ok(Outcome::Ack)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler_fn;
    use crate::testing::{call, ctx};
    use wharf_core::Capabilities;

    fn always_failing(
    ) -> impl Service<Request, Response = Outcome, Error = HandlerError, Future = impl Send>
           + Clone
           + Send
           + 'static {
        handler_fn(|_req: Request| async { Err(HandlerError::retryable("db down")) })
    }

    fn layer() -> RetryTopicsLayer {
        RetryTopicsLayer::new([Duration::from_secs(60), Duration::from_secs(300)])
    }

    #[tokio::test(start_paused = true)]
    async fn failures_climb_the_levels_with_headers_then_reach_the_dlq() {
        let (c, p) = ctx();
        let svc = layer().layer(always_failing());
        let first = Message::builder().key("k").payload("order").build();
        let r = call(
            svc.clone(),
            Request::test("orders", first.clone(), c.clone()),
        )
        .await;
        assert_eq!(r.unwrap(), Outcome::Ack);
        let (t1, m1) = p.published().pop().unwrap();
        assert_eq!(t1, "orders.retry.1");
        assert_eq!(m1.id(), first.id());
        let h = m1.headers();
        assert_eq!(h.get(RETRY_LEVEL), Some("1"));
        assert_eq!(h.get(header::ORIGINAL_TOPIC), Some("orders"));
        assert_eq!(h.get(header::ATTEMPTS), Some("1"));
        assert_eq!(h.get(RETRY_REASON), Some("retryable failure: db down"));
        let due = m1.deliver_at().expect("delayed publish used").as_millis();
        let now = Timestamp::now().as_millis();
        assert!(
            (now + 59_000..=now + 61_000).contains(&due),
            "{due} vs {now}"
        );

        call(svc.clone(), Request::test(&t1, m1, c.clone()))
            .await
            .unwrap();
        let (t2, m2) = p.published().pop().unwrap();
        assert_eq!(t2, "orders.retry.2");
        assert_eq!(m2.headers().get(RETRY_LEVEL), Some("2"));
        assert_eq!(m2.headers().get(header::ATTEMPTS), Some("2"));

        call(svc, Request::test(&t2, m2, c)).await.unwrap();
        let (t3, m3) = p.published().pop().unwrap();
        assert_eq!(t3, "dlq.orders");
        assert_eq!(m3.headers().get(header::ATTEMPTS), Some("3"));
        assert_eq!(m3.headers().get(header::ORIGINAL_TOPIC), Some("orders"));
        assert_eq!(m3.deliver_at(), None);
        assert!(m3
            .headers()
            .get(header::DLQ_REASON)
            .unwrap()
            .starts_with("retries exhausted after 3 attempts"));
        assert_eq!(p.published().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn success_and_permanent_errors_pass_through_without_republishing() {
        let (c, p) = ctx();
        let svc = layer().layer(handler_fn(|req: Request| async move {
            if req.message().payload().as_ref() == b"bad" {
                Err(HandlerError::permanent("bad"))
            } else {
                Ok(Outcome::Ack)
            }
        }));
        let ok = call(
            svc.clone(),
            Request::test("o", Message::new("good"), c.clone()),
        )
        .await;
        assert_eq!(ok.unwrap(), Outcome::Ack);
        let bad = call(svc, Request::test("o", Message::new("bad"), c)).await;
        assert!(matches!(bad, Err(HandlerError::Permanent { .. })));
        assert!(p.published().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn without_delayed_publish_an_early_copy_is_nacked_until_due() {
        let (c, p) = ctx();
        let c = c.with_capabilities(Capabilities::all().without(Capability::DelayedPublish));
        let svc = layer().layer(always_failing());
        call(
            svc.clone(),
            Request::test("orders", Message::new("x"), c.clone()),
        )
        .await
        .unwrap();
        let (t1, m1) = p.published().pop().unwrap();
        assert_eq!(m1.deliver_at(), None);
        assert!(m1.headers().contains(RETRY_DUE_MS));
        let r = call(svc, Request::test(&t1, m1, c)).await.unwrap();
        let Outcome::Retry { delay } = r else {
            panic!("expected a delayed retry, got {r:?}");
        };
        assert!(delay > Duration::from_secs(58) && delay <= Duration::from_secs(60));
        assert_eq!(p.published().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn without_any_delay_capability_the_consumer_sleeps_until_due() {
        let (c, p) = ctx();
        let c = c.with_capabilities(
            Capabilities::all()
                .without(Capability::DelayedPublish)
                .without(Capability::NackWithDelay),
        );
        let svc = layer().layer(always_failing());
        call(
            svc.clone(),
            Request::test("orders", Message::new("x"), c.clone()),
        )
        .await
        .unwrap();
        let (t1, m1) = p.published().pop().unwrap();
        let start = tokio::time::Instant::now();
        call(svc, Request::test(&t1, m1, c)).await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_secs(58),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(p.published().last().unwrap().0, "orders.retry.2");
    }

    #[test]
    fn names_and_subscriptions_follow_the_configuration() {
        let l = layer().topic_names(|t, n| format!("{t}-retry-{n}"));
        assert_eq!(l.retry_topics("a"), vec!["a-retry-1", "a-retry-2"]);
        let subs = l.subscribe_options(&SubscribeOptions::new("a").group("g").max_in_flight(7));
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[1].pattern(), "a-retry-2");
        assert_eq!(subs[1].group_name(), Some("g"));
        assert_eq!(subs[1].max_in_flight_limit(), 7);
    }
}
