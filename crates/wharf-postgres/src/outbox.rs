//! The transactional outbox: [`Outbox::enqueue`] writes a message into an
//! outbox table inside the caller's transaction (it commits or rolls back with
//! the business rows), and an [`OutboxForwarder`] publishes committed rows to
//! any Wharf [`Publisher`] in order, at least once, deleting each batch only
//! after every publish in it was acknowledged.
//!
//! One forwarder per outbox is active at a time: it holds a session-level
//! advisory lock on its own connection (released by PostgreSQL when the
//! process dies), and reads and deletes rows on that same connection, so a
//! forwarder that lost its connection (and the lock) can't go on publishing.
//! Standby forwarders retry the lock every poll interval.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Postgres, Row, Transaction};
use wharf_core::{name, Error, Message, Publisher, Result};

use crate::backend::MAX_MESSAGE_BYTES;
use crate::rows::{db_err, headers_json, message_from_row, uuid_of};
use crate::schema::validate_ident;

/// An outbox table: `<schema>.outbox`.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> wharf_core::Result<()> {
/// use wharf_postgres::outbox::Outbox;
/// let outbox = Outbox::new("shop_outbox")?;
/// outbox.install(&pool).await?;
/// let mut tx = pool.begin().await.map_err(|e| wharf_core::Error::Backend {
///     backend: "postgres", source: e.into() })?;
/// // sqlx::query("INSERT INTO orders …").execute(&mut *tx).await?;
/// outbox.enqueue(&mut tx, "orders.created", wharf_core::Message::new("order 42")).await?;
/// tx.commit().await.map_err(|e| wharf_core::Error::Backend {
///     backend: "postgres", source: e.into() })?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Outbox {
    schema: String,
    insert_sql: String,
    fetch_sql: String,
    delete_sql: String,
    count_sql: String,
}

impl Default for Outbox {
    /// The outbox in schema `wharf_outbox`.
    fn default() -> Self {
        Outbox::new("wharf_outbox").expect("a valid schema name")
    }
}

impl Outbox {
    /// The outbox table in `schema` (`[a-z_][a-z0-9_]*`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad schema name.
    pub fn new(schema: impl Into<String>) -> Result<Self> {
        let schema = schema.into();
        validate_ident("schema", &schema)?;
        let t = format!("{schema}.outbox");
        Ok(Outbox {
            insert_sql: format!(
                "INSERT INTO {t} (topic, id, key, headers, payload, ts) \
                 VALUES ($1, $2, $3, $4::jsonb, $5, $6)"
            ),
            fetch_sql: format!(
                "SELECT seq, topic, id, key, headers::text AS headers, payload, ts \
                 FROM {t} ORDER BY seq LIMIT $1"
            ),
            delete_sql: format!("DELETE FROM {t} WHERE seq = ANY($1)"),
            count_sql: format!("SELECT count(*) FROM {t}"),
            schema,
        })
    }

    /// The schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    fn channel(&self) -> String {
        format!("wharf_outbox_{}", self.schema)
    }

    fn lock_key(&self) -> String {
        format!("wharf-outbox-{}", self.schema)
    }

    /// Creates the schema, table and notify trigger if missing (idempotent).
    ///
    /// # Errors
    /// Transport errors.
    pub async fn install(&self, pool: &PgPool) -> Result<()> {
        let s = &self.schema;
        let chan = self.channel();
        let ddl = format!(
            r#"BEGIN;
SELECT pg_advisory_xact_lock(hashtext('wharf-schema-{s}'));
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.outbox (
  seq bigserial PRIMARY KEY,
  topic text NOT NULL,
  id uuid NOT NULL,
  key bytea,
  headers jsonb NOT NULL,
  payload bytea NOT NULL,
  ts bigint NOT NULL
);
CREATE OR REPLACE FUNCTION {s}.outbox_notify() RETURNS trigger LANGUAGE plpgsql
  AS $$ BEGIN PERFORM pg_notify('{chan}', ''); RETURN NULL; END $$;
CREATE OR REPLACE TRIGGER outbox_notify AFTER INSERT ON {s}.outbox
  FOR EACH STATEMENT EXECUTE FUNCTION {s}.outbox_notify();
COMMIT;"#
        );
        sqlx::raw_sql(&ddl).execute(pool).await.map_err(db_err)?;
        Ok(())
    }

    /// Writes `message` for `topic` into the outbox inside `tx`: it is
    /// published after, and only if, `tx` commits.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::MessageTooLarge`] (nothing written);
    /// transport errors (the transaction should then be rolled back).
    pub async fn enqueue(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        topic: &str,
        message: Message,
    ) -> Result<()> {
        name::validate_topic(topic)?;
        if message.size() > MAX_MESSAGE_BYTES {
            return Err(Error::MessageTooLarge {
                size: message.size(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        sqlx::query(&self.insert_sql)
            .bind(topic)
            .bind(uuid_of(message.id()))
            .bind(message.key().map(|k| k.to_vec()))
            .bind(headers_json(message.headers()))
            .bind(message.payload().to_vec())
            .bind(i64::try_from(message.timestamp().as_millis()).unwrap_or(i64::MAX))
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// How many rows wait to be forwarded.
    ///
    /// # Errors
    /// Transport errors.
    pub async fn pending(&self, pool: &PgPool) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(&self.count_sql)
            .fetch_one(pool)
            .await
            .map_err(db_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// What a forwarder did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwarderStats {
    /// Rows published (and then deleted).
    pub published: u64,
    /// Of those, how many the target reported as duplicates (already stored
    /// by an earlier forwarder that died before deleting them).
    pub duplicates: u64,
}

/// Publishes committed outbox rows; see the [module docs](self).
pub struct OutboxForwarder {
    pool: PgPool,
    publisher: Arc<dyn Publisher>,
    outbox: Outbox,
    batch: usize,
    poll: Duration,
}

impl std::fmt::Debug for OutboxForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxForwarder")
            .field("outbox", &self.outbox.schema)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl OutboxForwarder {
    /// Forwards the default [`Outbox`] (schema `wharf_outbox`) to `publisher`.
    pub fn new(pool: PgPool, publisher: Arc<dyn Publisher>) -> Self {
        OutboxForwarder {
            pool,
            publisher,
            outbox: Outbox::default(),
            batch: 100,
            poll: Duration::from_millis(500),
        }
    }

    /// Forwards this outbox instead.
    #[must_use]
    pub fn outbox(mut self, outbox: Outbox) -> Self {
        self.outbox = outbox;
        self
    }

    /// Rows read, published and deleted per round (default 100): a crash
    /// republishes at most this many.
    #[must_use]
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// How often a standby retries the lock and an idle leader looks for rows
    /// a NOTIFY did not announce (default 500 ms).
    #[must_use]
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll = d;
        self
    }

    /// Runs until `shutdown` completes (checked between batches and while
    /// idle; a batch in progress is finished first).
    ///
    /// Rows are published in outbox order (the order their inserts got their
    /// sequence numbers, so per key and per transaction too), each publish
    /// awaited before the next. Publish failures are retried with backoff,
    /// from the first unpublished row, so order holds across failures.
    ///
    /// # Errors
    /// Only for failures it can't wait out: a bad outbox row (it then stops
    /// rather than skip it and break the order).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<ForwarderStats> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut stats = ForwarderStats::default();
        let mut backoff = Duration::from_millis(100);
        loop {
            if (&mut shutdown).now_or_never().is_some() {
                return Ok(stats);
            }
            match self.lead(&mut shutdown, &mut stats).await {
                Ok(Step::Shutdown) => return Ok(stats),
                Ok(Step::Standby) => backoff = Duration::from_millis(100),
                Ok(Step::Fatal(e)) => return Err(e),
                Ok(Step::Retry(e)) | Err(e) => {
                    tracing::warn!(error = %e, "outbox forwarder: retrying");
                    tokio::select! {
                        _ = &mut shutdown => return Ok(stats),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Takes the lock (or waits for it) and forwards until shutdown, the end
    /// of a standby round, a bad row, or an error worth retrying (`Err`).
    async fn lead<F: Future<Output = ()>>(
        &self,
        shutdown: &mut std::pin::Pin<&mut F>,
        stats: &mut ForwarderStats,
    ) -> Result<Step> {
        // A connection of its own, closed (not pooled) when dropped, so the
        // session lock goes with it.
        let conn: PoolConnection<Postgres> = self.pool.acquire().await.map_err(db_err)?;
        let mut conn = conn.detach();
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(self.outbox.lock_key())
            .fetch_one(&mut conn)
            .await
            .map_err(db_err)?;
        if !locked {
            tokio::select! {
                _ = shutdown.as_mut() => return Ok(Step::Shutdown),
                _ = tokio::time::sleep(self.poll) => return Ok(Step::Standby),
            }
        }
        let mut listener = PgListener::connect_with(&self.pool).await.map_err(db_err)?;
        listener
            .listen(&self.outbox.channel())
            .await
            .map_err(db_err)?;
        loop {
            if shutdown.as_mut().now_or_never().is_some() {
                return Ok(Step::Shutdown);
            }
            let rows = sqlx::query(&self.outbox.fetch_sql)
                .bind(i64::try_from(self.batch).unwrap_or(i64::MAX))
                .fetch_all(&mut conn)
                .await
                .map_err(db_err)?;
            if rows.is_empty() {
                tokio::select! {
                    _ = shutdown.as_mut() => return Ok(Step::Shutdown),
                    n = listener.recv() => { n.map_err(db_err)?; }
                    _ = tokio::time::sleep(self.poll) => {}
                }
                continue;
            }
            let mut done: Vec<i64> = Vec::with_capacity(rows.len());
            let mut failure = None;
            for row in &rows {
                let seq: i64 = row.try_get("seq").map_err(db_err)?;
                let topic: String = row.try_get("topic").map_err(db_err)?;
                let msg = match message_from_row(row) {
                    Ok(m) => m,
                    Err(e) => return Ok(Step::Fatal(bad_row(seq, e))),
                };
                match self.publisher.publish(&topic, msg).await {
                    Ok(r) => {
                        done.push(seq);
                        stats.published += 1;
                        stats.duplicates += u64::from(r.duplicate);
                    }
                    Err(e) if e.is_bad_input() => {
                        failure = Some(Step::Fatal(bad_row(seq, e)));
                        break;
                    }
                    Err(e) => {
                        failure = Some(Step::Retry(e));
                        break;
                    }
                }
            }
            if !done.is_empty() {
                sqlx::query(&self.outbox.delete_sql)
                    .bind(&done)
                    .execute(&mut conn)
                    .await
                    .map_err(db_err)?;
            }
            match failure {
                Some(Step::Retry(e)) => return Err(e),
                Some(step) => return Ok(step),
                None => {}
            }
        }
    }
}

/// How a leadership round ended.
enum Step {
    Shutdown,
    Standby,
    /// A row that can never be published: stop rather than break the order.
    Fatal(Error),
    /// Internal: a publish failed and will be retried.
    Retry(Error),
}

fn bad_row(seq: i64, e: Error) -> Error {
    Error::Backend {
        backend: "postgres",
        source: format!("outbox row {seq} can't be published: {e}").into(),
    }
}
