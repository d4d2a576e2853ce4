//! [`KafkaBackend`]: connecting, publishing, topic admin and the backend
//! lifecycle.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use tokio::sync::watch;
use wharf_core::{
    name, Backend, Capabilities, Capability, Error, Limits, Message, Publisher, Receipt, Result,
    SubscribeOptions, Subscriber, Subscription,
};

use crate::config::{KafkaConfig, MAX_MESSAGE_BYTES};
use crate::error::{admin, map, KafkaAdapterError};
use crate::wire;

/// The backend's name in errors and logs.
pub(crate) const NAME: &str = "kafka";

/// Kafka's limit on a topic name's length.
const MAX_KAFKA_TOPIC_LEN: usize = 249;

/// A Wharf backend on Kafka; see the [crate docs](crate) for the mapping.
///
/// Cloning is cheap and shares the producer and admin client.
#[derive(Clone)]
pub struct KafkaBackend {
    shared: Arc<Shared>,
}

/// State shared by the backend and its subscriptions.
pub(crate) struct Shared {
    pub(crate) config: KafkaConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Kafka topics known to exist (created or seen by this backend).
    known: Mutex<HashSet<String>>,
    pub(crate) closed: watch::Sender<bool>,
}

/// The client properties every client of `config` shares.
pub(crate) fn base_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &config.extra {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &config.bootstrap)
        .set("socket.timeout.ms", millis(config.timeout).to_string())
        .set("log_level", "3")
        // A metadata request must not create the topic it names (a deleted
        // topic would come back); topics are created by `ensure_topic`.
        .set("allow.auto.create.topics", "false");
    c
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn invalid_url(e: rdkafka::error::KafkaError) -> Error {
    Error::InvalidArgument {
        name: "url",
        reason: e.to_string(),
    }
}

impl KafkaBackend {
    /// Creates the producer and admin client and checks that a broker
    /// answers (a metadata request).
    ///
    /// The producer has `acks=all`, `enable.idempotence=true`,
    /// `compression.type=lz4` and `partitioner=murmur2_random` (keys land
    /// where the Java client's default partitioner puts them; records
    /// without a key go to a random partition).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when no broker answers within the config's
    /// timeout; [`Error::InvalidArgument`] for a bad property or prefix.
    pub async fn connect(config: KafkaConfig) -> Result<Self> {
        if !config
            .prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(Error::InvalidArgument {
                name: "topic_prefix",
                reason: "may only contain [A-Za-z0-9._-]".into(),
            });
        }
        let mut pc = base_config(&config);
        pc.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", "lz4")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", millis(config.linger).to_string())
            .set("message.timeout.ms", millis(config.timeout).to_string());
        let producer: FutureProducer = pc.create().map_err(invalid_url)?;
        let admin: AdminClient<DefaultClientContext> =
            base_config(&config).create().map_err(invalid_url)?;
        // A metadata request proves a broker answers.
        let probe = producer.clone();
        let timeout = config.timeout;
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, timeout))
            .await
            .map_err(|e| Error::Backend {
                backend: NAME,
                source: Box::new(e),
            })?
            .map_err(|e| Error::Unavailable {
                backend: NAME,
                source: Box::new(KafkaAdapterError::Client {
                    context: "connect",
                    source: e,
                }),
            })?;
        let (closed, _) = watch::channel(false);
        Ok(KafkaBackend {
            shared: Arc::new(Shared {
                config,
                producer,
                admin,
                known: Mutex::new(HashSet::new()),
                closed,
            }),
        })
    }

    /// The Kafka topic name of Wharf topic `topic`: `<prefix><topic>`.
    pub fn kafka_topic(&self, topic: &str) -> String {
        self.shared.kafka_topic(topic)
    }

    /// Creates `topic` with `partitions` partitions (the config's
    /// replication factor); an existing topic is left as it is.
    ///
    /// # Errors
    /// [`Error::InvalidName`]; the broker's refusal as
    /// [`Error::Backend`]; [`Error::Unavailable`].
    pub async fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        self.shared
            .create(topic, i32::try_from(partitions.max(1)).unwrap_or(i32::MAX))
            .await
    }

    /// Deletes `topic` (an unknown topic is not an error).
    ///
    /// # Errors
    /// [`Error::InvalidName`]; the broker's refusal; [`Error::Unavailable`].
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        self.shared.check_topic(topic)?;
        let kt = self.shared.kafka_topic(topic);
        self.shared.delete_kafka_topics(&[kt]).await
    }

    /// Deletes every topic whose Kafka name starts with the config's
    /// prefix: tear-down of tests and temporary namespaces. Refuses with an
    /// empty prefix (that would be the whole cluster).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] without a prefix; transport errors.
    pub async fn delete_all(&self) -> Result<()> {
        let s = &self.shared;
        if s.config.prefix.is_empty() {
            return Err(Error::InvalidArgument {
                name: "topic_prefix",
                reason: "delete_all needs a prefix".into(),
            });
        }
        let topics: Vec<String> = s
            .list_kafka_topics()
            .await?
            .into_iter()
            .filter(|n| n.starts_with(&s.config.prefix))
            .collect();
        if topics.is_empty() {
            return Ok(());
        }
        s.delete_kafka_topics(&topics).await
    }

    /// Partitions of `topic` as the broker reports them.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`] when it does not exist; transport errors.
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        self.shared.check_topic(topic)?;
        let kt = self.shared.kafka_topic(topic);
        let n = self.shared.partitions_of(&kt).await?;
        if n == 0 {
            return Err(Error::UnknownTopic {
                topic: topic.to_owned(),
            });
        }
        Ok(n)
    }
}

impl Shared {
    pub(crate) fn kafka_topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.config.prefix)
    }

    /// Every topic the cluster lists (Kafka names).
    pub(crate) async fn list_kafka_topics(&self) -> Result<Vec<String>> {
        let producer = self.producer.clone();
        let timeout = self.config.timeout;
        let md =
            tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout))
                .await
                .map_err(|e| Error::Backend {
                    backend: NAME,
                    source: Box::new(e),
                })?
                .map_err(|e| map("metadata", e, timeout))?;
        Ok(md.topics().iter().map(|t| t.name().to_owned()).collect())
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if *self.closed.borrow() {
            return Err(Error::Closed {
                what: "kafka backend",
            });
        }
        Ok(())
    }

    pub(crate) fn check_topic(&self, topic: &str) -> Result<()> {
        name::validate_topic(topic)?;
        if self.config.prefix.len() + topic.len() > MAX_KAFKA_TOPIC_LEN {
            return Err(Error::InvalidName {
                kind: wharf_core::NameKind::Topic,
                name: topic.to_owned(),
                reason: "longer than Kafka's 249 bytes with the topic prefix",
            });
        }
        Ok(())
    }

    /// Partitions of Kafka topic `kt`; 0 when it does not exist.
    pub(crate) async fn partitions_of(&self, kt: &str) -> Result<u32> {
        let producer = self.producer.clone();
        let timeout = self.config.timeout;
        let owned = kt.to_owned();
        let md = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(Some(&owned), timeout)
        })
        .await
        .map_err(|e| Error::Backend {
            backend: NAME,
            source: Box::new(e),
        })?
        .map_err(|e| map("metadata", e, timeout))?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == kt && t.error().is_none())
            .map_or(0, |t| u32::try_from(t.partitions().len()).unwrap_or(0)))
    }

    async fn create(&self, topic: &str, partitions: i32) -> Result<()> {
        self.check_topic(topic)?;
        let kt = self.kafka_topic(topic);
        let opts = AdminOptions::new().operation_timeout(Some(Timeout::After(self.config.timeout)));
        let new = NewTopic::new(
            &kt,
            partitions,
            TopicReplication::Fixed(self.config.replication),
        );
        let results = self
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| map("create topic", e, self.config.timeout))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(admin("create topic", &t, code)),
            }
        }
        // Until the producer's metadata shows the topic, a publish can fail
        // locally with an unknown partition (seen after delete + create):
        // wait for it here, which also refreshes the producer's cache.
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        while self.partitions_of(&kt).await? == 0 {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    operation: "create topic",
                    after: self.config.timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kt);
        Ok(())
    }

    async fn delete_kafka_topics(&self, kts: &[String]) -> Result<()> {
        let opts = AdminOptions::new().operation_timeout(Some(Timeout::After(self.config.timeout)));
        let names: Vec<&str> = kts.iter().map(String::as_str).collect();
        let results = self
            .admin
            .delete_topics(&names, &opts)
            .await
            .map_err(|e| map("delete topic", e, self.config.timeout))?;
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        for kt in kts {
            known.remove(kt);
        }
        drop(known);
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((t, code)) => return Err(admin("delete topic", &t, code)),
            }
        }
        Ok(())
    }

    /// Creates `topic` with the config's partition count unless this
    /// backend already knows it exists.
    pub(crate) async fn ensure(&self, topic: &str) -> Result<()> {
        let kt = self.kafka_topic(topic);
        if self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&kt)
        {
            return Ok(());
        }
        self.create(topic, self.config.partitions).await
    }

    fn check(message: &Message) -> Result<()> {
        if message.size() > MAX_MESSAGE_BYTES {
            return Err(Error::MessageTooLarge {
                size: message.size(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        Ok(())
    }

    /// Hands every message to the producer, then waits for each delivery
    /// report: a receipt per message once the broker acknowledged it.
    async fn publish_all(&self, topic: &str, messages: &[Message]) -> Result<Vec<Receipt>> {
        let kt = self.kafka_topic(topic);
        let timeout = self.config.timeout;
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            let payload: &[u8] = m.payload();
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&kt)
                .payload(payload)
                .headers(wire::headers(m))
                .timestamp(i64::try_from(m.timestamp().as_millis()).unwrap_or(i64::MAX));
            if let Some(k) = m.key() {
                record = record.key(k.as_ref());
            }
            let fut = match self.producer.send_result(record) {
                Ok(f) => f,
                Err((e, _)) => return Err(map("publish", e, timeout)),
            };
            pending.push((m.id(), fut));
        }
        let mut receipts = Vec::with_capacity(pending.len());
        for (id, fut) in pending {
            let delivery = fut
                .await
                .map_err(|_| Error::Backend {
                    backend: NAME,
                    source: Box::new(KafkaAdapterError::ReportLost),
                })?
                .map_err(|(e, _)| map("publish", e, timeout))?;
            receipts.push(Receipt::new(
                id,
                u32::try_from(delivery.partition).unwrap_or(0),
                u64::try_from(delivery.offset).ok(),
            ));
        }
        Ok(receipts)
    }
}

#[async_trait]
impl Publisher for KafkaBackend {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        let mut receipts = self.publish_batch(topic, vec![message]).await?;
        receipts.pop().ok_or_else(|| Error::Backend {
            backend: NAME,
            source: Box::new(KafkaAdapterError::ReportLost),
        })
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        let s = &self.shared;
        s.check_open()?;
        s.check_topic(topic)?;
        for m in &messages {
            Shared::check(m)?;
        }
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        s.ensure(topic).await?;
        s.publish_all(topic, &messages).await
    }
}

#[async_trait]
impl Subscriber for KafkaBackend {
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        crate::subscription::open(self.shared.clone(), options).await
    }
}

/// What [`KafkaBackend`] declares.
pub(crate) const CAPABILITIES: [Capability; 6] = [
    Capability::ConsumerGroups,
    Capability::OrderingPerKey,
    Capability::Retention,
    Capability::ReplayFromOffset,
    Capability::ReplayFromTime,
    Capability::Wildcards,
];

#[async_trait]
impl Backend for KafkaBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES.into_iter().collect()
    }

    fn limits(&self) -> Limits {
        Limits::new(MAX_MESSAGE_BYTES)
    }

    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        self.shared.check_open()?;
        self.shared.ensure(topic).await
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.send_replace(true);
        let producer = self.shared.producer.clone();
        let timeout = self.shared.config.timeout;
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| Error::Backend {
                backend: NAME,
                source: Box::new(e),
            })?
            .map_err(|e| map("flush", e, timeout))
    }
}

impl std::fmt::Debug for KafkaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBackend")
            .field("bootstrap", &self.shared.config.bootstrap)
            .field("prefix", &self.shared.config.prefix)
            .finish_non_exhaustive()
    }
}
