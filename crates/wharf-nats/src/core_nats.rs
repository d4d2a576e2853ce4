//! [`NatsCoreBackend`]: the non-durable mode on core NATS publish/subscribe.
//!
//! No JetStream: a publish goes to whoever is subscribed at that moment, a
//! group is a queue group, and settling a delivery only frees its in-flight
//! slot in the client (nothing is acknowledged to the server, and nothing
//! can be redelivered). See the [crate docs](crate#core-nats-non-durable-mode).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::{Client, ConnectOptions};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use wharf_core::{
    name, Acker, Backend, Capabilities, Capability, Delivery, DeliveryInfo, DeliveryStream, Error,
    Limits, Message, Publisher, Receipt, Result, Settlement, StartPosition, SubscribeOptions,
    Subscriber, Subscription, Timestamp,
};

use crate::backend::msg_id;
use crate::config::{NatsConfig, HEADER_ROOM};
use crate::error::unavailable;
use crate::wire;

/// The backend's name in errors and logs.
const NAME: &str = "nats-core";

/// The capabilities of [`NatsCoreBackend`].
const CAPABILITIES: Capabilities = Capabilities::empty()
    .with(Capability::ConsumerGroups)
    .with(Capability::OrderingPerKey)
    .with(Capability::Wildcards);

/// A Wharf backend on core NATS publish/subscribe: at-most-once, nothing
/// stored; see the [crate docs](crate#core-nats-non-durable-mode).
///
/// Cloning is cheap and shares the connection.
///
/// ```no_run
/// # async fn run() -> wharf_core::Result<()> {
/// use wharf_core::{Message, Publisher, SubscribeOptions, Subscriber};
/// use wharf_nats::{NatsConfig, NatsCoreBackend};
///
/// let nats = NatsCoreBackend::connect(NatsConfig::new("nats://127.0.0.1:4222")).await?;
/// // Subscribe first: a core NATS publish reaches only live subscriptions.
/// let mut sub = nats.subscribe(SubscribeOptions::new("prices.*")).await?;
/// nats.publish("prices.eur", Message::new("1.08")).await?;
/// let d = sub.next().await.expect("a delivery")?;
/// d.ack().await?; // frees the in-flight slot; nothing goes to the server
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct NatsCoreBackend {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    prefix: String,
    max_payload: usize,
    limits: Limits,
    closed: watch::Sender<bool>,
}

impl NatsCoreBackend {
    /// Connects to the server at the config's URL. Of the config only the
    /// URL, the subject prefix and the timeouts apply; the JetStream
    /// settings (stream, max age, duplicate window) do not.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server cannot be reached;
    /// [`Error::InvalidName`] for a bad subject prefix.
    pub async fn connect(config: NatsConfig) -> Result<Self> {
        name::validate_topic(&config.prefix)?;
        let client = ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .connect(config.url.as_str())
            .await
            .map_err(|e| unavailable("connect", e))?;
        let max_payload = client.server_info().max_payload;
        let (closed, _) = watch::channel(false);
        Ok(NatsCoreBackend {
            shared: Arc::new(Shared {
                client,
                prefix: config.prefix,
                max_payload,
                limits: Limits::new(max_payload.saturating_sub(HEADER_ROOM)),
                closed,
            }),
        })
    }

    /// The underlying `async-nats` client.
    pub fn client(&self) -> &Client {
        &self.shared.client
    }
}

impl Shared {
    fn subject(&self, topic: &str) -> String {
        format!("{}.{topic}", self.prefix)
    }

    fn topic_of<'a>(&self, subject: &'a str) -> &'a str {
        subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|s| s.strip_prefix('.'))
            .unwrap_or(subject)
    }

    fn check_open(&self) -> Result<()> {
        if *self.closed.borrow() {
            return Err(Error::Closed {
                what: "nats-core backend",
            });
        }
        Ok(())
    }

    /// Validates `message` for `topic`: its subject and headers.
    fn prepare(&self, topic: &str, message: &Message) -> Result<(String, HeaderMap)> {
        name::validate_topic(topic)?;
        let max = self.limits.max_message_bytes;
        if message.size() > max {
            return Err(Error::MessageTooLarge {
                size: message.size(),
                max,
            });
        }
        let headers = wire::encode_headers(message, &msg_id(message, topic))?;
        let wire_size = wire::headers_wire_len(&headers) + message.payload().len();
        if wire_size > self.max_payload {
            return Err(Error::MessageTooLarge {
                size: wire_size,
                max: self.max_payload,
            });
        }
        Ok((self.subject(topic), headers))
    }

    async fn send(&self, subject: String, headers: HeaderMap, payload: Bytes) -> Result<()> {
        self.client
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| unavailable("publish", e))
    }

    async fn flush(&self) -> Result<()> {
        self.client
            .flush()
            .await
            .map_err(|e| unavailable("flush", e))
    }
}

fn receipt(message: &Message) -> Receipt {
    Receipt {
        id: message.id(),
        partition: 0,
        offset: None,
        duplicate: false,
    }
}

#[async_trait]
impl Publisher for NatsCoreBackend {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        let s = &self.shared;
        s.check_open()?;
        let (subject, headers) = s.prepare(topic, &message)?;
        s.send(subject, headers, message.payload().clone()).await?;
        s.flush().await?;
        Ok(receipt(&message))
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        let s = &self.shared;
        s.check_open()?;
        name::validate_topic(topic)?;
        let prepared = messages
            .iter()
            .map(|m| s.prepare(topic, m))
            .collect::<Result<Vec<_>>>()?;
        for ((subject, headers), m) in prepared.into_iter().zip(&messages) {
            s.send(subject, headers, m.payload().clone()).await?;
        }
        s.flush().await?;
        Ok(messages.iter().map(receipt).collect())
    }
}

#[async_trait]
impl Subscriber for NatsCoreBackend {
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        let s = &self.shared;
        s.check_open()?;
        let pattern = options.validate()?;
        let unsupported = |capability| Error::Unsupported {
            backend: NAME,
            capability,
        };
        match options.start_position() {
            StartPosition::Offset(_) => return Err(unsupported(Capability::ReplayFromOffset)),
            StartPosition::Time(_) => return Err(unsupported(Capability::ReplayFromTime)),
            // Nothing is stored, so the earliest message still there is the next one.
            _ => {}
        }
        if options.visibility_timeout_value().is_some() {
            return Err(unsupported(Capability::VisibilityTimeout));
        }
        if options.max_deliveries_limit().is_some() {
            return Err(unsupported(Capability::MaxDeliveries));
        }
        if options.group_mode() != wharf_core::GroupMode::Queue {
            return Err(unsupported(Capability::PartitionAssignment));
        }
        let subject = s.subject(pattern.as_str());
        let sub = match options.group_name() {
            Some(group) => s.client.queue_subscribe(subject, group.to_owned()).await,
            None => s.client.subscribe(subject).await,
        }
        .map_err(|e| unavailable("subscribe", e))?;
        Ok(Subscription::new(CoreStream {
            sub: Some(sub),
            shared: self.shared.clone(),
            acker: Arc::new(LocalAcker {
                permits: Arc::new(Semaphore::new(options.max_in_flight_limit())),
                next_token: AtomicU64::new(1),
            }),
            backend_closed: s.closed.subscribe(),
        }))
    }
}

#[async_trait]
impl Backend for NatsCoreBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn limits(&self) -> Limits {
        self.shared.limits
    }

    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        // A subject needs no creating.
        name::validate_topic(topic)
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.send_replace(true);
        self.shared.flush().await
    }
}

impl std::fmt::Debug for NatsCoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCoreBackend")
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

/// Settles the deliveries of one subscription in the client alone: every
/// settlement, and a drop, frees one in-flight slot; nothing is sent.
struct LocalAcker {
    permits: Arc<Semaphore>,
    next_token: AtomicU64,
}

#[async_trait]
impl Acker for LocalAcker {
    async fn settle(&self, _token: u64, settlement: Settlement) -> Result<()> {
        self.permits.add_permits(1);
        let unsupported = |capability| {
            Err(Error::Unsupported {
                backend: NAME,
                capability,
            })
        };
        match settlement {
            Settlement::Ack => Ok(()),
            // At-most-once: the message is gone either way.
            Settlement::Nack { delay } if delay.is_zero() => Ok(()),
            Settlement::Nack { .. } => unsupported(Capability::NackWithDelay),
            _ => unsupported(Capability::DeadLetter),
        }
    }

    async fn extend(&self, _token: u64, _by: Duration) -> Result<()> {
        Err(Error::Unsupported {
            backend: NAME,
            capability: Capability::ExtendLease,
        })
    }

    fn release(&self, _token: u64) {
        self.permits.add_permits(1);
    }
}

/// The [`DeliveryStream`] of a core NATS subscription: reads the client's
/// subscription channel directly, one in-flight slot per delivery.
struct CoreStream {
    /// `None` once the subscription has ended.
    sub: Option<async_nats::Subscriber>,
    shared: Arc<Shared>,
    acker: Arc<LocalAcker>,
    backend_closed: watch::Receiver<bool>,
}

impl CoreStream {
    /// Turns a received message into a delivery holding `permit`, or `None`
    /// for a message whose TTL has passed (dropped, the permit returned).
    fn deliver(&self, msg: async_nats::Message, permit: OwnedSemaphorePermit) -> Option<Delivery> {
        let message = wire::decode(msg.headers.as_ref(), msg.payload);
        if message
            .expires_at()
            .is_some_and(|at| at <= Timestamp::now())
        {
            return None;
        }
        permit.forget();
        let info = DeliveryInfo {
            topic: Arc::from(self.shared.topic_of(msg.subject.as_str())),
            partition: 0,
            offset: None,
            attempt: 1,
        };
        let token = self.acker.next_token.fetch_add(1, Ordering::Relaxed);
        Some(Delivery::new(message, info, self.acker.clone(), token))
    }

    fn end(&mut self) {
        // Dropping the subscriber unsubscribes; what it buffered is lost.
        self.sub = None;
    }
}

#[async_trait]
impl DeliveryStream for CoreStream {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            let sub = self.sub.as_mut()?;
            // Cancel safe: a permit or a message is only taken together.
            let permit = tokio::select! {
                biased;
                _ = self.backend_closed.wait_for(|c| *c) => None,
                p = self.acker.permits.clone().acquire_owned() => p.ok(),
            };
            let Some(permit) = permit else {
                self.end();
                return None;
            };
            let msg = tokio::select! {
                biased;
                _ = self.backend_closed.wait_for(|c| *c) => None,
                m = sub.next() => m,
            };
            let Some(msg) = msg else {
                self.end();
                return None;
            };
            if let Some(d) = self.deliver(msg, permit) {
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
            let msg = self.sub.as_mut()?.next().now_or_never()??;
            if let Some(d) = self.deliver(msg, permit) {
                return Some(Ok(d));
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        if let Some(mut sub) = self.sub.take() {
            sub.unsubscribe()
                .await
                .map_err(|e| unavailable("unsubscribe", e))?;
        }
        Ok(())
    }
}
