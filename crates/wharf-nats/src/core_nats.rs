//! [`NatsCoreBackend`]: the non-durable mode on core NATS publish/subscribe.
//!
//! No JetStream: a publish goes to whoever is subscribed at that moment, a
//! group is a queue group, and settling a delivery only frees its in-flight
//! slot in the client (nothing is acknowledged to the server, and nothing
//! can be redelivered). See the [crate docs](crate#core-nats-non-durable-mode).

use std::sync::Arc;

use async_nats::header::HeaderMap;
use async_nats::Client;
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;
use wharf_adapter::at_most_once::{self, receipt, Feed, LocalStream};
use wharf_core::{
    name, Backend, Capabilities, Capability, Error, Limits, Message, Publisher, Receipt, Result,
    SubscribeOptions, Subscriber, Subscription,
};

use crate::backend::msg_id;
use crate::config::NatsConfig;
use crate::error::unavailable_for;
use crate::subjects::{self, Subjects};
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
    subjects: Subjects,
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
        let (client, subjects) = subjects::connect(&config).await?;
        let (closed, _) = watch::channel(false);
        Ok(NatsCoreBackend {
            shared: Arc::new(Shared {
                client,
                subjects,
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
    fn check_open(&self) -> Result<()> {
        if *self.closed.borrow() {
            return Err(Error::Closed {
                what: "nats-core backend",
            });
        }
        Ok(())
    }

    async fn send(&self, subject: String, headers: HeaderMap, payload: Bytes) -> Result<()> {
        self.client
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| unavailable_for(NAME, "publish", e))
    }

    async fn flush(&self) -> Result<()> {
        self.client
            .flush()
            .await
            .map_err(|e| unavailable_for(NAME, "flush", e))
    }
}

#[async_trait]
impl Publisher for NatsCoreBackend {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        let s = &self.shared;
        s.check_open()?;
        let (subject, headers) = s
            .subjects
            .prepare(topic, &message, &msg_id(&message, topic))?;
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
            .map(|m| s.subjects.prepare(topic, m, &msg_id(m, topic)))
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
        let pattern = at_most_once::check_options(NAME, &options, true)?;
        let subject = s.subjects.subject(pattern.as_str());
        let sub = match options.group_name() {
            Some(group) => s.client.queue_subscribe(subject, group.to_owned()).await,
            None => s.client.subscribe(subject).await,
        }
        .map_err(|e| unavailable_for(NAME, "subscribe", e))?;
        Ok(Subscription::new(LocalStream::new(
            NAME,
            options.max_in_flight_limit(),
            CoreFeed {
                shared: self.shared.clone(),
            },
            sub,
            s.closed.subscribe(),
        )))
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
        self.shared.subjects.limits()
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
            .field("prefix", &self.shared.subjects.prefix())
            .finish_non_exhaustive()
    }
}

/// What a core NATS subscription reads: the client's subscriber, each
/// message decoded from its headers and topic-mapped from its subject.
struct CoreFeed {
    shared: Arc<Shared>,
}

#[async_trait]
impl Feed for CoreFeed {
    type Stream = async_nats::Subscriber;

    fn decode(&self, msg: async_nats::Message) -> Option<(Arc<str>, Message)> {
        let topic = Arc::from(self.shared.subjects.topic_of(msg.subject.as_str()));
        Some((topic, wire::decode(msg.headers.as_ref(), msg.payload)))
    }

    async fn unsubscribe(&self, mut sub: async_nats::Subscriber) -> Result<()> {
        sub.unsubscribe()
            .await
            .map_err(|e| unavailable_for(NAME, "unsubscribe", e))
    }
}
