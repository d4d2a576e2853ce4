//! [`NatsBackend`]: connecting, publishing with PubAcks, and the backend lifecycle.
//!
//! Publishing validates everything (name, size, headers) before anything is
//! sent, then sends a batch pipelined on one connection and waits for the
//! PubAcks in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::Client;
use async_trait::async_trait;
use tokio::sync::watch;
use wharf_core::{
    name, Backend, Capabilities, Capability, Error, Limits, Message, Publisher, Receipt, Result,
    SubscribeOptions, Subscriber, Subscription,
};

use crate::config::NatsConfig;
use crate::error::{backend, unavailable, NatsError};
use crate::subjects::{self, Subjects};
use crate::subscription::Inbox;

/// The backend's name in errors and logs.
pub(crate) const NAME: &str = "nats";

/// A Wharf backend on one JetStream stream; see the [crate docs](crate) for the mapping.
///
/// Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct NatsBackend {
    shared: Arc<Shared>,
}

/// State shared by the backend, its subscriptions and their ackers.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) js: jetstream::Context,
    pub(crate) stream: String,
    pub(crate) subjects: Subjects,
    request_timeout: Duration,
    pub(crate) closed: watch::Sender<bool>,
    /// When the first failed attempt of (consumer, stream sequence) happened.
    pub(crate) first_failures: Mutex<HashMap<(String, u64), u64>>,
    /// Inboxes of live subscriptions, shut synchronously by `close`.
    inboxes: Mutex<Vec<Weak<Inbox>>>,
}

fn validate_stream_name(name: &str) -> Result<()> {
    let bad = |reason| Error::Backend {
        backend: NAME,
        source: Box::new(NatsError::InvalidStreamName {
            name: name.to_owned(),
            reason,
        }),
    };
    if name.is_empty() {
        return Err(bad("must not be empty"));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(bad(
            "may not contain '.', '*', '>', '/', '\\' or whitespace",
        ));
    }
    Ok(())
}

impl NatsBackend {
    /// Connects and makes sure the configured stream exists, covering
    /// `<prefix>.>` (an existing stream is used as it is).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server cannot be reached;
    /// [`Error::InvalidName`] for a bad subject prefix; [`Error::Backend`]
    /// for a bad stream name or when JetStream refuses the stream (e.g. its
    /// subjects overlap another stream's).
    pub async fn connect(config: NatsConfig) -> Result<Self> {
        validate_stream_name(&config.stream)?;
        let (client, subjects) = subjects::connect(&config).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        let stream_config = stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.prefix)],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: config.max_age,
            max_bytes: config
                .max_bytes
                .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            duplicate_window: if config.max_age.is_zero() {
                config.duplicate_window
            } else {
                config.duplicate_window.min(config.max_age)
            },
            ..Default::default()
        };
        // NATS 2.9 can fail a stream create with "could not create storage
        // directory" while another client deletes the account's last stream
        // (it removes the directory), or with "error creating store for
        // stream" under load; a retry succeeds. Up to ~3 s of retries.
        let mut attempt = 0;
        loop {
            match js.get_or_create_stream(stream_config.clone()).await {
                Ok(_) => break,
                Err(e) if attempt < 10 && e.to_string().contains("code 500") => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "retrying nats stream create");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => return Err(backend("create stream", e)),
            }
        }
        let (closed, _) = watch::channel(false);
        Ok(NatsBackend {
            shared: Arc::new(Shared {
                client,
                js,
                stream: config.stream,
                subjects,
                request_timeout: config.request_timeout,
                closed,
                first_failures: Mutex::new(HashMap::new()),
                inboxes: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The underlying `async-nats` client (for core NATS use alongside Wharf).
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// The JetStream stream this backend stores into.
    pub fn stream_name(&self) -> &str {
        &self.shared.stream
    }

    /// Deletes this backend's stream with every message and consumer in it
    /// (tear-down of tests and temporary namespaces).
    ///
    /// # Errors
    /// [`Error::Backend`] when JetStream refuses; a missing stream is not an error.
    pub async fn delete_stream(&self) -> Result<()> {
        match self.shared.js.delete_stream(&self.shared.stream).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Ok(()),
            Err(e) => Err(backend("delete stream", e)),
        }
    }
}

impl Shared {
    pub(crate) fn register_inbox(&self, inbox: &Arc<Inbox>) {
        let mut all = self.inboxes.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(inbox));
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if *self.closed.borrow() {
            return Err(Error::Closed {
                what: "nats backend",
            });
        }
        Ok(())
    }

    /// Validates `message` for `topic` and turns it into a JetStream publish.
    pub(crate) fn prepare(
        &self,
        topic: &str,
        message: &Message,
        msg_id: &str,
    ) -> Result<(String, jetstream::message::PublishMessage)> {
        let (subject, headers) = self.subjects.prepare(topic, message, msg_id)?;
        let publish = jetstream::message::PublishMessage::build()
            .payload(message.payload().clone())
            .headers(headers);
        Ok((subject, publish))
    }

    /// Sends one prepared publish and returns the PubAck's future.
    pub(crate) async fn send(
        &self,
        subject: String,
        publish: jetstream::message::PublishMessage,
    ) -> Result<jetstream::context::PublishAckFuture> {
        self.js
            .send_publish(subject, publish)
            .await
            .map_err(|e| self.publish_error(e))
    }

    pub(crate) fn publish_error(&self, e: jetstream::context::PublishError) -> Error {
        match e.kind() {
            PublishErrorKind::TimedOut => Error::Timeout {
                operation: "nats publish",
                after: self.request_timeout,
            },
            PublishErrorKind::BrokenPipe => unavailable("publish", e),
            _ => backend("publish", e),
        }
    }
}

fn receipt(message_id: wharf_core::MessageId, ack: &jetstream::publish::PublishAck) -> Receipt {
    Receipt {
        id: message_id,
        partition: 0,
        offset: Some(ack.sequence),
        duplicate: ack.duplicate,
    }
}

#[async_trait]
impl Publisher for NatsBackend {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        let s = &self.shared;
        s.check_open()?;
        let (subject, publish) = s.prepare(topic, &message, &msg_id(&message, topic))?;
        let ack = s
            .send(subject, publish)
            .await?
            .await
            .map_err(|e| s.publish_error(e))?;
        Ok(receipt(message.id(), &ack))
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        let s = &self.shared;
        s.check_open()?;
        name::validate_topic(topic)?;
        let prepared = messages
            .iter()
            .map(|m| s.prepare(topic, m, &msg_id(m, topic)))
            .collect::<Result<Vec<_>>>()?;
        let mut acks = Vec::with_capacity(prepared.len());
        for (subject, publish) in prepared {
            acks.push(s.send(subject, publish).await?);
        }
        let mut receipts = Vec::with_capacity(acks.len());
        for (m, ack) in messages.iter().zip(acks) {
            let ack = ack.await.map_err(|e| s.publish_error(e))?;
            receipts.push(receipt(m.id(), &ack));
        }
        Ok(receipts)
    }
}

#[async_trait]
impl Subscriber for NatsBackend {
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        crate::subscription::open(self.shared.clone(), options).await
    }
}

#[async_trait]
impl Backend for NatsBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        [
            Capability::Persistence,
            Capability::ConsumerGroups,
            Capability::NackWithDelay,
            Capability::VisibilityTimeout,
            Capability::ExtendLease,
            Capability::Ttl,
            Capability::Dedup,
            Capability::ReplayFromOffset,
            Capability::Wildcards,
            Capability::DeadLetter,
            Capability::MaxDeliveries,
            Capability::Retention,
            Capability::Redelivery,
        ]
        .into_iter()
        .collect()
    }

    fn limits(&self) -> Limits {
        self.shared.subjects.limits()
    }

    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        // The stream covers `<prefix>.>`: every valid topic already has a home.
        name::validate_topic(topic)
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.send_replace(true);
        let inboxes = std::mem::take(
            &mut *self
                .shared
                .inboxes
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for inbox in inboxes.iter().filter_map(Weak::upgrade) {
            inbox.shut();
        }
        self.shared
            .client
            .flush()
            .await
            .map_err(|e| unavailable("flush", e))
    }
}

impl std::fmt::Debug for NatsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBackend")
            .field("stream", &self.shared.stream)
            .field("prefix", &self.shared.subjects.prefix())
            .finish_non_exhaustive()
    }
}

/// The `Nats-Msg-Id` of a publish: the message id scoped to its topic, so
/// dedup is per topic (as on every Wharf backend) although one stream holds
/// every topic — the router republishes a message with its id to retry topics.
/// Topics never contain `:`; readers take the first 36 characters as the id.
pub(crate) fn msg_id(message: &Message, topic: &str) -> String {
    format!("{}:{topic}", message.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_with_subject_characters_are_refused() {
        for bad in ["", "a.b", "a*", "a>", "a b", "a/b"] {
            assert!(validate_stream_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_stream_name("WHARF_orders-1").is_ok());
    }
}
