//! [`EmbeddedStore`]: the event store in-process, on one `wharf-log` log.
//!
//! Every event is one log record and its global position is the record's
//! offset; an append of many events is one log batch (one CRC, so a crash
//! keeps all of it or none). Appends are decided and written under one
//! lock — expected version and condition checked against the index, the
//! batch handed to the log (under `Always` that queues it for the next
//! group commit), the index updated — and then each appender kicks the
//! store's sync thread and waits, outside the lock and without a thread of
//! its own, for a sync round that covers its write ([`Syncer`]), so
//! concurrent appenders share one `fdatasync`. Readers see only what the
//! log has synced. Subscribers are woken by the sync thread after each
//! round, so an append whose caller was cancelled during that wait still
//! reaches them.
//!
//! A failed write or sync makes the log cut its unsynced tail back; the
//! index follows (`Inner::resync`) before the next decision, and an append
//! written right after such a cut, whose decision may have counted cut
//! events, is truncated and decided again.

mod codec;
mod index;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::watch;
use wharf_log::batch::BatchBuilder;
use wharf_log::{Clock, Durability, Log, LogConfig, RecordRef, Storage, SystemClock, Written};

use crate::embedded::codec::{Kind, Malformed};
use crate::embedded::index::{BadRecord, Index};
use crate::error::{EventStoreError, Result};
use crate::store::{EventStore, EventSubscription};
use crate::types::{
    AllSlice, AppendRequest, AppendResult, CurrentVersion, Direction, ExpectedVersion,
    GlobalFilter, Limits, Position, ReadStream, RecordedEvent, StreamId, StreamInfo,
    StreamMetadata, SubscribeFrom,
};

/// Bytes a global read or a subscription reads from the log at a time.
const SCAN_CHUNK: usize = 1024 * 1024;
/// Bytes a stream read reads at a time where its events lie close together.
const STREAM_CHUNK: usize = 256 * 1024;
/// Bytes a filtered global read scans at most before returning a page.
const SCAN_LIMIT: usize = 16 * 1024 * 1024;
/// Versions per index lookup when a stream read filters by age.
const AGE_CHUNK: usize = 1024;

/// Builder of an [`EmbeddedStore`]; see [`EmbeddedStore::builder`].
#[derive(Debug, Clone)]
pub struct EmbeddedStoreBuilder {
    limits: Limits,
    durability: Durability,
    clock: Arc<dyn Clock>,
    storage: Option<Arc<dyn Storage>>,
    segment_max_bytes: u64,
}

impl Default for EmbeddedStoreBuilder {
    fn default() -> Self {
        EmbeddedStoreBuilder {
            limits: Limits::default(),
            durability: Durability::Always,
            clock: Arc::new(SystemClock),
            storage: None,
            segment_max_bytes: 256 * 1024 * 1024,
        }
    }
}

impl EmbeddedStoreBuilder {
    /// Size limits (default [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// When appends are synced (default `Always`: an append returns once an
    /// `fdatasync` covers it). `Never` and `Interval` acknowledge earlier
    /// and may lose the last acknowledged appends in a crash of the machine
    /// (not of the process); a failed write under them fails the store
    /// (the log cannot cut back what readers may have seen).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The clock that stamps events and ages them for `max_age` (default
    /// the system clock; tests pass a [`wharf_log::ManualClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The storage seam of the log (default the file system; tests inject
    /// faults with [`wharf_log::SimStorage`]).
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Size at which the log rolls to a new segment file (default 256 MiB).
    pub fn segment_max_bytes(mut self, bytes: u64) -> Self {
        self.segment_max_bytes = bytes;
        self
    }

    /// Opens (creating if needed) the store in `dir`, rebuilding the index
    /// from the log.
    ///
    /// # Errors
    /// [`EventStoreError::InvalidArgument`] for limits out of range,
    /// [`EventStoreError::Storage`] when the log cannot be opened or holds
    /// a record that is not a well-formed event of consecutive version.
    pub async fn open(self, dir: impl AsRef<Path>) -> Result<EmbeddedStore> {
        self.open_at(dir.as_ref().to_path_buf(), None).await
    }

    /// Opens a store in a new temporary directory, deleted when the store
    /// is dropped.
    ///
    /// # Errors
    /// As [`EmbeddedStoreBuilder::open`].
    pub async fn temporary(self) -> Result<EmbeddedStore> {
        let tmp = tempfile::tempdir().map_err(|e| EventStoreError::Storage {
            source: Box::new(e),
        })?;
        self.open_at(tmp.path().to_path_buf(), Some(tmp)).await
    }

    /// Opens a store whose log lives in memory ([`wharf_log::SimStorage`]):
    /// nothing touches the disk and nothing survives the store. For tests
    /// and examples.
    ///
    /// # Errors
    /// As [`EmbeddedStoreBuilder::open`].
    pub async fn in_memory(mut self) -> Result<EmbeddedStore> {
        self.storage = Some(Arc::new(wharf_log::SimStorage::new()));
        self.open_at(PathBuf::from("/wharf-eventstore-in-memory"), None)
            .await
    }

    async fn open_at(self, dir: PathBuf, tmp: Option<tempfile::TempDir>) -> Result<EmbeddedStore> {
        let l = self.limits;
        if l.max_tags_per_event > 255 {
            return Err(EventStoreError::invalid(
                "max tags per event",
                &l.max_tags_per_event.to_string(),
                "must be at most 255",
            ));
        }
        if l.max_event_bytes == 0 || l.max_append_bytes > 128 * 1024 * 1024 {
            return Err(EventStoreError::invalid(
                "limits",
                &format!("{l:?}"),
                "max event bytes at least 1, max append bytes at most 128 MiB",
            ));
        }
        if l.max_events_per_append == 0 || l.max_events_per_append > 100_000 {
            return Err(EventStoreError::invalid(
                "max events per append",
                &l.max_events_per_append.to_string(),
                "must be between 1 and 100000",
            ));
        }
        // Room for the largest append: its bytes plus per-event overhead
        // (record framing, envelope, a stream name of up to 255 bytes).
        let max_batch = l.max_append_bytes + l.max_events_per_append * 400 + 4096;
        let mut cfg = LogConfig::builder()
            .durability(self.durability)
            .clock(Arc::clone(&self.clock))
            .segment_max_bytes(self.segment_max_bytes)
            .max_batch_bytes(max_batch);
        if let Some(s) = self.storage {
            cfg = cfg.storage(s);
        }
        let cfg = cfg.build()?;
        let durability = self.durability;
        let (log, index) = tokio::task::spawn_blocking(move || -> Result<(Log, Index)> {
            let log = Log::open(&dir, cfg)?;
            let index = rebuild(&log)?;
            Ok((log, index))
        })
        .await
        .map_err(join_error)??;
        let end = log.readable_end_offset();
        let (commits, _) = watch::channel(Commit { end, closed: false });
        let log = Arc::new(log);
        let syncer = (durability == Durability::Always)
            .then(|| Syncer::start(Arc::clone(&log), commits.clone()))
            .transpose()?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                log,
                syncer,
                index: Mutex::new(index),
                clock: self.clock,
                limits: self.limits,
                commits,
                closed: AtomicBool::new(false),
                _tmp: tmp,
            }),
        })
    }
}

fn join_error(e: tokio::task::JoinError) -> EventStoreError {
    EventStoreError::Storage {
        source: Box::new(e),
    }
}

fn malformed(m: Malformed) -> EventStoreError {
    EventStoreError::Storage {
        source: Box::new(m),
    }
}

/// Reads the whole log into a fresh index.
fn rebuild(log: &Log) -> Result<Index> {
    let mut index = Index::new(log.start_offset());
    let end = log.readable_end_offset();
    let mut pos = log.start_offset();
    while pos < end {
        let rb = log.read(pos, 4 * SCAN_CHUNK)?;
        if rb.is_empty() {
            break;
        }
        rb.for_each_record(|r| -> Result<()> {
            index.skip_to(r.offset);
            index_record(&mut index, &r)
        })?;
        pos = rb.next_offset();
        index.skip_to(pos);
    }
    Ok(index)
}

fn index_record(index: &mut Index, r: &RecordRef<'_>) -> Result<()> {
    let (env, _) = codec::envelope(r).map_err(malformed)?;
    let res = match env.kind {
        Kind::Event => index.push_event(env.stream, env.version, env.event_type, env.tags()),
        kind => {
            let meta = codec::decode_metadata(r).map_err(malformed)?;
            index.push_stream_record(env.stream, kind, meta)
        }
    };
    res.map_err(|e| {
        malformed(Malformed {
            position: r.offset,
            what: match e {
                BadRecord::StreamName => "invalid stream name",
                BadRecord::Version { .. } => "stream version does not follow the previous one",
            },
        })
    })
}

/// Tells subscribers the log's readable end moved.
fn notify(log: &Log, commits: &watch::Sender<Commit>) {
    let end = log.readable_end_offset();
    commits.send_if_modified(|c| {
        if end > c.end {
            c.end = end;
            true
        } else {
            false
        }
    });
}

/// Under `Durability::Always`, one thread per store runs the log's group
/// commit for every appender: an append writes, kicks it, and waits
/// (without a thread of its own) for a round's tick to find its write
/// durable ([`Log::try_durable`]). One thread wake-up per round and one
/// watch send waking the waiting tasks, instead of a blocking task per
/// append parked on the log's group commit (with 64 writers on 2 cores
/// that handoff cost more than the fsync: store 34.5 k appends/s against
/// 84.8 k for the bare log in one run). The thread also tells subscribers
/// after each round, so an append whose caller went away still wakes them.
#[derive(Debug)]
struct Syncer {
    /// (kicked since the last round started, stop).
    state: Mutex<(bool, bool)>,
    wake: Condvar,
    rounds: watch::Sender<u64>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Syncer {
    fn start(log: Arc<Log>, commits: watch::Sender<Commit>) -> Result<Arc<Syncer>> {
        let (rounds, _) = watch::channel(0);
        let syncer = Arc::new(Syncer {
            state: Mutex::new((false, false)),
            wake: Condvar::new(),
            rounds,
            thread: Mutex::new(None),
        });
        let me = Arc::clone(&syncer);
        let handle = std::thread::Builder::new()
            .name("wharf-es-sync".into())
            .spawn(move || me.run(&log, &commits))
            .map_err(|e| EventStoreError::Storage {
                source: Box::new(e),
            })?;
        *relock(&syncer.thread) = Some(handle);
        Ok(syncer)
    }

    fn run(&self, log: &Log, commits: &watch::Sender<Commit>) {
        loop {
            {
                let mut st = relock(&self.state);
                while !st.0 && !st.1 {
                    st = self
                        .wake
                        .wait(st)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                if !st.0 {
                    break; // stopped with nothing left to sync
                }
                st.0 = false;
            }
            // Everything written before the kick is covered; a failure is
            // each waiter's to find (`try_durable`: cut, failed, closed).
            if let Err(e) = log.sync_written() {
                tracing::debug!(error = %e, "event store sync round failed");
            }
            notify(log, commits);
            self.rounds.send_modify(|n| *n += 1);
        }
    }

    fn kick(&self) {
        let mut st = relock(&self.state);
        if !st.0 {
            st.0 = true;
            self.wake.notify_one();
        }
    }

    /// Ends the thread after any round kicked before, and waits for it.
    fn stop(&self) {
        relock(&self.state).1 = true;
        self.wake.notify_one();
        if let Some(h) = relock(&self.thread).take() {
            let _ = h.join();
        }
    }
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What subscriptions watch: the readable end of the log, and whether the
/// store closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Commit {
    end: u64,
    closed: bool,
}

/// The embedded event store: in-process, durable, zero setup — opened from
/// a directory like [`wharf_broker::Broker::open`](https://docs.rs/wharf-broker).
///
/// Cloning is cheap and shares the store. See the crate docs for an
/// example and [`EventStore`] for the operations.
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    log: Arc<Log>,
    /// Under `Always`: the thread whose sync rounds appends wait for.
    syncer: Option<Arc<Syncer>>,
    /// The writer lock and the index it decides on.
    index: Mutex<Index>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    commits: watch::Sender<Commit>,
    closed: AtomicBool,
    _tmp: Option<tempfile::TempDir>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A store dropped without `close`: end the sync thread (after any
        // round kicked before), so it lets go of the log and its files.
        if let Some(s) = &self.syncer {
            s.stop();
        }
    }
}

/// A write decided under the lock.
enum Op<'a> {
    Append(&'a AppendRequest),
    Metadata(&'a StreamId, StreamMetadata),
    Delete(&'a StreamId, ExpectedVersion),
    Tombstone(&'a StreamId, ExpectedVersion),
}

enum Outcome {
    Appended(AppendResult),
    Record(Position),
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir` with the defaults.
    ///
    /// # Errors
    /// As [`EmbeddedStoreBuilder::open`].
    pub async fn open(dir: impl AsRef<Path>) -> Result<EmbeddedStore> {
        EmbeddedStore::builder().open(dir).await
    }

    /// A store in a temporary directory, deleted when the store is dropped.
    ///
    /// # Errors
    /// As [`EmbeddedStoreBuilder::open`].
    pub async fn temporary() -> Result<EmbeddedStore> {
        EmbeddedStore::builder().temporary().await
    }

    /// A store in memory (see [`EmbeddedStoreBuilder::in_memory`]).
    ///
    /// # Errors
    /// As [`EmbeddedStoreBuilder::open`].
    pub async fn in_memory() -> Result<EmbeddedStore> {
        EmbeddedStore::builder().in_memory().await
    }

    /// Starts building a store with non-default settings.
    pub fn builder() -> EmbeddedStoreBuilder {
        EmbeddedStoreBuilder::default()
    }

    /// How many group-commit `fdatasync`s the log ran so far (each covers
    /// every append waiting at the time).
    pub fn sync_count(&self) -> u64 {
        self.inner.log.sync_count()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Index> {
        // The index is only changed by complete pushes and truncations
        // (no await, no I/O in between), so a panic elsewhere leaves it whole.
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(EventStoreError::Closed);
        }
        Ok(())
    }

    /// Drops index entries the log cut back (a failed write or sync).
    fn resync(&self, index: &mut Index) {
        let end = self.log.end_offset();
        if end < index.next_position() {
            index.truncate(end);
        }
    }

    /// Decides `op` on the latest index and writes it to the log, under the
    /// lock; the caller waits for durability afterwards.
    fn decide_and_write(&self, op: &Op<'_>) -> Result<(Written, Outcome)> {
        let mut scratch = Vec::with_capacity(128);
        let mut index = self.lock();
        loop {
            self.resync(&mut index);
            let now = self.clock.now_ms();
            let (batch, outcome) = self.decide(&index, op, now, &mut scratch)?;
            let expected_base = index.next_position();
            let written = self.log.write_built(batch)?;
            let base = written.info.base_offset;
            if base != expected_base {
                // A cut-back landed between our decision and our write: the
                // decision may have counted events that are gone. Take the
                // write back and decide again.
                self.log.truncate(base)?;
                index.truncate(base);
                continue;
            }
            let outcome = match outcome {
                Outcome::Appended(mut r) => {
                    let Op::Append(req) = op else {
                        unreachable!("an append outcome comes from an append")
                    };
                    for (i, e) in req.events.iter().enumerate() {
                        index
                            .push_event(
                                req.stream.as_str(),
                                r.first_version + i as u64,
                                &e.event_type,
                                e.tags.iter().map(String::as_str),
                            )
                            .expect("the version was decided on this index");
                    }
                    r.first_position = Position(base);
                    r.last_position = Position(written.info.last_offset);
                    Outcome::Appended(r)
                }
                Outcome::Record(_) => {
                    let (stream, kind, meta) = self.record_of(&index, op);
                    index
                        .push_stream_record(stream.as_str(), kind, meta)
                        .expect("a valid stream id");
                    Outcome::Record(Position(base))
                }
            };
            return Ok((written, outcome));
        }
    }

    /// The stream record `op` writes (not for appends).
    fn record_of(&self, index: &Index, op: &Op<'_>) -> (StreamId, Kind, StreamMetadata) {
        let current = |s: &StreamId| index.stream(s.as_str()).map(|st| st.view(u64::MAX));
        match op {
            Op::Append(_) => unreachable!("appends write events"),
            Op::Metadata(s, m) => ((*s).clone(), Kind::Metadata, *m),
            Op::Delete(s, _) => {
                let v = current(s).expect("checked by decide");
                let mut m = v.metadata;
                m.truncate_before = Some(v.version.next());
                ((*s).clone(), Kind::SoftDelete, m)
            }
            Op::Tombstone(s, _) => {
                let m = current(s).map(|v| v.metadata).unwrap_or_default();
                ((*s).clone(), Kind::Tombstone, m)
            }
        }
    }

    /// Checks `op` against `index` and encodes its batch.
    fn decide(
        &self,
        index: &Index,
        op: &Op<'_>,
        now: i64,
        scratch: &mut Vec<u8>,
    ) -> Result<(BatchBuilder, Outcome)> {
        let stream = match op {
            Op::Append(r) => &r.stream,
            Op::Metadata(s, _) | Op::Delete(s, _) | Op::Tombstone(s, _) => *s,
        };
        let view = index.stream(stream.as_str()).map(|s| s.view(u64::MAX));
        let (current, soft_deleted) = match &view {
            Some(v) if v.tombstoned => {
                return Err(EventStoreError::StreamDeleted {
                    stream: stream.clone(),
                })
            }
            Some(v) => (v.version, v.soft_deleted),
            None => (CurrentVersion::NoStream, false),
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
        match op {
            Op::Append(req) => {
                check(req.expected)?;
                if let Some(c) = &req.condition {
                    if let Some(p) = index.find_conflict(&c.query, c.after.map(Position::value)) {
                        return Err(EventStoreError::ConditionFailed {
                            after: c.after,
                            conflict: Position(p),
                        });
                    }
                }
                let first = current.next();
                let cap = req
                    .events
                    .iter()
                    .map(|e| codec::event_len_bound(stream, e))
                    .sum();
                let mut batch = BatchBuilder::with_capacity(cap);
                for (i, e) in req.events.iter().enumerate() {
                    codec::push_event(&mut batch, scratch, stream, first + i as u64, now, e);
                }
                let n = req.events.len() as u64;
                Ok((
                    batch,
                    Outcome::Appended(AppendResult {
                        first_version: first,
                        last_version: first + n - 1,
                        first_position: Position(0),
                        last_position: Position(0),
                    }),
                ))
            }
            Op::Metadata(..) | Op::Delete(..) | Op::Tombstone(..) => {
                match op {
                    Op::Delete(_, expected) => {
                        if current == CurrentVersion::NoStream || soft_deleted {
                            return Err(EventStoreError::StreamNotFound {
                                stream: stream.clone(),
                            });
                        }
                        check(*expected)?;
                    }
                    Op::Tombstone(_, expected) => check(*expected)?,
                    _ => {}
                }
                let (s, kind, meta) = self.record_of(index, op);
                let mut batch = BatchBuilder::with_capacity(256);
                codec::push_stream_record(&mut batch, &s, kind, now, &meta);
                Ok((batch, Outcome::Record(Position(0))))
            }
        }
    }

    /// Decides, writes, waits for durability, and tells subscribers.
    ///
    /// # Cancel safety
    /// A caller dropped while it waits leaves its append written: the sync
    /// thread still makes it durable and tells subscribers.
    async fn commit(self: &Arc<Self>, op: Op<'_>) -> Result<Outcome> {
        self.check_open()?;
        let (written, outcome) = self.decide_and_write(&op)?;
        let Some(syncer) = &self.syncer else {
            notify(&self.log, &self.commits);
            return Ok(outcome);
        };
        // Watch the rounds before kicking, so none is missed.
        let mut rounds = syncer.rounds.subscribe();
        syncer.kick();
        let durable = loop {
            if let Some(r) = self.log.try_durable(&written) {
                break r;
            }
            if rounds.changed().await.is_err() {
                // The sync thread ended (the store closed): a last look.
                break self
                    .log
                    .try_durable(&written)
                    .unwrap_or(Err(wharf_log::LogError::Closed));
            }
        };
        if let Err(e) = durable {
            let mut index = self.lock();
            self.resync(&mut index);
            return Err(e.into());
        }
        Ok(outcome)
    }

    /// The view of `stream` readers get (below the readable end).
    fn reader_view(&self, stream: &StreamId) -> Result<(index::StreamView, u64)> {
        let end = self.log.readable_end_offset();
        let index = self.lock();
        let view = index
            .stream(stream.as_str())
            .map(|s| s.view(end))
            .ok_or_else(|| EventStoreError::StreamNotFound {
                stream: stream.clone(),
            })?;
        Ok((view, end))
    }

    fn read_stream(&self, stream: &StreamId, options: ReadStream) -> Result<Vec<RecordedEvent>> {
        self.check_open()?;
        let options = options.validate()?;
        let (view, _) = self.reader_view(stream)?;
        if view.tombstoned {
            return Err(EventStoreError::StreamDeleted {
                stream: stream.clone(),
            });
        }
        let last = match view.version {
            CurrentVersion::Version(v) if !view.soft_deleted => v,
            _ => {
                return Err(EventStoreError::StreamNotFound {
                    stream: stream.clone(),
                })
            }
        };
        let first = view.metadata.first_visible(last);
        let Some((lo, hi)) = options.bounds(first, last) else {
            return Ok(Vec::new());
        };
        let in_scope = hi - lo + 1;
        let want = options
            .max_count
            .min(usize::try_from(in_scope).unwrap_or(usize::MAX));
        let by_age = view.metadata.max_age.is_some();
        let now = self.clock.now_ms();
        let mut out = Vec::with_capacity(if by_age { want.min(AGE_CHUNK) } else { want });
        // Versions still to look at: `lo..=hi`, walked in read order.
        let (mut lo, mut hi) = (lo, hi);
        let mut done = false;
        while !done && out.len() < want {
            let need = want - out.len();
            let take = if by_age { AGE_CHUNK.min(need) } else { need } as u64;
            let take = take.min(hi - lo + 1);
            let (a, b) = match options.direction {
                Direction::Forwards => (lo, lo + take - 1),
                Direction::Backwards => (hi + 1 - take, hi),
            };
            done = a == lo && b == hi;
            if !done {
                match options.direction {
                    Direction::Forwards => lo = b + 1,
                    Direction::Backwards => hi = a - 1,
                }
            }
            let versions: Vec<u64> = (a..=b).collect();
            let positions = {
                let index = self.lock();
                index
                    .stream(stream.as_str())
                    .expect("a stream stays in the index once it has events")
                    .positions_of(&versions)
            };
            let mut events = read_positions(&self.log, &positions, stream)?;
            if by_age {
                events.retain(|e| view.metadata.is_fresh(e.timestamp_ms, now));
            }
            if options.direction == Direction::Backwards {
                events.reverse();
            }
            out.extend(events.into_iter().take(need));
        }
        Ok(out)
    }
}

/// Reads the events at `positions` (ascending) of `stream`.
fn read_positions(log: &Log, positions: &[u64], stream: &StreamId) -> Result<Vec<RecordedEvent>> {
    let mut out = Vec::with_capacity(positions.len());
    let mut i = 0;
    while i < positions.len() {
        // Events next to each other in the log (appended together, or by a
        // lone writer) are read in big chunks; scattered ones a batch at a
        // time.
        let ahead = positions[(i + 64).min(positions.len() - 1)] - positions[i];
        let dense = ahead <= 128;
        let rb = log.read(positions[i], if dense { STREAM_CHUNK } else { 1 })?;
        let before = i;
        rb.for_each_record(|r| -> Result<()> {
            if i < positions.len() && r.offset == positions[i] {
                out.push(codec::decode_event(&r, Some(stream)).map_err(malformed)?);
                i += 1;
            }
            Ok(())
        })?;
        if i == before {
            return Err(malformed(Malformed {
                position: positions[i],
                what: "an indexed event is missing from the log",
            }));
        }
    }
    Ok(out)
}

/// One page of the global log from `from` (see [`EventStore::read_all`]).
fn read_all(log: &Log, from: u64, filter: &GlobalFilter, max_count: usize) -> Result<AllSlice> {
    scan(log, from, filter, max_count, SCAN_LIMIT)
}

/// Reads the global log from `from` until `max_count` events pass `filter`,
/// about `scan_limit` bytes were read, or the readable end.
fn scan(
    log: &Log,
    from: u64,
    filter: &GlobalFilter,
    max_count: usize,
    scan_limit: usize,
) -> Result<AllSlice> {
    let end = log.readable_end_offset();
    let mut pos = from.max(log.start_offset());
    let mut events = Vec::with_capacity(max_count.min(8192));
    let mut scanned = 0usize;
    let mut last_stream: Option<StreamId> = None;
    enum Stop {
        Full,
        Err(EventStoreError),
    }
    impl From<wharf_log::LogError> for Stop {
        fn from(e: wharf_log::LogError) -> Stop {
            Stop::Err(e.into())
        }
    }
    while pos < end && events.len() < max_count && scanned < scan_limit {
        let rb = log.read(pos, SCAN_CHUNK)?;
        if rb.is_empty() {
            break;
        }
        scanned += rb.total_bytes();
        let r = rb.for_each_record(|r| -> Result<(), Stop> {
            if events.len() >= max_count {
                return Err(Stop::Full);
            }
            pos = r.offset + 1;
            let (env, id) = codec::envelope(&r).map_err(|m| Stop::Err(malformed(m)))?;
            if env.kind != Kind::Event || !filter.matches_stream(env.stream) {
                return Ok(());
            }
            if let Some(q) = filter.event_query() {
                let tags: Vec<&str> = env.tags().collect();
                if !q.matches(env.event_type, &tags) {
                    return Ok(());
                }
            }
            let e = codec::decode_event_with(&r, &env, id, last_stream.as_ref())
                .map_err(|m| Stop::Err(malformed(m)))?;
            if last_stream.as_ref() != Some(&e.stream) {
                last_stream = Some(e.stream.clone());
            }
            events.push(e);
            Ok(())
        });
        match r {
            Ok(()) => pos = pos.max(rb.next_offset()),
            Err(Stop::Full) => break,
            Err(Stop::Err(e)) => return Err(e),
        }
    }
    Ok(AllSlice {
        events,
        next: Position(pos.max(from)),
        is_end: pos >= end,
    })
}

/// The task behind a subscription: catch up from `pos`, then follow the
/// commits. One cursor over the log, so the switch to live has no gap and
/// no duplicate.
async fn run_subscription(
    log: Arc<Log>,
    mut pos: u64,
    filter: GlobalFilter,
    mut commits: watch::Receiver<Commit>,
    tx: crate::store::SubscriptionSender,
) {
    loop {
        let seen = *commits.borrow_and_update();
        if seen.closed {
            return;
        }
        loop {
            // One log read per batch: every event it holds is handed over,
            // none is read twice.
            match scan(&log, pos, &filter, usize::MAX, 1) {
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
        if pos >= seen.end {
            tokio::select! {
                changed = commits.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
        }
    }
}

#[async_trait]
impl EventStore for EmbeddedStore {
    fn limits(&self) -> Limits {
        self.inner.limits
    }

    async fn append_with(&self, request: AppendRequest) -> Result<AppendResult> {
        request.validate(&self.inner.limits)?;
        match self.inner.commit(Op::Append(&request)).await? {
            Outcome::Appended(r) => Ok(r),
            Outcome::Record(_) => unreachable!("an append appends"),
        }
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>> {
        self.inner.read_stream(stream, options)
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
        read_all(&self.inner.log, from.value(), filter, max_count)
    }

    async fn subscribe(
        &self,
        from: SubscribeFrom,
        filter: GlobalFilter,
    ) -> Result<EventSubscription> {
        self.inner.check_open()?;
        filter.validate()?;
        let commits = self.inner.commits.subscribe();
        let start = match from {
            SubscribeFrom::Start => 0,
            SubscribeFrom::Position(p) => p.validate("position")?.value(),
            SubscribeFrom::End => self.inner.log.readable_end_offset(),
        };
        let (tx, rx) = EventSubscription::channel(4);
        tokio::spawn(run_subscription(
            Arc::clone(&self.inner.log),
            start,
            filter,
            commits,
            tx,
        ));
        Ok(EventSubscription::from_channel(rx))
    }

    async fn stream_info(&self, stream: &StreamId) -> Result<StreamInfo> {
        self.inner.check_open()?;
        match self.inner.reader_view(stream) {
            Ok((v, _)) if v.tombstoned => Err(EventStoreError::StreamDeleted {
                stream: stream.clone(),
            }),
            Ok((v, _)) => Ok(StreamInfo::new(
                stream.clone(),
                v.version,
                v.metadata,
                v.soft_deleted,
            )),
            Err(EventStoreError::StreamNotFound { .. }) => Ok(StreamInfo::new(
                stream.clone(),
                CurrentVersion::NoStream,
                StreamMetadata::default(),
                false,
            )),
            Err(e) => Err(e),
        }
    }

    async fn set_stream_metadata(
        &self,
        stream: &StreamId,
        metadata: StreamMetadata,
    ) -> Result<Position> {
        metadata.validate()?;
        record_position(self.inner.commit(Op::Metadata(stream, metadata)).await?)
    }

    async fn delete_stream(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<Position> {
        let expected = expected.validate()?;
        record_position(self.inner.commit(Op::Delete(stream, expected)).await?)
    }

    async fn tombstone_stream(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<Position> {
        let expected = expected.validate()?;
        record_position(self.inner.commit(Op::Tombstone(stream, expected)).await?)
    }

    async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&StreamId>,
        max_count: usize,
    ) -> Result<Vec<StreamId>> {
        self.inner.check_open()?;
        let end = self.inner.log.readable_end_offset();
        let index = self.inner.lock();
        Ok(index.list_streams(prefix, after.map(StreamId::as_str), max_count, end))
    }

    async fn head(&self) -> Result<Position> {
        self.inner.check_open()?;
        Ok(Position(self.inner.log.readable_end_offset()))
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.commits.send_modify(|c| c.closed = true);
        let log = Arc::clone(&self.inner.log);
        let syncer = self.inner.syncer.clone();
        tokio::task::spawn_blocking(move || {
            // Appends kicked before closing get their round first.
            if let Some(s) = &syncer {
                s.stop();
            }
            let closed = log.close();
            // An append written before the close but kicked after the
            // thread ended waits for a tick: the close synced it (or
            // failed it), so tell it to look again.
            if let Some(s) = syncer {
                s.rounds.send_modify(|n| *n += 1);
            }
            closed
        })
        .await
        .map_err(join_error)??;
        Ok(())
    }
}

fn record_position(o: Outcome) -> Result<Position> {
    match o {
        Outcome::Record(p) => Ok(p),
        Outcome::Appended(_) => unreachable!("a stream record is not an append"),
    }
}
