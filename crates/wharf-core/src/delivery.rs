//! A received message and the handle to settle it.
//!
//! A [`Delivery`] is settled exactly once: `ack`, `nack`, `nack_with_delay` or
//! `reject`. Dropping it unsettled releases it for redelivery (see
//! [`Delivery`]'s docs) — a crashed or cancelled handler never loses a message.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::message::Message;

/// How a delivery is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// Processed: never deliver it to this group again.
    Ack,
    /// Not processed: deliver it again after `delay` (zero = as soon as possible).
    Nack {
        /// How long to wait before redelivery.
        delay: Duration,
    },
    /// Cannot be processed: move it to the dead-letter topic with `reason`.
    Reject {
        /// Why; stored in the `wharf-dlq-reason` header.
        reason: String,
    },
}

/// The backend side of a delivery: settles it by the backend's own token.
///
/// Implemented by backends, not by applications. One `Arc<dyn Acker>` is
/// usually shared by all deliveries of a subscription, so handing out a
/// delivery allocates nothing for its acker.
#[async_trait]
pub trait Acker: Send + Sync + 'static {
    /// Settles the delivery identified by `token`.
    ///
    /// # Errors
    /// [`Error::UnknownDelivery`] when the token is no longer held (lease
    /// expired, already settled); [`Error::Unsupported`] when the backend
    /// cannot do this settlement (e.g. a delay); transport errors for remote
    /// backends.
    async fn settle(&self, token: u64, settlement: Settlement) -> Result<()>;

    /// Extends the lease of `token` by `by` from now.
    ///
    /// # Errors
    /// As [`Acker::settle`]; [`Error::Unsupported`] without [`crate::Capability::ExtendLease`].
    async fn extend(&self, token: u64, by: Duration) -> Result<()>;

    /// Called when a delivery is dropped unsettled: make it available for
    /// redelivery. Must not block (it runs inside `Drop`). The delivery
    /// still holds its `Arc<dyn Acker>` while this runs.
    fn release(&self, token: u64);

    /// Called for a delivery the consumer never saw: one a subscription took
    /// into a local buffer ahead of `next` and then dropped (on close).
    /// Make it available again *without* counting the attempt, so prefetch
    /// never uses up `max_deliveries`. Must not block. The default releases
    /// it like [`Acker::release`] (for backends that cannot undo the count).
    fn release_unseen(&self, token: u64) {
        self.release(token);
    }

    /// Acknowledges every delivery in `tokens` (a batch ack, see
    /// [`AckBatch`]); pushes each token that could not be acknowledged to
    /// `failed` with its error, as [`Acker::settle`] would have returned it.
    ///
    /// The default settles one token after another; backends override it to
    /// take their locks or make their round trip once per batch.
    async fn ack_many(&self, tokens: &[u64], failed: &mut Vec<(u64, Error)>) {
        for &token in tokens {
            if let Err(e) = self.settle(token, Settlement::Ack).await {
                failed.push((token, e));
            }
        }
    }
}

/// Deliveries waiting to be acknowledged together: one [`Acker::ack_many`]
/// call per backend acker instead of one `ack` per delivery.
///
/// Push deliveries as they are done, then [`flush`](AckBatch::flush). Until
/// then they are *not* acknowledged: a crash redelivers them, so flush before
/// waiting on anything slow. Dropping a batch with pending deliveries
/// releases them, as dropping the deliveries would.
///
/// ```
/// # async fn demo(mut sub: wharf_core::Subscription) -> wharf_core::Result<()> {
/// use wharf_core::AckBatch;
/// let mut buf = Vec::new();
/// let mut acks = AckBatch::new();
/// sub.next_batch(256, &mut buf).await?;
/// for d in buf.drain(..) {
///     // ... handle d.message() ...
///     acks.push(d);
/// }
/// let failed = acks.flush().await;
/// assert!(failed.is_empty(), "{failed:?}");
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct AckBatch {
    groups: Vec<(Arc<dyn Acker>, Vec<u64>)>,
    failed: Vec<(u64, Error)>,
}

impl AckBatch {
    /// An empty batch.
    pub fn new() -> Self {
        AckBatch::default()
    }

    /// Adds `delivery` (its message is dropped; only the settlement is kept).
    pub fn push(&mut self, delivery: Delivery) {
        self.push_settler(delivery.settler);
    }

    /// Adds a delivery by its [`Settler`] (see [`Delivery::into_parts`]).
    pub fn push_settler(&mut self, mut settler: Settler) {
        let Some(h) = settler.0.take() else {
            return;
        };
        match self
            .groups
            .iter_mut()
            .find(|(a, _)| same_acker(a, &h.acker))
        {
            Some((_, tokens)) => tokens.push(h.token),
            None => self.groups.push((h.acker, vec![h.token])),
        }
    }

    /// How many deliveries wait to be acknowledged.
    pub fn len(&self) -> usize {
        self.groups.iter().map(|(_, t)| t.len()).sum()
    }

    /// Whether no delivery waits.
    pub fn is_empty(&self) -> bool {
        self.groups.iter().all(|(_, t)| t.is_empty())
    }

    /// Acknowledges everything pushed so far; returns the tokens that could
    /// not be acknowledged, with their errors (e.g. a lease that expired).
    /// The batch is empty afterwards and can be reused.
    ///
    /// # Cancel safety
    /// Not cancel safe, like [`Delivery::ack`]: deliveries of an acker
    /// whose call was interrupted may or may not be acknowledged (unsettled
    /// ones are redelivered once their leases expire).
    pub async fn flush(&mut self) -> Vec<(u64, Error)> {
        for (acker, tokens) in &mut self.groups {
            if !tokens.is_empty() {
                acker.ack_many(tokens, &mut self.failed).await;
                tokens.clear();
            }
        }
        std::mem::take(&mut self.failed)
    }
}

impl Drop for AckBatch {
    fn drop(&mut self) {
        for (acker, tokens) in &self.groups {
            for &t in tokens {
                acker.release(t);
            }
        }
    }
}

impl fmt::Debug for AckBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckBatch")
            .field("pending", &self.len())
            .finish()
    }
}

/// Whether two ackers are the same object (data pointers, ignoring vtables).
fn same_acker(a: &Arc<dyn Acker>, b: &Arc<dyn Acker>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// Where a delivery came from and how often it has been delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryInfo {
    /// The topic the message was published to.
    pub topic: Arc<str>,
    /// Partition within the topic (0 for unpartitioned backends).
    pub partition: u32,
    /// Offset in the partition, for log-based backends.
    pub offset: Option<u64>,
    /// Delivery attempt, starting at 1.
    pub attempt: u32,
}

struct Handle {
    acker: Arc<dyn Acker>,
    token: u64,
}

/// A message handed to a consumer, to be settled once.
///
/// # Dropping
/// Dropping a `Delivery` without settling it *releases* it: the backend makes
/// the message available for redelivery as soon as it can (immediately for
/// in-process backends; for remote ones, once the release reaches the server
/// or at the latest when the visibility timeout expires). The release counts
/// as a delivery attempt, so `max_deliveries` still bounds a handler that
/// keeps crashing.
pub struct Delivery {
    message: Message,
    info: DeliveryInfo,
    settler: Settler,
}

impl Delivery {
    /// Made by backends: `token` is what `acker` will be called with.
    pub fn new(message: Message, info: DeliveryInfo, acker: Arc<dyn Acker>, token: u64) -> Self {
        Delivery {
            message,
            info,
            settler: Settler(Some(Handle { acker, token })),
        }
    }

    /// Splits the delivery into its message, its facts and the [`Settler`]
    /// that settles it, so the message can move on (e.g. to a handler)
    /// without a copy while the settler stays behind. Dropping the settler
    /// unsettled releases the delivery, as dropping the delivery would.
    pub fn into_parts(self) -> (Message, DeliveryInfo, Settler) {
        (self.message, self.info, self.settler)
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message, for changing headers before handing it on.
    pub fn message_mut(&mut self) -> &mut Message {
        &mut self.message
    }

    /// Where it came from and the attempt number.
    pub fn info(&self) -> &DeliveryInfo {
        &self.info
    }

    /// The topic the message was published to.
    pub fn topic(&self) -> &str {
        &self.info.topic
    }

    /// Delivery attempt, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.info.attempt
    }

    /// The backend's token for this delivery (stable for its lifetime).
    pub fn token(&self) -> u64 {
        self.settler.token()
    }

    /// Settles with `settlement`; see [`Settler::settle`].
    ///
    /// # Errors
    /// See [`Acker::settle`].
    pub async fn settle(self, settlement: Settlement) -> Result<()> {
        self.settler.settle(settlement).await
    }

    /// Acknowledges: the message is done for this group.
    ///
    /// # Errors
    /// See [`Acker::settle`].
    pub async fn ack(self) -> Result<()> {
        self.settler.ack().await
    }

    /// Asks for redelivery as soon as possible.
    ///
    /// # Errors
    /// See [`Acker::settle`].
    pub async fn nack(self) -> Result<()> {
        self.settler.nack().await
    }

    /// Asks for redelivery after `delay`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] on backends without
    /// [`crate::Capability::NackWithDelay`]; see [`Acker::settle`].
    pub async fn nack_with_delay(self, delay: Duration) -> Result<()> {
        self.settler.nack_with_delay(delay).await
    }

    /// Moves the message to the dead-letter topic, recording `reason`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] on backends without
    /// [`crate::Capability::DeadLetter`]; see [`Acker::settle`].
    pub async fn reject(self, reason: impl Into<String>) -> Result<()> {
        self.settler.reject(reason).await
    }

    /// Extends this delivery's lease by `by` from now, for long work.
    ///
    /// # Errors
    /// See [`Acker::extend`].
    pub async fn extend(&self, by: Duration) -> Result<()> {
        self.settler.extend(by).await
    }

    /// Gives the delivery back as never seen ([`Acker::release_unseen`]):
    /// for backends and wrappers whose subscriptions take deliveries into a
    /// local buffer and drop them unseen on close. Applications drop (or
    /// nack) a delivery instead.
    pub fn release_unseen(self) {
        self.settler.release_unseen();
    }
}

/// The settling half of a [`Delivery`] (see [`Delivery::into_parts`]):
/// settles it exactly once. Dropping it unsettled releases the delivery for
/// redelivery, with the same rules as dropping a [`Delivery`].
pub struct Settler(Option<Handle>);

impl Settler {
    /// The backend's token for this delivery (0 once settled).
    pub fn token(&self) -> u64 {
        self.0.as_ref().map_or(0, |h| h.token)
    }

    /// Settles with `settlement`.
    ///
    /// # Errors
    /// See [`Acker::settle`].
    ///
    /// Drive the returned future promptly (await it or spawn it): remote
    /// backends may serialise settlements on one connection, so a parked
    /// settle future can hold up the ones behind it.
    ///
    /// # Cancel safety
    /// Not cancel safe: if the future is dropped before it completes, the
    /// settlement may or may not have reached the backend; an unsettled
    /// message is redelivered once its lease expires.
    pub async fn settle(mut self, settlement: Settlement) -> Result<()> {
        let handle = self.0.take().ok_or(Error::Closed {
            what: "delivery (already settled)",
        })?;
        handle.acker.settle(handle.token, settlement).await
    }

    /// Acknowledges: the message is done for this group.
    ///
    /// # Errors
    /// See [`Acker::settle`].
    pub async fn ack(self) -> Result<()> {
        self.settle(Settlement::Ack).await
    }

    /// Asks for redelivery as soon as possible.
    ///
    /// # Errors
    /// See [`Acker::settle`].
    pub async fn nack(self) -> Result<()> {
        self.settle(Settlement::Nack {
            delay: Duration::ZERO,
        })
        .await
    }

    /// Asks for redelivery after `delay`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] on backends without
    /// [`crate::Capability::NackWithDelay`]; see [`Acker::settle`].
    pub async fn nack_with_delay(self, delay: Duration) -> Result<()> {
        self.settle(Settlement::Nack { delay }).await
    }

    /// Moves the message to the dead-letter topic, recording `reason`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] on backends without
    /// [`crate::Capability::DeadLetter`]; see [`Acker::settle`].
    pub async fn reject(self, reason: impl Into<String>) -> Result<()> {
        self.settle(Settlement::Reject {
            reason: reason.into(),
        })
        .await
    }

    /// Extends this delivery's lease by `by` from now, for long work.
    ///
    /// # Errors
    /// See [`Acker::extend`].
    pub async fn extend(&self, by: Duration) -> Result<()> {
        match &self.0 {
            Some(h) => h.acker.extend(h.token, by).await,
            None => Err(Error::Closed {
                what: "delivery (already settled)",
            }),
        }
    }

    /// As [`Delivery::release_unseen`], for a split delivery.
    pub fn release_unseen(mut self) {
        if let Some(h) = self.0.take() {
            h.acker.release_unseen(h.token);
        }
    }
}

impl Drop for Settler {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.acker.release(h.token);
        }
    }
}

impl fmt::Debug for Settler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settler")
            .field("token", &self.token())
            .field("settled", &self.0.is_none())
            .finish()
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("info", &self.info)
            .field("message", &self.message)
            .field("settled", &self.settler.0.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    #[async_trait]
    impl Acker for Recorder {
        async fn settle(&self, token: u64, s: Settlement) -> Result<()> {
            if token == 13 {
                return Err(Error::UnknownDelivery {
                    id: token.to_string(),
                });
            }
            self.0.lock().unwrap().push(format!("{token}:{s:?}"));
            Ok(())
        }
        async fn extend(&self, token: u64, by: Duration) -> Result<()> {
            self.0
                .lock()
                .unwrap()
                .push(format!("{token}:extend {by:?}"));
            Ok(())
        }
        fn release(&self, token: u64) {
            self.0.lock().unwrap().push(format!("{token}:release"));
        }
    }

    fn delivery(acker: &Arc<Recorder>, token: u64) -> Delivery {
        let info = DeliveryInfo {
            topic: "t".into(),
            partition: 0,
            offset: Some(token),
            attempt: 1,
        };
        Delivery::new(Message::new("x"), info, acker.clone(), token)
    }

    #[tokio::test]
    async fn settling_calls_the_acker_once_and_drop_does_not_release() {
        let r = Arc::new(Recorder::default());
        delivery(&r, 1).ack().await.unwrap();
        delivery(&r, 2)
            .nack_with_delay(Duration::from_secs(1))
            .await
            .unwrap();
        delivery(&r, 3).reject("bad").await.unwrap();
        let d = delivery(&r, 4);
        d.extend(Duration::from_secs(5)).await.unwrap();
        d.nack().await.unwrap();
        assert_eq!(
            *r.0.lock().unwrap(),
            vec![
                "1:Ack",
                "2:Nack { delay: 1s }",
                "3:Reject { reason: \"bad\" }",
                "4:extend 5s",
                "4:Nack { delay: 0ns }",
            ]
        );
    }

    #[tokio::test]
    async fn dropping_an_unsettled_delivery_releases_it() {
        let r = Arc::new(Recorder::default());
        drop(delivery(&r, 9));
        assert_eq!(*r.0.lock().unwrap(), vec!["9:release"]);
    }

    #[tokio::test]
    async fn a_split_delivery_settles_or_releases_through_its_settler() {
        let r = Arc::new(Recorder::default());
        let (message, info, settler) = delivery(&r, 5).into_parts();
        assert_eq!(message.payload().as_ref(), b"x");
        assert_eq!(info.offset, Some(5));
        assert_eq!(settler.token(), 5);
        // The message outlives the settler's settlement and vice versa.
        drop(message);
        settler.ack().await.unwrap();
        let (_, _, settler) = delivery(&r, 6).into_parts();
        drop(settler);
        let mut batch = AckBatch::new();
        batch.push_settler(delivery(&r, 7).into_parts().2);
        assert_eq!(batch.len(), 1);
        assert!(batch.flush().await.is_empty());
        // An acker without its own `release_unseen` releases.
        delivery(&r, 8).into_parts().2.release_unseen();
        assert_eq!(
            *r.0.lock().unwrap(),
            vec!["5:Ack", "6:release", "7:Ack", "8:release"]
        );
    }

    #[tokio::test]
    async fn ack_batch_acks_per_acker_reports_failures_and_is_reusable() {
        let (a, b) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        let mut batch = AckBatch::new();
        assert!(batch.is_empty());
        for (r, t) in [(&a, 1), (&b, 2), (&a, 13), (&a, 3)] {
            batch.push(delivery(r, t));
        }
        assert_eq!(batch.len(), 4);
        // Nothing is settled before the flush.
        assert!(a.0.lock().unwrap().is_empty());
        let failed = batch.flush().await;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, 13);
        assert!(matches!(failed[0].1, Error::UnknownDelivery { .. }));
        assert_eq!(*a.0.lock().unwrap(), vec!["1:Ack", "3:Ack"]);
        assert_eq!(*b.0.lock().unwrap(), vec!["2:Ack"]);
        assert!(batch.is_empty());
        batch.push(delivery(&b, 4));
        assert!(batch.flush().await.is_empty());
        assert_eq!(*b.0.lock().unwrap(), vec!["2:Ack", "4:Ack"]);
    }

    #[tokio::test]
    async fn dropping_an_ack_batch_releases_what_it_holds() {
        let r = Arc::new(Recorder::default());
        let mut batch = AckBatch::new();
        batch.push(delivery(&r, 5));
        batch.push(delivery(&r, 6));
        drop(batch);
        assert_eq!(*r.0.lock().unwrap(), vec!["5:release", "6:release"]);
    }
}
