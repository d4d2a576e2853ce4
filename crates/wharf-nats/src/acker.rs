//! Settling JetStream deliveries: ack, nak (with delay), term, in-progress,
//! and dead-lettering (copy to the DLQ topic with `wharf-dlq-*` headers, then term).
//!
//! One [`NatsAcker`] serves every delivery of a subscription; it also owns
//! the subscription's in-flight slots ([`InFlight`]), returned as
//! deliveries are settled.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Subject;
use async_trait::async_trait;
use bytes::Bytes;
use wharf_adapter::InFlight;
use wharf_core::{name, Acker, Error, Message, Result, Settlement, Timestamp};

use crate::backend::Shared;
use crate::error::unavailable;

/// A delivery handed out and not yet settled.
pub(crate) struct Pending {
    /// The ack subject (empty when there is no delivery to settle).
    pub(crate) reply: Subject,
    pub(crate) message: Message,
    pub(crate) topic: Arc<str>,
    pub(crate) seq: u64,
    pub(crate) attempt: u32,
}

/// Settles the deliveries of one subscription.
pub(crate) struct NatsAcker {
    pub(crate) shared: Arc<Shared>,
    pub(crate) consumer: String,
    pub(crate) group: Option<String>,
    pub(crate) dead_letter_topic: Option<String>,
    pub(crate) max_deliveries: Option<u32>,
    pub(crate) ack_wait: Duration,
    pub(crate) in_flight: InFlight<Pending>,
    pub(crate) runtime: tokio::runtime::Handle,
    /// Dropped deliveries waiting to be nacked (lowest stream sequence first).
    pub(crate) release_queue: Mutex<std::collections::VecDeque<Pending>>,
    /// Held while draining `release_queue`, so naks go out in stream order
    /// (independent tasks could reorder them, and JetStream redelivers in nak order).
    pub(crate) release_lock: tokio::sync::Mutex<()>,
    /// Set once the subscription's inbox is gone. NATS 2.9
    /// mishandles redelivering into a pull request whose inbox has no
    /// interest (it rewinds the consumer instead of requeueing: the nacked
    /// message stays pending until AckWait and a later one is delivered
    /// twice), so releases wait until that request has expired.
    pub(crate) abandoned: std::sync::atomic::AtomicBool,
    /// When the last pull request sent for this subscription expires.
    pub(crate) request_until: Mutex<Option<tokio::time::Instant>>,
    /// This acker itself, for the drain task spawned from `release`.
    pub(crate) me: std::sync::Weak<NatsAcker>,
}

fn now_ms() -> u64 {
    Timestamp::now().as_millis()
}

impl NatsAcker {
    async fn send(&self, reply: &Subject, body: impl Into<Bytes>) -> Result<()> {
        self.shared
            .client
            .publish(reply.clone(), body.into())
            .await
            .map_err(|e| unavailable("settle", e))
    }

    fn failure_key(&self, p: &Pending) -> (String, u64) {
        (self.consumer.clone(), p.seq)
    }

    fn forget_failure(&self, p: &Pending) {
        self.forget_failures(std::slice::from_ref(p).iter());
    }

    /// Forgets the first failures of `settled` under one lock (none are
    /// recorded unless a delivery was nacked or rejected).
    fn forget_failures<'a>(&self, settled: impl Iterator<Item = &'a Pending>) {
        let mut failures = self
            .shared
            .first_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if failures.is_empty() {
            return;
        }
        for p in settled {
            failures.remove(&self.failure_key(p));
        }
    }

    /// A failed attempt: redeliver after `delay`, or dead-letter on the last attempt.
    async fn fail(&self, p: Pending, delay: Duration) -> Result<()> {
        self.shared
            .first_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(self.failure_key(&p))
            .or_insert_with(now_ms);
        if let Some(max) = self.max_deliveries.filter(|m| p.attempt >= *m) {
            let reason = format!("max deliveries ({max}) exceeded");
            return self.dead_letter(p, &reason).await;
        }
        if delay.is_zero() {
            self.send(&p.reply, Bytes::from_static(b"-NAK")).await
        } else {
            let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
            self.send(&p.reply, format!("-NAK {{\"delay\":{nanos}}}"))
                .await
        }
    }

    /// Copies the message to the dead-letter topic, then terms it (when
    /// `p.reply` is empty there is no delivery to term).
    pub(crate) async fn dead_letter(&self, p: Pending, reason: &str) -> Result<()> {
        let now = now_ms();
        let first = self
            .shared
            .first_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.failure_key(&p))
            .unwrap_or(now);
        let mut copy = p.message.clone();
        wharf_core::DeadLetter {
            reason,
            topic: &p.topic,
            partition: 0,
            offset: Some(p.seq),
            group: self.group.as_deref(),
            attempts: p.attempt,
            first_failure_ms: first,
            last_failure_ms: now,
        }
        .stamp(&mut copy);
        let topic = self
            .dead_letter_topic
            .clone()
            .unwrap_or_else(|| name::dead_letter_topic(&p.topic));
        // The copy's Msg-Id is per consumer, so two groups dead-lettering one
        // message both land, and a retried dead-lettering is deduplicated.
        let msg_id = format!("{}:dlq:{}", copy.id(), self.consumer);
        let (subject, publish) = self.shared.prepare(&topic, &copy, &msg_id)?;
        self.shared
            .send(subject, publish)
            .await?
            .await
            .map_err(|e| self.shared.publish_error(e))?;
        if p.reply.is_empty() {
            return Ok(());
        }
        self.send(&p.reply, Bytes::from_static(b"+TERM")).await
    }
}

#[async_trait]
impl Acker for NatsAcker {
    async fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        let p = self.in_flight.take(token)?;
        match settlement {
            Settlement::Ack => {
                self.forget_failure(&p);
                self.send(&p.reply, Bytes::from_static(b"+ACK")).await
            }
            Settlement::Nack { delay } => self.fail(p, delay).await,
            Settlement::Reject { reason } => {
                self.shared
                    .first_failures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(self.failure_key(&p))
                    .or_insert_with(now_ms);
                self.dead_letter(p, &reason).await
            }
            _ => Err(Error::Unsupported {
                backend: crate::backend::NAME,
                capability: wharf_core::Capability::DeadLetter,
            }),
        }
    }

    async fn extend(&self, token: u64, by: Duration) -> Result<()> {
        let reply = self.in_flight.get(token, |p| p.reply.clone())?;
        self.send(&reply, Bytes::from_static(b"+WPI")).await?;
        // `+WPI` restarts AckWait; keep sending it until `by` is covered.
        let client = self.shared.client.clone();
        let touch = move || {
            let (client, reply) = (client.clone(), reply.clone());
            async move {
                let _ = client.publish(reply, Bytes::from_static(b"+WPI")).await;
            }
        };
        self.in_flight
            .keep_lease(token, &self.runtime, self.ack_wait, by, touch);
        Ok(())
    }

    fn release(&self, token: u64) {
        let Ok(p) = self.in_flight.take(token) else {
            return;
        };
        // `release` runs inside `Delivery::drop` while the delivery still
        // holds its `Arc`, so `requeue` can upgrade `me`.
        self.requeue(p);
    }

    /// The batch leaves the in-flight table under one lock; then one `+ACK`
    /// per delivery (JetStream acks one message at a time).
    async fn ack_many(&self, tokens: &[u64], failed: &mut Vec<(u64, Error)>) {
        let mut taken = Vec::with_capacity(tokens.len());
        self.in_flight.take_many(tokens, &mut taken, failed);
        self.forget_failures(taken.iter().map(|(_, p)| p));
        for (token, p) in taken {
            if let Err(e) = self.send(&p.reply, Bytes::from_static(b"+ACK")).await {
                failed.push((token, e));
            }
        }
    }
}

impl NatsAcker {
    /// Nacks `p` (counting as a failed attempt) in a background drain that
    /// sends queued releases lowest stream sequence first.
    pub(crate) fn requeue(&self, p: Pending) {
        self.release_queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(p);
        if let Some(me) = self.me.upgrade() {
            self.runtime.spawn(async move { me.drain_releases().await });
        }
    }

    async fn drain_releases(&self) {
        let _order = self.release_lock.lock().await;
        if self.abandoned.load(Ordering::Acquire) {
            let until = *self.request_until.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(until) = until {
                tokio::time::sleep_until(until).await;
            }
        }
        loop {
            // Lowest stream sequence first: after a close, the puller's
            // unread messages are queued before deliveries the application
            // drops later, yet must come back after them.
            let next = {
                let mut q = self.release_queue.lock().unwrap_or_else(|e| e.into_inner());
                let first = q
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, p)| p.seq)
                    .map(|(i, _)| i);
                first.and_then(|i| q.remove(i))
            };
            let Some(p) = next else { break };
            if let Err(e) = self.fail(p, Duration::ZERO).await {
                tracing::warn!(error = %e, "releasing a dropped nats delivery failed");
            }
        }
        let _ = self.shared.client.flush().await;
    }
}
