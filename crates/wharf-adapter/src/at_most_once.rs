//! The non-durable modes (core NATS publish/subscribe, Redis Pub/Sub):
//! nothing is stored and nothing is redelivered, so settling a delivery
//! only frees its in-flight slot in the client ([`LocalAcker`]), and a
//! subscription reads the client's own message stream, one slot per
//! delivery ([`LocalStream`], over the adapter's [`Feed`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use wharf_core::{
    Acker, Capability, Delivery, DeliveryInfo, DeliveryStream, Error, GroupMode, Message, Receipt,
    Result, Settlement, StartPosition, SubscribeOptions, Timestamp, TopicPattern,
};

/// Checks `options` for a non-durable mode of `backend` and returns the
/// validated pattern. Refused with [`Error::Unsupported`]: a group when the
/// mode has no `groups`, a replay start (offset or time), a visibility
/// timeout, a delivery limit, and stream-mode groups. `Earliest` and
/// `Latest` both mean "from now": nothing is stored.
///
/// # Errors
/// As [`SubscribeOptions::validate`], then the refusals above.
pub fn check_options(
    backend: &'static str,
    options: &SubscribeOptions,
    groups: bool,
) -> Result<TopicPattern> {
    let pattern = options.validate()?;
    let unsupported = |capability| {
        Err(Error::Unsupported {
            backend,
            capability,
        })
    };
    if !groups && options.group_name().is_some() {
        return unsupported(Capability::ConsumerGroups);
    }
    match options.start_position() {
        StartPosition::Offset(_) => return unsupported(Capability::ReplayFromOffset),
        StartPosition::Time(_) => return unsupported(Capability::ReplayFromTime),
        _ => {}
    }
    if options.visibility_timeout_value().is_some() {
        return unsupported(Capability::VisibilityTimeout);
    }
    if options.max_deliveries_limit().is_some() {
        return unsupported(Capability::MaxDeliveries);
    }
    if options.group_mode() != GroupMode::Queue {
        return unsupported(Capability::PartitionAssignment);
    }
    Ok(pattern)
}

/// The receipt of a message published with nothing stored: no offset, never
/// a duplicate.
pub fn receipt(message: &Message) -> Receipt {
    Receipt {
        id: message.id(),
        partition: 0,
        offset: None,
        duplicate: false,
    }
}

/// Settles the deliveries of one subscription in the client alone: every
/// settlement, and a drop, frees one in-flight slot; nothing is sent.
///
/// Ack and nack (without delay) succeed — the message is gone either way;
/// a nack with a delay, a reject and `extend` fail with
/// [`Error::Unsupported`] naming the backend (the refused settlement still
/// frees the slot).
pub struct LocalAcker {
    backend: &'static str,
    permits: Arc<Semaphore>,
    next_token: AtomicU64,
}

impl LocalAcker {
    fn new(backend: &'static str, max_in_flight: usize) -> Self {
        LocalAcker {
            backend,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            next_token: AtomicU64::new(1),
        }
    }

    fn unsupported(&self, capability: Capability) -> Result<()> {
        Err(Error::Unsupported {
            backend: self.backend,
            capability,
        })
    }
}

#[async_trait]
impl Acker for LocalAcker {
    async fn settle(&self, _token: u64, settlement: Settlement) -> Result<()> {
        self.permits.add_permits(1);
        match settlement {
            Settlement::Ack => Ok(()),
            // At-most-once: the message is gone either way.
            Settlement::Nack { delay } if delay.is_zero() => Ok(()),
            Settlement::Nack { .. } => self.unsupported(Capability::NackWithDelay),
            _ => self.unsupported(Capability::DeadLetter),
        }
    }

    async fn extend(&self, _token: u64, _by: Duration) -> Result<()> {
        self.unsupported(Capability::ExtendLease)
    }

    fn release(&self, _token: u64) {
        self.permits.add_permits(1);
    }

    async fn ack_many(&self, tokens: &[u64], _failed: &mut Vec<(u64, Error)>) {
        // Acking only frees the slots: all of them at once.
        self.permits.add_permits(tokens.len());
    }
}

/// What a non-durable subscription reads: the client's stream of received
/// messages, and how to make Wharf messages of them.
#[async_trait]
pub trait Feed: Send + Sync + 'static {
    /// The client's stream of received messages (it must be cancel safe to
    /// wait on, as a channel receive is).
    type Stream: Stream + Unpin + Send;

    /// The topic and message of a received item, or `None` to drop it (not
    /// for this subscription).
    fn decode(&self, item: <Self::Stream as Stream>::Item) -> Option<(Arc<str>, Message)>;

    /// What the subscription yields, once, when the client's stream ends
    /// while neither the subscription nor the backend was closed: `None`
    /// (the default) ends it quietly.
    fn lost(&self) -> Option<Error> {
        None
    }

    /// Ends the client's subscription on [`DeliveryStream::close`]; the
    /// default drops the stream.
    ///
    /// # Errors
    /// What the client reports.
    async fn unsubscribe(&self, stream: Self::Stream) -> Result<()> {
        drop(stream);
        Ok(())
    }
}

/// The [`DeliveryStream`] of a non-durable subscription: reads the client's
/// stream directly, one in-flight slot per delivery, and drops a message
/// whose TTL has passed instead of handing it out. Every delivery is
/// attempt 1 with no offset.
pub struct LocalStream<F: Feed> {
    feed: F,
    /// `None` once the subscription has ended (dropping it unsubscribes).
    stream: Option<F::Stream>,
    acker: Arc<LocalAcker>,
    backend_closed: watch::Receiver<bool>,
}

impl<F: Feed> LocalStream<F> {
    /// A subscription of `backend` reading `stream` with `max_in_flight`
    /// slots; it ends once `backend_closed` turns `true`.
    pub fn new(
        backend: &'static str,
        max_in_flight: usize,
        feed: F,
        stream: F::Stream,
        backend_closed: watch::Receiver<bool>,
    ) -> Self {
        LocalStream {
            feed,
            stream: Some(stream),
            acker: Arc::new(LocalAcker::new(backend, max_in_flight)),
            backend_closed,
        }
    }

    /// Turns a received item into a delivery holding `permit`; `None` (the
    /// permit returned) for an item the feed drops or a message whose TTL
    /// has passed.
    fn deliver(
        &self,
        item: <F::Stream as Stream>::Item,
        permit: OwnedSemaphorePermit,
    ) -> Option<Delivery> {
        let (topic, message) = self.feed.decode(item)?;
        if message
            .expires_at()
            .is_some_and(|at| at <= Timestamp::now())
        {
            return None;
        }
        permit.forget();
        let info = DeliveryInfo {
            topic,
            partition: 0,
            offset: None,
            attempt: 1,
        };
        let token = self.acker.next_token.fetch_add(1, Ordering::Relaxed);
        Some(Delivery::new(message, info, self.acker.clone(), token))
    }
}

#[async_trait]
impl<F: Feed> DeliveryStream for LocalStream<F> {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            let stream = self.stream.as_mut()?;
            // Cancel safe: a permit or a message is only taken together.
            let permit = tokio::select! {
                biased;
                _ = self.backend_closed.wait_for(|c| *c) => None,
                p = self.acker.permits.clone().acquire_owned() => p.ok(),
            };
            let Some(permit) = permit else {
                self.stream = None;
                return None;
            };
            let item = tokio::select! {
                biased;
                _ = self.backend_closed.wait_for(|c| *c) => {
                    self.stream = None;
                    return None;
                }
                item = stream.next() => item,
            };
            let Some(item) = item else {
                // Not closed by us or the backend: the client's stream ended.
                self.stream = None;
                return self.feed.lost().map(Err);
            };
            if let Some(d) = self.deliver(item, permit) {
                return Some(Ok(d));
            }
        }
    }

    fn try_next(&mut self) -> Option<Result<Delivery>> {
        if *self.backend_closed.borrow() {
            return None;
        }
        loop {
            let permit = self.acker.permits.clone().try_acquire_owned().ok()?;
            let item = self.stream.as_mut()?.next().now_or_never()??;
            if let Some(d) = self.deliver(item, permit) {
                return Some(Ok(d));
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        match self.stream.take() {
            Some(stream) => self.feed.unsubscribe(stream).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::stream;

    use super::*;

    struct Topics;

    impl Feed for Topics {
        type Stream = stream::Iter<std::vec::IntoIter<&'static str>>;

        fn decode(&self, item: &'static str) -> Option<(Arc<str>, Message)> {
            (item != "skip").then(|| (Arc::from("t"), Message::new(item)))
        }
    }

    /// The stream, and the backend's closed signal (dropping it ends the stream).
    fn subscription(
        items: Vec<&'static str>,
        max_in_flight: usize,
    ) -> (LocalStream<Topics>, watch::Sender<bool>) {
        let (closed, closed_rx) = watch::channel(false);
        let s = LocalStream::new(
            "test",
            max_in_flight,
            Topics,
            stream::iter(items),
            closed_rx,
        );
        (s, closed)
    }

    #[tokio::test]
    async fn settling_frees_the_slot_and_refuses_what_needs_a_store() {
        let (mut sub, _closed) = subscription(vec!["a", "skip", "b", "c"], 1);
        let a = sub.next().await.expect("a").expect("ok");
        assert_eq!(a.message().payload().as_ref(), b"a");
        assert!(sub.try_next().is_none(), "one slot, held by a");
        let refused = a.nack_with_delay(Duration::from_secs(1)).await;
        assert!(matches!(
            refused,
            Err(Error::Unsupported {
                backend: "test",
                capability: Capability::NackWithDelay
            })
        ));
        let b = sub.next().await.expect("b, skip dropped").expect("ok");
        assert_eq!(b.message().payload().as_ref(), b"b");
        assert_eq!(b.attempt(), 1);
        drop(b);
        let c = sub.next().await.expect("c").expect("ok");
        assert!(matches!(
            c.extend(Duration::from_secs(1)).await,
            Err(Error::Unsupported {
                capability: Capability::ExtendLease,
                ..
            })
        ));
        c.ack().await.expect("ack");
        assert!(sub.next().await.is_none(), "the feed ended quietly");
    }

    #[tokio::test]
    async fn a_batch_ack_frees_every_slot_it_holds() {
        let (mut sub, _closed) = subscription(vec!["a", "b", "c", "d"], 2);
        let mut acks = wharf_core::AckBatch::new();
        acks.push(sub.next().await.expect("a").expect("ok"));
        acks.push(sub.next().await.expect("b").expect("ok"));
        assert!(sub.try_next().is_none(), "two slots, both held");
        assert!(acks.flush().await.is_empty());
        let c = sub.try_next().expect("a freed slot").expect("ok");
        let d = sub.try_next().expect("another freed slot").expect("ok");
        assert_eq!(c.message().payload().as_ref(), b"c");
        assert_eq!(d.message().payload().as_ref(), b"d");
    }

    #[tokio::test]
    async fn closing_the_backend_ends_the_stream() {
        let (mut sub, closed) = subscription(vec!["a"], 1);
        closed.send_replace(true);
        assert!(sub.next().await.is_none());
        assert!(sub.try_next().is_none());
    }

    #[test]
    fn options_needing_a_store_or_groups_are_refused() {
        let refused = |o: SubscribeOptions, groups| match check_options("test", &o, groups) {
            Err(Error::Unsupported { capability, .. }) => Some(capability),
            _ => None,
        };
        let o = || SubscribeOptions::new("t");
        assert_eq!(
            refused(o().group("g"), false),
            Some(Capability::ConsumerGroups)
        );
        assert_eq!(refused(o().group("g"), true), None);
        assert_eq!(
            refused(o().start(StartPosition::Offset(1)), true),
            Some(Capability::ReplayFromOffset)
        );
        assert_eq!(
            refused(o().group("g").mode(GroupMode::Stream), true),
            Some(Capability::PartitionAssignment)
        );
    }
}
