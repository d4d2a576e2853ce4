//! Subscribing: the options, and the stream of deliveries it returns.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use futures_core::Stream;

use crate::delivery::Delivery;
use crate::error::{Error, Result};
use crate::message::Timestamp;
use crate::name::{validate_group, validate_topic, TopicPattern};

/// Where a new subscription (or a group seen for the first time) starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartPosition {
    /// From the oldest message still stored.
    Earliest,
    /// Only messages published after subscribing.
    Latest,
    /// From this offset in every partition (needs [`crate::Capability::ReplayFromOffset`]).
    Offset(u64),
    /// From the first message published at or after this time (needs
    /// [`crate::Capability::ReplayFromTime`]). Log backends judge by the
    /// message's timestamp, server backends by their store time; the two
    /// agree unless a publisher back-dates its messages.
    Time(Timestamp),
}

/// How a consumer group shares a topic's partitions among its consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GroupMode {
    /// Work-queue semantics (SQS, JetStream work queues): any consumer of the
    /// group may get any message; each message is leased to one consumer at a
    /// time. Best throughput for independent jobs; order per key holds only
    /// with one consumer.
    #[default]
    Queue,
    /// Log semantics (Kafka): each partition is assigned to one live consumer
    /// of the group, rebalanced when consumers join or leave, so order per key
    /// holds while the group scales out. Needs
    /// [`crate::Capability::PartitionAssignment`].
    Stream,
}

/// Default number of unsettled deliveries a subscription may hold.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// What to subscribe to and how; build with [`SubscribeOptions::new`].
///
/// The visibility timeout, `max_deliveries` and dead-letter topic govern the
/// deliveries made to *this* subscription where the backend can do that per
/// consumer (the embedded broker); backends that only have group-wide
/// settings take them from the subscription that created the group and say
/// so in their docs. The [`GroupMode`] is fixed by whichever subscription
/// created the group; joining it in the other mode is an
/// [`Error::InvalidArgument`] or, where a backend can't tell, ignored.
///
/// ```
/// use std::time::Duration;
/// use wharf_core::{SubscribeOptions, StartPosition};
/// let opts = SubscribeOptions::new("orders.*")
///     .group("billing")
///     .start(StartPosition::Earliest)
///     .max_in_flight(32)
///     .visibility_timeout(Duration::from_secs(30))
///     .max_deliveries(5);
/// assert!(opts.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct SubscribeOptions {
    pattern: String,
    group: Option<String>,
    start: Option<StartPosition>,
    max_in_flight: usize,
    visibility_timeout: Option<Duration>,
    max_deliveries: Option<u32>,
    dead_letter_topic: Option<String>,
    mode: GroupMode,
}

impl SubscribeOptions {
    /// Subscribe to a topic or a pattern (`orders.*`, `orders.>`).
    pub fn new(topic_or_pattern: impl Into<String>) -> Self {
        SubscribeOptions {
            pattern: topic_or_pattern.into(),
            group: None,
            start: None,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            visibility_timeout: None,
            max_deliveries: None,
            dead_letter_topic: None,
            mode: GroupMode::Queue,
        }
    }

    /// How the group shares partitions (default [`GroupMode::Queue`]);
    /// [`GroupMode::Stream`] needs a group.
    pub fn mode(mut self, mode: GroupMode) -> Self {
        self.mode = mode;
        self
    }

    /// The group mode.
    pub fn group_mode(&self) -> GroupMode {
        self.mode
    }

    /// Join consumer group `name`: every group gets each message once, shared
    /// among the group's consumers. Without a group the subscription is
    /// private: it alone gets every matching message, and its position is
    /// forgotten when it ends.
    pub fn group(mut self, name: impl Into<String>) -> Self {
        self.group = Some(name.into());
        self
    }

    /// Where to start when the group is new (an existing group resumes where
    /// it left off). Default: [`StartPosition::Earliest`] for a group,
    /// [`StartPosition::Latest`] without one.
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = Some(start);
        self
    }

    /// At most `n` unsettled deliveries at once (prefetch); must be ≥ 1.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Redeliver a delivery not settled within `timeout` (the lease).
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = Some(timeout);
        self
    }

    /// After `n` attempts, a failed delivery goes to the dead-letter topic instead of being redelivered.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = Some(n);
        self
    }

    /// Where rejected messages go; default `dlq.<topic>` ([`crate::name::dead_letter_topic`]).
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// The topic or pattern.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The group, if any.
    pub fn group_name(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// The start position resolved with its default.
    pub fn start_position(&self) -> StartPosition {
        self.start.unwrap_or(if self.group.is_some() {
            StartPosition::Earliest
        } else {
            StartPosition::Latest
        })
    }

    /// The in-flight limit.
    pub fn max_in_flight_limit(&self) -> usize {
        self.max_in_flight
    }

    /// The lease length, if set.
    pub fn visibility_timeout_value(&self) -> Option<Duration> {
        self.visibility_timeout
    }

    /// The delivery attempt limit, if set.
    pub fn max_deliveries_limit(&self) -> Option<u32> {
        self.max_deliveries
    }

    /// The explicit dead-letter topic, if set.
    pub fn dead_letter_topic_name(&self) -> Option<&str> {
        self.dead_letter_topic.as_deref()
    }

    /// Checks names and limits.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad pattern, group or dead-letter topic;
    /// [`Error::InvalidArgument`] for a zero in-flight or delivery limit.
    pub fn validate(&self) -> Result<TopicPattern> {
        let pattern = TopicPattern::parse(&self.pattern)?;
        if let Some(g) = &self.group {
            validate_group(g)?;
        }
        if let Some(t) = &self.dead_letter_topic {
            validate_topic(t)?;
        }
        if self.max_in_flight == 0 {
            return Err(Error::InvalidArgument {
                name: "max_in_flight",
                reason: "must be at least 1".into(),
            });
        }
        if self.mode == GroupMode::Stream && self.group.is_none() {
            return Err(Error::InvalidArgument {
                name: "mode",
                reason: "stream mode needs a consumer group".into(),
            });
        }
        if self.max_deliveries == Some(0) {
            return Err(Error::InvalidArgument {
                name: "max_deliveries",
                reason: "must be at least 1".into(),
            });
        }
        Ok(pattern)
    }
}

/// A backend's stream of deliveries; wrapped by [`Subscription`].
///
/// Implemented by backends. Dropping the stream ends the subscription and
/// releases (for redelivery) nothing that was already handed out: each
/// [`Delivery`] settles or releases itself.
#[async_trait]
pub trait DeliveryStream: Send {
    /// The next delivery, waiting for one; `None` once the subscription has
    /// ended (closed, or the backend shut down).
    ///
    /// # Cancel safety
    /// Implementations must be cancel safe: if the future is dropped before
    /// it completes, no message is lost or counted as delivered.
    async fn next(&mut self) -> Option<Result<Delivery>>;

    /// A delivery that is ready now, without waiting.
    fn try_next(&mut self) -> Option<Result<Delivery>> {
        None
    }

    /// Stops new deliveries; those already handed out can still be settled.
    async fn close(&mut self) -> Result<()>;
}

/// A live subscription: call [`Subscription::next`] in a loop.
pub struct Subscription {
    inner: Box<dyn DeliveryStream>,
}

impl Subscription {
    /// Wraps a backend's stream.
    pub fn new(stream: impl DeliveryStream + 'static) -> Self {
        Subscription {
            inner: Box::new(stream),
        }
    }

    /// The next delivery, waiting for one; `None` once the subscription ended.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future loses no message.
    pub async fn next(&mut self) -> Option<Result<Delivery>> {
        self.inner.next().await
    }

    /// Waits for one delivery, then adds whatever else is ready, up to `max`
    /// in total, to `out`. Returns how many were added; `0` means the
    /// subscription ended.
    ///
    /// # Errors
    /// The first error the backend reports; deliveries already added stay in `out`.
    ///
    /// # Cancel safety
    /// Cancel safe while waiting for the first delivery.
    pub async fn next_batch(&mut self, max: usize, out: &mut Vec<Delivery>) -> Result<usize> {
        if max == 0 {
            return Ok(0);
        }
        match self.inner.next().await {
            None => return Ok(0),
            Some(first) => out.push(first?),
        }
        let mut n = 1;
        while n < max {
            match self.inner.try_next() {
                Some(d) => {
                    out.push(d?);
                    n += 1;
                }
                None => break,
            }
        }
        Ok(n)
    }

    /// Stops new deliveries; those already handed out can still be settled,
    /// and [`Subscription::next`] returns `None` afterwards.
    ///
    /// # Errors
    /// Transport errors for remote backends.
    pub async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }

    /// Turns the subscription into a [`Stream`] of deliveries.
    pub fn into_stream(self) -> impl Stream<Item = Result<Delivery>> + Send {
        futures_util::stream::unfold(self, |mut sub| async move {
            let item = sub.next().await?;
            Some((item, sub))
        })
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_depend_on_whether_a_group_is_set() {
        assert_eq!(
            SubscribeOptions::new("a").start_position(),
            StartPosition::Latest
        );
        assert_eq!(
            SubscribeOptions::new("a").group("g").start_position(),
            StartPosition::Earliest
        );
    }

    #[test]
    fn validate_rejects_bad_names_and_zero_limits() {
        assert!(SubscribeOptions::new("a.>").validate().is_ok());
        assert!(matches!(
            SubscribeOptions::new("a..b").validate(),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            SubscribeOptions::new("a").group("bad group").validate(),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            SubscribeOptions::new("a").max_in_flight(0).validate(),
            Err(Error::InvalidArgument {
                name: "max_in_flight",
                ..
            })
        ));
        assert!(matches!(
            SubscribeOptions::new("a")
                .mode(GroupMode::Stream)
                .validate(),
            Err(Error::InvalidArgument { name: "mode", .. })
        ));
        assert!(SubscribeOptions::new("a")
            .group("g")
            .mode(GroupMode::Stream)
            .validate()
            .is_ok());
        assert!(matches!(
            SubscribeOptions::new("a").max_deliveries(0).validate(),
            Err(Error::InvalidArgument {
                name: "max_deliveries",
                ..
            })
        ));
    }
}
