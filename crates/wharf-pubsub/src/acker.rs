//! Settling Pub/Sub deliveries: `Acknowledge` for ack, `ModifyAckDeadline`
//! for nack (deadline 0), nack with delay (deadline = the delay) and extend,
//! and dead-lettering (publish a copy with the `wharf-dlq-*` headers to the
//! dead-letter topic, then acknowledge).
//!
//! One [`PubSubAcker`] serves every delivery of a subscription; it also
//! owns the subscription's in-flight slots ([`InFlight`]), returned as
//! deliveries are settled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gcloud_googleapis::pubsub::v1::{AcknowledgeRequest, ModifyAckDeadlineRequest};
use wharf_adapter::InFlight;
use wharf_core::{Acker, Error, Message, Result, Settlement, Timestamp};

use crate::backend::Shared;

/// Pub/Sub's longest ack deadline: a longer nack delay is cut to it, and
/// `extend` renews the lease in steps of at most this.
pub(crate) const MAX_ACK_DEADLINE: Duration = Duration::from_secs(600);

/// Ack ids per `Acknowledge` request (Pub/Sub caps a request at 512 KiB).
const ACK_CHUNK: usize = 1000;

/// A delivery handed out and not yet settled.
pub(crate) struct Pending {
    /// Receive order within the subscription.
    pub(crate) seq: u64,
    /// Its share of the subscription's outstanding-bytes budget, returned
    /// when the record is dropped (settled, released or lapsed).
    pub(crate) _bytes: Option<tokio::sync::OwnedSemaphorePermit>,
    pub(crate) ack_id: String,
    /// Pub/Sub's message id: the same for every redelivery.
    pub(crate) pubsub_id: String,
    pub(crate) message: Message,
    pub(crate) topic: Arc<str>,
    pub(crate) attempt: u32,
}

/// Settles the deliveries of one subscription.
pub(crate) struct PubSubAcker {
    pub(crate) shared: Arc<Shared>,
    /// The full subscription name (`projects/…/subscriptions/…`).
    pub(crate) subscription: String,
    pub(crate) group: Option<String>,
    /// The Wharf topic dead letters go to.
    pub(crate) dead_letter_topic: String,
    pub(crate) max_deliveries: Option<u32>,
    pub(crate) lease: Duration,
    pub(crate) in_flight: InFlight<Pending>,
    pub(crate) runtime: tokio::runtime::Handle,
    /// When the first failed attempt of a message (by Pub/Sub id) happened.
    pub(crate) first_failures: Mutex<HashMap<String, u64>>,
    /// Dropped deliveries waiting to be nacked.
    pub(crate) release_queue: Mutex<Vec<Pending>>,
    /// Held while draining `release_queue`, so nacks go out in receive
    /// order (independent tasks could reorder them, and Pub/Sub redelivers
    /// in nack order).
    pub(crate) release_lock: tokio::sync::Mutex<()>,
    /// A private subscription's Pub/Sub subscription, deleted once nothing
    /// can settle through it any more (this acker is dropped).
    pub(crate) delete_on_drop: bool,
}

fn now_ms() -> u64 {
    Timestamp::now().as_millis()
}

/// Whole seconds covering `d` (Pub/Sub deadlines are in seconds), at most
/// [`MAX_ACK_DEADLINE`].
pub(crate) fn deadline_secs(d: Duration) -> i32 {
    let d = d.min(MAX_ACK_DEADLINE);
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(600)
}

impl PubSubAcker {
    pub(crate) async fn acknowledge(&self, ack_ids: Vec<String>) -> Result<()> {
        let req = AcknowledgeRequest {
            subscription: self.subscription.clone(),
            ack_ids,
        };
        self.shared
            .subscriber
            .acknowledge(req, None)
            .await
            .map(drop)
            .map_err(|e| self.shared.status("acknowledge", e))
    }

    pub(crate) async fn modify_deadline(&self, ack_id: &str, secs: i32) -> Result<()> {
        modify_deadline(&self.shared, &self.subscription, ack_id, secs).await
    }

    fn note_failure(&self, p: &Pending) {
        self.first_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(p.pubsub_id.clone())
            .or_insert_with(now_ms);
    }

    fn forget_failure(&self, p: &Pending) {
        self.first_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p.pubsub_id);
    }

    /// A failed attempt: redeliver after `delay`, or dead-letter on the last attempt.
    async fn fail(&self, p: Pending, delay: Duration) -> Result<()> {
        self.note_failure(&p);
        if let Some(max) = self.max_deliveries.filter(|m| p.attempt >= *m) {
            let reason = format!("max deliveries ({max}) exceeded");
            return self.dead_letter(p, &reason, None).await;
        }
        self.modify_deadline(&p.ack_id, deadline_secs(delay)).await
    }

    /// Publishes a stamped copy of `p` to the dead-letter topic, then
    /// acknowledges it. `attempts` overrides the attempt count stamped
    /// (a message whose last lease lapsed is dead-lettered on its next
    /// delivery, which did not count).
    pub(crate) async fn dead_letter(
        &self,
        p: Pending,
        reason: &str,
        attempts: Option<u32>,
    ) -> Result<()> {
        let now = now_ms();
        let first = self
            .first_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p.pubsub_id)
            .unwrap_or(now);
        let mut copy = p.message.clone();
        wharf_core::DeadLetter {
            reason,
            topic: &p.topic,
            partition: 0,
            offset: None,
            group: self.group.as_deref(),
            attempts: attempts.unwrap_or(p.attempt),
            first_failure_ms: first,
            last_failure_ms: now,
        }
        .stamp(&mut copy);
        let encoded = crate::wire::encode(&copy, &wharf_core::Limits::new(usize::MAX))?;
        self.shared
            .send(&self.dead_letter_topic, vec![encoded])
            .await?;
        self.acknowledge(vec![p.ack_id]).await
    }

    /// Settles `p` as a dropped delivery (a failed attempt), in a
    /// background drain that nacks queued releases in receive order.
    fn requeue(self: &Arc<Self>, p: Pending) {
        self.release_queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p);
        let me = self.clone();
        self.runtime.spawn(async move { me.drain_releases().await });
    }

    async fn drain_releases(&self) {
        let _order = self.release_lock.lock().await;
        loop {
            let next = {
                let mut q = self.release_queue.lock().unwrap_or_else(|e| e.into_inner());
                let first = q
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, p)| p.seq)
                    .map(|(i, _)| i);
                first.map(|i| q.swap_remove(i))
            };
            let Some(p) = next else { break };
            if let Err(e) = self.fail(p, Duration::ZERO).await {
                tracing::warn!(error = %e, "releasing a dropped pubsub delivery failed");
            }
        }
    }
}

pub(crate) async fn modify_deadline(
    shared: &Shared,
    subscription: &str,
    ack_id: &str,
    secs: i32,
) -> Result<()> {
    let req = ModifyAckDeadlineRequest {
        subscription: subscription.to_owned(),
        ack_ids: vec![ack_id.to_owned()],
        ack_deadline_seconds: secs,
    };
    shared
        .subscriber
        .modify_ack_deadline(req, None)
        .await
        .map(drop)
        .map_err(|e| shared.status("modify ack deadline", e))
}

/// The acker behind an `Arc`, so a dropped delivery can settle in a task
/// that outlives the call.
pub(crate) struct SharedAcker(pub(crate) Arc<PubSubAcker>);

#[async_trait]
impl Acker for SharedAcker {
    async fn settle(&self, token: u64, settlement: Settlement) -> Result<()> {
        let a = &self.0;
        let p = a.in_flight.take(token)?;
        match settlement {
            Settlement::Ack => {
                a.forget_failure(&p);
                a.acknowledge(vec![p.ack_id]).await
            }
            Settlement::Nack { delay } => a.fail(p, delay).await,
            Settlement::Reject { reason } => {
                a.note_failure(&p);
                a.dead_letter(p, &reason, None).await
            }
            _ => Err(Error::Unsupported {
                backend: crate::backend::NAME,
                capability: wharf_core::Capability::DeadLetter,
            }),
        }
    }

    async fn extend(&self, token: u64, by: Duration) -> Result<()> {
        let a = &self.0;
        let ack_id = a.in_flight.get(token, |p| p.ack_id.clone())?;
        // One step now; past Pub/Sub's 10-minute deadline, renewed by a keeper.
        let step = by.min(MAX_ACK_DEADLINE);
        a.modify_deadline(&ack_id, deadline_secs(step)).await?;
        let shared = a.shared.clone();
        let subscription = a.subscription.clone();
        let touch = move || {
            let (shared, subscription, ack_id) =
                (shared.clone(), subscription.clone(), ack_id.clone());
            async move {
                let _ = modify_deadline(&shared, &subscription, &ack_id, deadline_secs(step)).await;
            }
        };
        a.in_flight.keep_lease(token, &a.runtime, step, by, touch);
        Ok(())
    }

    fn release(&self, token: u64) {
        if let Ok(p) = self.0.in_flight.take(token) {
            self.0.requeue(p);
        }
    }

    async fn ack_many(&self, tokens: &[u64], failed: &mut Vec<(u64, Error)>) {
        let a = &self.0;
        let mut held = Vec::with_capacity(tokens.len());
        for &token in tokens {
            match a.in_flight.take(token) {
                Ok(p) => {
                    a.forget_failure(&p);
                    held.push((token, p.ack_id));
                }
                Err(e) => failed.push((token, e)),
            }
        }
        for chunk in held.chunks(ACK_CHUNK) {
            let ids = chunk.iter().map(|(_, id)| id.clone()).collect();
            if let Err(e) = a.acknowledge(ids).await {
                for (token, _) in chunk {
                    failed.push((*token, clone_error(&e)));
                }
            }
        }
    }
}

/// The same failure for every token of a failed batch request.
fn clone_error(e: &Error) -> Error {
    match e {
        Error::Unavailable { .. } => Error::Unavailable {
            backend: crate::backend::NAME,
            source: e.to_string().into(),
        },
        Error::Timeout { operation, after } => Error::Timeout {
            operation,
            after: *after,
        },
        _ => Error::Backend {
            backend: crate::backend::NAME,
            source: e.to_string().into(),
        },
    }
}

impl Drop for PubSubAcker {
    fn drop(&mut self) {
        if !self.delete_on_drop {
            return;
        }
        let shared = self.shared.clone();
        let name = self.subscription.clone();
        self.runtime.spawn(async move {
            if let Err(e) = shared.delete_subscription(&name).await {
                tracing::warn!(error = %e, subscription = %name, "deleting a private pubsub subscription failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_to_whole_seconds_and_stop_at_ten_minutes() {
        assert_eq!(deadline_secs(Duration::ZERO), 0);
        assert_eq!(deadline_secs(Duration::from_millis(1)), 1);
        assert_eq!(deadline_secs(Duration::from_millis(1000)), 1);
        assert_eq!(deadline_secs(Duration::from_millis(1001)), 2);
        assert_eq!(deadline_secs(Duration::from_secs(3600)), 600);
    }
}
