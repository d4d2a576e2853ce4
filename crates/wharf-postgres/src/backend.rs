//! [`PostgresBackend`]: connects, creates its schema, publishes into the
//! `messages` table and opens subscriptions; one LISTEN connection per backend
//! wakes every subscription of the process when something is published.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use wharf_core::{
    name, Backend, Capabilities, Capability, Error, GroupMode, Limits, Message, Publisher, Receipt,
    Result, StartPosition, SubscribeOptions, Subscriber, Subscription,
};

use crate::rows::{db_err, insert_batch, insert_batch_autocommit, is_transaction_rollback, NAME};
use crate::schema::{channel, ddl, validate_ident, Sql};
use crate::subscription::{open_subscription, GroupSpec};

/// Largest message accepted: 4 MiB (payload + key + headers). `bytea` could
/// hold up to 1 GiB, but rows that large hurt every scan and backup.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Where and how to connect; build with [`PostgresConfig::new`].
///
/// ```
/// use std::time::Duration;
/// let cfg = wharf_postgres::PostgresConfig::new("postgres://postgres@127.0.0.1/test")
///     .schema("orders_queue")
///     .visibility_timeout(Duration::from_secs(60));
/// assert_eq!(cfg.schema_name(), "orders_queue");
/// ```
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub(crate) url: String,
    pub(crate) schema: String,
    pub(crate) max_connections: u32,
    pub(crate) poll_interval: Duration,
    pub(crate) visibility_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

impl PostgresConfig {
    /// Connects to `url` (`postgres://user@host:port/db`), schema `wharf`.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            schema: "wharf".into(),
            max_connections: 8,
            poll_interval: Duration::from_millis(250),
            visibility_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The schema holding this backend's tables (`[a-z_][a-z0-9_]*`); backends
    /// on different schemas share nothing.
    #[must_use]
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Size of the connection pool (default 8); one more connection LISTENs.
    #[must_use]
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How often idle consumers look for due delayed, nacked or expired-lease
    /// messages when no NOTIFY woke them (default 250 ms).
    #[must_use]
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// Lease of a delivery when the subscription sets none (default 30 s).
    #[must_use]
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.visibility_timeout = d;
        self
    }

    /// How long to wait for a connection (default 5 s).
    #[must_use]
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The schema name.
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    /// The connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    pub(crate) sql: Arc<Sql>,
    /// Queue of the publish coalescer (see [`spawn_publisher`]).
    publishes: mpsc::UnboundedSender<PublishRequest>,
    pub(crate) config: PostgresConfig,
    /// `true` once [`Backend::close`] ran.
    pub(crate) closed: watch::Sender<bool>,
    /// Bumped on every NOTIFY and local publish/settle: wakes fetchers.
    pub(crate) wake: watch::Sender<u64>,
    listener: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    pub(crate) fn bump(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(h) = self.listener.lock().ok().and_then(|mut g| g.take()) {
            h.abort();
        }
    }
}

/// A Wharf backend on PostgreSQL; see the [crate docs](crate) for the mapping.
#[derive(Clone)]
pub struct PostgresBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("schema", &self.inner.config.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresBackend {
    /// Connects, creates the schema and its tables if missing, and starts
    /// listening for publishes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad schema name;
    /// [`Error::Unavailable`] when the server can't be reached.
    pub async fn connect(config: PostgresConfig) -> Result<Self> {
        validate_ident("schema", &config.schema)?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.connect_timeout)
            .connect(&config.url)
            .await
            .map_err(db_err)?;
        Self::with_pool(pool, config).await
    }

    /// Uses an existing pool (the application's own, say); `config`'s URL and
    /// pool size are then ignored.
    ///
    /// # Errors
    /// As [`PostgresBackend::connect`].
    pub async fn with_pool(pool: PgPool, config: PostgresConfig) -> Result<Self> {
        validate_ident("schema", &config.schema)?;
        sqlx::raw_sql(&ddl(&config.schema))
            .execute(&pool)
            .await
            .map_err(db_err)?;
        let mut listener = PgListener::connect_with(&pool).await.map_err(db_err)?;
        listener
            .listen(&channel(&config.schema))
            .await
            .map_err(db_err)?;
        let (closed, _) = watch::channel(false);
        let (wake, _) = watch::channel(0u64);
        let sql = Arc::new(Sql::new(&config.schema));
        let inner = Arc::new(Inner {
            publishes: spawn_publisher(pool.clone(), sql.clone()),
            sql,
            pool,
            config,
            closed,
            wake,
            listener: std::sync::Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        let task = tokio::spawn(async move {
            loop {
                // recv reconnects by itself after a dropped connection.
                let got = listener.recv().await;
                let Some(inner) = weak.upgrade() else { return };
                match got {
                    Ok(_) => inner.bump(),
                    Err(sqlx::Error::PoolClosed) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "postgres LISTEN connection failed; retrying");
                        drop(inner);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        *inner
            .listener
            .lock()
            .expect("listener lock is never poisoned") = Some(task);
        Ok(PostgresBackend { inner })
    }

    /// The connection pool (for the outbox, or the application's own queries).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema this backend lives in.
    pub fn schema(&self) -> &str {
        &self.inner.config.schema
    }

    /// Publishes inside the caller's transaction: the messages become visible
    /// (and consumers are notified) only if the transaction commits.
    ///
    /// # Errors
    /// As [`Publisher::publish_batch`].
    pub async fn publish_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        topic: &str,
        messages: &[Message],
    ) -> Result<Vec<Receipt>> {
        self.check(topic, messages)?;
        insert_batch(&self.inner.sql, &mut *tx, topic, messages).await
    }

    /// Drops the schema and everything in it (topics, messages, groups).
    /// For tests and decommissioning; other backends on the schema break.
    ///
    /// A subscription dropped just before still returns its unsettled
    /// deliveries from a background task, and its fetcher may be mid-claim:
    /// their row locks meet the `DROP`'s table locks in another order, and
    /// PostgreSQL may pick the `DROP` as a deadlock victim (`40P01`). That
    /// is retried (up to 5 attempts, 50–800 ms apart).
    ///
    /// # Errors
    /// Transport errors, or the last error after 5 attempts.
    pub async fn drop_schema(&self) -> Result<()> {
        let s = &self.inner.config.schema;
        let sql = format!("DROP SCHEMA IF EXISTS {s} CASCADE");
        let mut pause = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match sqlx::raw_sql(&sql).execute(&self.inner.pool).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 5 && is_transaction_rollback(&e) => {
                    tracing::debug!(error = %e, attempt, "dropping the schema lost a deadlock; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(db_err(e)),
            }
        }
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
        if *self.inner.closed.borrow() {
            return Err(Error::Closed { what: "backend" });
        }
        Ok(())
    }
}

/// A publish waiting for the coalescer: topic, messages, where the receipts go.
type PublishRequest = (String, Vec<Message>, oneshot::Sender<Result<Vec<Receipt>>>);

/// Most messages, and bytes, the coalescer puts in one statement.
const COALESCE_MAX: usize = 4096;
const COALESCE_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Publishes to one topic take that topic's row lock until they commit, so
/// they commit one after the other. This task coalesces them: whatever
/// queued up while the previous statements committed goes into one
/// `INSERT` per topic (topics in parallel), one commit for all. Each
/// publish still returns only after its own messages are committed, in
/// order within its batch; `duplicate` is reported across the combined batch.
fn spawn_publisher(pool: PgPool, sql: Arc<Sql>) -> mpsc::UnboundedSender<PublishRequest> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PublishRequest>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let size = |r: &PublishRequest| r.1.iter().map(Message::size).sum::<usize>();
            let mut n = first.1.len();
            let mut bytes = size(&first);
            let mut groups: Vec<(String, Vec<PublishRequest>)> = Vec::new();
            let mut add = |req: PublishRequest| match groups.iter_mut().find(|(t, _)| *t == req.0) {
                Some((_, g)) => g.push(req),
                None => groups.push((req.0.clone(), vec![req])),
            };
            add(first);
            while n < COALESCE_MAX && bytes < COALESCE_MAX_BYTES {
                match rx.try_recv() {
                    Ok(req) => {
                        n += req.1.len();
                        bytes += size(&req);
                        add(req);
                    }
                    Err(_) => break,
                }
            }
            let runs = groups
                .into_iter()
                .map(|(topic, reqs)| publish_group(&pool, &sql, topic, reqs));
            futures_util::future::join_all(runs).await;
        }
    });
    tx
}

async fn publish_group(pool: &PgPool, sql: &Sql, topic: String, reqs: Vec<PublishRequest>) {
    let mut all = Vec::with_capacity(reqs.iter().map(|r| r.1.len()).sum());
    let mut replies = Vec::with_capacity(reqs.len());
    for (_, msgs, reply) in reqs {
        replies.push((msgs.len(), reply));
        all.extend(msgs);
    }
    let result = match pool.acquire().await {
        Ok(mut conn) => insert_batch_autocommit(sql, &mut conn, &topic, &all).await,
        Err(e) => Err(db_err(e)),
    };
    match result {
        Ok(receipts) => {
            let mut receipts = receipts.into_iter();
            for (len, reply) in replies {
                let _ = reply.send(Ok(receipts.by_ref().take(len).collect()));
            }
        }
        Err(e) => {
            let transient = e.is_transient();
            let text = e.to_string();
            for (_, reply) in replies {
                let source: wharf_core::BoxError = text.clone().into();
                let _ = reply.send(Err(if transient {
                    Error::Unavailable {
                        backend: NAME,
                        source,
                    }
                } else {
                    Error::Backend {
                        backend: NAME,
                        source,
                    }
                }));
            }
        }
    }
}

/// Translates a Wharf pattern into an anchored POSIX regex on topic names.
/// Topic segments are `[A-Za-z0-9_-]`, none of which is special in a regex.
pub(crate) fn pattern_regex(pattern: &str) -> String {
    let parts: Vec<&str> = pattern
        .split('.')
        .map(|seg| match seg {
            "*" => "[^.]+",
            ">" => ".+",
            lit => lit,
        })
        .collect();
    format!("^{}$", parts.join("\\."))
}

#[async_trait]
impl Publisher for PostgresBackend {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        let mut receipts = self.publish_batch(topic, vec![message]).await?;
        receipts.pop().ok_or_else(|| Error::Backend {
            backend: NAME,
            source: "publish returned no receipt".into(),
        })
    }

    async fn publish_batch(&self, topic: &str, messages: Vec<Message>) -> Result<Vec<Receipt>> {
        self.check(topic, &messages)?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, receipts) = oneshot::channel();
        self.inner
            .publishes
            .send((topic.to_owned(), messages, reply))
            .map_err(|_| Error::Closed { what: "backend" })?;
        let receipts = receipts
            .await
            .map_err(|_| Error::Closed { what: "backend" })??;
        self.inner.bump();
        Ok(receipts)
    }
}

#[async_trait]
impl Subscriber for PostgresBackend {
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription> {
        let pattern = options.validate()?;
        if options.group_mode() == GroupMode::Stream {
            return Err(Error::Unsupported {
                backend: NAME,
                capability: Capability::PartitionAssignment,
            });
        }
        if *self.inner.closed.borrow() {
            return Err(Error::Closed { what: "backend" });
        }
        if let Some(dlq) = options.dead_letter_topic_name() {
            name::validate_topic(dlq)?;
        }
        let spec = GroupSpec {
            name: options.group_name().map(str::to_owned),
            pattern: pattern.as_str().to_owned(),
            regex: pattern_regex(pattern.as_str()),
            start: options.start_position(),
            max_in_flight: options.max_in_flight_limit(),
            lease: options
                .visibility_timeout_value()
                .unwrap_or(self.inner.config.visibility_timeout),
            max_deliveries: options.max_deliveries_limit(),
            dead_letter_topic: options.dead_letter_topic_name().map(str::to_owned),
        };
        open_subscription(self.inner.clone(), spec).await
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        [
            Capability::Persistence,
            Capability::OrderingPerKey,
            Capability::ConsumerGroups,
            Capability::NackWithDelay,
            Capability::VisibilityTimeout,
            Capability::ExtendLease,
            Capability::DelayedPublish,
            Capability::Priorities,
            Capability::Ttl,
            Capability::Dedup,
            Capability::ReplayFromOffset,
            Capability::ReplayFromTime,
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
        Limits::new(MAX_MESSAGE_BYTES)
    }

    async fn ensure_topic(&self, topic: &str) -> Result<()> {
        name::validate_topic(topic)?;
        sqlx::query(&self.inner.sql.ensure_topic)
            .bind(topic)
            .execute(&self.inner.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.send_replace(true);
        if let Some(h) = self
            .inner
            .listener
            .lock()
            .expect("listener lock is never poisoned")
            .take()
        {
            h.abort();
        }
        Ok(())
    }
}

pub(crate) fn start_code(start: StartPosition) -> (i32, i64) {
    match start {
        StartPosition::Earliest => (0, 0),
        StartPosition::Latest => (1, 0),
        StartPosition::Offset(o) => (2, i64::try_from(o).unwrap_or(i64::MAX)),
        StartPosition::Time(t) => (3, i64::try_from(t.as_millis()).unwrap_or(i64::MAX)),
        // StartPosition is non-exhaustive: treat anything new as earliest.
        _ => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_translate_to_anchored_regexes() {
        assert_eq!(pattern_regex("a.b"), "^a\\.b$");
        assert_eq!(pattern_regex("a.*.c"), "^a\\.[^.]+\\.c$");
        assert_eq!(pattern_regex("a.>"), "^a\\..+$");
    }

    #[test]
    fn schema_names_that_could_inject_sql_are_rejected() {
        assert!(validate_ident("schema", "wharf_1").is_ok());
        for bad in ["", "1abc", "a-b", "a;drop", "Upper", &"x".repeat(49)] {
            assert!(
                matches!(
                    validate_ident("schema", bad),
                    Err(Error::InvalidArgument { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
