//! Topics: partitions backed by one `wharf-log` each, the key partitioner,
//! the dedup window, and wake-ups for consumers waiting on new data.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use tokio::sync::{oneshot, watch, Notify};
use wharf_core::{Error, MessageId, StartPosition};
use wharf_log::{
    BatchBuilder, Damage, IntegrityStats, Log, LogConfig, LogError, ReadBatches, RepairAction,
    RepairReport, Retention, SyncStats, Written,
};

use crate::codec::{from_record, partition_for_key};
use crate::config::TopicConfig;
use crate::error::log_error;

/// One partition: a log, read only up to its committed end.
pub(crate) struct Partition {
    log: Log,
    ttl_ms: Option<u64>,
    /// The end of what publishes that succeeded as a whole stored (see
    /// [`Commits`]): consumers, peeks and offsets never reach past it, so
    /// a batch of a publish that fails on another partition is never seen.
    committed: AtomicU64,
}

impl Partition {
    pub(crate) fn start_offset(&self) -> u64 {
        self.log.start_offset()
    }

    /// The committed end (the next offset a consumer can wait for).
    pub(crate) fn end_offset(&self) -> u64 {
        self.committed
            .load(Ordering::Acquire)
            .min(self.log.end_offset())
    }

    /// Bytes in the partition's segment files (the log's own running
    /// figure: no file is read or stat'ed). Includes bytes written but not
    /// yet synced; index files are not counted.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.log.size_bytes()
    }

    pub(crate) fn readable_end(&self) -> u64 {
        self.log.readable_end_offset().min(self.end_offset())
    }

    /// The committed end as recorded, not capped by the log's end.
    #[cfg(test)]
    pub(crate) fn committed_raw(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Reads whole batches from `from`, none at or past the committed end.
    pub(crate) fn read(
        &self,
        from: u64,
        max_bytes: usize,
    ) -> Result<ReadBatches, wharf_log::LogError> {
        let end = self.end_offset();
        let mut read = self.log.read(from, max_bytes)?;
        read.truncate_at(end);
        Ok(read)
    }

    pub(crate) fn ttl_ms(&self) -> Option<u64> {
        self.ttl_ms
    }

    /// Writes a batch, not yet committed (see [`Topic::write_publish`]).
    pub(crate) fn write(&self, batch: BatchBuilder) -> Result<Written, Error> {
        self.log.write_built(batch).map_err(log_error)
    }

    /// Waits until `w` is as durable as the topic promises.
    pub(crate) fn wait_durable(&self, w: &Written) -> Result<(), Error> {
        self.log.wait_durable(w).map_err(log_error)
    }

    pub(crate) fn close(&self) -> Result<(), Error> {
        self.log.close().map_err(log_error)
    }

    /// Deletes sealed segments past the topic's retention limits; returns
    /// how many.
    pub(crate) fn apply_retention(&self) -> Result<usize, Error> {
        self.log.apply_retention().map_err(log_error)
    }

    /// Damaged batches found in this partition and not repaired.
    pub(crate) fn damage(&self) -> Vec<Damage> {
        self.log.damage()
    }

    /// See [`Log::repair`].
    pub(crate) fn repair(
        &self,
        action: RepairAction,
        dry_run: bool,
    ) -> Result<RepairReport, LogError> {
        let r = self.log.repair(action, dry_run);
        // A truncating repair moves the end back; the committed end with it.
        self.committed
            .fetch_min(self.log.end_offset(), Ordering::AcqRel);
        r
    }

    /// Resolves where a new group starts in this partition.
    pub(crate) fn start_position(
        &self,
        start: StartPosition,
        topic: &str,
        partition: u32,
    ) -> Result<u64, Error> {
        let (lo, hi) = (self.start_offset(), self.end_offset());
        Ok(match start {
            StartPosition::Latest => hi,
            StartPosition::Offset(o) if (lo..=hi).contains(&o) => o,
            StartPosition::Offset(o) => {
                return Err(Error::InvalidOffset {
                    topic: topic.to_owned(),
                    partition,
                    offset: o,
                    start: lo,
                    end: hi,
                })
            }
            StartPosition::Time(t) => {
                let ms = i64::try_from(t.as_millis()).unwrap_or(i64::MAX);
                self.log
                    .offset_for_timestamp(ms)
                    .map_err(log_error)?
                    .filter(|&o| o < hi)
                    .unwrap_or(hi)
            }
            _ => lo,
        })
    }
}

fn rebuild_partition(
    p: &Partition,
    pid: u32,
    since: i64,
    now_ms: u64,
    window_ms: u64,
    dedup: &mut Dedup,
) -> Result<(), LogError> {
    let start = match p.log.offset_for_timestamp(since) {
        Ok(Some(o)) => o,
        Ok(None) => return Ok(()),
        // A damaged batch on the way: rebuild from the oldest offset then.
        Err(LogError::Corrupt { .. }) => p.start_offset(),
        Err(e) => return Err(e),
    };
    let mut off = start;
    let end = p.readable_end();
    while off < end {
        let batches = match p.read(off, 1024 * 1024) {
            Ok(b) => b,
            Err(LogError::Corrupt { .. }) => {
                match p.damage().iter().find(|d| d.offsets().contains(&off)) {
                    Some(d) => {
                        off = d.end_offset;
                        continue;
                    }
                    None => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        };
        if batches.is_empty() {
            break;
        }
        for rec in batches.records() {
            let rec = rec?;
            let o = rec.offset;
            if let Ok(m) = from_record(rec) {
                let at = m.timestamp().as_millis();
                dedup.stored(m.id(), pid, o, at.max(now_ms.saturating_sub(window_ms)));
            }
        }
        off = batches.next_offset();
    }
    Ok(())
}

/// Where a published id was stored, or that a publish of it is under way.
#[derive(Clone)]
enum Seen {
    /// Reserved by a publish in progress; `done` ends (its sender is
    /// dropped) once that publish has recorded its outcome. `index` is the
    /// id's first position in that publish's batch.
    InFlight {
        done: watch::Receiver<()>,
        index: usize,
    },
    Stored {
        partition: u32,
        offset: u64,
    },
}

/// Ids published within the dedup window, bounded by [`DEDUP_CAPACITY`].
///
/// Hashed with foldhash's keyed quality hasher rather than std's SipHash:
/// the window is on every publish's path, and SipHash was most of its
/// instructions. Ids are the client's, so the hash has a random seed per
/// process (no collisions chosen in advance).
#[derive(Default)]
pub(crate) struct Dedup {
    seen: HashMap<MessageId, Seen, foldhash::quality::RandomState>,
    order: VecDeque<(u64, MessageId)>,
}

/// Most ids a topic's dedup window remembers; older ones are forgotten first.
pub const DEDUP_CAPACITY: usize = 200_000;

/// What checking one message of a batch against the window found.
#[derive(Clone, Copy)]
pub(crate) enum DedupCheck {
    /// Reserved for this publish.
    New,
    /// The same id appears earlier in the batch, at this index.
    SameAs(usize),
    /// Stored before, here.
    Duplicate { partition: u32, offset: u64 },
}

impl Dedup {
    fn expire(&mut self, now_ms: u64, window_ms: u64) {
        while let Some(&(at, id)) = self.order.front() {
            if at.saturating_add(window_ms) > now_ms && self.order.len() <= DEDUP_CAPACITY {
                break;
            }
            self.order.pop_front();
            if let Entry::Occupied(e) = self.seen.entry(id) {
                if matches!(e.get(), Seen::Stored { .. }) {
                    e.remove();
                }
            }
        }
    }

    /// Checks every id of a batch and reserves the new ones for `owner`,
    /// all at once or not at all: when another publish has one of the ids
    /// in flight, nothing is reserved and its `done` is returned to wait
    /// on. A publish never holds a reservation while it waits for another,
    /// so two batches sharing ids in opposite orders cannot deadlock.
    pub(crate) fn reserve_batch(
        &mut self,
        len: usize,
        id_at: impl Fn(usize) -> MessageId,
        now_ms: u64,
        window_ms: u64,
        owner: &Reservation,
        out: &mut Vec<DedupCheck>,
    ) -> Result<(), watch::Receiver<()>> {
        self.expire(now_ms, window_ms);
        out.clear();
        for i in 0..len {
            let id = id_at(i);
            let check = match self.seen.entry(id) {
                Entry::Occupied(e) => match e.get() {
                    Seen::Stored { partition, offset } => DedupCheck::Duplicate {
                        partition: *partition,
                        offset: *offset,
                    },
                    Seen::InFlight { done, index } if done.same_channel(&owner.done) => {
                        DedupCheck::SameAs(*index)
                    }
                    Seen::InFlight { done, .. } => {
                        let done = done.clone();
                        // Undo this batch's reservations: nobody saw them (the
                        // lock is held), and none is held while waiting.
                        for (j, c) in out.iter().enumerate() {
                            if matches!(c, DedupCheck::New) {
                                self.seen.remove(&id_at(j));
                            }
                        }
                        out.clear();
                        return Err(done);
                    }
                },
                Entry::Vacant(e) => {
                    e.insert(Seen::InFlight {
                        done: owner.done.clone(),
                        index: i,
                    });
                    DedupCheck::New
                }
            };
            out.push(check);
        }
        Ok(())
    }

    pub(crate) fn stored(&mut self, id: MessageId, partition: u32, offset: u64, now_ms: u64) {
        self.seen.insert(id, Seen::Stored { partition, offset });
        self.order.push_back((now_ms, id));
    }

    /// Forgets `id`'s reservation if `owner` holds it.
    fn abandon(&mut self, id: MessageId, owner: &watch::Receiver<()>) {
        if let Entry::Occupied(e) = self.seen.entry(id) {
            if matches!(e.get(), Seen::InFlight { done, .. } if done.same_channel(owner)) {
                e.remove();
            }
        }
    }
}

/// A publish's reservation of its new ids in a topic's dedup window: a
/// guard. [`Reservation::finish`] records where the messages were stored;
/// whatever it has not recorded when the guard drops — the publish failed,
/// or its future was cancelled before its append started — is abandoned,
/// so a retry of those ids stores them. Dropping it wakes every publish
/// waiting on one of its ids.
pub(crate) struct Reservation {
    topic: Arc<Topic>,
    /// Batch index → the id reserved there (`None`: not reserved by us).
    ids: Vec<Option<MessageId>>,
    /// Ends when `_tx` drops with the guard, after the window is updated.
    done: watch::Receiver<()>,
    _tx: watch::Sender<()>,
}

impl Reservation {
    /// An empty reservation on `topic`'s window.
    pub(crate) fn new(topic: Arc<Topic>) -> Self {
        let (tx, done) = watch::channel(());
        Reservation {
            topic,
            ids: Vec::new(),
            done,
            _tx: tx,
        }
    }

    /// Reserves the batch's new ids (see [`Dedup::reserve_batch`]).
    pub(crate) fn reserve<S: wharf_core::PublishSource + ?Sized>(
        &mut self,
        msgs: &S,
        now_ms: u64,
        window_ms: u64,
        out: &mut Vec<DedupCheck>,
    ) -> Result<(), watch::Receiver<()>> {
        let topic = self.topic.clone();
        let mut dedup = topic.dedup.lock().unwrap_or_else(|p| p.into_inner());
        dedup.reserve_batch(msgs.len(), |i| msgs.id(i), now_ms, window_ms, self, out)?;
        self.ids = out
            .iter()
            .enumerate()
            .map(|(i, c)| matches!(c, DedupCheck::New).then(|| msgs.id(i)))
            .collect();
        Ok(())
    }

    /// Whether any id is reserved.
    pub(crate) fn is_empty(&self) -> bool {
        self.ids.iter().all(Option::is_none)
    }

    /// Records the messages at the given batch indexes as stored at their
    /// `(partition, offset)`; the rest are abandoned when the guard drops.
    pub(crate) fn finish(mut self, stored: impl Iterator<Item = (usize, u32, u64)>, now_ms: u64) {
        let topic = self.topic.clone();
        let mut dedup = topic.dedup.lock().unwrap_or_else(|p| p.into_inner());
        for (i, p, o) in stored {
            if let Some(id) = self.ids.get_mut(i).and_then(Option::take) {
                dedup.stored(id, p, o, now_ms);
            }
        }
        for id in self.ids.drain(..).flatten() {
            dedup.abandon(id, &self.done);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.is_empty() {
            return;
        }
        let mut dedup = self.topic.dedup.lock().unwrap_or_else(|p| p.into_inner());
        for id in self.ids.drain(..).flatten() {
            dedup.abandon(id, &self.done);
        }
    }
}

/// A topic and its partitions.
pub(crate) struct Topic {
    name: Arc<str>,
    dir: PathBuf,
    config: RwLock<TopicConfig>,
    partitions: RwLock<Arc<Vec<Arc<Partition>>>>,
    round_robin: AtomicU32,
    watchers: Mutex<Vec<Weak<Notify>>>,
    pub(crate) dedup: Mutex<Dedup>,
    /// Publishes in the order they wrote, until each is settled.
    commits: Mutex<Commits>,
    /// The broker's fsync and damage counters, shared by every partition's log.
    stats: LogStats,
    /// Partitions whose damage the topic's policy is skipping (or failed
    /// to skip: not tried again until a restart).
    auto_skipping: Mutex<std::collections::HashSet<u32>>,
}

/// The counters every partition's log of a broker shares, and the storage
/// seam the logs write through (the file system unless a test injected
/// faults through [`crate::BrokerBuilder::storage`]).
#[derive(Clone, Default)]
pub(crate) struct LogStats {
    pub sync: Arc<SyncStats>,
    pub integrity: Arc<IntegrityStats>,
    pub storage: Option<Arc<dyn wharf_log::Storage>>,
}

/// The publishes of one topic in the order they wrote their batches (one
/// per partition, all written under this lock, so this order is also the
/// order of the batches in every partition). A publish is settled as a
/// whole: committed — its batches become readable once every earlier
/// publish is settled too — or rolled back: each partition it wrote is
/// truncated at its batch, which also cuts every later publish's batch
/// there (those fail too, as nothing of theirs was acknowledged yet). So a
/// publish that returns an error leaves none of its messages readable,
/// and never a gap.
#[derive(Default)]
pub(crate) struct Commits {
    next_id: u64,
    queue: VecDeque<Pending>,
}

struct Pending {
    id: u64,
    /// (partition, base offset, next offset, cut by an earlier rollback).
    parts: Vec<(u32, u64, u64, bool)>,
    state: PendingState,
    done: Option<oneshot::Sender<Result<(), Error>>>,
}

enum PendingState {
    /// Written; its publisher has not settled it yet.
    Open,
    /// An earlier publish's rollback cut some of its batches; it rolls back
    /// the rest when its publisher settles it.
    Cut(Error),
    /// Succeeded: readable once it is the oldest.
    Committed,
    /// Rolled back.
    Failed(Error),
}

/// What a publish cut by an earlier failed one fails with: a full disk
/// stays a full disk (retryable), anything else a storage failure.
fn cut_error(cause: &Error) -> Error {
    let detail = format!("an earlier publish to the topic failed and was rolled back: {cause}");
    match cause {
        Error::StorageFull { backend, .. } => Error::StorageFull {
            backend,
            source: detail.into(),
        },
        _ => crate::error::storage_error("publish", detail),
    }
}

/// What [`Topic::write_publish`] wrote: its id, the receiver of its
/// outcome, `(partition, message indexes, write)` per batch written, and
/// the first write that failed (the publish then fails).
pub(crate) struct WrittenPublish {
    pub id: u64,
    pub outcome: oneshot::Receiver<Result<(), Error>>,
    pub written: Vec<(u32, Vec<usize>, Written)>,
    pub failed: Option<Error>,
}

impl Commits {
    /// Rolls back entry `i` (already `Failed`) and everything it cuts.
    fn roll_back(&mut self, i: usize, parts: &[Arc<Partition>]) {
        let mut work = vec![i];
        while let Some(i) = work.pop() {
            let cause = match &self.queue[i].state {
                PendingState::Failed(e) => cut_error(e),
                _ => continue,
            };
            let mut cut = Vec::new();
            for &(p, base, _, was_cut) in &self.queue[i].parts {
                if was_cut {
                    continue;
                }
                if let Some(part) = parts.get(p as usize) {
                    if let Err(e) = part.log.truncate(base) {
                        // The log failed: it refuses appends until reopened.
                        tracing::error!(partition = p, offset = base, error = %e, "rolling back a failed publish failed");
                    }
                }
                cut.push(p);
            }
            for j in i + 1..self.queue.len() {
                let later = &mut self.queue[j];
                let mut hit = false;
                for part in &mut later.parts {
                    if !part.3 && cut.contains(&part.0) {
                        part.3 = true;
                        hit = true;
                    }
                }
                if !hit {
                    continue;
                }
                match later.state {
                    PendingState::Open => later.state = PendingState::Cut(cut_error(&cause)),
                    PendingState::Committed => {
                        later.state = PendingState::Failed(cut_error(&cause));
                        work.push(j);
                    }
                    PendingState::Cut(_) | PendingState::Failed(_) => {}
                }
            }
        }
    }

    /// An operator's repair truncated `partition` to end at `end`: every
    /// publish not yet settled whose batch there reaches past `end` can no
    /// longer be stored whole, so it fails (and rolls back what it wrote
    /// elsewhere) instead of being acknowledged for removed offsets.
    fn cut_by_repair(&mut self, partition: u32, end: u64, parts: &[Arc<Partition>]) {
        let cause = || {
            crate::error::storage_error(
                "publish",
                format!(
                    "a repair truncated partition {partition} at offset {end} while this \
                     publish was in flight; nothing of it is stored, retry it"
                ),
            )
        };
        let mut failed = Vec::new();
        for (i, e) in self.queue.iter_mut().enumerate() {
            let mut hit = false;
            for part in &mut e.parts {
                if part.0 != partition || part.3 || part.2 <= end {
                    continue;
                }
                hit = true;
                // Wholly removed: nothing left to roll back there. A batch
                // the cut went through keeps `was_cut` false, so the
                // rollback truncates it at its base.
                if part.1 >= end {
                    part.3 = true;
                }
            }
            if !hit {
                continue;
            }
            match e.state {
                PendingState::Open => e.state = PendingState::Cut(cause()),
                PendingState::Committed => {
                    e.state = PendingState::Failed(cause());
                    failed.push(i);
                }
                PendingState::Cut(_) | PendingState::Failed(_) => {}
            }
        }
        for i in failed {
            self.roll_back(i, parts);
        }
        self.resolve(parts);
    }

    /// Pops the settled publishes at the head: committed ones become
    /// readable, and every popped publisher gets its outcome.
    fn resolve(&mut self, parts: &[Arc<Partition>]) {
        while let Some(head) = self.queue.front() {
            if matches!(head.state, PendingState::Open | PendingState::Cut(_)) {
                return;
            }
            let Some(mut head) = self.queue.pop_front() else {
                return;
            };
            let outcome = match std::mem::replace(&mut head.state, PendingState::Open) {
                PendingState::Failed(e) => Err(e),
                _ => {
                    for &(p, _, next, _) in &head.parts {
                        if let Some(part) = parts.get(p as usize) {
                            part.committed.fetch_max(next, Ordering::AcqRel);
                        }
                    }
                    Ok(())
                }
            };
            if let Some(tx) = head.done.take() {
                // A publisher that went away needs no answer.
                let _ = tx.send(outcome);
            }
        }
    }
}

fn log_config(cfg: &TopicConfig, stats: &LogStats) -> Result<LogConfig, Error> {
    let mut builder = LogConfig::builder();
    if let Some(storage) = &stats.storage {
        builder = builder.storage(Arc::clone(storage));
    }
    builder
        .sync_stats(Arc::clone(&stats.sync))
        .integrity_stats(Arc::clone(&stats.integrity))
        .durability(cfg.durability.to_log())
        .segment_max_bytes(cfg.segment_bytes)
        .max_batch_bytes(
            cfg.max_message_bytes
                .saturating_mul(2)
                .max(16 * 1024 * 1024),
        )
        .retention(Retention {
            max_bytes: cfg.retention_bytes,
            max_age: cfg.retention_ms.map(std::time::Duration::from_millis),
        })
        .build()
        .map_err(log_error)
}

fn open_partition(
    dir: &Path,
    i: u32,
    cfg: &TopicConfig,
    stats: &LogStats,
) -> Result<Arc<Partition>, Error> {
    let log = Log::open(dir.join(i.to_string()), log_config(cfg, stats)?).map_err(log_error)?;
    // Everything stored when the log opens was committed (a rolled-back
    // publish was truncated before its error was returned).
    let committed = AtomicU64::new(log.end_offset());
    Ok(Arc::new(Partition {
        log,
        ttl_ms: cfg.ttl_ms,
        committed,
    }))
}

/// Partitions opened (or made) at once by one thread; more are opened by
/// [`OPEN_THREADS`] threads side by side, so a topic of thousands of
/// partitions waits for its files' fsyncs in parallel rather than one after
/// another (2,783 partitions took 6–10 s on one thread here, under load).
const OPEN_ALONE: u32 = 16;
const OPEN_THREADS: u32 = 8;

/// Opens partitions `0..cfg.partitions` under `dir`, in index order; on an
/// error, the ones opened are closed again (dropped) and the first error
/// is returned.
fn open_partitions(
    dir: &Path,
    cfg: &TopicConfig,
    stats: &LogStats,
) -> Result<Vec<Arc<Partition>>, Error> {
    let n = cfg.partitions;
    if n <= OPEN_ALONE {
        return (0..n).map(|i| open_partition(dir, i, cfg, stats)).collect();
    }
    let threads = OPEN_THREADS.min(n);
    let mut opened: Vec<Vec<Result<Arc<Partition>, Error>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..n)
                        .step_by(threads as usize)
                        .map(|i| open_partition(dir, i, cfg, stats))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    // Thread t opened t, t + threads, …: interleave back into index order.
    let mut iters: Vec<_> = opened.iter_mut().map(|v| v.drain(..)).collect();
    let mut parts = Vec::with_capacity(n as usize);
    for i in 0..n {
        let r = iters[(i % threads) as usize]
            .next()
            .expect("each thread opened its share");
        parts.push(r?);
    }
    Ok(parts)
}

impl Topic {
    /// Opens (creating if needed) the topic's partitions under `dir`; their
    /// logs record fsync durations and damage in `stats`.
    pub(crate) fn open(
        name: &str,
        dir: PathBuf,
        cfg: TopicConfig,
        stats: LogStats,
    ) -> Result<Topic, Error> {
        let parts = open_partitions(&dir, &cfg, &stats)?;
        Ok(Topic {
            name: name.into(),
            dir,
            config: RwLock::new(cfg),
            partitions: RwLock::new(Arc::new(parts)),
            round_robin: AtomicU32::new(0),
            watchers: Mutex::new(Vec::new()),
            auto_skipping: Mutex::new(std::collections::HashSet::new()),
            dedup: Mutex::new(Dedup::default()),
            commits: Mutex::new(Commits::default()),
            stats,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn name_arc(&self) -> Arc<str> {
        self.name.clone()
    }

    pub(crate) fn config(&self) -> TopicConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn partitions(&self) -> Arc<Vec<Arc<Partition>>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Raises the partition count to `n` (never lowers it).
    pub(crate) fn grow(&self, n: u32) -> Result<TopicConfig, Error> {
        let mut cfg = self.config.write().unwrap_or_else(|p| p.into_inner());
        let mut parts = self.partitions.write().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Arc<Partition>> = parts.as_ref().clone();
        for i in cfg.partitions..n {
            v.push(open_partition(&self.dir, i, &cfg, &self.stats)?);
        }
        cfg.partitions = cfg.partitions.max(n);
        *parts = Arc::new(v);
        Ok(cfg.clone())
    }

    fn commits(&self) -> std::sync::MutexGuard<'_, Commits> {
        self.commits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes one publish's batches, `(partition, message indexes, batch)`,
    /// in the topic's commit order and registers the publish; none of it is
    /// readable until it is settled ([`Topic::settle`]). Stops at the first
    /// write that fails.
    pub(crate) fn write_publish(
        &self,
        batches: Vec<(u32, Vec<usize>, BatchBuilder)>,
    ) -> WrittenPublish {
        let parts = self.partitions();
        let mut c = self.commits();
        let id = c.next_id;
        c.next_id += 1;
        let mut written = Vec::with_capacity(batches.len());
        let mut failed = None;
        for (p, idx, batch) in batches {
            let r = match parts.get(p as usize) {
                Some(part) => part.write(batch),
                None => Err(crate::error::storage_error("publish", "no such partition")),
            };
            match r {
                Ok(w) => written.push((p, idx, w)),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        c.queue.push_back(Pending {
            id,
            parts: written
                .iter()
                .map(|(p, _, w)| (*p, w.info.base_offset, w.info.last_offset + 1, false))
                .collect(),
            state: PendingState::Open,
            done: Some(tx),
        });
        WrittenPublish {
            id,
            outcome: rx,
            written,
            failed,
        }
    }

    /// Settles publish `id` as committed if nothing cut it, without any
    /// I/O; false when it needs [`Topic::settle`] (an earlier publish's
    /// rollback cut it, so the rest of it must be rolled back).
    pub(crate) fn try_commit(&self, id: u64) -> bool {
        let parts = self.partitions();
        let mut c = self.commits();
        let Some(e) = c.queue.iter_mut().find(|e| e.id == id) else {
            return true;
        };
        if !matches!(e.state, PendingState::Open) {
            return false;
        }
        e.state = PendingState::Committed;
        c.resolve(&parts);
        true
    }

    /// Settles publish `id` with `outcome`: committed, or rolled back
    /// (truncating the partitions it wrote — blocking I/O) when it failed
    /// or an earlier rollback cut it.
    pub(crate) fn settle(&self, id: u64, outcome: Result<(), Error>) {
        let parts = self.partitions();
        let mut c = self.commits();
        let Some(i) = c.queue.iter().position(|e| e.id == id) else {
            return;
        };
        let outcome = match std::mem::replace(&mut c.queue[i].state, PendingState::Open) {
            PendingState::Cut(e) => Err(e),
            _ => outcome,
        };
        match outcome {
            Ok(()) => c.queue[i].state = PendingState::Committed,
            Err(e) => {
                c.queue[i].state = PendingState::Failed(e);
                c.roll_back(i, &parts);
            }
        }
        c.resolve(&parts);
    }

    /// Repairs `partition` (see [`Log::repair`]). A truncation runs under
    /// the topic's commit order, so no publish in flight is acknowledged
    /// for offsets it removed: those fail instead
    /// ([`Commits::cut_by_repair`]). Blocking I/O.
    pub(crate) fn repair(
        &self,
        partition: u32,
        p: &Partition,
        action: RepairAction,
        dry_run: bool,
    ) -> Result<RepairReport, LogError> {
        if dry_run || !matches!(action, RepairAction::TruncateAt(_)) {
            return p.repair(action, dry_run);
        }
        let parts = self.partitions();
        let mut c = self.commits();
        let r = p.repair(action, dry_run);
        c.cut_by_repair(partition, p.log.end_offset(), &parts);
        r
    }

    /// The partition for a message: by key hash, round-robin without a key.
    pub(crate) fn partition_for(&self, key: Option<&[u8]>, partitions: u32) -> u32 {
        match key {
            Some(k) => partition_for_key(k, partitions),
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % partitions.max(1),
        }
    }

    pub(crate) fn watch(&self, n: &Arc<Notify>) {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|x| x.strong_count() > 0);
        w.push(Arc::downgrade(n));
    }

    /// A consumer ran into a damaged batch in `partition`. With the
    /// topic's `skip_damaged_batches` policy it is skipped on a blocking
    /// thread (never under the caller's locks) and consumers are woken;
    /// otherwise the partition waits for an operator's repair.
    pub(crate) fn on_damage(self: &Arc<Self>, partition: u32) {
        if !self.config().skip_damaged_batches {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self
            .auto_skipping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(partition)
        {
            return;
        }
        let t = Arc::clone(self);
        rt.spawn_blocking(move || {
            let Some(p) = t.partitions().get(partition as usize).cloned() else {
                return;
            };
            match p.repair(RepairAction::SkipBatch, false) {
                Ok(r) => {
                    tracing::warn!(
                        topic = %t.name,
                        partition,
                        lost_from = r.lost.start,
                        lost_to = r.lost.end,
                        "the topic's skip_damaged_batches policy skipped a damaged batch"
                    );
                    t.auto_skipping
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&partition);
                }
                Err(e) => tracing::error!(
                    topic = %t.name,
                    partition,
                    error = %e,
                    "the skip_damaged_batches policy could not skip a damaged batch; repair it by hand"
                ),
            }
            t.wake();
        });
    }

    /// Wakes every consumer watching the topic (new data is readable).
    pub(crate) fn wake(&self) {
        let w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        for n in w.iter().filter_map(Weak::upgrade) {
            n.notify_one();
        }
    }

    /// Rebuilds the dedup window from the messages stored in the last
    /// `window_ms`. A damaged batch in a partition is stepped over (its ids
    /// are unknown; the damage is logged and reported by the log), so one
    /// damaged partition never stops the broker from opening.
    pub(crate) fn rebuild_dedup(&self, now_ms: u64, window_ms: u64) {
        let since = i64::try_from(now_ms.saturating_sub(window_ms)).unwrap_or(0);
        let mut dedup = self.dedup.lock().unwrap_or_else(|p| p.into_inner());
        for (i, p) in self.partitions().iter().enumerate() {
            let pid = u32::try_from(i).expect("partition count fits u32");
            if let Err(e) = rebuild_partition(p, pid, since, now_ms, window_ms, &mut dedup) {
                tracing::warn!(
                    topic = %self.name,
                    partition = pid,
                    error = %e,
                    "dedup window of this partition not rebuilt past a read error"
                );
            }
        }
    }

    /// Forgets the dedup entries of messages at or past `from` in
    /// `partition` (a truncation removed them, so a retry must store again).
    pub(crate) fn forget_dedup_from(&self, partition: u32, from: u64) {
        let mut dedup = self.dedup.lock().unwrap_or_else(|p| p.into_inner());
        dedup.seen.retain(|_, s| {
            !matches!(s, Seen::Stored { partition: p, offset } if *p == partition && *offset >= from)
        });
    }

    pub(crate) fn close(&self) -> Result<(), Error> {
        for p in self.partitions().iter() {
            p.close()?;
        }
        Ok(())
    }

    /// Closes every partition's log without syncing anything: the topic's
    /// files are removed next ([`wharf_log::Log::abandon`]).
    pub(crate) fn abandon(&self) {
        for p in self.partitions().iter() {
            p.log.abandon();
        }
    }
}
