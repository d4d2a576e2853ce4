//! [`RedisBackend`]: connecting, publishing through the dedup script, and
//! the backend lifecycle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::watch;
use wharf_core::{
    name, Backend, Capabilities, Capability, Error, Limits, Message, Publisher, Receipt, Result,
    SubscribeOptions, Subscriber, Subscription,
};

use crate::config::{RedisConfig, MAX_MESSAGE_BYTES, RESPONSE_TIMEOUT};
use crate::error::{map, unexpected};
use crate::{scripts, wire};

/// The backend's name in errors and logs.
pub(crate) const NAME: &str = "redis";

/// A Wharf backend on Redis Streams; see the [crate docs](crate) for the mapping.
///
/// Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct RedisBackend {
    shared: Arc<Shared>,
}

/// SHA1s of the loaded scripts.
pub(crate) struct Shas {
    pub(crate) publish: String,
    pub(crate) claim_due: String,
    pub(crate) claim_expired: String,
    pub(crate) park: String,
}

/// State shared by the backend, its subscriptions and their ackers.
pub(crate) struct Shared {
    pub(crate) client: redis::Client,
    pub(crate) conn: MultiplexedConnection,
    pub(crate) prefix: String,
    max_len: Option<u64>,
    dedup_window_s: u64,
    /// Whether publishes keep ids for dedup ([`RedisConfig::dedup`]).
    dedup: bool,
    pub(crate) shas: Shas,
    pub(crate) closed: watch::Sender<bool>,
    /// When the first failed attempt of (group, entry id) happened.
    pub(crate) first_failures: Mutex<HashMap<(String, String), u64>>,
}

pub(crate) fn connection_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT))
}

async fn load(conn: &mut MultiplexedConnection, script: &str) -> Result<String> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query_async(conn)
        .await
        .map_err(|e| map("SCRIPT LOAD", e))
}

/// Checks `config` and opens a client with one multiplexed connection.
///
/// # Errors
/// As [`RedisBackend::connect`].
pub(crate) async fn open(config: &RedisConfig) -> Result<(redis::Client, MultiplexedConnection)> {
    if config.prefix.is_empty() || config.prefix.contains(char::is_whitespace) {
        return Err(Error::InvalidArgument {
            name: "key_prefix",
            reason: "must be non-empty without whitespace".into(),
        });
    }
    let client = redis::Client::open(config.url.as_str()).map_err(|e| Error::InvalidArgument {
        name: "url",
        reason: e.to_string(),
    })?;
    let cfg = connection_config().set_connection_timeout(Some(config.connect_timeout));
    let conn = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .map_err(|e| match map("connect", e) {
            Error::Backend { source, .. } => Error::Unavailable {
                backend: NAME,
                source,
            },
            other => other,
        })?;
    Ok((client, conn))
}

impl RedisBackend {
    /// Connects and loads the scripts.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server cannot be reached;
    /// [`Error::InvalidArgument`] for a bad URL or an empty prefix.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let (client, mut conn) = open(&config).await?;
        let shas = Shas {
            publish: load(&mut conn, scripts::PUBLISH).await?,
            claim_due: load(&mut conn, scripts::CLAIM_DUE).await?,
            claim_expired: load(&mut conn, scripts::CLAIM_EXPIRED).await?,
            park: load(&mut conn, scripts::PARK).await?,
        };
        let (closed, _) = watch::channel(false);
        Ok(RedisBackend {
            shared: Arc::new(Shared {
                client,
                conn,
                prefix: config.prefix,
                max_len: config.max_len,
                dedup_window_s: config.dedup_window.as_secs().max(1),
                dedup: config.dedup,
                shas,
                closed,
                first_failures: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// A connection to the same server (for the dedup store or direct use).
    pub fn connection(&self) -> MultiplexedConnection {
        self.shared.conn.clone()
    }

    /// The stream key of `topic`: `<prefix>:s:<topic>`.
    pub fn stream_key(&self, topic: &str) -> String {
        self.shared.stream_key(topic)
    }

    /// Deletes every key under this backend's prefix (streams, groups, dedup
    /// and retry keys): tear-down of tests and temporary namespaces.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn delete_all(&self) -> Result<()> {
        let mut conn = self.shared.conn.clone();
        let pattern = format!("{}:*", self.shared.prefix);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| map("SCAN", e))?;
            if !keys.is_empty() {
                let _: i64 = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| map("DEL", e))?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

/// Whether `e` says the server has lost the scripts (restart, `SCRIPT FLUSH`).
fn is_noscript(e: &redis::RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

impl Shared {
    /// Loads the scripts again (their SHA1s do not change).
    async fn reload_scripts(&self, conn: &mut MultiplexedConnection) -> Result<()> {
        for script in [
            scripts::PUBLISH,
            scripts::CLAIM_DUE,
            scripts::CLAIM_EXPIRED,
            scripts::PARK,
        ] {
            load(conn, script).await?;
        }
        Ok(())
    }

    /// Runs an `EVALSHA` command, reloading the scripts once if Redis lost them.
    pub(crate) async fn eval<T: redis::FromRedisValue>(
        &self,
        conn: &mut MultiplexedConnection,
        cmd: &redis::Cmd,
        what: &'static str,
    ) -> Result<T> {
        match cmd.query_async(conn).await {
            Err(e) if is_noscript(&e) => {
                self.reload_scripts(conn).await?;
                cmd.query_async(conn).await.map_err(|e| map(what, e))
            }
            r => r.map_err(|e| map(what, e)),
        }
    }

    pub(crate) fn stream_key(&self, topic: &str) -> String {
        format!("{}:s:{topic}", self.prefix)
    }

    /// The set of every topic published to, for wildcard subscriptions.
    pub(crate) fn topics_key(&self) -> String {
        format!("{}:topics", self.prefix)
    }

    pub(crate) fn retry_key(&self, topic: &str, group: &str) -> String {
        format!("{}:r:{topic}:{group}", self.prefix)
    }

    /// Dedup is per topic, as on every Wharf backend (the router republishes
    /// a message with its id to retry topics).
    fn dedup_key(&self, topic: &str, message: &Message) -> String {
        format!("{}:d:{topic}:{}", self.prefix, message.id())
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if *self.closed.borrow() {
            return Err(Error::Closed {
                what: "redis backend",
            });
        }
        Ok(())
    }

    fn check(&self, message: &Message) -> Result<()> {
        if message.size() > MAX_MESSAGE_BYTES {
            return Err(Error::MessageTooLarge {
                size: message.size(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        Ok(())
    }

    /// The EVALSHA of the publish script for `messages` on `topic` (see
    /// [`scripts::PUBLISH`]): one call for the whole slice.
    pub(crate) fn publish_cmd(&self, topic: &str, messages: &[Message], dedup: bool) -> redis::Cmd {
        let mut c = redis::cmd("EVALSHA");
        let keys = 2 + if dedup { messages.len() } else { 0 };
        c.arg(&self.shas.publish)
            .arg(keys)
            .arg(self.stream_key(topic))
            .arg(self.topics_key());
        if dedup {
            for m in messages {
                c.arg(self.dedup_key(topic, m));
            }
        }
        c.arg(self.max_len.unwrap_or(0))
            .arg(self.dedup_window_s)
            .arg(topic);
        for m in messages {
            let fields = wire::fields(m);
            c.arg(fields.len());
            for (n, v) in fields {
                c.arg(n).arg(v.as_ref());
            }
        }
        c
    }

    /// Without dedup, the publish script's work as plain commands in one
    /// `MULTI`/`EXEC` (as atomic: a batch is contiguous in the stream):
    /// `SADD` of the topic, then an `XADD` per message. Redis runs them
    /// without the script's per-message Lua calls (half the server time
    /// per message, measured with `INFO commandstats`: see BENCHMARKS.md).
    fn publish_pipe(&self, topic: &str, messages: &[Message]) -> redis::Pipeline {
        let mut p = redis::pipe();
        p.atomic();
        p.cmd("SADD").arg(self.topics_key()).arg(topic).ignore();
        let stream = self.stream_key(topic);
        for m in messages {
            let c = p.cmd("XADD").arg(&stream);
            if let Some(max) = self.max_len.filter(|m| *m != 0) {
                c.arg("MAXLEN").arg("~").arg(max);
            }
            c.arg("*");
            for (n, v) in wire::fields(m) {
                c.arg(n).arg(v.as_ref());
            }
        }
        p
    }

    /// Publishes `messages` to `topic`, [`PUBLISH_CHUNK`] messages per
    /// script call, deduplicating by id when `dedup`: a receipt per message.
    pub(crate) async fn publish_all(
        &self,
        topic: &str,
        messages: &[Message],
        dedup: bool,
    ) -> Result<Vec<Receipt>> {
        let mut conn = self.conn.clone();
        let mut receipts = Vec::with_capacity(messages.len());
        if !dedup {
            for chunk in messages.chunks(PUBLISH_CHUNK) {
                let ids: Vec<String> = self
                    .publish_pipe(topic, chunk)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| map("publish", e))?;
                if ids.len() != chunk.len() {
                    return Err(unexpected(
                        "publish",
                        format!("{} ids for {} messages", ids.len(), chunk.len()),
                    ));
                }
                for (m, id) in chunk.iter().zip(ids) {
                    receipts.push(Receipt {
                        id: m.id(),
                        partition: 0,
                        offset: wire::offset(&id),
                        duplicate: false,
                    });
                }
            }
            return Ok(receipts);
        }
        for chunk in messages.chunks(PUBLISH_CHUNK) {
            let cmd = self.publish_cmd(topic, chunk, dedup);
            // A retry after NOSCRIPT is safe: that reply means the call did
            // not run.
            let v: Value = self.eval(&mut conn, &cmd, "publish").await?;
            let Value::Array(parts) = &v else {
                return Err(unexpected("publish script", format!("{v:?}")));
            };
            if parts.len() != 2 * chunk.len() {
                return Err(unexpected(
                    "publish script",
                    format!("{} values for {} messages", parts.len(), chunk.len()),
                ));
            }
            for (m, pair) in chunk.iter().zip(parts.chunks(2)) {
                receipts.push(receipt(m, pair)?);
            }
        }
        Ok(receipts)
    }

    /// Publishes without dedup (dead-letter copies).
    pub(crate) async fn append(&self, topic: &str, message: &Message) -> Result<()> {
        self.publish_all(topic, std::slice::from_ref(message), false)
            .await
            .map(drop)
    }
}

/// Messages per publish script call: a larger batch is several calls, so
/// one call keeps Redis busy for a bounded time.
const PUBLISH_CHUNK: usize = 1000;

/// The receipt of `message` from its `[stream id, duplicate]` pair.
fn receipt(message: &Message, pair: &[Value]) -> Result<Receipt> {
    let id = pair.first().and_then(wire::string_of);
    let dup = pair.get(1).and_then(wire::int_of);
    match (id, dup) {
        (Some(id), Some(dup)) => Ok(Receipt {
            id: message.id(),
            partition: 0,
            offset: wire::offset(&id),
            duplicate: dup == 1,
        }),
        _ => Err(unexpected("publish script", format!("{pair:?}"))),
    }
}

#[async_trait]
impl Publisher for RedisBackend {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        let mut receipts = self.publish_batch(topic, vec![message]).await?;
        receipts
            .pop()
            .ok_or_else(|| unexpected("publish script", "no receipt"))
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        let s = &self.shared;
        s.check_open()?;
        name::validate_topic(topic)?;
        for m in &messages {
            s.check(m)?;
        }
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        s.publish_all(topic, &messages, s.dedup).await
    }
}

#[async_trait]
impl Subscriber for RedisBackend {
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        crate::subscription::open(self.shared.clone(), options).await
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        [
            Capability::ConsumerGroups,
            Capability::NackWithDelay,
            Capability::VisibilityTimeout,
            Capability::ExtendLease,
            Capability::Ttl,
            Capability::ReplayFromOffset,
            Capability::Wildcards,
            Capability::DeadLetter,
            Capability::MaxDeliveries,
            Capability::Retention,
            Capability::Redelivery,
        ]
        .into_iter()
        .chain(self.shared.dedup.then_some(Capability::Dedup))
        .collect()
    }

    fn limits(&self) -> Limits {
        Limits::new(MAX_MESSAGE_BYTES)
    }

    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        // Streams are created by the first XADD or XGROUP CREATE … MKSTREAM;
        // registering the topic lets wildcard subscriptions find it already.
        name::validate_topic(topic)?;
        let _: i64 = redis::cmd("SADD")
            .arg(self.shared.topics_key())
            .arg(topic)
            .query_async(&mut self.shared.conn.clone())
            .await
            .map_err(|e| map("SADD", e))?;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.shared.closed.send_replace(true);
        Ok(())
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}
