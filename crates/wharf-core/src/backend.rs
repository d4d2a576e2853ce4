//! The traits a backend implements: publish, subscribe, declare what it can do.
//!
//! All are object safe, so services hold an `Arc<dyn Backend>` (or just an
//! `Arc<dyn Publisher>`) and switch backends by changing one constructor.

use async_trait::async_trait;

use crate::capability::Capabilities;
use crate::error::Result;
use crate::message::{Message, MessageId};
use crate::subscription::{SubscribeOptions, Subscription};

/// What the backend assigned to a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The message's id.
    pub id: MessageId,
    /// The partition it was stored in (0 for unpartitioned backends).
    pub partition: u32,
    /// Its offset in the partition, for log-based backends.
    pub offset: Option<u64>,
    /// `true` if the backend recognised the id as a duplicate within its
    /// dedup window and did not store it again (`offset` is then the original's).
    pub duplicate: bool,
}

impl Receipt {
    /// A receipt for a newly stored message.
    pub fn new(id: MessageId, partition: u32, offset: Option<u64>) -> Self {
        Receipt {
            id,
            partition,
            offset,
            duplicate: false,
        }
    }
}

/// Limits a backend enforces on what is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest [`Message::size`] accepted.
    pub max_message_bytes: usize,
    /// Most headers a message may have ([`crate::Error::TooManyHeaders`]
    /// past it); `usize::MAX` when the backend sets no such limit.
    pub max_headers: usize,
    /// Most bytes of header names and values a message may have
    /// ([`crate::Error::HeadersTooLarge`] past it); `usize::MAX` when the
    /// backend sets no such limit.
    pub max_header_bytes: usize,
}

impl Limits {
    /// Limits with the given maximum message size and no header limits.
    pub const fn new(max_message_bytes: usize) -> Self {
        Limits {
            max_message_bytes,
            max_headers: usize::MAX,
            max_header_bytes: usize::MAX,
        }
    }

    /// These limits with a header count and header size limit.
    #[must_use]
    pub const fn with_header_limits(mut self, max_headers: usize, max_header_bytes: usize) -> Self {
        self.max_headers = max_headers;
        self.max_header_bytes = max_header_bytes;
        self
    }
}

/// Publishes messages to topics.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes one message; returns once it is as durable as the topic
    /// promises.
    ///
    /// # Errors
    /// [`crate::Error::InvalidName`], [`crate::Error::MessageTooLarge`],
    /// [`crate::Error::UnknownTopic`] for bad input (nothing stored);
    /// [`crate::Error::Unavailable`] / [`crate::Error::Timeout`] when the
    /// backend can't be reached (the message may or may not be stored: retry
    /// with the same id where the backend dedups); [`crate::Error::Closed`].
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped publish may or may not have been stored.
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt>;

    /// Publishes a batch to one topic, in order. Backends store the batch
    /// together where they can (one write, one fsync).
    ///
    /// # Errors
    /// As [`Publisher::publish`]. Bad input anywhere in the batch rejects the
    /// whole batch before anything is stored.
    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        let mut receipts = Vec::with_capacity(messages.len());
        for m in messages {
            receipts.push(self.publish(topic, m).await?);
        }
        Ok(receipts)
    }
}

/// Opens subscriptions.
#[async_trait]
pub trait Subscriber: Send + Sync {
    /// Subscribes; deliveries arrive through the returned [`Subscription`].
    ///
    /// # Errors
    /// [`crate::Error::InvalidName`] / [`crate::Error::InvalidArgument`] for
    /// bad options; [`crate::Error::Unsupported`] when the options need a
    /// capability the backend lacks (a wildcard, a start offset);
    /// [`crate::Error::UnknownTopic`] where topics must exist first.
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription>;
}

/// A complete backend: publisher, subscriber, capabilities and lifecycle.
#[async_trait]
pub trait Backend: Publisher + Subscriber {
    /// Short name for errors and logs (`memory`, `broker`, `nats`, …).
    fn name(&self) -> &'static str;

    /// What this backend can do; check with [`Capabilities::require`] at start-up.
    fn capabilities(&self) -> Capabilities;

    /// Limits on published messages.
    fn limits(&self) -> Limits;

    /// Makes sure `topic` exists (idempotent). Backends that create topics on
    /// first use can return `Ok(())` at once.
    ///
    /// # Errors
    /// [`crate::Error::InvalidName`], transport errors.
    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        crate::name::validate_topic(topic)
    }

    /// Shuts down: stops accepting publishes ([`crate::Error::Closed`]),
    /// ends every subscription's stream, and flushes whatever the backend
    /// persists. Deliveries already handed out may still be settled until
    /// the backend is dropped (persistent backends redeliver unsettled ones
    /// after a restart).
    ///
    /// # Errors
    /// Flush or transport failures.
    async fn close(&self) -> Result<()>;
}
