//! Consuming: a channel per subscription with `basic.qos` = max in flight, a
//! durable queue per (group, pattern) or an exclusive one for a private
//! subscription, and the acker that settles by delivery tag.
//!
//! Ack is `basic.ack`. Nack republishes a copy with the attempt count
//! raised — straight to the queue, or through a per-delay TTL queue that
//! dead-letters back into it — and then acks the original; reject and max
//! deliveries publish a copy with the dead-letter headers to `dlq.<topic>`
//! on the exchange, then ack. All copies wait for the publisher confirm
//! before the ack, so a crash in between duplicates, never loses.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Consumer};
use tokio::sync::watch;
use wharf_core::{
    name, Acker, Capability, DeadLetter, Delivery, DeliveryInfo, DeliveryStream, Error, Message,
    MessageId, Result, Settlement, StartPosition, SubscribeOptions, Subscription, Timestamp,
    TopicPattern,
};

use crate::backend::{amqp_err, binding_key, Inner, NAME};
use crate::wire;

/// Priority levels of a priority queue (`x-max-priority`), with
/// [`AmqpConfig::priorities`](crate::AmqpConfig::priorities).
const MAX_PRIORITY: i32 = 9;

/// Queue name for a group: `wharf.<ns>.g.<group>.<pattern>`, or a hashed
/// suffix when that would pass AMQP's 255-byte limit.
fn group_queue(ns: &str, group: &str, pattern: &str) -> String {
    let plain = format!("wharf.{ns}.g.{group}.{pattern}");
    if plain.len() <= 240 {
        return plain;
    }
    // FNV-1a: stable across processes and versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group.bytes().chain([0]).chain(pattern.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("wharf.{ns}.g.{h:016x}")
}

/// Rounds a redelivery delay up to a bucket, so one TTL queue serves many
/// delays and a message is never redelivered early: 100 ms steps below 10 s,
/// 1 s steps below 10 min, 1 min steps above.
pub(crate) fn delay_bucket(d: Duration) -> Duration {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let step = if ms < 10_000 {
        100
    } else if ms < 600_000 {
        1_000
    } else {
        60_000
    };
    Duration::from_millis(ms.div_ceil(step).saturating_mul(step))
}

fn queue_args(priorities: bool) -> FieldTable {
    let mut args = FieldTable::default();
    if priorities {
        args.insert("x-max-priority".into(), AMQPValue::LongInt(MAX_PRIORITY));
    }
    args
}

/// Declares (and binds) the subscription's queue and starts consuming.
pub(crate) async fn open_subscription(
    inner: Arc<Inner>,
    options: SubscribeOptions,
    pattern: TopicPattern,
) -> Result<Subscription> {
    let ch = inner.conn.create_channel().await.map_err(amqp_err)?;
    let group = options.group_name().map(str::to_owned);
    let queue = match &group {
        Some(g) => {
            let q = group_queue(&inner.config.namespace, g, pattern.as_str());
            // A passive declare on a throwaway channel (a miss closes it).
            let probe = inner.conn.create_channel().await.map_err(amqp_err)?;
            let existed = probe
                .queue_declare(
                    ShortString::from(q.as_str()),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .is_ok();
            if probe.status().connected() {
                let _ = probe.close(200, ShortString::from("probed")).await;
            }
            if existed {
                // As it was created: redeclaring it with other arguments
                // (a priority queue or not) would fail.
                inner.config.record(false, &q);
            } else {
                inner
                    .declare_queue(&ch, &q, queue_args(inner.config.priorities), Duration::ZERO)
                    .await?;
            }
            (q, existed)
        }
        None => {
            let q = ch
                .queue_declare(
                    ShortString::from(""),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    queue_args(inner.config.priorities),
                )
                .await
                .map_err(amqp_err)?;
            (q.name().as_str().to_owned(), false)
        }
    };
    let (queue, existed) = queue;
    ch.queue_bind(
        ShortString::from(queue.as_str()),
        ShortString::from(inner.exchange.as_str()),
        ShortString::from(binding_key(pattern.as_str())),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(amqp_err)?;
    if !existed && options.start_position() == StartPosition::Earliest {
        inner.adopt_backlog(&queue, &pattern).await?;
    }
    let prefetch = u16::try_from(options.max_in_flight_limit()).unwrap_or(u16::MAX);
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(amqp_err)?;
    let consumer = ch
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp_err)?;
    let acker = Arc::new(AmqpAcker {
        settler: Settler {
            inner: inner.clone(),
            ch: ch.clone(),
            queue,
            group,
            max_deliveries: options.max_deliveries_limit(),
            dead_letter_topic: options.dead_letter_topic_name().map(str::to_owned),
            settling: Arc::default(),
        },
        held: Mutex::default(),
        runtime: tokio::runtime::Handle::current(),
    });
    Ok(Subscription::new(AmqpStream {
        consumer: Some(consumer),
        acker,
        closed: inner.closed.subscribe(),
        topic: None,
    }))
}

/// What the acker keeps of a handed-out delivery: the broker's properties
/// and body as received (moved, not copied), from which a nack, reject or
/// release rebuilds the message it republishes.
struct Held {
    topic: Arc<str>,
    props: BasicProperties,
    body: Bytes,
    /// The id and timestamp handed out (a foreign message's may be made up).
    id: MessageId,
    timestamp: Timestamp,
    /// This delivery's attempt number.
    attempt: u32,
    first_failure_ms: Option<u64>,
}

impl Held {
    fn message(&self) -> Message {
        wire::rebuild(&self.props, self.body.clone(), self.id, self.timestamp)
    }
}

struct AmqpStream {
    consumer: Option<Consumer>,
    acker: Arc<AmqpAcker>,
    closed: watch::Receiver<bool>,
    /// The last delivery's topic, shared by the next ones while it repeats.
    topic: Option<Arc<str>>,
}

impl AmqpStream {
    /// Turns a broker delivery into a Wharf one; `None` (acked) when the
    /// message expired while it waited in a delay queue.
    fn deliver(&mut self, d: lapin::message::Delivery) -> Option<Delivery> {
        let tag = d.delivery_tag;
        let body = Bytes::from(d.data);
        let decoded = wire::decode(
            d.routing_key.as_str(),
            &self.acker.settler.queue,
            &d.properties,
            body.clone(),
            &mut self.topic,
        );
        // No clock read unless the message has a TTL.
        if decoded
            .message
            .expires_at()
            .is_some_and(|e| e.as_millis() <= Timestamp::now().as_millis())
        {
            let settler = self.acker.settler.clone();
            let settling = settler.settling(tag);
            self.acker.runtime.spawn(async move {
                let _ = settler.ack(tag).await;
                drop(settling);
            });
            return None;
        }
        // A broker redelivery (consumer or connection lost) is one more attempt
        // than our header counts.
        let attempt = decoded.attempts + 1 + u32::from(d.redelivered);
        let info = DeliveryInfo {
            topic: decoded.topic.clone(),
            partition: 0,
            offset: None,
            attempt,
        };
        let held = Held {
            topic: decoded.topic,
            props: d.properties,
            body,
            id: decoded.message.id(),
            timestamp: decoded.message.timestamp(),
            attempt,
            first_failure_ms: decoded.first_failure_ms,
        };
        if let Ok(mut map) = self.acker.held.lock() {
            map.insert(tag, held);
        }
        Some(Delivery::new(
            decoded.message,
            info,
            self.acker.clone(),
            tag,
        ))
    }

    /// Cancels the consumer and requeues what it had prefetched but not handed out.
    async fn stop(consumer: Consumer, ch: Channel) {
        let mut consumer = consumer;
        if ch.status().connected() {
            let _ = ch
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await;
        }
        while let Some(Some(Ok(d))) = consumer.next().now_or_never() {
            let _ = d
                .acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await;
        }
    }
}

#[async_trait]
impl DeliveryStream for AmqpStream {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            let consumer = self.consumer.as_mut()?;
            let mut closed = self.closed.clone();
            let got = tokio::select! {
                biased;
                _ = closed.wait_for(|c| *c) => None,
                d = consumer.next() => d,
            };
            match got {
                Some(Ok(d)) => match self.deliver(d) {
                    Some(d) => return Some(Ok(d)),
                    None => continue,
                },
                Some(Err(e)) => return Some(Err(amqp_err(e))),
                None => {
                    self.consumer = None;
                    return None;
                }
            }
        }
    }

    fn try_next(&mut self) -> Option<Result<Delivery>> {
        if *self.closed.borrow() {
            return None;
        }
        loop {
            let consumer = self.consumer.as_mut()?;
            match consumer.next().now_or_never()? {
                Some(Ok(d)) => {
                    if let Some(d) = self.deliver(d) {
                        return Some(Ok(d));
                    }
                }
                Some(Err(e)) => return Some(Err(amqp_err(e))),
                None => return None,
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(c) = self.consumer.take() {
            Self::stop(c, self.acker.settler.ch.clone()).await;
        }
        Ok(())
    }
}

impl Drop for AmqpStream {
    fn drop(&mut self) {
        if let Some(c) = self.consumer.take() {
            let ch = self.acker.settler.ch.clone();
            self.acker.runtime.spawn(Self::stop(c, ch));
        }
    }
}

/// The settling logic, cheap to clone into a spawned release.
#[derive(Clone)]
struct Settler {
    inner: Arc<Inner>,
    ch: Channel,
    queue: String,
    group: Option<String>,
    max_deliveries: Option<u32>,
    dead_letter_topic: Option<String>,
    /// Tags taken out of [`AmqpAcker::held`] (or never put there) whose own
    /// ack or nack is not yet sent; see [`AmqpAcker::ack_many`].
    settling: Arc<Mutex<BTreeSet<u64>>>,
}

/// A tag in [`Settler::settling`], removed on drop.
struct Settling {
    set: Arc<Mutex<BTreeSet<u64>>>,
    tag: u64,
}

impl Drop for Settling {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.tag);
        }
    }
}

impl Settler {
    /// Marks `tag` as being settled on its own until the guard is dropped.
    fn settling(&self, tag: u64) -> Settling {
        if let Ok(mut set) = self.settling.lock() {
            set.insert(tag);
        }
        Settling {
            set: self.settling.clone(),
            tag,
        }
    }

    async fn ack(&self, token: u64) -> Result<()> {
        self.ch
            .basic_ack(token, BasicAckOptions::default())
            .await
            .map_err(amqp_err)
    }

    async fn redeliver(&self, token: u64, held: Held, delay: Duration) -> Result<()> {
        let now = Timestamp::now().as_millis();
        if self.max_deliveries.is_some_and(|max| held.attempt >= max) {
            return self
                .dead_letter(token, held, "max deliveries exceeded", now)
                .await;
        }
        let first = held.first_failure_ms.unwrap_or(now);
        let message = held.message();
        // Back to the queue, straight or through a delay queue that
        // dead-letters it with the queue's name as routing key.
        let props = wire::properties(
            &held.topic,
            &self.queue,
            &message,
            held.attempt,
            Some(first),
        );
        if let Some(props) = props {
            let body = message.payload();
            if delay.is_zero() {
                self.inner
                    .publish_confirmed("", &self.queue, body, props)
                    .await?;
            } else {
                let dq = self.delay_queue(delay_bucket(delay)).await?;
                self.inner.publish_confirmed("", &dq, body, props).await?;
            }
        }
        self.ack(token).await
    }

    /// The TTL queue that dead-letters into this subscription's queue after `bucket`.
    async fn delay_queue(&self, bucket: Duration) -> Result<String> {
        let ms = i64::try_from(bucket.as_millis()).unwrap_or(i64::MAX);
        let name = format!("{}.delay.{ms}", self.queue);
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(Vec::new())),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(self.queue.as_bytes().to_vec())),
        );
        // The queue must outlive what it holds.
        let keep = bucket * 2 + Duration::from_secs(60);
        self.inner
            .declare_queue(&self.inner.publish_channel().await?, &name, args, keep)
            .await?;
        Ok(name)
    }

    async fn dead_letter(&self, token: u64, held: Held, reason: &str, now: u64) -> Result<()> {
        let mut m = held.message();
        DeadLetter {
            reason,
            topic: &held.topic,
            partition: 0,
            offset: None,
            group: self.group.as_deref(),
            attempts: held.attempt,
            first_failure_ms: held.first_failure_ms.unwrap_or(now),
            last_failure_ms: now,
        }
        .stamp(&mut m);
        let dlq = self
            .dead_letter_topic
            .clone()
            .unwrap_or_else(|| name::dead_letter_topic(&held.topic));
        let props = wire::properties(&dlq, &dlq, &m, 0, None).ok_or_else(|| Error::Backend {
            backend: NAME,
            source: "dead letter expired".into(),
        })?;
        self.inner
            .publish_confirmed(&self.inner.exchange, &dlq, m.payload(), props)
            .await?;
        self.ack(token).await
    }
}

/// Settles one subscription's deliveries by delivery tag; closes the
/// subscription's channel once the stream and every delivery are gone.
struct AmqpAcker {
    settler: Settler,
    held: Mutex<HashMap<u64, Held>>,
    runtime: tokio::runtime::Handle,
}

impl AmqpAcker {
    /// Takes a delivery out to settle it on its own; marked as settling
    /// under the same lock, so [`AmqpAcker::ack_many`] never sees it in
    /// neither place.
    fn take(&self, token: u64) -> Result<(Held, Settling)> {
        let mut held = self.held.lock().map_err(|_| unknown(token))?;
        let h = held.remove(&token).ok_or_else(|| unknown(token))?;
        Ok((h, self.settler.settling(token)))
    }

    /// Takes the deliveries of `tokens` out (failing the unknown ones) and
    /// says whether one `basic.ack` with `multiple` up to the highest would
    /// ack exactly them: no other delivery below it is still held or
    /// settling on its own (every lower tag has been handed out, since the
    /// stream hands them out in tag order).
    /// The entries taken out are dropped after the lock is released (their
    /// properties' header tables are freed then, not while the stream waits
    /// to register its next delivery).
    fn take_batch(&self, tokens: &[u64], failed: &mut Vec<(u64, Error)>) -> (Vec<u64>, bool) {
        let mut gone = Vec::with_capacity(tokens.len());
        let Ok(mut held) = self.held.lock() else {
            failed.extend(tokens.iter().map(|&t| (t, unknown(t))));
            return (Vec::new(), false);
        };
        let mut taken = Vec::with_capacity(tokens.len());
        for &t in tokens {
            match held.remove(&t) {
                Some(h) => {
                    taken.push(t);
                    gone.push(h);
                }
                None => failed.push((t, unknown(t))),
            }
        }
        let Some(&max) = taken.iter().max() else {
            return (taken, false);
        };
        let settling_below = self
            .settler
            .settling
            .lock()
            .map_or(true, |s| s.range(..max).next().is_some());
        let covers = !settling_below && !held.keys().any(|&k| k < max);
        drop(held);
        drop(gone);
        (taken, covers)
    }
}

fn unknown(token: u64) -> Error {
    Error::UnknownDelivery {
        id: token.to_string(),
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        let (held, _settling) = self.take(token)?;
        let s = &self.settler;
        match settlement {
            Settlement::Ack => s.ack(token).await,
            Settlement::Nack { delay } => s.redeliver(token, held, delay).await,
            Settlement::Reject { reason } => {
                let now = Timestamp::now().as_millis();
                s.dead_letter(token, held, &reason, now).await
            }
            _ => Err(Error::InvalidArgument {
                name: "settlement",
                reason: "unknown settlement kind".into(),
            }),
        }
    }

    /// One `basic.ack` with `multiple` up to the batch's highest tag when
    /// that acks exactly the batch (the usual case: a consumer acking all it
    /// took), as RabbitMQ's own clients do; otherwise every `basic.ack` of the
    /// batch is sent before any is awaited (lapin resolves each once its
    /// frame is written, so one by one costs an I/O-loop hand-off each).
    async fn ack_many(&self, tokens: &[u64], failed: &mut Vec<(u64, Error)>) {
        let (sending, covers) = self.take_batch(tokens, failed);
        if covers {
            let max = sending.iter().copied().max().unwrap_or(0);
            let r = self
                .settler
                .ch
                .basic_ack(max, BasicAckOptions { multiple: true })
                .await;
            if let Err(e) = r {
                let e = amqp_err(e);
                let msg = e.to_string();
                failed.extend(sending.into_iter().map(|t| {
                    (
                        t,
                        Error::Backend {
                            backend: NAME,
                            source: msg.clone().into(),
                        },
                    )
                }));
            }
            return;
        }
        let sent =
            futures_util::future::join_all(sending.iter().map(|&t| self.settler.ack(t))).await;
        for (token, r) in sending.into_iter().zip(sent) {
            if let Err(e) = r {
                failed.push((token, e));
            }
        }
    }

    async fn extend(&self, _token: u64, _by: Duration) -> Result<()> {
        Err(Error::Unsupported {
            backend: NAME,
            capability: Capability::ExtendLease,
        })
    }

    fn release(&self, token: u64) {
        let Ok((held, settling)) = self.take(token) else {
            return;
        };
        // Channel gone: the broker has already requeued the message.
        if !self.settler.ch.status().connected() {
            return;
        }
        let settler = self.settler.clone();
        self.runtime.spawn(async move {
            let _settling = settling;
            if let Err(e) = settler.redeliver(token, held, Duration::ZERO).await {
                tracing::warn!(error = %e, "releasing a dropped delivery failed; the broker requeues it when the channel closes");
            }
        });
    }
}

impl Drop for AmqpAcker {
    fn drop(&mut self) {
        let ch = self.settler.ch.clone();
        if ch.status().connected() {
            self.runtime.spawn(async move {
                let _ = ch.close(200, ShortString::from("subscription done")).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_to_their_bucket() {
        assert_eq!(
            delay_bucket(Duration::from_millis(1)),
            Duration::from_millis(100)
        );
        assert_eq!(
            delay_bucket(Duration::from_millis(1000)),
            Duration::from_millis(1000)
        );
        assert_eq!(
            delay_bucket(Duration::from_millis(1001)),
            Duration::from_millis(1100)
        );
        assert_eq!(
            delay_bucket(Duration::from_millis(12_345)),
            Duration::from_secs(13)
        );
        assert_eq!(
            delay_bucket(Duration::from_secs(601)),
            Duration::from_secs(660)
        );
    }

    #[test]
    fn long_group_queue_names_are_hashed_below_the_amqp_limit() {
        assert_eq!(group_queue("ns", "g", "a.*"), "wharf.ns.g.g.a.*");
        let long = group_queue("ns", &"g".repeat(128), &"p".repeat(200));
        assert!(
            long.len() <= 255 && long.starts_with("wharf.ns.g."),
            "{long}"
        );
        assert_eq!(long, group_queue("ns", &"g".repeat(128), &"p".repeat(200)));
    }
}
