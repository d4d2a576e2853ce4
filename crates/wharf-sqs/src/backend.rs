//! [`SqsBackend`]: publishing (one `SendMessage`, or `SendMessageBatch` of
//! up to 10), queues made on first use, subscriptions (see
//! `subscription.rs`), and the dead-letter copy every settlement path uses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;
use aws_smithy_http_client::tls;
use tokio::sync::watch;
use wharf_core::name::validate_topic;
use wharf_core::{
    header, Backend, Capabilities, Capability, Error, Limits, Message, Publisher, Receipt, Result,
    SubscribeOptions, Subscriber, Subscription, Timestamp,
};

use crate::config::{SqsConfig, MAX_HEADERS, MAX_MESSAGE_BYTES};
use crate::error::{self, SqsError};
use crate::names::{fnv1a64, queue_name};
use crate::wire;

pub(crate) const NAME: &str = "sqs";

/// SQS's limit on one `SendMessage` or on a whole `SendMessageBatch`.
const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Entries per batch call (send, delete, change visibility).
pub(crate) const MAX_BATCH: usize = 10;

/// A Wharf backend on Amazon SQS (or an SQS-compatible server): see the
/// crate docs for the mapping. Cheap to clone (one shared client).
#[derive(Clone)]
pub struct SqsBackend {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) config: SqsConfig,
    /// Queue URLs by topic, filled on first use.
    urls: Mutex<HashMap<String, String>>,
    pub(crate) closed: watch::Sender<bool>,
}

impl std::fmt::Debug for SqsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsBackend")
            .field("endpoint", &self.inner.config.endpoint)
            .field("region", &self.inner.config.region)
            .field("prefix", &self.inner.config.prefix)
            .field("fifo", &self.inner.config.fifo)
            .finish_non_exhaustive()
    }
}

/// The SDK client for `config`: rustls on ring over the smithy hyper client,
/// static credentials, the config's region, endpoint and timeouts.
fn client(config: &SqsConfig) -> Result<Client> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (key, secret, token) = match (&config.credentials, env("AWS_ACCESS_KEY_ID")) {
        (Some(c), _) => c.clone(),
        (None, Some(key)) => (
            key,
            env("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
            env("AWS_SESSION_TOKEN"),
        ),
        (None, None) if config.endpoint.is_some() => ("wharf".into(), "wharf".into(), None),
        (None, None) => {
            return Err(Error::InvalidArgument {
                name: "credentials",
                reason: "no AWS_ACCESS_KEY_ID in the environment and none configured \
                         (SqsConfig::credentials)"
                    .into(),
            })
        }
    };
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let timeouts = aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(config.timeout + config.wait)
        .build();
    let mut b = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(config.region.clone()))
        .credentials_provider(Credentials::new(key, secret, token, None, "wharf-sqs"))
        .http_client(http)
        .timeout_config(timeouts);
    if let Some(e) = &config.endpoint {
        b = b.endpoint_url(e);
    }
    Ok(Client::from_conf(b.build()))
}

fn check_prefix(prefix: &str) -> std::result::Result<(), SqsError> {
    let bad = |reason| SqsError::InvalidPrefix {
        prefix: prefix.to_owned(),
        reason,
    };
    // Room left for a hashed name: 80 - `-<16 hex>` - `.fifo` - a few readable characters.
    if prefix.len() > 50 {
        return Err(bad("longer than 50 characters"));
    }
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad("only [A-Za-z0-9_-] may appear in a queue name"));
    }
    Ok(())
}

/// Whole seconds covering `d` (rounded up), for SQS's second-granular times.
pub(crate) fn ceil_secs(d: Duration) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(s).unwrap_or(i32::MAX)
}

impl SqsBackend {
    /// Connects with `config` and checks that SQS answers (one `ListQueues`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for missing credentials or a bad prefix;
    /// [`Error::Unavailable`] when SQS does not answer; [`Error::Backend`]
    /// when it refuses (bad credentials).
    pub async fn connect(config: SqsConfig) -> Result<Self> {
        check_prefix(&config.prefix).map_err(|e| Error::InvalidArgument {
            name: "queue_prefix",
            reason: e.to_string(),
        })?;
        let client = client(&config)?;
        client
            .list_queues()
            .queue_name_prefix(format!("{}probe", config.prefix))
            .max_results(1)
            .send()
            .await
            .map_err(|e| error::sdk("ListQueues", e))?;
        let (closed, _) = watch::channel(false);
        Ok(SqsBackend {
            inner: Arc::new(Inner {
                client,
                config,
                urls: Mutex::default(),
                closed,
            }),
        })
    }

    /// The SDK client, for what this crate does not wrap (queue attributes,
    /// tags, purges).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The queue that holds `topic` (see the crate docs' mapping).
    pub fn queue_name(&self, topic: &str) -> String {
        queue_name(&self.inner.config.prefix, topic, self.inner.config.fifo)
    }

    /// The URL of `topic`'s queue, creating the queue if it is missing.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad topic; SDK errors.
    pub async fn queue_url(&self, topic: &str) -> Result<String> {
        validate_topic(topic)?;
        self.inner.queue_url(topic).await
    }

    /// Deletes every queue whose name starts with the configured prefix (all
    /// of them with an empty prefix: careful). For tests and teardown.
    ///
    /// # Errors
    /// SDK errors; the queues deleted before one failed stay deleted.
    pub async fn delete_all(&self) -> Result<()> {
        let inner = &self.inner;
        let mut next: Option<String> = None;
        let mut urls = Vec::new();
        loop {
            let page = inner
                .client
                .list_queues()
                .queue_name_prefix(&inner.config.prefix)
                .max_results(1000)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| error::sdk("ListQueues", e))?;
            urls.extend(page.queue_urls().iter().cloned());
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => break,
            }
        }
        for url in urls {
            inner
                .client
                .delete_queue()
                .queue_url(&url)
                .send()
                .await
                .map_err(|e| error::sdk("DeleteQueue", e))?;
        }
        inner.urls.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }

    fn check_open(&self) -> Result<()> {
        if *self.inner.closed.borrow() {
            return Err(Error::Closed {
                what: "sqs backend",
            });
        }
        Ok(())
    }
}

/// A message checked and encoded for sending, with its options.
pub(crate) struct Outgoing {
    id: wharf_core::MessageId,
    encoded: wire::Encoded,
    delay: Option<i32>,
    group: Option<String>,
}

impl Inner {
    pub(crate) async fn queue_url(&self, topic: &str) -> Result<String> {
        if let Some(u) = self
            .urls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
        {
            return Ok(u.clone());
        }
        let name = queue_name(&self.config.prefix, topic, self.config.fifo);
        let url = match self.client.get_queue_url().queue_name(&name).send().await {
            Ok(out) => out.queue_url().unwrap_or_default().to_owned(),
            Err(e)
                if matches!(
                    error::code(&e),
                    Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist")
                ) =>
            {
                let mut create = self.client.create_queue().queue_name(&name);
                if self.config.fifo {
                    create = create.attributes(QueueAttributeName::FifoQueue, "true");
                }
                let out = create
                    .send()
                    .await
                    .map_err(|e| error::sdk("CreateQueue", e))?;
                out.queue_url().unwrap_or_default().to_owned()
            }
            Err(e) => return Err(error::sdk("GetQueueUrl", e)),
        };
        self.urls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_owned(), url.clone());
        Ok(url)
    }

    /// Checks `m` against the limits and the queue kind, and encodes it.
    pub(crate) fn outgoing(&self, m: &Message) -> Result<Outgoing> {
        let size = m.size();
        if size > MAX_MESSAGE_BYTES {
            return Err(Error::MessageTooLarge {
                size,
                max: MAX_MESSAGE_BYTES,
            });
        }
        if m.headers().len() > MAX_HEADERS {
            return Err(Error::TooManyHeaders {
                count: m.headers().len(),
                max: MAX_HEADERS,
            });
        }
        self.encode_checked(m)
    }

    /// Encodes `m` with the checks of the queue kind and of SQS's own
    /// limit only: a dead letter is a message that was accepted plus the
    /// stamp's 8 headers, so it may pass [`MAX_MESSAGE_BYTES`] and
    /// [`MAX_HEADERS`] while still fitting SQS's 256 KiB.
    fn encode_checked(&self, m: &Message) -> Result<Outgoing> {
        let delay = match m.deliver_at() {
            Some(at) => {
                let ahead = at.as_millis().saturating_sub(Timestamp::now().as_millis());
                let ahead = Duration::from_millis(ahead);
                if ahead.is_zero() {
                    None
                } else if self.config.fifo {
                    return Err(Error::Unsupported {
                        backend: NAME,
                        capability: Capability::DelayedPublish,
                    });
                } else {
                    // Further ahead than one send can delay: the first hop
                    // (the header keeps the due time; see `Inner::hop`).
                    Some(ceil_secs(ahead.min(self.config.delay_hop)))
                }
            }
            None => None,
        };
        let group = self.config.fifo.then(|| group_id(m));
        let encoded = wire::encode(m);
        if encoded.size > MAX_REQUEST_BYTES {
            return Err(Error::MessageTooLarge {
                size: m.size(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        Ok(Outgoing {
            id: m.id(),
            encoded,
            delay,
            group,
        })
    }

    /// Sends one message to `topic`'s queue (no closed check: dead letters
    /// of deliveries handed out before a close still go out).
    pub(crate) async fn send(&self, topic: &str, m: &Message) -> Result<Receipt> {
        validate_topic(topic)?;
        let out = self.outgoing(m)?;
        self.send_outgoing(topic, m, out).await
    }

    /// Sends a received message that is not due yet again, delayed by
    /// what is left of its wait (at most one hop): the same body and
    /// attributes, a fresh SQS message (its receive count starts again).
    /// Held to SQS's limit only, as the message was accepted once.
    pub(crate) async fn hop(&self, topic: &str, m: &Message) -> Result<Receipt> {
        let out = self.encode_checked(m)?;
        self.send_outgoing(topic, m, out).await
    }

    /// Sends a dead letter: as [`Inner::send`], held to SQS's limit only.
    pub(crate) async fn send_dead_letter(&self, topic: &str, m: &Message) -> Result<Receipt> {
        validate_topic(topic)?;
        let out = self.encode_checked(m)?;
        self.send_outgoing(topic, m, out).await
    }

    async fn send_outgoing(&self, topic: &str, m: &Message, out: Outgoing) -> Result<Receipt> {
        let url = self.queue_url(topic).await?;
        let dedup = out.group.is_some().then(|| out.id.to_string());
        self.client
            .send_message()
            .queue_url(url)
            .message_body(out.encoded.body)
            .set_message_attributes(Some(out.encoded.attributes))
            .set_delay_seconds(out.delay)
            .set_message_group_id(out.group)
            .set_message_deduplication_id(dedup)
            .send()
            .await
            .map_err(|e| too_large_or(e, "SendMessage", m.size()))?;
        Ok(Receipt::new(out.id, 0, None))
    }
}

/// An SQS error for a send: SQS's own size refusal as `MessageTooLarge`.
fn too_large_or<E, R>(
    e: aws_sdk_sqs::error::SdkError<E, R>,
    context: &'static str,
    size: usize,
) -> Error
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let too_long = match &e {
        aws_sdk_sqs::error::SdkError::ServiceError(s) => {
            let m = s.err().message().unwrap_or("").to_ascii_lowercase();
            s.err().code() == Some("BatchRequestTooLong")
                || m.contains("shorter than")
                || m.contains("too long")
        }
        _ => false,
    };
    if too_long {
        return Error::MessageTooLarge {
            size,
            max: MAX_MESSAGE_BYTES,
        };
    }
    error::sdk(context, e)
}

/// The FIFO message group of `m`: its key where that is a valid group id
/// (printable ASCII, at most 128 characters), else `wharf-<hash of the
/// key>`; without a key, the message id: a group of its own, since SQS
/// holds back the rest of a group while one of its messages is in flight,
/// and Wharf orders only messages of one key.
fn group_id(m: &Message) -> String {
    match m.key() {
        None => m.id().to_string(),
        Some(k)
            if !k.is_empty() && k.len() <= 128 && k.iter().all(|b| (0x21..=0x7e).contains(b)) =>
        {
            String::from_utf8_lossy(k).into_owned()
        }
        Some(k) => format!("wharf-{:016x}", fnv1a64(k)),
    }
}

#[async_trait]
impl Publisher for SqsBackend {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        self.check_open()?;
        self.inner.send(topic, &message).await
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        self.check_open()?;
        validate_topic(topic)?;
        // Check and encode everything first: bad input sends nothing.
        let out: Vec<Outgoing> = messages
            .iter()
            .map(|m| self.inner.outgoing(m))
            .collect::<Result<_>>()?;
        if out.is_empty() {
            return Ok(Vec::new());
        }
        let url = self.inner.queue_url(topic).await?;
        let receipts = out.iter().map(|o| Receipt::new(o.id, 0, None)).collect();
        let mut chunk: Vec<SendMessageBatchRequestEntry> = Vec::with_capacity(MAX_BATCH);
        let mut chunk_bytes = 0;
        let mut sent = 0;
        for o in out {
            if chunk.len() == MAX_BATCH || chunk_bytes + o.encoded.size > MAX_REQUEST_BYTES {
                let n = chunk.len();
                self.send_chunk(&url, std::mem::take(&mut chunk), sent)
                    .await?;
                sent += n;
                chunk_bytes = 0;
            }
            chunk_bytes += o.encoded.size;
            let dedup = o.group.is_some().then(|| o.id.to_string());
            let entry = SendMessageBatchRequestEntry::builder()
                .id(chunk.len().to_string())
                .message_body(o.encoded.body)
                .set_message_attributes(Some(o.encoded.attributes))
                .set_delay_seconds(o.delay)
                .set_message_group_id(o.group)
                .set_message_deduplication_id(dedup)
                .build()
                .expect("id and body are set");
            chunk.push(entry);
        }
        self.send_chunk(&url, chunk, sent).await?;
        Ok(receipts)
    }
}

impl SqsBackend {
    /// One `SendMessageBatch`; any failed entry fails the call (the entries
    /// before it in the batch may be stored: SQS has no all-or-nothing batch).
    async fn send_chunk(
        &self,
        url: &str,
        entries: Vec<SendMessageBatchRequestEntry>,
        first: usize,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let out = self
            .inner
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| too_large_or(e, "SendMessageBatch", MAX_REQUEST_BYTES))?;
        if let Some(f) = out.failed().first() {
            return Err(error::backend(SqsError::BatchEntry {
                context: "SendMessageBatch",
                entry: first + f.id().parse::<usize>().unwrap_or(0),
                code: f.code().to_owned(),
                message: f.message().unwrap_or_default().to_owned(),
            }));
        }
        Ok(())
    }
}

#[async_trait]
impl Subscriber for SqsBackend {
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        self.check_open()?;
        crate::subscription::subscribe(self, options).await
    }
}

#[async_trait]
impl Backend for SqsBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let c = Capabilities::empty()
            .with(Capability::Persistence)
            .with(Capability::Retention)
            .with(Capability::Redelivery)
            .with(Capability::VisibilityTimeout)
            .with(Capability::ExtendLease)
            .with(Capability::NackWithDelay)
            .with(Capability::DeadLetter)
            .with(Capability::MaxDeliveries)
            .with(Capability::Ttl);
        if self.inner.config.fifo {
            c.with(Capability::OrderingPerKey)
        } else {
            c.with(Capability::DelayedPublish)
        }
    }

    fn limits(&self) -> Limits {
        Limits::new(MAX_MESSAGE_BYTES).with_header_limits(MAX_HEADERS, usize::MAX)
    }

    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        validate_topic(topic)?;
        self.inner.queue_url(topic).await.map(drop)
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.send_replace(true);
        Ok(())
    }
}

/// The `wharf-dlq-*` stamp on a copy of `message`, ready for the dead-letter queue.
pub(crate) fn dead_letter_copy(
    message: &Message,
    reason: &str,
    topic: &str,
    group: Option<&str>,
    attempts: u32,
    first_failure_ms: u64,
) -> Message {
    let mut copy = message.clone();
    wharf_core::DeadLetter {
        reason,
        topic,
        partition: 0,
        offset: None,
        group,
        attempts,
        first_failure_ms,
        last_failure_ms: Timestamp::now().as_millis(),
    }
    .stamp(&mut copy);
    debug_assert!(!copy.headers().contains(header::DELIVER_AT_MS));
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::from_millis(800)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1000)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }

    #[test]
    fn fifo_groups_are_the_key_when_it_is_a_valid_group_id() {
        let m = |k: &[u8]| Message::builder().key(k.to_vec()).build();
        assert_eq!(group_id(&m(b"customer-7")), "customer-7");
        assert!(group_id(&m(b"has space")).starts_with("wharf-"));
        let keyless = Message::new("x");
        assert_eq!(group_id(&keyless), keyless.id().to_string());
    }
}
