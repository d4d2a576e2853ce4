//! Wharf's in-process, non-durable backend: bounded topics with backpressure,
//! consumer groups, leases, delays, TTL and dead letters — for tests and for
//! fan-out inside one process. Nothing survives the process.
//!
//! ```
//! use wharf_core::{Message, Publisher, SubscribeOptions, Subscriber};
//! use wharf_memory::MemoryBackend;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let backend = MemoryBackend::new();
//! let mut sub = backend.subscribe(SubscribeOptions::new("orders.*").group("billing")).await?;
//! backend.publish("orders.created", Message::new("hello")).await?;
//! let delivery = sub.next().await.expect("open")?;
//! assert_eq!(&delivery.message().payload()[..], b"hello");
//! delivery.ack().await?;
//! # Ok::<(), wharf_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! # Model
//! - **Topics** are created on first publish, subscribe or
//!   [`Backend::ensure_topic`]. Each has one partition (0) with dense offsets
//!   from 0, and keeps a bounded *window* of at most
//!   [`MemoryBackendBuilder::topic_capacity`] messages.
//! - **Groups**: every named group gets each message once, shared among its
//!   live subscriptions (competing consumers). A subscription without a group
//!   gets a private group of its own. The start position applies only when a
//!   group is created on a topic (`Offset(o)` outside the window →
//!   [`Error::InvalidOffset`]; `Time(t)` = first message whose timestamp is
//!   ≥ `t`). Topics created *after* a pattern subscription are read from
//!   their first message. A named group outlives its subscriptions (its
//!   cursor and pending redeliveries are kept, so it still holds back the
//!   window, like a durable consumer); a private group ends with its
//!   subscription once the deliveries it handed out are settled or dropped.
//!   The lease, max-deliveries and dead-letter options of a group are those
//!   of the subscription that joined it last; its [`wharf_core::GroupMode`]
//!   is fixed by the subscription that created it. In `Stream` mode the
//!   topic's single partition is assigned to the group's longest-standing
//!   live consumer (the others wait) and passes to the next when it leaves,
//!   so order per key holds while consumers come and go.
//! - **Backpressure**: when the window is full, the oldest message is evicted
//!   if no group still needs it (so a topic nobody reads keeps a ring of recent
//!   history); otherwise `publish` waits until the slowest group settles it.
//!   A batch larger than the window is stored chunk by chunk as room appears
//!   (its offsets may interleave with concurrent publishers).
//! - **Settling**: `ack` is final for the group; `nack` (and dropping a
//!   delivery, and a lease expiring) redelivers as soon as possible with
//!   `attempt + 1`; `nack_with_delay(d)` not before `d` (tokio time).
//!   Redeliveries go before new messages, lowest offset first. `reject`, and
//!   a failure when `attempt >= max_deliveries`, append a copy to the
//!   dead-letter topic (the option's, or `dlq.<topic>`) with the original id,
//!   key, payload and headers plus the `wharf-dlq-*`/`wharf-original-*`/
//!   `wharf-attempts`/`wharf-*-failure-ms` headers of [`wharf_core::header`].
//!   Dead letters are appended without waiting: a dead-letter topic may
//!   briefly exceed its capacity rather than deadlock a consumer.
//! - **Leases**: with a visibility timeout (the option, else
//!   [`MemoryBackendBuilder::default_visibility_timeout`], default none), a
//!   delivery not settled in time is redelivered; settling it afterwards gives
//!   [`Error::UnknownDelivery`]. `extend(by)` moves the deadline to now + `by`
//!   (a no-op without a lease). Expiry is lazy: it is checked when consumers
//!   poll, and waiting consumers sleep until the earliest deadline.
//! - **Delayed publish and TTL** (`wharf-deliver-at-ms`, `wharf-expires-at-ms`)
//!   are converted to tokio time when published, so the paused test clock
//!   drives them. Expired messages are skipped, never delivered (and not
//!   dead-lettered). Priorities and dedup are not implemented.
//! - **`max_in_flight`**: a subscription never holds more unsettled deliveries;
//!   `next` waits until one is settled (or its lease expires).
//! - **Closing** a subscription stops its deliveries (`next` → `None`); what
//!   it already handed out can still be settled. [`Backend::close`] makes
//!   publishes (including waiting ones) fail with [`Error::Closed`] and ends
//!   every stream.
//!
//! Delivery tokens hold the offset in 48 bits and the attempt (mod 2^16) in
//! 16, so offsets beyond 2^48 per topic are not supported.

#![warn(missing_docs)]

mod stream;
mod topic;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use async_trait::async_trait;
use wharf_core::{
    name, Backend, Capabilities, Capability, Error, GroupMode, Limits, Message, Publisher, Receipt,
    Result, StartPosition, SubscribeOptions, Subscriber, Subscription, TopicPattern,
};

use crate::stream::MemoryStream;
use crate::topic::{Append, Consumer, DeadLetter, Entry, Policy, Topic};

/// Default [`MemoryBackendBuilder::topic_capacity`].
pub const DEFAULT_TOPIC_CAPACITY: usize = 65_536;
/// Default [`MemoryBackendBuilder::max_message_bytes`] (1 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;

const NAME: &str = "memory";

/// The capabilities of [`MemoryBackend`].
pub const CAPABILITIES: Capabilities = Capabilities::empty()
    .with(Capability::OrderingPerKey)
    .with(Capability::ConsumerGroups)
    .with(Capability::NackWithDelay)
    .with(Capability::VisibilityTimeout)
    .with(Capability::ExtendLease)
    .with(Capability::DelayedPublish)
    .with(Capability::Ttl)
    .with(Capability::ReplayFromOffset)
    .with(Capability::ReplayFromTime)
    .with(Capability::Wildcards)
    .with(Capability::DeadLetter)
    .with(Capability::MaxDeliveries)
    .with(Capability::Backpressure)
    .with(Capability::PartitionAssignment)
    .with(Capability::Retention)
    .with(Capability::Redelivery);

#[derive(Debug, Clone, Copy)]
struct Config {
    topic_capacity: usize,
    max_message_bytes: usize,
    default_visibility_timeout: Option<Duration>,
}

/// A pattern subscription, joined to topics created after it.
struct PatternSub {
    pattern: TopicPattern,
    group: Option<Arc<str>>,
    policy: Policy,
    consumer: Arc<Consumer>,
}

#[derive(Default)]
struct Registry {
    topics: HashMap<Arc<str>, Arc<Topic>>,
    patterns: Vec<PatternSub>,
    consumers: HashMap<u64, Arc<Consumer>>,
}

pub(crate) struct Shared {
    config: Config,
    pub(crate) closed: AtomicBool,
    registry: RwLock<Registry>,
    next_id: AtomicU64,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The topic, created (and joined by matching pattern subscriptions) if new.
    fn topic(&self, topic: &str) -> Result<Arc<Topic>> {
        if let Some(t) = self.read().topics.get(topic) {
            return Ok(t.clone());
        }
        name::validate_topic(topic)?;
        let mut reg = self.write();
        if let Some(t) = reg.topics.get(topic) {
            return Ok(t.clone());
        }
        let t = Arc::new(Topic::new(Arc::from(topic), self.config.topic_capacity));
        for p in reg.patterns.iter().filter(|p| p.pattern.matches(topic)) {
            // A new topic is empty, so its first message is "after subscribing".
            let joined = t.join(
                &p.consumer,
                p.group.as_ref(),
                &p.policy,
                StartPosition::Earliest,
                self.next_id(),
            );
            if let Ok(j) = joined {
                p.consumer.add_pending(j);
            }
        }
        if self.closed.load(Ordering::Acquire) {
            t.close();
        }
        reg.topics.insert(t.name.clone(), t.clone());
        Ok(t)
    }

    /// Appends a dead letter without waiting for room (see the crate docs).
    pub(crate) fn dead_letter(&self, d: DeadLetter) {
        match self.topic(&d.topic) {
            Ok(t) => {
                let id = d.message.id();
                let mut entries = std::iter::once(Entry::new(d.message)).peekable();
                t.append(&mut entries, &mut |_| {}, true);
                tracing::debug!(topic = %d.topic, %id, "dead-lettered");
            }
            Err(e) => tracing::warn!(error = %e, "dropping dead letter: bad dead-letter topic"),
        }
    }

    pub(crate) fn forget_consumer(&self, id: u64) {
        let mut reg = self.write();
        reg.consumers.remove(&id);
        reg.patterns.retain(|p| p.consumer.id != id);
    }

    fn closed_error() -> Error {
        Error::Closed {
            what: "memory backend",
        }
    }
}

/// The in-memory backend; cheap to clone (all clones share the same topics).
///
/// See the [crate docs](crate) for the semantics.
#[derive(Clone)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("config", &self.shared.config)
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// A backend with the default settings.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Starts configuring a backend.
    pub fn builder() -> MemoryBackendBuilder {
        MemoryBackendBuilder {
            config: Config {
                topic_capacity: DEFAULT_TOPIC_CAPACITY,
                max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
                default_visibility_timeout: None,
            },
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Shared::closed_error());
        }
        Ok(())
    }

    fn check_size(&self, m: &Message) -> Result<()> {
        let max = self.shared.config.max_message_bytes;
        let size = m.size();
        if size > max {
            return Err(Error::MessageTooLarge { size, max });
        }
        Ok(())
    }

    /// Appends all `entries`, waiting for room as needed.
    async fn append_all<I>(
        &self,
        topic: &Topic,
        entries: I,
        mut on_receipt: impl FnMut(Receipt) + Send,
    ) -> Result<()>
    where
        I: Iterator<Item = Entry> + Send,
    {
        let mut entries = entries.peekable();
        match topic.append(&mut entries, &mut on_receipt, false) {
            Append::Done => return Ok(()),
            Append::Closed => return Err(Shared::closed_error()),
            Append::Full => {}
        }
        loop {
            let mut notified = std::pin::pin!(topic.space.notified());
            notified.as_mut().enable();
            match topic.append(&mut entries, &mut on_receipt, false) {
                Append::Done => return Ok(()),
                Append::Closed => return Err(Shared::closed_error()),
                Append::Full => notified.await,
            }
        }
    }
}

/// Configures a [`MemoryBackend`]; see [`MemoryBackend::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryBackendBuilder {
    config: Config,
}

impl MemoryBackendBuilder {
    /// Most messages a topic keeps (default [`DEFAULT_TOPIC_CAPACITY`]; 0 is taken as 1).
    pub fn topic_capacity(mut self, n: usize) -> Self {
        self.config.topic_capacity = n.max(1);
        self
    }

    /// Largest [`Message::size`] accepted (default [`DEFAULT_MAX_MESSAGE_BYTES`]).
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.config.max_message_bytes = n;
        self
    }

    /// Lease for subscriptions that set no visibility timeout (default: none,
    /// deliveries are held until settled or dropped).
    pub fn default_visibility_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.default_visibility_timeout = timeout;
        self
    }

    /// Builds the backend.
    pub fn build(self) -> MemoryBackend {
        MemoryBackend {
            shared: Arc::new(Shared {
                config: self.config,
                closed: AtomicBool::new(false),
                registry: RwLock::new(Registry::default()),
                next_id: AtomicU64::new(1),
            }),
        }
    }
}

#[async_trait]
impl Publisher for MemoryBackend {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        self.check_open()?;
        self.check_size(&message)?;
        let t = self.shared.topic(topic)?;
        let mut receipt = None;
        self.append_all(&t, std::iter::once(Entry::new(message)), |r| {
            receipt = Some(r)
        })
        .await?;
        receipt.ok_or_else(Shared::closed_error)
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        self.check_open()?;
        for m in &messages {
            self.check_size(m)?;
        }
        let t = self.shared.topic(topic)?;
        let mut receipts = Vec::with_capacity(messages.len());
        self.append_all(&t, messages.into_iter().map(Entry::new), |r| {
            receipts.push(r)
        })
        .await?;
        Ok(receipts)
    }
}

#[async_trait]
impl Subscriber for MemoryBackend {
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        let pattern = options.validate()?;
        self.check_open()?;
        let shared = &self.shared;
        let consumer = Arc::new(Consumer::new(
            shared.next_id(),
            options.max_in_flight_limit(),
        ));
        let policy = Policy {
            stream: options.group_mode() == GroupMode::Stream,
            visibility_timeout: options
                .visibility_timeout_value()
                .or(shared.config.default_visibility_timeout),
            max_deliveries: options.max_deliveries_limit(),
            dead_letter_topic: options.dead_letter_topic_name().map(Arc::from),
        };
        let group: Option<Arc<str>> = options.group_name().map(Arc::from);
        let start = options.start_position();
        let mut joined = Vec::new();
        if pattern.is_literal() {
            let t = shared.topic(pattern.as_str())?;
            joined.push(t.join(&consumer, group.as_ref(), &policy, start, shared.next_id())?);
            shared
                .write()
                .consumers
                .insert(consumer.id, consumer.clone());
        } else {
            let mut reg = shared.write();
            let mut topics: Vec<Arc<Topic>> = reg
                .topics
                .values()
                .filter(|t| pattern.matches(&t.name))
                .cloned()
                .collect();
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            for t in topics {
                match t.join(&consumer, group.as_ref(), &policy, start, shared.next_id()) {
                    Ok(j) => joined.push(j),
                    Err(e) => {
                        for j in &joined {
                            j.topic.leave(j.gidx, j.gid, consumer.id, true);
                        }
                        return Err(e);
                    }
                }
            }
            reg.patterns.push(PatternSub {
                pattern,
                group,
                policy,
                consumer: consumer.clone(),
            });
            reg.consumers.insert(consumer.id, consumer.clone());
        }
        Ok(Subscription::new(MemoryStream::new(
            shared.clone(),
            consumer,
            joined,
        )))
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn limits(&self) -> Limits {
        Limits::new(self.shared.config.max_message_bytes)
    }

    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        self.check_open()?;
        self.shared.topic(topic).map(drop)
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.store(true, Ordering::Release);
        let reg = self.shared.read();
        for t in reg.topics.values() {
            t.close();
        }
        for c in reg.consumers.values() {
            c.notify.notify_one();
        }
        Ok(())
    }
}
