//! [`RedisPubSubBackend`]: the non-durable mode on Redis Pub/Sub.
//!
//! `PUBLISH` to a channel per topic, `SUBSCRIBE` (or `PSUBSCRIBE` for a
//! pattern, filtered again in the client) on a connection per subscription.
//! Nothing is stored: settling a delivery only frees its in-flight slot.
//! See the [crate docs](crate#pubsub-non-durable-mode).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{MultiplexedConnection, PubSubStream};
use tokio::sync::watch;
use wharf_adapter::at_most_once::{self, receipt, Feed, LocalStream};
use wharf_core::{
    name, Backend, Capabilities, Capability, Error, Limits, Message, Publisher, Receipt, Result,
    SubscribeOptions, Subscriber, Subscription, TopicPattern,
};

use crate::config::{RedisConfig, MAX_MESSAGE_BYTES};
use crate::error::{map_for, RedisError};
use crate::wire;

/// The backend's name in errors and logs.
const NAME: &str = "redis-pubsub";

/// The capabilities of [`RedisPubSubBackend`].
const CAPABILITIES: Capabilities = Capabilities::empty()
    .with(Capability::OrderingPerKey)
    .with(Capability::Wildcards);

/// A Wharf backend on Redis Pub/Sub: at-most-once, nothing stored, no
/// consumer groups; see the [crate docs](crate#pubsub-non-durable-mode).
///
/// Cloning is cheap and shares the publishing connection.
///
/// ```no_run
/// # async fn run() -> wharf_core::Result<()> {
/// use wharf_core::{Message, Publisher, SubscribeOptions, Subscriber};
/// use wharf_redis::{RedisConfig, RedisPubSubBackend};
///
/// let redis = RedisPubSubBackend::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?;
/// // Subscribe first: a PUBLISH reaches only live subscriptions.
/// let mut sub = redis.subscribe(SubscribeOptions::new("prices.*")).await?;
/// redis.publish("prices.eur", Message::new("1.08")).await?;
/// let d = sub.next().await.expect("a delivery")?;
/// d.ack().await?; // frees the in-flight slot; nothing goes to the server
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisPubSubBackend {
    shared: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    conn: MultiplexedConnection,
    prefix: String,
    connect_timeout: Duration,
    closed: watch::Sender<bool>,
}

/// Escapes the glob metacharacters of `s` for `PSUBSCRIBE`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The `PSUBSCRIBE` glob of a wildcard pattern under `channel_prefix`:
/// `*` and `>` segments both become `*`, which in a glob also matches dots,
/// so received channels are checked against the pattern again.
fn glob(channel_prefix: &str, pattern: &TopicPattern) -> String {
    let segments: Vec<&str> = pattern
        .as_str()
        .split('.')
        .map(|s| if s == ">" { "*" } else { s })
        .collect();
    format!("{}{}", glob_escape(channel_prefix), segments.join("."))
}

impl RedisPubSubBackend {
    /// Connects to the server at the config's URL. Of the config only the
    /// URL, the key prefix (here the channel prefix) and the connect timeout
    /// apply; `max_len` and the dedup window concern streams.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server cannot be reached;
    /// [`Error::InvalidArgument`] for a bad URL or an empty prefix.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let (client, conn) = crate::backend::open(&config).await?;
        let (closed, _) = watch::channel(false);
        Ok(RedisPubSubBackend {
            shared: Arc::new(Shared {
                client,
                conn,
                prefix: config.prefix,
                connect_timeout: config.connect_timeout,
                closed,
            }),
        })
    }

    /// The channel of `topic`: `<prefix>:c:<topic>`.
    pub fn channel(&self, topic: &str) -> String {
        self.shared.channel(topic)
    }
}

impl Shared {
    fn channel_prefix(&self) -> String {
        format!("{}:c:", self.prefix)
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}:c:{topic}", self.prefix)
    }

    fn check_open(&self) -> Result<()> {
        if *self.closed.borrow() {
            return Err(Error::Closed {
                what: "redis-pubsub backend",
            });
        }
        Ok(())
    }

    fn prepare(&self, topic: &str, message: &Message) -> Result<redis::Cmd> {
        name::validate_topic(topic)?;
        if message.size() > MAX_MESSAGE_BYTES {
            return Err(Error::MessageTooLarge {
                size: message.size(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        let mut c = redis::cmd("PUBLISH");
        c.arg(self.channel(topic)).arg(wire::frame(message));
        Ok(c)
    }
}

#[async_trait]
impl Publisher for RedisPubSubBackend {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        let s = &self.shared;
        s.check_open()?;
        let cmd = s.prepare(topic, &message)?;
        let _receivers: i64 = cmd
            .query_async(&mut s.conn.clone())
            .await
            .map_err(|e| map_for(NAME, "PUBLISH", e))?;
        Ok(receipt(&message))
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        let s = &self.shared;
        s.check_open()?;
        name::validate_topic(topic)?;
        let cmds = messages
            .iter()
            .map(|m| s.prepare(topic, m))
            .collect::<Result<Vec<_>>>()?;
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for c in cmds {
            pipe.add_command(c).ignore();
        }
        let () = pipe
            .query_async(&mut s.conn.clone())
            .await
            .map_err(|e| map_for(NAME, "PUBLISH", e))?;
        Ok(messages.iter().map(receipt).collect())
    }
}

#[async_trait]
impl Subscriber for RedisPubSubBackend {
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        let s = &self.shared;
        s.check_open()?;
        let pattern = at_most_once::check_options(NAME, &options, false)?;
        let mut pubsub = tokio::time::timeout(s.connect_timeout, s.client.get_async_pubsub())
            .await
            .map_err(|_| Error::Timeout {
                operation: "redis pubsub connect",
                after: s.connect_timeout,
            })?
            .map_err(|e| map_for(NAME, "connect", e))?;
        // Both return once Redis has confirmed the subscription.
        if pattern.is_literal() {
            pubsub
                .subscribe(s.channel(pattern.as_str()))
                .await
                .map_err(|e| map_for(NAME, "SUBSCRIBE", e))?;
        } else {
            pubsub
                .psubscribe(glob(&s.channel_prefix(), &pattern))
                .await
                .map_err(|e| map_for(NAME, "PSUBSCRIBE", e))?;
        }
        Ok(Subscription::new(LocalStream::new(
            NAME,
            options.max_in_flight_limit(),
            PubSubFeed {
                channel_prefix: s.channel_prefix(),
                pattern,
            },
            pubsub.into_on_message(),
            s.closed.subscribe(),
        )))
    }
}

#[async_trait]
impl Backend for RedisPubSubBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn limits(&self) -> Limits {
        Limits::new(MAX_MESSAGE_BYTES)
    }

    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        // A channel needs no creating.
        name::validate_topic(topic)
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.send_replace(true);
        Ok(())
    }
}

impl std::fmt::Debug for RedisPubSubBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPubSubBackend")
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

/// What a Pub/Sub subscription reads: its connection's messages, each
/// matched against the Wharf pattern again (a glob `*` also spans dots) and
/// unframed.
struct PubSubFeed {
    channel_prefix: String,
    pattern: TopicPattern,
}

impl Feed for PubSubFeed {
    /// Dropping it ends the connection, and with it the subscription.
    type Stream = PubSubStream;

    fn decode(&self, msg: redis::Msg) -> Option<(Arc<str>, Message)> {
        let topic = msg.get_channel_name().strip_prefix(&self.channel_prefix)?;
        if !self.pattern.matches(topic) {
            return None;
        }
        let payload = msg.get_payload_bytes();
        let message =
            wire::unframe(payload).unwrap_or_else(|| Message::new(Bytes::copy_from_slice(payload)));
        Some((Arc::from(topic), message))
    }

    /// Not closed by us or the backend: the connection went away (reported
    /// once, then the subscription ends).
    fn lost(&self) -> Option<Error> {
        Some(Error::Unavailable {
            backend: NAME,
            source: Box::new(RedisError::PubSubClosed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_escape_the_prefix_and_widen_wildcards_that_the_pattern_narrows_again() {
        let p = TopicPattern::parse("orders.*.eu").expect("pattern");
        assert_eq!(
            glob("a*b?[c]\\:c:", &p),
            "a\\*b\\?\\[c\\]\\\\:c:orders.*.eu"
        );
        let p = TopicPattern::parse("orders.>").expect("pattern");
        assert_eq!(glob("w:c:", &p), "w:c:orders.*");
        let star = TopicPattern::parse("orders.*").expect("pattern");
        // The glob `w:c:orders.*` would also match these; the pattern does not.
        assert!(!star.matches("orders.created.eu"));
        assert!(star.matches("orders.created"));
    }
}
