//! [`PubSubBackend`]: connecting, topic and subscription admin, publishing,
//! and the backend lifecycle.
//!
//! Publishing validates every message before anything is sent, then sends
//! one `Publish` RPC per call (a batch is one request, in order). A topic is
//! created on first use (publish or subscribe), with the configured message
//! retention, so a group created later can seek back to the backlog.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gcloud_gax::conn::{ConnectionOptions, Environment};
use gcloud_gax::create_request;
use gcloud_gax::grpc::Code;
use gcloud_googleapis::pubsub::v1::{
    DeleteSubscriptionRequest, DeleteTopicRequest, GetTopicRequest, ListSubscriptionsRequest,
    ListTopicsRequest, PublishRequest, PubsubMessage, Topic,
};
use gcloud_pubsub::apiv1::conn_pool::ConnectionManager;
use gcloud_pubsub::apiv1::subscriber_client::SubscriberClient;
use tokio::sync::watch;
use wharf_core::{
    name, Backend, Capabilities, Capability, Error, Limits, Message, Publisher, Receipt, Result,
    SubscribeOptions, Subscriber, Subscription,
};

use crate::config::PubSubConfig;
use crate::error::{status, PubSubError};
use crate::wire;

/// The backend's name in errors and logs.
pub(crate) const NAME: &str = "pubsub";

/// Longest Pub/Sub topic or subscription id.
const MAX_ID_LEN: usize = 255;

/// A Wharf backend on Google Cloud Pub/Sub (the emulator); see the
/// [crate docs](crate) for the mapping.
///
/// Cloning is cheap and shares the connections.
#[derive(Clone)]
pub struct PubSubBackend {
    shared: Arc<Shared>,
}

/// State shared by the backend, its subscriptions and their ackers.
pub(crate) struct Shared {
    pub(crate) publisher: TopicClient,
    pub(crate) subscriber: SubscriberClient,
    /// How streaming pulls connect (no request timeout).
    streaming: ConnectionOptions,
    pub(crate) config: PubSubConfig,
    pub(crate) limits: Limits,
    pub(crate) closed: watch::Sender<bool>,
    /// Topic ids known to exist.
    known_topics: Mutex<HashSet<String>>,
}

fn validate_prefix(prefix: &str) -> Result<()> {
    let bad = |reason| Error::Backend {
        backend: NAME,
        source: Box::new(PubSubError::InvalidPrefix {
            prefix: prefix.to_owned(),
            reason,
        }),
    };
    name::validate_topic(prefix).map_err(|_| bad("must be a valid Wharf topic name"))?;
    if !prefix.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(bad("must start with a letter (Pub/Sub ids do)"));
    }
    if prefix.starts_with("goog") {
        return Err(bad("ids starting with `goog` are Pub/Sub's"));
    }
    Ok(())
}

impl PubSubBackend {
    /// Connects to the emulator named in `config`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when it cannot be reached; [`Error::Backend`]
    /// for a prefix that cannot start a Pub/Sub id.
    pub async fn connect(config: PubSubConfig) -> Result<Self> {
        validate_prefix(&config.prefix)?;
        let env = Environment::Emulator(config.host.clone());
        let unary = ConnectionOptions {
            timeout: Some(config.request_timeout),
            connect_timeout: Some(config.connect_timeout),
            ..Default::default()
        };
        // A streaming pull lives as long as its subscription: no request timeout.
        let streaming = ConnectionOptions {
            timeout: None,
            connect_timeout: Some(config.connect_timeout),
            http2_keep_alive_interval: Some(Duration::from_secs(30)),
            ..Default::default()
        };
        let publisher = TopicClient(Arc::new(connection(&config.host, &env, &unary).await?));
        // gcloud-pubsub's streaming pull is not used (see `crate::subscription`).
        let subscriber = SubscriberClient::new(
            connection(&config.host, &env, &unary).await?,
            connection(&config.host, &env, &unary).await?,
        );
        let limits = Limits::new(config.max_message_bytes)
            .with_header_limits(wire::MAX_ATTRIBUTES - wire::INTERNAL_ATTRIBUTES, usize::MAX);
        let (closed, _) = watch::channel(false);
        let shared = Shared {
            publisher,
            subscriber,
            streaming,
            config,
            limits,
            closed,
            known_topics: Mutex::new(HashSet::new()),
        };
        // Reaching the server at all: ask for a topic that need not exist.
        let probe = GetTopicRequest {
            topic: shared.topic_name("connect-probe"),
        };
        match shared.publisher.get_topic(probe).await {
            Ok(_) => {}
            Err(e) if e.code() == Code::NotFound => {}
            Err(e) => return Err(shared.status("connect", e)),
        }
        Ok(PubSubBackend {
            shared: Arc::new(shared),
        })
    }

    /// The configuration this backend was opened with.
    pub fn config(&self) -> &PubSubConfig {
        &self.shared.config
    }

    /// The Pub/Sub topic id of Wharf topic `topic` (`<prefix>.<topic>`).
    pub fn topic_id(&self, topic: &str) -> String {
        self.shared.topic_id(topic)
    }

    /// The Pub/Sub subscription id of `group` on `topic`.
    pub fn subscription_id(&self, topic: &str, group: &str) -> String {
        self.shared.group_subscription_id(topic, group)
    }

    /// Deletes every topic and subscription of this backend's prefix, with
    /// the messages they hold (tear-down of tests and temporary namespaces).
    ///
    /// # Errors
    /// Transport errors; what is already gone is not an error.
    pub async fn delete_all(&self) -> Result<()> {
        let s = &self.shared;
        let mine = |id: &str| {
            id.strip_prefix(s.config.prefix.as_str())
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('~'))
        };
        let subs = s
            .subscriber
            .list_subscriptions(
                ListSubscriptionsRequest {
                    project: s.project_name(),
                    page_size: 1000,
                    page_token: String::new(),
                },
                None,
            )
            .await
            .map_err(|e| s.status("list subscriptions", e))?;
        for sub in subs {
            let id = sub.name.rsplit('/').next().unwrap_or_default();
            if mine(id) {
                s.delete_subscription(&sub.name).await?;
            }
        }
        let topics = s
            .publisher
            .list_topics(s.project_name())
            .await
            .map_err(|e| s.status("list topics", e))?;
        for topic in topics {
            let id = topic.name.rsplit('/').next().unwrap_or_default();
            if mine(id) {
                let r = s
                    .publisher
                    .delete_topic(DeleteTopicRequest { topic: topic.name })
                    .await;
                match r {
                    Ok(_) => {}
                    Err(e) if e.code() == Code::NotFound => {}
                    Err(e) => return Err(s.status("delete topic", e)),
                }
            }
        }
        s.known_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }
}

/// The publisher and topic admin RPCs, on the generated gRPC client
/// (gcloud-pubsub keeps its own publisher client private).
pub(crate) struct TopicClient(Arc<ConnectionManager>);

type Grpc =
    gcloud_googleapis::pubsub::v1::publisher_client::PublisherClient<gcloud_gax::conn::Channel>;
type Status = gcloud_gax::grpc::Status;

impl TopicClient {
    fn client(&self) -> Grpc {
        Grpc::new(self.0.conn())
            .max_decoding_message_size(PUBSUB_MAX_REQUEST_BYTES)
            .max_encoding_message_size(PUBSUB_MAX_REQUEST_BYTES)
    }

    async fn publish(&self, req: PublishRequest) -> std::result::Result<(), Status> {
        let r = create_request(format!("topic={}", req.topic), req);
        self.client().publish(r).await.map(drop)
    }

    async fn create_topic(&self, req: Topic) -> std::result::Result<(), Status> {
        let r = create_request(format!("name={}", req.name), req);
        self.client().create_topic(r).await.map(drop)
    }

    async fn get_topic(&self, req: GetTopicRequest) -> std::result::Result<(), Status> {
        let r = create_request(format!("topic={}", req.topic), req);
        self.client().get_topic(r).await.map(drop)
    }

    async fn delete_topic(&self, req: DeleteTopicRequest) -> std::result::Result<(), Status> {
        let r = create_request(format!("topic={}", req.topic), req);
        self.client().delete_topic(r).await.map(drop)
    }

    async fn list_topics(&self, project: String) -> std::result::Result<Vec<Topic>, Status> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = ListTopicsRequest {
                project: project.clone(),
                page_size: 1000,
                page_token,
            };
            let r = create_request(format!("project={project}"), req);
            let page = self.client().list_topics(r).await?.into_inner();
            all.extend(page.topics);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
    }
}

/// Pub/Sub's limit on one request (and so one streaming pull response).
pub(crate) const PUBSUB_MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;

async fn connection(
    host: &str,
    env: &Environment,
    options: &ConnectionOptions,
) -> Result<ConnectionManager> {
    ConnectionManager::new(1, host, env, options)
        .await
        .map_err(|e| Error::Unavailable {
            backend: NAME,
            source: Box::new(PubSubError::Connect(e)),
        })
}

impl Shared {
    /// A connection of its own for one streaming pull: closing the
    /// connection is how the emulator learns that the stream has ended.
    pub(crate) async fn streaming_connection(&self) -> Result<ConnectionManager> {
        let env = Environment::Emulator(self.config.host.clone());
        connection(&self.config.host, &env, &self.streaming).await
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if *self.closed.borrow() {
            return Err(Error::Closed {
                what: "pubsub backend",
            });
        }
        Ok(())
    }

    pub(crate) fn status(&self, context: &'static str, s: gcloud_gax::grpc::Status) -> Error {
        status(context, s, self.config.request_timeout)
    }

    pub(crate) fn project_name(&self) -> String {
        format!("projects/{}", self.config.project)
    }

    pub(crate) fn topic_id(&self, topic: &str) -> String {
        format!("{}.{topic}", self.config.prefix)
    }

    pub(crate) fn topic_name(&self, topic: &str) -> String {
        format!(
            "projects/{}/topics/{}",
            self.config.project,
            self.topic_id(topic)
        )
    }

    pub(crate) fn subscription_name(&self, id: &str) -> String {
        format!("projects/{}/subscriptions/{id}", self.config.project)
    }

    /// `<prefix>.<topic>~<group>`, or — past Pub/Sub's 255 characters —
    /// `<prefix>~<hash of topic and group>-<start of the group>`.
    pub(crate) fn group_subscription_id(&self, topic: &str, group: &str) -> String {
        let id = format!("{}.{topic}~{group}", self.config.prefix);
        if id.len() <= MAX_ID_LEN {
            return id;
        }
        let head: String = group.chars().take(64).collect();
        format!(
            "{}~{:016x}-{head}",
            self.config.prefix,
            fnv1a(&[topic, group])
        )
    }

    /// Checks `topic` and that its Pub/Sub id fits.
    pub(crate) fn validate_topic(&self, topic: &str) -> Result<()> {
        name::validate_topic(topic)?;
        if self.topic_id(topic).len() > MAX_ID_LEN {
            return Err(Error::InvalidName {
                kind: wharf_core::NameKind::Topic,
                name: topic.to_owned(),
                reason: "with the prefix, longer than Pub/Sub's 255-character ids",
            });
        }
        Ok(())
    }

    /// Creates `topic` unless known to exist (with the configured retention).
    pub(crate) async fn ensure_topic(&self, topic: &str) -> Result<()> {
        self.validate_topic(topic)?;
        let id = self.topic_id(topic);
        if self
            .known_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
        {
            return Ok(());
        }
        let req = Topic {
            name: self.topic_name(topic),
            message_retention_duration: self.config.retention.map(duration),
            ..Default::default()
        };
        match self.publisher.create_topic(req).await {
            Ok(_) => {}
            Err(e) if e.code() == Code::AlreadyExists => {}
            Err(e) => return Err(self.status("create topic", e)),
        }
        self.known_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        Ok(())
    }

    fn forget_topic(&self, topic: &str) {
        self.known_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.topic_id(topic));
    }

    pub(crate) async fn delete_subscription(&self, name: &str) -> Result<()> {
        let r = self
            .subscriber
            .delete_subscription(
                DeleteSubscriptionRequest {
                    subscription: name.to_owned(),
                },
                None,
            )
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Code::NotFound => Ok(()),
            Err(e) => Err(self.status("delete subscription", e)),
        }
    }

    /// Publishes already-encoded messages to `topic` in one request,
    /// creating the topic if Pub/Sub does not know it.
    pub(crate) async fn send(&self, topic: &str, messages: Vec<PubsubMessage>) -> Result<()> {
        self.ensure_topic(topic).await?;
        let mut req = PublishRequest {
            topic: self.topic_name(topic),
            messages,
        };
        for attempt in 0..2 {
            match self.publisher.publish(req.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) if e.code() == Code::NotFound && attempt == 0 => {
                    // Deleted behind our back (another backend's cleanup).
                    self.forget_topic(topic);
                    self.ensure_topic(topic).await?;
                    req.topic = self.topic_name(topic);
                }
                Err(e) => return Err(self.status("publish", e)),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}

/// A stable 64-bit FNV-1a hash (ids must not change between releases).
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A protobuf duration.
pub(crate) fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[async_trait]
impl Publisher for PubSubBackend {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        let s = &self.shared;
        s.check_open()?;
        s.validate_topic(topic)?;
        let encoded = wire::encode(&message, &s.limits)?;
        s.send(topic, vec![encoded]).await?;
        Ok(Receipt::new(message.id(), 0, None))
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        let s = &self.shared;
        s.check_open()?;
        s.validate_topic(topic)?;
        let encoded = messages
            .iter()
            .map(|m| wire::encode(m, &s.limits))
            .collect::<Result<Vec<_>>>()?;
        // Pub/Sub takes at most 1000 messages and 10 MB per request.
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for m in encoded {
            let size = m.data.len() + 1024;
            if !chunk.is_empty() && (chunk.len() == 1000 || bytes + size > 9_000_000) {
                s.send(topic, std::mem::take(&mut chunk)).await?;
                bytes = 0;
            }
            bytes += size;
            chunk.push(m);
        }
        if !chunk.is_empty() {
            s.send(topic, chunk).await?;
        }
        Ok(messages
            .iter()
            .map(|m| Receipt::new(m.id(), 0, None))
            .collect())
    }
}

#[async_trait]
impl Subscriber for PubSubBackend {
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        crate::subscription::open(self.shared.clone(), options).await
    }
}

#[async_trait]
impl Backend for PubSubBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let caps: Capabilities = [
            Capability::Persistence,
            Capability::OrderingPerKey,
            Capability::ConsumerGroups,
            Capability::NackWithDelay,
            Capability::VisibilityTimeout,
            Capability::ExtendLease,
            Capability::Ttl,
            Capability::DeadLetter,
            Capability::MaxDeliveries,
            Capability::Redelivery,
        ]
        .into_iter()
        .collect();
        let caps = if self.shared.config.retention.is_some() {
            caps.with(Capability::Retention)
        } else {
            caps
        };
        if self.shared.config.message_ordering {
            caps
        } else {
            caps.without(Capability::OrderingPerKey)
        }
    }

    fn limits(&self) -> Limits {
        self.shared.limits
    }

    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        self.shared.check_open()?;
        self.shared.ensure_topic(topic).await
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.send_replace(true);
        Ok(())
    }
}

impl std::fmt::Debug for PubSubBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubBackend")
            .field("host", &self.shared.config.host)
            .field("project", &self.shared.config.project)
            .field("prefix", &self.shared.config.prefix)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_that_cannot_start_a_pubsub_id_are_refused() {
        for bad in ["", "1abc", "a..b", "goog-x", "a b", "_x"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?}");
        }
        assert!(validate_prefix("wharf-test.ns_1").is_ok());
    }
}
