//! [`AmqpBackend`]: one connection, a confirm-mode publishing channel, the
//! namespace's topic exchange (with an alternate exchange feeding the backlog
//! queue), and group queues declared, bound and consumed on subscribe.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::PublisherConfirm;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::watch;
use wharf_core::{
    name, Backend, Capabilities, Capability, Error, GroupMode, Limits, Message, Publisher, Receipt,
    Result, StartPosition, SubscribeOptions, Subscriber, Subscription, Timestamp, TopicPattern,
};

use crate::subscription::open_subscription;
use crate::wire;

/// The backend name used in errors.
pub(crate) const NAME: &str = "amqp";

/// Largest message accepted: 4 MiB. RabbitMQ's own limit
/// (`max_message_size`) defaults to 16 MiB (128 MiB hard cap), but large
/// messages stall a queue process and every consumer behind it.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Maps a lapin error: connection and channel trouble is
/// [`Error::Unavailable`], anything else [`Error::Backend`].
pub(crate) fn amqp_err(e: lapin::Error) -> Error {
    let unavailable = matches!(
        e.kind(),
        lapin::ErrorKind::IOError(_)
            | lapin::ErrorKind::InvalidConnectionState(_)
            | lapin::ErrorKind::InvalidChannelState(..)
            | lapin::ErrorKind::MissingHeartbeatError
            | lapin::ErrorKind::RuntimeShutdownError(_)
    );
    if unavailable {
        Error::Unavailable {
            backend: NAME,
            source: Box::new(e),
        }
    } else {
        Error::Backend {
            backend: NAME,
            source: Box::new(e),
        }
    }
}

/// Where and how to connect; build with [`AmqpConfig::new`].
///
/// ```
/// let cfg = wharf_amqp::AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .namespace("shop");
/// assert_eq!(cfg.exchange_name(), "wharf.shop");
/// ```
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    pub(crate) url: String,
    pub(crate) namespace: String,
    pub(crate) queue_expires: Option<Duration>,
    pub(crate) backlog_max_len: u32,
    pub(crate) priorities: bool,
    declared: Arc<Mutex<BTreeSet<(bool, String)>>>,
}

impl AmqpConfig {
    /// Connects to `url`; namespace `default`.
    pub fn new(url: impl Into<String>) -> Self {
        AmqpConfig {
            url: url.into(),
            namespace: "default".into(),
            queue_expires: None,
            backlog_max_len: 100_000,
            priorities: false,
            declared: Arc::default(),
        }
    }

    /// The namespace (`[A-Za-z0-9_.-]`, at most 64 bytes): exchange
    /// `wharf.<ns>`, queues `wharf.<ns>.…`. Backends on different namespaces
    /// share nothing.
    #[must_use]
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }

    /// Lets RabbitMQ delete queues this backend declares once they have been
    /// unused (no consumer, no get, no redeclare) for `d` (`x-expires`).
    /// Default: never.
    #[must_use]
    pub fn queue_expires(mut self, d: Duration) -> Self {
        self.queue_expires = Some(d);
        self
    }

    /// Most messages kept in the backlog of messages no group was bound for
    /// (oldest dropped first; default 100 000).
    #[must_use]
    pub fn backlog_max_len(mut self, n: u32) -> Self {
        self.backlog_max_len = n;
        self
    }

    /// Declares the queues of groups and subscriptions as priority queues
    /// (`x-max-priority = 9`), so a message's
    /// [`priority`](wharf_core::MessageBuilder::priority) orders its
    /// delivery, and declares [`Capability::Priorities`]. Default: off —
    /// plain queues, delivered in arrival order, priority ignored. A
    /// priority queue drained at about half a plain queue's rate here
    /// (bare lapin, 100,000 messages of 100 B: 23–25k against 45–51k
    /// msgs/s; BENCHMARKS.md). A queue keeps the kind it was created with:
    /// an existing one is used as it is, whichever this setting.
    #[must_use]
    pub fn priorities(mut self, on: bool) -> Self {
        self.priorities = on;
        self
    }

    /// The topic exchange: `wharf.<namespace>`.
    pub fn exchange_name(&self) -> String {
        format!("wharf.{}", self.namespace)
    }

    pub(crate) fn backlog_name(&self) -> String {
        format!("wharf.{}.backlog", self.namespace)
    }

    pub(crate) fn delayed_exchange_name(&self) -> String {
        format!("wharf.{}.delayed", self.namespace)
    }

    pub(crate) fn record(&self, is_exchange: bool, name: &str) {
        if let Ok(mut d) = self.declared.lock() {
            d.insert((is_exchange, name.to_owned()));
        }
    }

    fn declared(&self) -> Vec<(bool, String)> {
        self.declared
            .lock()
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn expires_arg(&self, args: &mut FieldTable, at_least: Duration) {
        if let Some(d) = self.queue_expires {
            let ms = d.max(at_least).as_millis();
            args.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt(i64::try_from(ms).unwrap_or(i64::MAX)),
            );
        }
    }
}

pub(crate) struct Inner {
    pub(crate) conn: Connection,
    /// The confirm-mode publishing channel; replaced when a channel error closed it.
    publish: tokio::sync::Mutex<Channel>,
    pub(crate) config: AmqpConfig,
    pub(crate) exchange: String,
    pub(crate) closed: watch::Sender<bool>,
}

impl Inner {
    pub(crate) fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// The publishing channel, reopened (in confirm mode) if a channel
    /// error closed it, so one failed operation does not fail all later ones.
    pub(crate) async fn publish_channel(&self) -> Result<Channel> {
        let mut ch = self.publish.lock().await;
        if !ch.status().connected() {
            let fresh = self.conn.create_channel().await.map_err(amqp_err)?;
            fresh
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(amqp_err)?;
            *ch = fresh;
        }
        Ok(ch.clone())
    }

    /// Publishes and waits for the broker's confirm.
    pub(crate) async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<()> {
        let confirm = self
            .publish_channel()
            .await?
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .map_err(amqp_err)?
            .await
            .map_err(amqp_err)?;
        if confirm.is_nack() {
            return Err(Error::Backend {
                backend: NAME,
                source: "the broker nacked the publish".into(),
            });
        }
        Ok(())
    }

    /// Declares a durable queue with `args` (plus `x-expires` when configured).
    pub(crate) async fn declare_queue(
        &self,
        ch: &Channel,
        queue: &str,
        mut args: FieldTable,
        expires_at_least: Duration,
    ) -> Result<()> {
        self.config.expires_arg(&mut args, expires_at_least);
        self.config.record(false, queue);
        ch.queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .map_err(amqp_err)?;
        Ok(())
    }

    /// The TTL queue holding delayed publishes of one delay bucket; it
    /// dead-letters into the topic exchange (keeping the topic as routing key).
    /// Declared and bound on every use, so an expired one comes back.
    pub(crate) async fn delayed_queue(&self, ch: &Channel, bucket_ms: u64) -> Result<()> {
        let name = format!("wharf.{}.delay.{bucket_ms}", self.config.namespace);
        let ms = i64::try_from(bucket_ms).unwrap_or(i64::MAX);
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(self.exchange.as_bytes().to_vec())),
        );
        let keep = Duration::from_millis(bucket_ms) * 2 + Duration::from_secs(60);
        self.declare_queue(ch, &name, args, keep).await?;
        let mut bind = FieldTable::default();
        bind.insert(
            "x-match".into(),
            AMQPValue::LongString(LongString::from(b"all".to_vec())),
        );
        bind.insert(
            wire::H_DELAY.into(),
            AMQPValue::LongString(LongString::from(bucket_ms.to_string().into_bytes())),
        );
        ch.queue_bind(
            ShortString::from(name.as_str()),
            ShortString::from(self.config.delayed_exchange_name()),
            ShortString::from(""),
            QueueBindOptions::default(),
            bind,
        )
        .await
        .map_err(amqp_err)
    }

    /// Copies backlog messages matching `pattern` into `queue`, leaving the
    /// backlog as it was.
    ///
    /// The messages waiting when this starts are consumed (unacknowledged,
    /// no prefetch limit) on a channel of its own, and their copies are
    /// published in windows of [`ADOPT_WINDOW`] whose confirms are awaited
    /// together — not one `basic.get` and one confirm round trip per message,
    /// which took minutes for a backlog of 100,000. Closing the channel then
    /// puts every message back where it was. Later arrivals need no copy:
    /// `queue` is already bound, so they are routed to it.
    ///
    /// # Cancel safety
    /// The backlog stays whole: dropping the future drops the channel's
    /// last handle, and lapin then closes it, which requeues what it held
    /// (`tests/drain.rs` cancels a copy of 20,000). `queue` keeps the
    /// copies made so far.
    pub(crate) async fn adopt_backlog(&self, queue: &str, pattern: &TopicPattern) -> Result<()> {
        let ch = self.conn.create_channel().await.map_err(amqp_err)?;
        let result = self.copy_backlog(&ch, queue, pattern).await;
        // Cancels the consumer and requeues everything it got, in order.
        let _ = ch.close(200, ShortString::from("adopted")).await;
        result
    }

    async fn copy_backlog(&self, ch: &Channel, queue: &str, pattern: &TopicPattern) -> Result<()> {
        let backlog = self.config.backlog_name();
        let waiting = ch
            .queue_declare(
                ShortString::from(backlog.as_str()),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp_err)?
            .message_count();
        if waiting == 0 {
            return Ok(());
        }
        let mut consumer = ch
            .basic_consume(
                ShortString::from(backlog.as_str()),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp_err)?;
        let publish = self.publish_channel().await?;
        let mut confirms = Vec::with_capacity(ADOPT_WINDOW);
        let mut last_topic = None;
        for _ in 0..waiting {
            // Fewer than counted arrive when some expired or were dropped
            // (the backlog is bounded) meanwhile: the backlog is then empty.
            let next = tokio::time::timeout(ADOPT_IDLE, consumer.next()).await;
            let d = match next {
                Ok(Some(d)) => d.map_err(amqp_err)?,
                Ok(None) | Err(_) => break,
            };
            let decoded = wire::decode(
                d.routing_key.as_str(),
                &backlog,
                &d.properties,
                d.data.into(),
                &mut last_topic,
            );
            if !pattern.matches(&decoded.topic) {
                continue;
            }
            let Some(props) = wire::properties(&decoded.topic, queue, &decoded.message, 0, None)
            else {
                continue;
            };
            let confirm = publish
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queue),
                    BasicPublishOptions::default(),
                    decoded.message.payload(),
                    props,
                )
                .await
                .map_err(amqp_err)?;
            confirms.push(confirm);
            if confirms.len() >= ADOPT_WINDOW {
                await_confirms(confirms.drain(..)).await?;
            }
        }
        await_confirms(confirms).await
    }
}

/// Copies published by [`Inner::adopt_backlog`] before their confirms are awaited.
const ADOPT_WINDOW: usize = 1024;
/// How long [`Inner::adopt_backlog`] waits for the next counted backlog message.
const ADOPT_IDLE: Duration = Duration::from_secs(2);

/// Awaits publisher confirms; an error if the broker nacked any.
async fn await_confirms(confirms: impl IntoIterator<Item = PublisherConfirm>) -> Result<()> {
    for c in confirms {
        if c.await.map_err(amqp_err)?.is_nack() {
            return Err(Error::Backend {
                backend: NAME,
                source: "the broker nacked a publish".into(),
            });
        }
    }
    Ok(())
}

/// A Wharf backend on RabbitMQ; see the [crate docs](crate) for the mapping.
#[derive(Clone)]
pub struct AmqpBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AmqpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBackend")
            .field("exchange", &self.inner.exchange)
            .finish_non_exhaustive()
    }
}

fn validate_namespace(ns: &str) -> Result<()> {
    let ok = !ns.is_empty()
        && ns.len() <= 64
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            name: "namespace",
            reason: format!("{ns:?} must be 1-64 bytes of [A-Za-z0-9_.-]"),
        })
    }
}

impl AmqpBackend {
    /// Connects, enables publisher confirms and declares the namespace's
    /// exchanges and backlog queue.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad namespace; [`Error::Unavailable`]
    /// when the broker can't be reached.
    pub async fn connect(config: AmqpConfig) -> Result<Self> {
        validate_namespace(&config.namespace)?;
        let conn = Connection::connect(&config.url, ConnectionProperties::default())
            .await
            .map_err(|e| Error::Unavailable {
                backend: NAME,
                source: Box::new(e),
            })?;
        let publish = conn.create_channel().await.map_err(amqp_err)?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp_err)?;
        let exchange = config.exchange_name();
        let backlog = config.backlog_name();
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        config.record(true, &backlog);
        publish
            .exchange_declare(
                ShortString::from(backlog.as_str()),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(amqp_err)?;
        let mut args = FieldTable::default();
        args.insert(
            "alternate-exchange".into(),
            AMQPValue::LongString(LongString::from(backlog.as_bytes().to_vec())),
        );
        config.record(true, &exchange);
        publish
            .exchange_declare(
                ShortString::from(exchange.as_str()),
                ExchangeKind::Topic,
                durable,
                args,
            )
            .await
            .map_err(amqp_err)?;
        let delayed = config.delayed_exchange_name();
        config.record(true, &delayed);
        publish
            .exchange_declare(
                ShortString::from(delayed.as_str()),
                ExchangeKind::Headers,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(amqp_err)?;
        let (closed, _) = watch::channel(false);
        let inner = Inner {
            conn,
            publish: tokio::sync::Mutex::new(publish.clone()),
            config: config.clone(),
            exchange,
            closed,
        };
        let mut args = FieldTable::default();
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(i64::from(config.backlog_max_len)),
        );
        inner
            .declare_queue(&publish, &backlog, args, Duration::ZERO)
            .await?;
        publish
            .queue_bind(
                ShortString::from(backlog.as_str()),
                ShortString::from(backlog.as_str()),
                ShortString::from(""),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp_err)?;
        Ok(AmqpBackend {
            inner: Arc::new(inner),
        })
    }

    /// Deletes every queue and exchange declared through this backend's
    /// config (and its clones), including ones with messages or consumers.
    /// For tests and decommissioning.
    ///
    /// # Errors
    /// Transport errors (deletion stops at the first).
    pub async fn delete_declared(&self) -> Result<()> {
        let ch = self.inner.conn.create_channel().await.map_err(amqp_err)?;
        for (is_exchange, name) in self.inner.config.declared() {
            if is_exchange {
                ch.exchange_delete(ShortString::from(name), ExchangeDeleteOptions::default())
                    .await
                    .map_err(amqp_err)?;
            } else {
                ch.queue_delete(ShortString::from(name), QueueDeleteOptions::default())
                    .await
                    .map_err(amqp_err)?;
            }
        }
        let _ = ch.close(200, ShortString::from("cleanup")).await;
        Ok(())
    }

    fn check(&self, topic: &str, messages: &[Message]) -> Result<()> {
        name::validate_topic(topic)?;
        for m in messages {
            if m.size() > MAX_MESSAGE_BYTES {
                return Err(Error::MessageTooLarge {
                    size: m.size(),
                    max: MAX_MESSAGE_BYTES,
                });
            }
        }
        if self.inner.is_closed() {
            return Err(Error::Closed { what: "backend" });
        }
        Ok(())
    }
}

/// The AMQP binding key for a Wharf pattern: `*` stays, `>` (one or more
/// segments) becomes `*.#` (AMQP's `#` alone would also match zero).
pub(crate) fn binding_key(pattern: &str) -> String {
    pattern
        .split('.')
        .map(|s| if s == ">" { "*.#" } else { s })
        .collect::<Vec<_>>()
        .join(".")
}

#[async_trait]
impl Publisher for AmqpBackend {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        let mut r = self.publish_batch(topic, vec![message]).await?;
        r.pop().ok_or_else(|| Error::Backend {
            backend: NAME,
            source: "publish returned no receipt".into(),
        })
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        self.check(topic, &messages)?;
        let ch = self.inner.publish_channel().await?;
        let mut confirms = Vec::with_capacity(messages.len());
        let mut receipts = Vec::with_capacity(messages.len());
        let delayed_exchange = self.inner.config.delayed_exchange_name();
        for m in &messages {
            receipts.push(Receipt::new(m.id(), 0, None));
            let now = Timestamp::now().as_millis();
            let due = m.deliver_at().map_or(0, |t| t.as_millis());
            let (exchange, props) = if due > now {
                if m.expires_at().is_some_and(|e| e.as_millis() <= due) {
                    continue; // expires before it is due: never delivered
                }
                let bucket = crate::subscription::delay_bucket(Duration::from_millis(due - now));
                let ms = u64::try_from(bucket.as_millis()).unwrap_or(u64::MAX);
                self.inner.delayed_queue(&ch, ms).await?;
                match wire::delayed_properties(topic, m, ms) {
                    Some(p) => (delayed_exchange.as_str(), p),
                    None => continue,
                }
            } else {
                // Already expired: acknowledged, never delivered.
                match wire::properties(topic, topic, m, 0, None) {
                    Some(p) => (self.inner.exchange.as_str(), p),
                    None => continue,
                }
            };
            let c = ch
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::from(topic),
                    BasicPublishOptions::default(),
                    m.payload(),
                    props,
                )
                .await
                .map_err(amqp_err)?;
            confirms.push(c);
        }
        await_confirms(confirms).await?;
        Ok(receipts)
    }
}

#[async_trait]
impl Subscriber for AmqpBackend {
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        let pattern = options.validate()?;
        if options.group_mode() == GroupMode::Stream {
            return Err(Error::Unsupported {
                backend: NAME,
                capability: Capability::PartitionAssignment,
            });
        }
        match options.start_position() {
            StartPosition::Earliest | StartPosition::Latest => {}
            StartPosition::Offset(_) => {
                return Err(Error::Unsupported {
                    backend: NAME,
                    capability: Capability::ReplayFromOffset,
                })
            }
            _ => {
                return Err(Error::Unsupported {
                    backend: NAME,
                    capability: Capability::ReplayFromTime,
                })
            }
        }
        if options.visibility_timeout_value().is_some() {
            return Err(Error::Unsupported {
                backend: NAME,
                capability: Capability::VisibilityTimeout,
            });
        }
        if let Some(dlq) = options.dead_letter_topic_name() {
            name::validate_topic(dlq)?;
        }
        if self.inner.is_closed() {
            return Err(Error::Closed { what: "backend" });
        }
        open_subscription(self.inner.clone(), options, pattern).await
    }
}

#[async_trait]
impl Backend for AmqpBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let caps: Capabilities = [
            Capability::Persistence,
            Capability::OrderingPerKey,
            Capability::ConsumerGroups,
            Capability::NackWithDelay,
            Capability::DelayedPublish,
            Capability::Priorities,
            Capability::Ttl,
            Capability::Wildcards,
            Capability::DeadLetter,
            Capability::MaxDeliveries,
            Capability::Retention,
            Capability::Redelivery,
        ]
        .into_iter()
        .collect();
        if self.inner.config.priorities {
            caps
        } else {
            caps.without(Capability::Priorities)
        }
    }

    fn limits(&self) -> Limits {
        Limits::new(MAX_MESSAGE_BYTES)
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.send_replace(true);
        if self.inner.conn.status().connected() {
            self.inner
                .conn
                .close(200, ShortString::from("closed"))
                .await
                .map_err(amqp_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gt_becomes_one_or_more_words_in_the_binding_key() {
        assert_eq!(binding_key("a.*.c"), "a.*.c");
        assert_eq!(binding_key("a.>"), "a.*.#");
        assert_eq!(binding_key(">"), "*.#");
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(validate_namespace("wt-1.x_y").is_ok());
        for bad in ["", "a b", "a/b", &"n".repeat(65)] {
            assert!(validate_namespace(bad).is_err(), "{bad:?}");
        }
    }
}
