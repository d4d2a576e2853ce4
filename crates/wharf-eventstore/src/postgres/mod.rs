//! [`PgEventStore`]: the event store on PostgreSQL (sqlx), behind the
//! `postgres` feature.
//!
//! # Tables
//!
//! In one schema of the caller's choosing: `es_head` (one row: the next
//! global position), `es_streams` (per stream: last version, metadata,
//! soft-deleted and tombstoned flags) and `es_events` (one row per event,
//! keyed by its global position, unique on `(stream, version)`, with a GIN
//! index on its tags for append conditions).
//!
//! # Positions become visible in order (the sequence-gap problem)
//!
//! With a plain `bigserial`, a transaction can take position 10, stay open,
//! and commit after another one took 11 and committed: a reader tailing
//! the log that already moved past 11 never sees 10. This store prevents
//! it by assigning positions **under a transaction-scoped lock**: every
//! write's first statement locks the single head row
//! (`SELECT … FOR UPDATE`, or `UPDATE es_head SET next_position = …`),
//! which stays locked until the transaction ends. The
//! next writer gets its positions only once the previous one has
//! committed (or rolled back, in which case the positions are reused) and
//! PostgreSQL releases a transaction's locks only after its commit became
//! visible. So positions become visible strictly in order: whoever sees
//! position `p` committed sees every position below it committed too, and a
//! reader may simply continue from the last position it saw. Readers
//! additionally bound each read by the head row they read first (every
//! position below a visible head is committed), which is also how a page
//! knows it reached the end.
//!
//! The same lock is what makes the expected version and the append
//! condition (the "dynamic consistency boundary", which can depend on any
//! stream) decided on the latest state: the checks run in statements after
//! the lock was taken, and under `READ COMMITTED` each statement sees every
//! transaction committed before it started. (They must be separate
//! statements: a statement's snapshot is taken when it starts, before it
//! waits for the lock.)
//!
//! The price is that writes are serialized: one write transaction at a
//! time per schema. Concurrent appends through the trait therefore share
//! transactions (group commit): a writer task takes every append waiting
//! (up to 64) and decides them in order in one transaction — each on the
//! state its predecessors in the group left, the streams' rows read in
//! one query, all accepted events inserted in one statement — with one
//! commit for all. A failed statement rolls the group back, and its
//! appends are then run one transaction each, so a bad append fails alone.
//! `BENCHMARKS.md` reports appends/s next to a plain `INSERT` loop on the
//! same server. The alternative — the xid/snapshot technique (readers stop
//! below the oldest in-flight transaction) — lets appends run in parallel
//! but not conditional appends across streams, which need this kind of
//! lock anyway.
//!
//! [`PgEventStore::append_in`] appends inside the caller's transaction (the
//! events exist if and only if it commits); it holds the head lock until
//! that transaction ends, so keep such transactions short.
//!
//! # Crashes
//!
//! Every write is one transaction (an append, a group of appends, a
//! metadata change), so a crash of the application or of the server at any
//! point leaves it committed whole or not at all; an append is acknowledged
//! only after its commit returned. A commit whose reply is lost reports
//! [`EventStoreError::Unavailable`]: the outcome is unknown, as the trait's
//! cancel-safety note describes (retry with the same event ids and
//! `Exact` to find out). Positions a rolled-back transaction took are
//! taken again by the next writer.
//!
//! [`PgProjection`] runs a read model kept in PostgreSQL whose checkpoint
//! is written in the same transaction as its rows.
//!
//! Subscriptions catch up by reading pages of the global log, then wait for
//! a `NOTIFY` (sent by each append at commit; one `LISTEN` connection per
//! store) or the poll interval, and read on from the last position they
//! delivered: one cursor, so no gap and no duplicate across the switch.

mod projection;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row};
use tokio::sync::{mpsc, oneshot, watch};
use wharf_log::{Clock, SystemClock};

use crate::error::{EventStoreError, Result};
use crate::store::{EventStore, EventSubscription, SubscriptionSender};
use crate::types::{
    AllSlice, AppendRequest, AppendResult, CurrentVersion, Direction, EventData, EventId,
    ExpectedVersion, GlobalFilter, Limits, Position, Query, ReadStream, RecordedEvent, StreamId,
    StreamInfo, StreamMetadata, SubscribeFrom,
};

/// Most events one global read returns.
const PAGE_MAX: usize = 10_000;
/// Most positions one global read scans (a filtered read with few matches
/// returns a short page instead of scanning the whole table).
const SCAN_WINDOW: i64 = 100_000;
/// Separator of an event's tags in the append's `unnest` (a control
/// character, which tags cannot contain).
const TAG_SEP: char = '\u{1f}';

/// Builder of a [`PgEventStore`]; see [`PgEventStore::builder`].
#[derive(Debug, Clone)]
pub struct PgEventStoreBuilder {
    source: Source,
    schema: String,
    max_connections: u32,
    limits: Limits,
    clock: Arc<dyn Clock>,
    poll_interval: Duration,
}

#[derive(Debug, Clone)]
enum Source {
    Url(String),
    Pool(PgPool),
}

impl PgEventStoreBuilder {
    /// The schema holding the store's tables, created if missing (default
    /// `wharf_es`; `[a-z_][a-z0-9_]*`, at most 48 bytes).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Connections of the pool the store opens (default 8; not used with
    /// [`PgEventStore::with_pool`]). One more connection LISTENs.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Size limits (default [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The clock that stamps events and ages them for `max_age` (default
    /// the system clock; tests pass a [`wharf_log::ManualClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How often an idle subscription looks for new events when no NOTIFY
    /// woke it (default 1 s; it matters only if a notification is lost,
    /// e.g. while the LISTEN connection reconnects).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d.max(Duration::from_millis(1));
        self
    }

    /// Connects, creates the schema and tables if missing, and starts
    /// listening for appends.
    ///
    /// # Errors
    /// [`EventStoreError::InvalidArgument`] for a bad schema name or limits
    /// out of range, [`EventStoreError::Unavailable`] when the server cannot
    /// be reached, [`EventStoreError::Storage`] when the tables cannot be
    /// created.
    pub async fn connect(self) -> Result<PgEventStore> {
        validate_schema(&self.schema)?;
        let l = self.limits;
        if l.max_tags_per_event > 255
            || l.max_event_bytes == 0
            || l.max_append_bytes > 128 * 1024 * 1024
            || l.max_events_per_append == 0
            || l.max_events_per_append > 100_000
        {
            return Err(EventStoreError::invalid(
                "limits",
                &format!("{l:?}"),
                "at most 255 tags, max event bytes at least 1, max append bytes at most 128 MiB, \
                 1 to 100000 events per append",
            ));
        }
        let (pool, owns_pool) = match self.source {
            Source::Pool(p) => (p, false),
            Source::Url(url) => (
                PgPoolOptions::new()
                    .max_connections(self.max_connections)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(&url)
                    .await
                    .map_err(db_err)?,
                true,
            ),
        };
        let sql = Sql::new(&self.schema);
        create_tables(&pool, &self.schema, &sql).await?;
        let mut listener = PgListener::connect_with(&pool).await.map_err(db_err)?;
        listener.listen(&sql.channel).await.map_err(db_err)?;
        let (wake, _) = watch::channel(Wake {
            seq: 0,
            closed: false,
        });
        let (writes, queued) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            pool,
            owns_pool,
            sql,
            limits: self.limits,
            clock: self.clock,
            poll_interval: self.poll_interval,
            wake,
            closed: AtomicBool::new(false),
            listener: std::sync::Mutex::new(None),
            writes,
        });
        tokio::spawn(write_loop(queued, Arc::downgrade(&inner)));
        let task = tokio::spawn(listen(listener, Arc::downgrade(&inner)));
        *inner
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
        Ok(PgEventStore { inner })
    }
}

fn validate_schema(name: &str) -> Result<()> {
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok_first || !ok_rest || name.len() > 48 {
        return Err(EventStoreError::invalid(
            "schema",
            name,
            "must match [a-z_][a-z0-9_]* and be at most 48 bytes",
        ));
    }
    Ok(())
}

/// The statements, with the schema filled in once.
#[derive(Debug)]
struct Sql {
    schema: String,
    channel: String,
    lock_head: String,
    head: String,
    lock_head_for_group: String,
    stream_row: String,
    stream_rows: String,
    insert_events: String,
    set_stream: String,
    read_stream: String,
    list_streams: String,
}

pub use projection::{PgProjection, PgReadModel};

const EVENT_COLUMNS: &str =
    "stream, position, version, timestamp_ms, id, event_type, schema_version, tags, metadata, payload";

impl Sql {
    fn new(s: &str) -> Sql {
        let channel = format!("wharf_es_{s}");
        Sql {
            schema: s.to_owned(),
            lock_head: format!(
                "UPDATE {s}.es_head SET next_position = next_position + $1 \
                 RETURNING next_position - $1"
            ),
            head: format!("SELECT next_position FROM {s}.es_head"),
            lock_head_for_group: format!("SELECT next_position FROM {s}.es_head FOR UPDATE"),
            stream_row: format!(
                "SELECT last_version, truncate_before, max_count, max_age_ms, soft_deleted, \
                 tombstoned FROM {s}.es_streams WHERE stream = $1"
            ),
            stream_rows: format!(
                "SELECT last_version, truncate_before, max_count, max_age_ms, soft_deleted, \
                 tombstoned, stream FROM {s}.es_streams WHERE stream = ANY($1)"
            ),
            insert_events: format!(
                "WITH ins AS (
                   INSERT INTO {s}.es_events
                     (position, stream, version, id, event_type, schema_version, tags, metadata,
                      payload, timestamp_ms)
                   SELECT u.po, u.st, u.ve, u.id, u.ty, u.sv, string_to_array(u.tg, chr(31)),
                          u.md, u.pl, $10
                   FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::uuid[], $5::text[],
                               $6::bigint[], $7::text[], $8::bytea[], $9::bytea[])
                        AS u(po, st, ve, id, ty, sv, tg, md, pl)
                 ), st AS (
                   INSERT INTO {s}.es_streams (stream, last_version)
                   SELECT * FROM unnest($11::text[], $12::bigint[])
                   ON CONFLICT (stream) DO UPDATE
                     SET last_version = EXCLUDED.last_version, soft_deleted = false
                 ), h AS (
                   UPDATE {s}.es_head SET next_position = $13
                 )
                 SELECT pg_notify('{channel}', '')"
            ),
            set_stream: format!(
                "INSERT INTO {s}.es_streams
                   (stream, last_version, truncate_before, max_count, max_age_ms, soft_deleted,
                    tombstoned)
                 VALUES ($1, NULL, $2, $3, $4, $5, $6)
                 ON CONFLICT (stream) DO UPDATE SET truncate_before = $2, max_count = $3,
                   max_age_ms = $4, soft_deleted = $5, tombstoned = $6"
            ),
            read_stream: format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.es_events \
                 WHERE stream = $1 AND version BETWEEN $2 AND $3 AND timestamp_ms >= $4 \
                 ORDER BY version"
            ),
            list_streams: format!(
                "SELECT stream FROM {s}.es_streams \
                 WHERE starts_with(stream, $1) AND ($2::text IS NULL OR stream > $2) \
                 ORDER BY stream LIMIT $3"
            ),
            channel,
        }
    }
}

async fn create_tables(pool: &PgPool, schema: &str, sql: &Sql) -> Result<()> {
    let s = &sql.schema;
    let ddl = format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.es_head (
           one boolean PRIMARY KEY DEFAULT true CHECK (one),
           next_position bigint NOT NULL);
         INSERT INTO {s}.es_head (one, next_position) VALUES (true, 0) ON CONFLICT DO NOTHING;
         CREATE TABLE IF NOT EXISTS {s}.es_streams (
           stream text COLLATE \"C\" PRIMARY KEY,
           last_version bigint,
           truncate_before bigint,
           max_count bigint,
           max_age_ms bigint,
           soft_deleted boolean NOT NULL DEFAULT false,
           tombstoned boolean NOT NULL DEFAULT false);
         CREATE TABLE IF NOT EXISTS {s}.es_events (
           position bigint PRIMARY KEY,
           stream text COLLATE \"C\" NOT NULL,
           version bigint NOT NULL,
           id uuid NOT NULL,
           event_type text NOT NULL,
           schema_version bigint NOT NULL,
           tags text[] NOT NULL,
           metadata bytea NOT NULL,
           payload bytea NOT NULL,
           timestamp_ms bigint NOT NULL,
           UNIQUE (stream, version));
         CREATE INDEX IF NOT EXISTS es_events_tags ON {s}.es_events USING gin (tags);"
    );
    // Two stores creating the same schema at once would race in the
    // catalog (CREATE … IF NOT EXISTS is not atomic): serialize on a lock
    // named after the schema (a validated identifier). One simple query
    // of many statements runs as one transaction (rolled back whole on an
    // error), which also holds the lock.
    let script = format!("SELECT pg_advisory_xact_lock(hashtext('wharf_es_{schema}')); {ddl}");
    sqlx::raw_sql(&script).execute(pool).await.map_err(db_err)?;
    Ok(())
}

/// Maps a database error: lost connections and a closed pool are
/// [`EventStoreError::Unavailable`], a full disk
/// [`EventStoreError::StorageFull`], the rest [`EventStoreError::Storage`].
fn db_err(e: sqlx::Error) -> EventStoreError {
    let code = match &e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    };
    let unavailable = matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    ) || code
        .as_deref()
        .is_some_and(|c| c.starts_with("08") || c.starts_with("57P"));
    if unavailable {
        EventStoreError::Unavailable {
            source: Box::new(e),
        }
    } else if code.as_deref() == Some("53100") {
        EventStoreError::StorageFull {
            source: Box::new(e),
        }
    } else {
        EventStoreError::Storage {
            source: Box::new(e),
        }
    }
}

fn corrupt(what: &'static str) -> EventStoreError {
    EventStoreError::Storage {
        source: what.into(),
    }
}

/// What subscriptions watch: a counter bumped on every NOTIFY, and whether
/// the store closed.
#[derive(Debug, Clone, Copy)]
struct Wake {
    seq: u64,
    closed: bool,
}

/// The event store on PostgreSQL: every operation of [`EventStore`] on
/// three tables, positions assigned in commit order (see the
/// [module docs](self) for how), subscriptions woken by `LISTEN/NOTIFY`.
///
/// Cloning is cheap and shares the store.
///
/// ```no_run
/// # async fn demo() -> Result<(), wharf_eventstore::EventStoreError> {
/// use wharf_eventstore::postgres::PgEventStore;
/// use wharf_eventstore::{EventData, EventStore, ExpectedVersion, StreamId};
///
/// let store = PgEventStore::builder("postgres://postgres@127.0.0.1:5432/test")
///     .schema("orders_es")
///     .connect()
///     .await?;
/// let order = StreamId::new("order-1")?;
/// store
///     .append(&order, ExpectedVersion::NoStream, vec![EventData::new("OrderPlaced", "{}")])
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    owns_pool: bool,
    sql: Sql,
    limits: Limits,
    clock: Arc<dyn Clock>,
    poll_interval: Duration,
    wake: watch::Sender<Wake>,
    closed: AtomicBool,
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Appends waiting for the writer task's next group commit.
    writes: mpsc::UnboundedSender<Pending>,
}

/// An append waiting for the writer task, and where its answer goes.
type Pending = (AppendRequest, oneshot::Sender<Result<AppendResult>>);

/// Most appends one group commit takes.
const MAX_GROUP: usize = 64;

/// The writer task: takes every append waiting (up to [`MAX_GROUP`]) and
/// commits them as one transaction, so concurrent appenders share one
/// commit (one WAL flush) instead of queueing on the head lock one commit
/// each. Ends when the store is dropped.
async fn write_loop(mut rx: mpsc::UnboundedReceiver<Pending>, store: std::sync::Weak<Inner>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.recv().await {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let Some(inner) = store.upgrade() else { return };
        inner.commit_group(&mut group).await;
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(h) = self.listener.get_mut().ok().and_then(Option::take) {
            h.abort();
        }
    }
}

/// Forwards NOTIFYs to the subscriptions until the store goes away.
async fn listen(mut listener: PgListener, store: std::sync::Weak<Inner>) {
    loop {
        let got = listener.recv().await;
        let Some(inner) = store.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        inner.wake.send_modify(|w| w.seq = w.seq.wrapping_add(1));
        let poll = inner.poll_interval;
        drop(inner);
        if got.is_err() {
            // Reconnects on the next recv; subscriptions poll meanwhile.
            tokio::time::sleep(poll).await;
        }
    }
}

/// A stream's row.
#[derive(Debug, Clone, Copy)]
struct StreamRow {
    version: CurrentVersion,
    metadata: StreamMetadata,
    soft_deleted: bool,
    tombstoned: bool,
}

fn to_i64(v: u64) -> i64 {
    // Every version and position was validated to be at most MAX_VERSION.
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| corrupt("a negative version or position in the tables"))
}

fn stream_row(row: &PgRow) -> Result<StreamRow> {
    let last: Option<i64> = row.try_get(0).map_err(db_err)?;
    let tb: Option<i64> = row.try_get(1).map_err(db_err)?;
    let mc: Option<i64> = row.try_get(2).map_err(db_err)?;
    let age: Option<i64> = row.try_get(3).map_err(db_err)?;
    let mut metadata = StreamMetadata::new();
    metadata.truncate_before = tb.map(to_u64).transpose()?;
    metadata.max_count = mc.map(to_u64).transpose()?;
    metadata.max_age = age.map(|ms| Duration::from_millis(ms.unsigned_abs()));
    Ok(StreamRow {
        version: match last {
            None => CurrentVersion::NoStream,
            Some(v) => CurrentVersion::Version(to_u64(v)?),
        },
        metadata,
        soft_deleted: row.try_get(4).map_err(db_err)?,
        tombstoned: row.try_get(5).map_err(db_err)?,
    })
}

/// Metadata pairs as bytes (values are free-form and may hold NUL, which a
/// PostgreSQL `text` cannot): per pair a u32 length and the name, a u32
/// length and the value, little-endian.
fn encode_metadata(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in pairs {
        for s in [n, v] {
            out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

fn decode_metadata(mut b: &[u8]) -> Result<Vec<(String, String)>> {
    let take = |b: &mut &[u8]| -> Result<String> {
        let bad = || corrupt("malformed event metadata");
        let len: [u8; 4] = b.get(..4).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
        let len = u32::from_le_bytes(len) as usize;
        let s = b.get(4..4 + len).ok_or_else(bad)?;
        let s = String::from_utf8(s.to_vec()).map_err(|_| bad())?;
        *b = &b[4 + len..];
        Ok(s)
    };
    let mut out = Vec::new();
    while !b.is_empty() {
        let n = take(&mut b)?;
        let v = take(&mut b)?;
        out.push((n, v));
    }
    Ok(out)
}

fn event_row(row: &PgRow) -> Result<RecordedEvent> {
    let stream: String = row.try_get(0).map_err(db_err)?;
    let stream = StreamId::new(stream).map_err(|_| corrupt("an invalid stream name stored"))?;
    let position: i64 = row.try_get(1).map_err(db_err)?;
    let version: i64 = row.try_get(2).map_err(db_err)?;
    let ts: i64 = row.try_get(3).map_err(db_err)?;
    let id: uuid::Uuid = row.try_get(4).map_err(db_err)?;
    let event_type: String = row.try_get(5).map_err(db_err)?;
    let sv: i64 = row.try_get(6).map_err(db_err)?;
    let tags: Vec<String> = row.try_get(7).map_err(db_err)?;
    let metadata: Vec<u8> = row.try_get(8).map_err(db_err)?;
    let payload: Vec<u8> = row.try_get(9).map_err(db_err)?;
    let mut data = EventData::new(event_type, payload)
        .with_id(EventId::from_bytes(*id.as_bytes()))
        .with_schema_version(
            u32::try_from(sv).map_err(|_| corrupt("a schema version out of range stored"))?,
        );
    data.tags = tags;
    data.metadata = decode_metadata(&metadata)?;
    Ok(RecordedEvent::new(
        stream,
        to_u64(version)?,
        Position(to_u64(position)?),
        ts,
        data,
    ))
}

/// Appends `(type filter, tag filter)` of `query` as an SQL condition on
/// `es_events` (an item with neither matches every event).
fn push_query(b: &mut QueryBuilder<'_, Postgres>, query: &Query) {
    b.push("(false");
    for item in query.items() {
        b.push(" OR (true");
        if !item.types.is_empty() {
            b.push(" AND event_type = ANY(");
            b.push_bind(item.types.clone());
            b.push(")");
        }
        if !item.tags.is_empty() {
            b.push(" AND tags @> ");
            b.push_bind(item.tags.clone());
            b.push("::text[]");
        }
        b.push(")");
    }
    b.push(")");
}

/// The accepted events of a group, column by column (for one `unnest`).
#[derive(Default)]
struct Columns<'a> {
    positions: Vec<i64>,
    streams: Vec<&'a str>,
    versions: Vec<i64>,
    ids: Vec<uuid::Uuid>,
    types: Vec<&'a str>,
    schema_versions: Vec<i64>,
    tags: Vec<String>,
    metadata: Vec<Vec<u8>>,
    payloads: Vec<&'a [u8]>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, req: &'a AppendRequest, position: u64, version: u64) {
        for (i, e) in req.events.iter().enumerate() {
            self.positions.push(to_i64(position + i as u64));
            self.streams.push(req.stream.as_str());
            self.versions.push(to_i64(version + i as u64));
            self.ids.push(uuid::Uuid::from_bytes(e.id.to_bytes()));
            self.types.push(e.event_type.as_str());
            self.schema_versions.push(i64::from(e.schema_version));
            let mut t = String::new();
            for (k, tag) in e.tags.iter().enumerate() {
                if k > 0 {
                    t.push(TAG_SEP);
                }
                let _ = write!(t, "{tag}");
            }
            self.tags.push(t);
            self.metadata.push(encode_metadata(&e.metadata));
            self.payloads.push(&e.payload[..]);
        }
    }
}

/// A write decided under the head lock.
enum Op<'a> {
    Metadata(&'a StreamId, StreamMetadata),
    Delete(&'a StreamId, ExpectedVersion),
    Tombstone(&'a StreamId, ExpectedVersion),
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(EventStoreError::Closed);
        }
        Ok(())
    }

    /// A database error, or `Closed` once the store was closed (its pool
    /// then refuses every call).
    fn err(&self, e: sqlx::Error) -> EventStoreError {
        if self.closed.load(Ordering::Acquire) {
            EventStoreError::Closed
        } else {
            db_err(e)
        }
    }

    /// Takes the head lock and `n` positions; the first is returned. Must be
    /// the transaction's first statement on the store's tables.
    async fn lock_head(&self, conn: &mut PgConnection, n: u64) -> Result<u64> {
        let base: i64 = sqlx::query_scalar(&self.sql.lock_head)
            .bind(to_i64(n))
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.err(e))?;
        to_u64(base)
    }

    async fn stream(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
    ) -> Result<Option<StreamRow>> {
        let row = sqlx::query(&self.sql.stream_row)
            .bind(stream.as_str())
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| self.err(e))?;
        row.as_ref().map(stream_row).transpose()
    }

    /// The append itself, on a connection inside a transaction the caller
    /// commits (or rolls back on error).
    async fn append_on(
        &self,
        conn: &mut PgConnection,
        req: &AppendRequest,
    ) -> Result<AppendResult> {
        req.validate(&self.limits)?;
        self.check_open()?;
        let mut results = self.write_group(conn, &[req]).await?;
        results.pop().expect("one result per append")
    }

    /// Decides the appends `reqs` in order — each on the latest committed
    /// state plus what its predecessors in `reqs` appended — and writes the
    /// accepted ones, on a connection inside a transaction: takes the head
    /// lock first (every later statement sees all committed writes), reads
    /// the streams' rows in one query, checks conditions (one query per
    /// conditional append, plus the group's own earlier events), then
    /// inserts every accepted event, updates the streams and the head and
    /// sends the NOTIFY in one statement.
    ///
    /// The outer error means a statement failed and the transaction is
    /// aborted; the inner ones are decisions (conflict, deleted stream),
    /// which write nothing.
    async fn write_group(
        &self,
        conn: &mut PgConnection,
        reqs: &[&AppendRequest],
    ) -> Result<Vec<Result<AppendResult>>> {
        let base: i64 = sqlx::query_scalar(&self.sql.lock_head_for_group)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.err(e))?;
        let base = to_u64(base)?;
        let names: Vec<&str> = reqs.iter().map(|r| r.stream.as_str()).collect();
        let rows = sqlx::query(&self.sql.stream_rows)
            .bind(&names)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.err(e))?;
        let mut streams: HashMap<String, StreamRow> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let name: String = row.try_get(6).map_err(db_err)?;
            streams.insert(name, stream_row(row)?);
        }
        let mut next = base;
        let mut results = Vec::with_capacity(reqs.len());
        // The accepted events, column by column, and each stream's new
        // last version.
        let mut cols = Columns::default();
        let mut accepted: Vec<(u64, &AppendRequest)> = Vec::new();
        let mut last_versions: HashMap<&str, u64> = HashMap::new();
        for req in reqs {
            match self.decide(conn, req, &streams, &accepted).await? {
                Err(e) => results.push(Err(e)),
                Ok(first) => {
                    let n = req.events.len() as u64;
                    cols.push(req, next, first);
                    accepted.push((next, req));
                    let st = streams
                        .entry(req.stream.as_str().to_owned())
                        .or_insert(StreamRow {
                            version: CurrentVersion::NoStream,
                            metadata: StreamMetadata::default(),
                            soft_deleted: false,
                            tombstoned: false,
                        });
                    st.version = CurrentVersion::Version(first + n - 1);
                    st.soft_deleted = false;
                    last_versions.insert(req.stream.as_str(), first + n - 1);
                    results.push(Ok(AppendResult {
                        first_version: first,
                        last_version: first + n - 1,
                        first_position: Position(next),
                        last_position: Position(next + n - 1),
                    }));
                    next += n;
                }
            }
        }
        if next > base {
            let (st_names, st_versions): (Vec<&str>, Vec<i64>) =
                last_versions.iter().map(|(s, v)| (*s, to_i64(*v))).unzip();
            sqlx::query(&self.sql.insert_events)
                .bind(cols.positions)
                .bind(cols.streams)
                .bind(cols.versions)
                .bind(cols.ids)
                .bind(cols.types)
                .bind(cols.schema_versions)
                .bind(cols.tags)
                .bind(cols.metadata)
                .bind(cols.payloads)
                .bind(self.clock.now_ms())
                .bind(st_names)
                .bind(st_versions)
                .bind(to_i64(next))
                .execute(&mut *conn)
                .await
                .map_err(|e| self.err(e))?;
        }
        Ok(results)
    }

    /// Decides one append of a group: the first version it gets, or the
    /// typed decision error. `streams` is the state so far, `accepted` the
    /// group's earlier accepted appends with their first positions.
    async fn decide(
        &self,
        conn: &mut PgConnection,
        req: &AppendRequest,
        streams: &HashMap<String, StreamRow>,
        accepted: &[(u64, &AppendRequest)],
    ) -> Result<Result<u64>> {
        let (current, soft_deleted) = match streams.get(req.stream.as_str()) {
            Some(r) if r.tombstoned => {
                return Ok(Err(EventStoreError::StreamDeleted {
                    stream: req.stream.clone(),
                }))
            }
            Some(r) => (r.version, r.soft_deleted),
            None => (CurrentVersion::NoStream, false),
        };
        if !req.expected.is_satisfied_by(current, soft_deleted) {
            return Ok(Err(EventStoreError::WrongExpectedVersion {
                stream: req.stream.clone(),
                expected: req.expected,
                actual: current,
            }));
        }
        if let Some(c) = &req.condition {
            if !c.query.items().is_empty() {
                // The group's own earlier events lie after every committed
                // one: a match among them is the latest conflict.
                let after = c.after.map(Position::value);
                let mut conflict = None;
                for (first, earlier) in accepted {
                    if earlier.stream.is_system() {
                        continue;
                    }
                    for (i, e) in earlier.events.iter().enumerate() {
                        let p = first + i as u64;
                        if after.is_none_or(|a| p > a) && c.query.matches(&e.event_type, &e.tags) {
                            conflict = Some(p);
                        }
                    }
                }
                if conflict.is_none() {
                    let mut b = QueryBuilder::new(format!(
                        "SELECT max(position) FROM {}.es_events WHERE position > ",
                        self.sql.schema
                    ));
                    b.push_bind(c.after.map_or(-1, |p| to_i64(p.value())));
                    b.push(" AND left(stream, 1) <> '$' AND ");
                    push_query(&mut b, &c.query);
                    let found: Option<i64> = b
                        .build_query_scalar()
                        .fetch_one(&mut *conn)
                        .await
                        .map_err(|e| self.err(e))?;
                    conflict = found.map(to_u64).transpose()?;
                }
                if let Some(p) = conflict {
                    return Ok(Err(EventStoreError::ConditionFailed {
                        after: c.after,
                        conflict: Position(p),
                    }));
                }
            }
        }
        let first = current.next();
        let n = req.events.len() as u64;
        if first
            .checked_add(n - 1)
            .is_none_or(|l| l > crate::MAX_VERSION)
        {
            return Ok(Err(EventStoreError::invalid(
                "version",
                &first.to_string(),
                "the stream's versions would exceed 9223372036854775807",
            )));
        }
        Ok(Ok(first))
    }

    async fn append(&self, req: &AppendRequest) -> Result<AppendResult> {
        req.validate(&self.limits)?;
        self.check_open()?;
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let r = self.append_on(&mut tx, req).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(r)
    }

    /// Commits a group of appends queued by concurrent callers (see
    /// [`write_loop`]) and answers each.
    async fn commit_group(&self, group: &mut Vec<Pending>) {
        if self.check_open().is_err() {
            for (_, reply) in group.drain(..) {
                let _ = reply.send(Err(EventStoreError::Closed));
            }
            return;
        }
        if group.len() > 1 {
            if let Some(results) = self.try_group(group).await {
                for ((_, reply), r) in group.drain(..).zip(results) {
                    let _ = reply.send(r);
                }
                return;
            }
            // Rolled back (a statement failed): nothing of the group was
            // stored; each append alone, so one bad append fails alone.
        }
        for (req, reply) in group.drain(..) {
            let r = self.append(&req).await;
            let _ = reply.send(r);
        }
    }

    /// Decides and inserts every append of `group` in one transaction under
    /// the head lock — each on the state its predecessors in the group left
    /// — and commits once. `None` when it was rolled back before the commit
    /// (nothing stored); a failed commit answers every append with its
    /// error (the outcome is then unknown, as for a lost reply).
    async fn try_group(&self, group: &[Pending]) -> Option<Vec<Result<AppendResult>>> {
        let mut tx = self.pool.begin().await.ok()?;
        let reqs: Vec<&AppendRequest> = group.iter().map(|(r, _)| r).collect();
        let results = self.write_group(&mut tx, &reqs).await.ok()?;
        if let Err(e) = tx.commit().await {
            let e = self.err(e);
            let unavailable = matches!(e, EventStoreError::Unavailable { .. });
            let closed = matches!(e, EventStoreError::Closed);
            let msg = e.to_string();
            return Some(
                group
                    .iter()
                    .map(|_| {
                        Err(if closed {
                            EventStoreError::Closed
                        } else if unavailable {
                            EventStoreError::Unavailable {
                                source: msg.clone().into(),
                            }
                        } else {
                            EventStoreError::Storage {
                                source: msg.clone().into(),
                            }
                        })
                    })
                    .collect(),
            );
        }
        Some(results)
    }

    /// Metadata, soft delete, tombstone: one position each, under the lock.
    async fn stream_op(&self, op: Op<'_>) -> Result<Position> {
        self.check_open()?;
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let base = self.lock_head(&mut tx, 1).await?;
        let stream = match op {
            Op::Metadata(s, _) | Op::Delete(s, _) | Op::Tombstone(s, _) => s,
        };
        let row = self.stream(&mut tx, stream).await?;
        let deleted = || EventStoreError::StreamDeleted {
            stream: stream.clone(),
        };
        let (current, soft_deleted, metadata) = match row {
            Some(r) if r.tombstoned => return Err(deleted()),
            Some(r) => (r.version, r.soft_deleted, r.metadata),
            None => (CurrentVersion::NoStream, false, StreamMetadata::default()),
        };
        let check = |expected: ExpectedVersion| {
            if expected.is_satisfied_by(current, soft_deleted) {
                Ok(())
            } else {
                Err(EventStoreError::WrongExpectedVersion {
                    stream: stream.clone(),
                    expected,
                    actual: current,
                })
            }
        };
        let (meta, soft, tomb) = match op {
            Op::Metadata(_, m) => (m, soft_deleted, false),
            Op::Delete(_, expected) => {
                if current == CurrentVersion::NoStream || soft_deleted {
                    return Err(EventStoreError::StreamNotFound {
                        stream: stream.clone(),
                    });
                }
                check(expected)?;
                let mut m = metadata;
                m.truncate_before = Some(current.next());
                (m, true, false)
            }
            Op::Tombstone(_, expected) => {
                check(expected)?;
                (metadata, soft_deleted, true)
            }
        };
        sqlx::query(&self.sql.set_stream)
            .bind(stream.as_str())
            .bind(meta.truncate_before.map(to_i64))
            .bind(meta.max_count.map(to_i64))
            .bind(
                meta.max_age
                    .map(|a| i64::try_from(a.as_millis()).unwrap_or(i64::MAX)),
            )
            .bind(soft)
            .bind(tomb)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(Position(base))
    }

    async fn head(&self) -> Result<u64> {
        let h: i64 = sqlx::query_scalar(&self.sql.head)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        to_u64(h)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>> {
        self.check_open()?;
        let options = options.validate()?;
        let mut conn = self.pool.acquire().await.map_err(|e| self.err(e))?;
        let not_found = || EventStoreError::StreamNotFound {
            stream: stream.clone(),
        };
        let row = self
            .stream(&mut conn, stream)
            .await?
            .ok_or_else(not_found)?;
        if row.tombstoned {
            return Err(EventStoreError::StreamDeleted {
                stream: stream.clone(),
            });
        }
        let last = match row.version {
            CurrentVersion::Version(v) if !row.soft_deleted => v,
            _ => return Err(not_found()),
        };
        let first = row.metadata.first_visible(last);
        let Some((lo, hi)) = options.bounds(first, last) else {
            return Ok(Vec::new());
        };
        let oldest = match row.metadata.max_age {
            Some(a) => self
                .clock
                .now_ms()
                .saturating_sub(i64::try_from(a.as_millis()).unwrap_or(i64::MAX)),
            None => i64::MIN,
        };
        let order = match options.direction {
            Direction::Forwards => "",
            Direction::Backwards => " DESC",
        };
        let limit = i64::try_from(options.max_count).unwrap_or(i64::MAX);
        let rows = sqlx::query(&format!("{}{order} LIMIT $5", self.sql.read_stream))
            .bind(stream.as_str())
            .bind(to_i64(lo))
            .bind(to_i64(hi))
            .bind(oldest)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter().map(event_row).collect()
    }

    /// One page of the global log from `from`: events below the head read
    /// first (all committed, see the module docs), at most `max_count`, at
    /// most [`SCAN_WINDOW`] positions scanned.
    async fn read_all(
        &self,
        from: u64,
        filter: &GlobalFilter,
        max_count: usize,
    ) -> Result<AllSlice> {
        let head = self.head().await?;
        if from >= head || max_count == 0 {
            return Ok(AllSlice {
                events: Vec::new(),
                next: Position(from),
                is_end: from >= head,
            });
        }
        let window_end = head.min(from.saturating_add(SCAN_WINDOW as u64));
        let want = max_count.min(PAGE_MAX);
        let mut b = QueryBuilder::new(format!(
            "SELECT {EVENT_COLUMNS} FROM {}.es_events WHERE position >= ",
            self.sql.schema
        ));
        b.push_bind(to_i64(from));
        b.push(" AND position < ");
        b.push_bind(to_i64(window_end));
        if !filter.includes_system() {
            b.push(" AND left(stream, 1) <> '$'");
        }
        if let Some(p) = filter.prefix() {
            b.push(" AND starts_with(stream, ");
            b.push_bind(p.to_owned());
            b.push(")");
        }
        if let Some(q) = filter.event_query() {
            b.push(" AND ");
            push_query(&mut b, q);
        }
        b.push(" ORDER BY position LIMIT ");
        b.push_bind(want as i64);
        let rows = b
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let events = rows.iter().map(event_row).collect::<Result<Vec<_>>>()?;
        let next = if events.len() < want {
            window_end
        } else {
            events.last().map_or(window_end, |e| e.position.value() + 1)
        };
        Ok(AllSlice {
            events,
            next: Position(next),
            is_end: next >= head,
        })
    }
}

/// The task behind a subscription: pages of the global log from `pos`,
/// then a wait for a NOTIFY (or the poll interval), and on from the last
/// position delivered.
async fn run_subscription(
    inner: std::sync::Weak<Inner>,
    mut pos: u64,
    filter: GlobalFilter,
    mut wake: watch::Receiver<Wake>,
    poll: Duration,
    tx: SubscriptionSender,
) {
    loop {
        if wake.borrow_and_update().closed {
            return;
        }
        loop {
            let Some(store) = inner.upgrade() else { return };
            if store.check_open().is_err() {
                // Closed (a pool the application owns stays usable).
                return;
            }
            let page = store.read_all(pos, &filter, 1000).await;
            drop(store);
            match page {
                Ok(slice) => {
                    pos = slice.next.value();
                    if !slice.events.is_empty() && tx.send(Ok(slice.events)).await.is_err() {
                        return;
                    }
                    if slice.is_end {
                        break;
                    }
                }
                Err(EventStoreError::Closed) => return,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        tokio::select! {
            changed = wake.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(poll) => {}
            () = tx.closed() => return,
        }
    }
}

impl PgEventStore {
    /// Starts building a store on the server at `url`
    /// (`postgres://user@host:port/db`).
    pub fn builder(url: impl Into<String>) -> PgEventStoreBuilder {
        PgEventStoreBuilder {
            source: Source::Url(url.into()),
            schema: "wharf_es".into(),
            max_connections: 8,
            limits: Limits::default(),
            clock: Arc::new(SystemClock),
            poll_interval: Duration::from_secs(1),
        }
    }

    /// Starts building a store on an existing pool (which
    /// [`close`](EventStore::close) then leaves open).
    pub fn with_pool(pool: PgPool) -> PgEventStoreBuilder {
        PgEventStoreBuilder {
            source: Source::Pool(pool),
            ..PgEventStore::builder(String::new())
        }
    }

    /// Connects to `url` with the defaults (schema `wharf_es`).
    ///
    /// # Errors
    /// As [`PgEventStoreBuilder::connect`].
    pub async fn connect(url: impl Into<String>) -> Result<PgEventStore> {
        PgEventStore::builder(url).connect().await
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema holding the store's tables.
    pub fn schema(&self) -> &str {
        &self.inner.sql.schema
    }

    /// Appends inside the caller's transaction: the events are stored (and
    /// subscribers notified) if and only if `tx` commits, together with
    /// whatever else it wrote. Until then `tx` holds the store's write lock
    /// (see the [module docs](self)): every other append waits, so keep the
    /// transaction short. A conflict or a deleted stream writes nothing and
    /// leaves the transaction usable; after any other error it is aborted
    /// and must be rolled back.
    ///
    /// # Errors
    /// As [`EventStore::append_with`].
    pub async fn append_in(
        &self,
        tx: &mut sqlx::Transaction<'_, Postgres>,
        request: &AppendRequest,
    ) -> Result<AppendResult> {
        self.inner.append_on(tx, request).await
    }
}

#[async_trait]
impl EventStore for PgEventStore {
    fn limits(&self) -> Limits {
        self.inner.limits
    }

    async fn append_with(&self, request: AppendRequest) -> Result<AppendResult> {
        request.validate(&self.inner.limits)?;
        self.inner.check_open()?;
        let (reply, answer) = oneshot::channel();
        self.inner
            .writes
            .send((request, reply))
            .map_err(|_| EventStoreError::Closed)?;
        answer.await.map_err(|_| EventStoreError::Closed)?
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>> {
        self.inner.read_stream(stream, options).await
    }

    async fn read_all(
        &self,
        from: Position,
        filter: &GlobalFilter,
        max_count: usize,
    ) -> Result<AllSlice> {
        self.inner.check_open()?;
        let from = from.validate("position")?;
        filter.validate()?;
        self.inner.read_all(from.value(), filter, max_count).await
    }

    async fn subscribe(
        &self,
        from: SubscribeFrom,
        filter: GlobalFilter,
    ) -> Result<EventSubscription> {
        self.inner.check_open()?;
        filter.validate()?;
        let wake = self.inner.wake.subscribe();
        let start = match from {
            SubscribeFrom::Start => 0,
            SubscribeFrom::Position(p) => p.validate("position")?.value(),
            SubscribeFrom::End => self.inner.head().await?,
        };
        let (tx, rx) = EventSubscription::channel(4);
        tokio::spawn(run_subscription(
            Arc::downgrade(&self.inner),
            start,
            filter,
            wake,
            self.inner.poll_interval,
            tx,
        ));
        Ok(EventSubscription::from_channel(rx))
    }

    async fn stream_info(&self, stream: &StreamId) -> Result<StreamInfo> {
        self.inner.check_open()?;
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(|e| self.inner.err(e))?;
        match self.inner.stream(&mut conn, stream).await? {
            Some(r) if r.tombstoned => Err(EventStoreError::StreamDeleted {
                stream: stream.clone(),
            }),
            Some(r) => Ok(StreamInfo::new(
                stream.clone(),
                r.version,
                r.metadata,
                r.soft_deleted,
            )),
            None => Ok(StreamInfo::new(
                stream.clone(),
                CurrentVersion::NoStream,
                StreamMetadata::default(),
                false,
            )),
        }
    }

    async fn set_stream_metadata(
        &self,
        stream: &StreamId,
        metadata: StreamMetadata,
    ) -> Result<Position> {
        metadata.validate()?;
        self.inner.stream_op(Op::Metadata(stream, metadata)).await
    }

    async fn delete_stream(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<Position> {
        let expected = expected.validate()?;
        self.inner.stream_op(Op::Delete(stream, expected)).await
    }

    async fn tombstone_stream(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<Position> {
        let expected = expected.validate()?;
        self.inner.stream_op(Op::Tombstone(stream, expected)).await
    }

    async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&StreamId>,
        max_count: usize,
    ) -> Result<Vec<StreamId>> {
        self.inner.check_open()?;
        let rows: Vec<String> = sqlx::query_scalar(&self.inner.sql.list_streams)
            .bind(prefix)
            .bind(after.map(StreamId::as_str))
            .bind(i64::try_from(max_count).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.inner.err(e))?;
        rows.into_iter()
            .map(|s| StreamId::new(s).map_err(|_| corrupt("an invalid stream name stored")))
            .collect()
    }

    async fn head(&self) -> Result<Position> {
        self.inner.check_open()?;
        Ok(Position(self.inner.head().await?))
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.wake.send_modify(|w| w.closed = true);
        if let Some(h) = self
            .inner
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            h.abort();
        }
        if self.inner.owns_pool {
            self.inner.pool.close().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_pairs_round_trip_with_nul_and_empty_values() {
        let pairs = vec![
            ("a".to_owned(), "x\0y".to_owned()),
            ("b".to_owned(), String::new()),
        ];
        assert_eq!(
            decode_metadata(&encode_metadata(&pairs)).expect("decode"),
            pairs
        );
        assert!(decode_metadata(&[1, 0, 0]).is_err());
        assert!(decode_metadata(&[9, 0, 0, 0, b'a']).is_err());
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(validate_schema("wharf_es_1").is_ok());
        for bad in ["", "1a", "A", "a-b", "a;drop", &"a".repeat(49)] {
            assert!(validate_schema(bad).is_err(), "{bad:?}");
        }
    }
}
