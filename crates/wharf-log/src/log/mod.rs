//! [`Log`]: open/recovery, append with group commit, reads, roll,
//! retention, truncation and clean close. Locks, always taken in this
//! order: the writer mutex (appends, roll, truncate, retention, close) →
//! the segment list → one segment's state → the group-commit state.
//! Readers take only the segment list (briefly) and a segment's state.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::batch::{self, Batch, BatchBuilder, BatchHeader, EncodedBatch, HEADER_LEN};
use crate::commit::GroupCommit;
use crate::config::{Durability, LogConfig};
use crate::damage::{Damage, RepairAction, RepairReport};
use crate::error::{CorruptKind, IoOp, LogError};
use crate::index::{CleanMarker, SegmentIndex};
use crate::read::ReadBatches;
use crate::record::Record;
use crate::segment::{
    find_resume, index_name, log_name, parse_name, scan, scan_resync, time_index_name, Damaged,
    FullScan, Segment,
};
use crate::stats::{timed, SyncStats};
use crate::storage::{read_exact_at, write_all_at, Storage, StorageFile};

mod maintenance;
mod reader;
mod recovery;
mod repair;

/// Name of the clean-shutdown marker file.
pub(crate) const MARKER_NAME: &str = "clean.shutdown";
const MARKER_TMP: &str = "clean.shutdown.tmp";

/// Offsets assigned to an appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Offset of the last record.
    pub last_offset: u64,
}

/// A batch written by [`Log::write_built`], not yet known durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The offsets assigned.
    pub info: AppendInfo,
    /// Bytes written by this log up to and including the batch.
    lsn: u64,
}

/// A crash-safe, segmented, append-only log of record batches.
///
/// All methods take `&self`; the log is `Send + Sync` and meant to be
/// shared (e.g. in an `Arc`) between appenders and readers. Appends are
/// serialised internally; readers never wait for an fsync.
///
/// Dropping the log closes it (best effort); call [`Log::close`] to see
/// errors.
#[derive(Debug)]
pub struct Log {
    inner: Arc<Inner>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Writer {
    active: Arc<Segment>,
    /// Bytes ever written by this process (a log sequence number).
    lsn: u64,
    /// Bumped by truncation, so a sync that raced it publishes nothing.
    epoch: u64,
    closed: bool,
    /// Under `Always`, small batches are queued here and written with one
    /// `pwrite` by the group-commit leader just before its `fdatasync`
    /// (fewer syscalls per record when many appenders share a sync).
    pending: Vec<u8>,
    /// File position of `pending[0]` in the active segment.
    pending_pos: u64,
    /// The LSN the active segment's visible (under `Always`: synced)
    /// prefix ends at; a cut back discards the LSNs after it.
    visible_lsn: u64,
}

/// Most cut-back LSN ranges remembered (a waiter is woken when its range is
/// cut, so only an append between its write and its wait needs one).
const MAX_CUTS: usize = 1024;

/// Batches at least this large are written at once even under `Always`.
const DIRECT_WRITE_BYTES: usize = 32 * 1024;

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    config: LogConfig,
    storage: Arc<dyn Storage>,
    writer: Mutex<Writer>,
    segments: RwLock<Vec<Arc<Segment>>>,
    sync: GroupCommit,
    next_offset: AtomicU64,
    failed: OnceLock<io::ErrorKind>,
    /// LSN ranges `(lo, hi]` of appends cut back after a failed write or
    /// sync, with the cause: their waiters get [`LogError::Discarded`].
    cuts: Mutex<std::collections::VecDeque<(u64, u64, io::ErrorKind)>>,
    closed: AtomicBool,
    stop: Mutex<bool>,
    stop_cv: Condvar,
    /// Held shared by reads and exclusively while truncation rewrites a
    /// segment in place, so a read never sees a half-rewritten batch.
    rewrite: RwLock<()>,
    /// Damaged batches found (by recovery or a read) and not yet repaired,
    /// by offset; `has_damage` lets reads skip the lock when there are none.
    damage: Mutex<Vec<Damage>>,
    has_damage: AtomicBool,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, recovering from a crash
    /// if the last shutdown was not clean.
    ///
    /// After a clean [`Log::close`] only index files and the marker are
    /// read. Otherwise the last segment is scanned batch by batch: a torn
    /// or corrupt tail is truncated (and logged), unless valid batches
    /// follow the damage: then it is a damaged batch of possibly
    /// acknowledged data, recorded in [`Log::damage`] (reads report it
    /// until [`Log::repair`]) while the rest of the log opens and serves.
    ///
    /// ```
    /// use wharf_log::{Log, LogConfig, Record};
    /// let dir = tempfile::tempdir()?;
    /// let log = Log::open(dir.path(), LogConfig::default())?;
    /// let info = log.append(&[Record::new(1, "hello")])?;
    /// assert_eq!(info.base_offset, 0);
    /// log.close()?;
    /// let log = Log::open(dir.path(), LogConfig::default())?;
    /// assert_eq!(log.end_offset(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`LogError::Io`] for file-system failures, [`LogError::Corrupt`]
    /// when sealed segments do not line up (a segment file missing).
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log, LogError> {
        let inner = Arc::new(Inner::open(dir.as_ref(), config)?);
        let flusher = match inner.config.durability {
            Durability::Interval(every) => {
                let i = Arc::clone(&inner);
                Some(std::thread::spawn(move || flusher_loop(&i, every)))
            }
            _ => None,
        };
        Ok(Log {
            inner,
            flusher: Mutex::new(flusher),
        })
    }

    /// Appends `records` as one batch and returns the offsets assigned.
    ///
    /// With [`Durability::Always`] this returns only after an `fdatasync`
    /// covers the batch; concurrent callers share one `fdatasync`.
    ///
    /// # Errors
    /// [`LogError::EmptyBatch`], [`LogError::BatchTooLarge`],
    /// [`LogError::Io`] when the write or sync fails and
    /// [`LogError::Discarded`] when another append's failure cut this one:
    /// the batch is not stored, the log cut its unacknowledged tail and
    /// goes on (retry once the cause passes, see
    /// [`LogError::is_storage_full`]); [`LogError::Poisoned`] once the log
    /// failed for good, [`LogError::Closed`].
    pub fn append(&self, records: &[Record]) -> Result<AppendInfo, LogError> {
        let cfg = &self.inner.config;
        let batch = batch::encode(records, cfg.compression, cfg.max_batch_bytes)?;
        self.write(batch)
    }

    /// Appends the records of `batch` (encoded by the caller, see
    /// [`BatchBuilder`]) as one batch; otherwise the same as
    /// [`Log::append`].
    ///
    /// # Errors
    /// As [`Log::append`].
    pub fn append_built(&self, batch: BatchBuilder) -> Result<AppendInfo, LogError> {
        let cfg = &self.inner.config;
        self.write(batch.finish(cfg.compression, cfg.max_batch_bytes)?)
    }

    /// Writes `batch` (see [`BatchBuilder`]) like [`Log::append_built`]
    /// but returns without waiting for durability: under `Always` call
    /// [`Log::wait_durable`] with the result before acknowledging it (the
    /// records are readable only once synced); under the other policies
    /// the records are readable at once. For callers that write to several
    /// logs first and wait for all of them together.
    ///
    /// # Errors
    /// As [`Log::append`] (never a sync failure).
    pub fn write_built(&self, batch: BatchBuilder) -> Result<Written, LogError> {
        let cfg = &self.inner.config;
        let mut batch = batch.finish(cfg.compression, cfg.max_batch_bytes)?;
        let (info, lsn) = self.inner.write_batch(&mut batch)?;
        Ok(Written { info, lsn })
    }

    /// Returns once the write is durable under `Always` (at once under the
    /// other policies), sharing the `fdatasync` with concurrent appenders.
    ///
    /// # Errors
    /// As [`Log::append`]: [`LogError::Io`] or [`LogError::Discarded`]
    /// when the sync failed and the log cut the write (it is not stored),
    /// [`LogError::Poisoned`], [`LogError::Closed`].
    pub fn wait_durable(&self, written: &Written) -> Result<(), LogError> {
        if self.inner.config.durability == Durability::Always {
            self.inner.wait_durable(written.lsn)?;
        }
        Ok(())
    }

    /// Without waiting: `Some(Ok(()))` once `written` is durable (at once
    /// under policies other than `Always`), `Some(Err(..))` once it never
    /// will be (a failed sync cut it, the log failed or closed first),
    /// `None` while it waits for a sync. For callers that wait for
    /// durability themselves, e.g. an async task woken after each
    /// [`Log::sync_written`] round run elsewhere.
    pub fn try_durable(&self, written: &Written) -> Option<Result<(), LogError>> {
        if self.inner.config.durability != Durability::Always {
            return Some(Ok(()));
        }
        // The failure first: after a cut back, the synced LSN passes the
        // LSNs of the cut writes too (they need no sync: they are gone).
        if let Some(e) = self.inner.failure_for(written.lsn) {
            return Some(Err(e));
        }
        if self.inner.sync.synced() >= written.lsn {
            return Some(Ok(()));
        }
        if self.inner.closed.load(Ordering::Acquire) {
            // A clean close syncs everything written: look again.
            if self.inner.sync.synced() >= written.lsn {
                return Some(Ok(()));
            }
            return Some(Err(LogError::Closed));
        }
        None
    }

    /// Makes everything written so far durable (one group-commit round,
    /// shared with concurrent [`Log::wait_durable`] callers); nothing to do
    /// under policies other than `Always` or when all is synced.
    ///
    /// # Errors
    /// As [`Log::wait_durable`] for the latest write.
    pub fn sync_written(&self) -> Result<(), LogError> {
        if self.inner.config.durability != Durability::Always {
            return Ok(());
        }
        let target = self.inner.lock_writer()?.lsn;
        self.inner.wait_durable(target)
    }

    fn write(&self, mut batch: EncodedBatch) -> Result<AppendInfo, LogError> {
        let cfg = &self.inner.config;
        let (info, lsn) = self.inner.write_batch(&mut batch)?;
        if cfg.durability == Durability::Always {
            self.inner.wait_durable(lsn)?;
        }
        Ok(info)
    }

    /// Reads whole batches starting with the one that holds `from_offset`,
    /// up to about `max_bytes` (at least one batch is returned when any is
    /// readable). Every batch's CRC is checked before it is returned.
    ///
    /// Reading at the readable end returns an empty result. Batches come
    /// from one segment per call; call again from
    /// [`ReadBatches::next_offset`].
    ///
    /// # Errors
    /// [`LogError::OffsetOutOfRange`] below the start or past the end,
    /// [`LogError::Corrupt`] naming the file and byte position of a batch
    /// that fails validation when it is the first batch to return (batches
    /// before it are returned first; it is then listed by [`Log::damage`]),
    /// [`LogError::Io`], [`LogError::Closed`].
    pub fn read(&self, from_offset: u64, max_bytes: usize) -> Result<ReadBatches, LogError> {
        self.inner.check_open()?;
        let _guard = self.inner.read_guard();
        let seg = self.inner.segment_for(from_offset)?;
        self.inner.read_segment(&seg, from_offset, max_bytes)
    }

    /// The earliest offset whose record timestamp is >= `timestamp_ms`, or
    /// `None` if no record is that recent. Uses the time index to skip
    /// segments and batches.
    ///
    /// # Errors
    /// [`LogError::Corrupt`], [`LogError::Io`], [`LogError::Closed`].
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>, LogError> {
        self.inner.check_open()?;
        let _guard = self.inner.read_guard();
        let segs = self.inner.segments_snapshot();
        for seg in segs {
            let (max_ts, rel, vis_end) = {
                let st = seg.state();
                (
                    st.index.max_timestamp,
                    st.index.scan_start_for_time(timestamp_ms),
                    st.visible_end,
                )
            };
            if max_ts < timestamp_ms {
                continue;
            }
            let mut from = seg.base + u64::from(rel);
            while from < vis_end {
                let rb = self.inner.read_segment(&seg, from, 1 << 20)?;
                if rb.is_empty() {
                    break;
                }
                for (i, b) in rb.batches().iter().enumerate() {
                    if b.header().max_timestamp < timestamp_ms {
                        continue;
                    }
                    let records = b
                        .records()
                        .map_err(|e| LogError::corrupt(seg.path.clone(), rb.positions[i], e))?;
                    for r in records {
                        let r =
                            r.map_err(|e| LogError::corrupt(seg.path.clone(), rb.positions[i], e))?;
                        if r.timestamp_ms >= timestamp_ms {
                            return Ok(Some(r.offset));
                        }
                    }
                }
                from = rb.next_offset();
            }
        }
        Ok(None)
    }

    /// The first offset still stored.
    pub fn start_offset(&self) -> u64 {
        self.inner.segments_snapshot().first().map_or(0, |s| s.base)
    }

    /// The next offset to be assigned.
    pub fn end_offset(&self) -> u64 {
        self.inner.next_offset.load(Ordering::Acquire)
    }

    /// The offset after the last record readers can see. Equal to
    /// [`Log::end_offset`] except under `Always`, where records become
    /// readable only once synced.
    pub fn readable_end_offset(&self) -> u64 {
        let segs = self.inner.segments_snapshot();
        segs.last().map_or(0, |s| s.state().visible_end)
    }

    /// Total bytes of all segment files.
    pub fn size_bytes(&self) -> u64 {
        self.inner
            .segments_snapshot()
            .iter()
            .map(|s| s.state().written_len)
            .sum()
    }

    /// Number of group-commit sync rounds run so far (each is one
    /// `fdatasync` shared by every appender it covered).
    pub fn sync_count(&self) -> u64 {
        self.inner.sync.rounds()
    }

    /// How long this log's `fdatasync`s took (shared with other logs when
    /// [`LogConfigBuilder::sync_stats`](crate::LogConfigBuilder::sync_stats)
    /// gave them the same counters).
    pub fn sync_stats(&self) -> &SyncStats {
        &self.inner.config.sync_stats
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.inner.segments_snapshot().len()
    }

    /// Hands every appended batch to the operating system without syncing
    /// it. Only `Always` queues small batches in memory (for the next group
    /// commit); the other policies write each batch at once, so this is a
    /// no-op for them.
    ///
    /// # Errors
    /// [`LogError::Io`] if the write fails (the log is then failed),
    /// [`LogError::Poisoned`], [`LogError::Closed`].
    pub fn flush(&self) -> Result<(), LogError> {
        let mut w = self.inner.lock_writer()?;
        self.inner.check_writable(&w)?;
        self.inner.flush_pending(&mut w)
    }

    /// Makes everything appended so far durable (`fdatasync`), sharing the
    /// sync with concurrent appenders.
    ///
    /// # Errors
    /// [`LogError::Io`] if the sync fails (the log is then failed),
    /// [`LogError::Poisoned`], [`LogError::Closed`].
    pub fn sync(&self) -> Result<(), LogError> {
        let lsn = {
            let w = self.inner.lock_writer()?;
            self.inner.check_writable(&w)?;
            w.lsn
        };
        self.inner.wait_durable(lsn)
    }

    /// Drops every record at or after `to_offset`. Durable when it
    /// returns. A no-op when `to_offset >= end_offset()`.
    ///
    /// # Errors
    /// [`LogError::OffsetOutOfRange`] below the start, [`LogError::Io`]
    /// (the log is then failed), [`LogError::Corrupt`],
    /// [`LogError::Poisoned`], [`LogError::Closed`].
    pub fn truncate(&self, to_offset: u64) -> Result<(), LogError> {
        self.inner.truncate(to_offset)
    }

    /// Deletes whole sealed segments beyond the retention limits and
    /// returns how many were deleted. Also runs after every segment roll.
    ///
    /// # Errors
    /// [`LogError::Io`] if a file cannot be removed, [`LogError::Closed`].
    pub fn apply_retention(&self) -> Result<usize, LogError> {
        let w = self.inner.lock_writer()?;
        if w.closed {
            return Err(LogError::Closed);
        }
        self.inner.retain(&w)
    }

    /// Syncs, persists the active segment's indexes and writes the
    /// clean-shutdown marker so the next open reads no segment data.
    /// Idempotent; later calls on the log return [`LogError::Closed`].
    ///
    /// # Errors
    /// [`LogError::Io`], or [`LogError::Poisoned`] if the log had failed
    /// (no marker is written then, so the next open recovers).
    pub fn close(&self) -> Result<(), LogError> {
        self.stop_flusher();
        self.inner.close()
    }

    /// Closes the log without making anything durable: no sync, no index
    /// files, no clean-shutdown marker — for a log whose files are about to
    /// be removed (a deleted topic), where [`close`](Self::close)'s four
    /// fsyncs per log only delay the removal. Writes not yet synced are
    /// dropped; later calls return [`LogError::Closed`]. If the files stay
    /// after all, the next open recovers them as after a crash.
    pub fn abandon(&self) {
        self.stop_flusher();
        if let Ok(mut w) = self.inner.lock_writer() {
            w.closed = true;
        }
        self.inner.closed.store(true, Ordering::Release);
    }

    fn stop_flusher(&self) {
        *relock(&self.inner.stop) = true;
        self.inner.stop_cv.notify_all();
        if let Some(h) = relock(&self.flusher).take() {
            // A panicked flusher has nothing left to clean up.
            let _ = h.join();
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // Best effort: errors here cannot be reported; an unclean close
        // only means the next open scans the tail.
        let _ = self.close();
    }
}

fn flusher_loop(inner: &Inner, every: Duration) {
    loop {
        {
            let stop = relock(&inner.stop);
            let (stop, _) = inner
                .stop_cv
                .wait_timeout_while(stop, every, |s| !*s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *stop {
                return;
            }
        }
        let lsn = match inner.lock_writer() {
            Ok(w) if !w.closed && inner.failed.get().is_none() => w.lsn,
            _ => return,
        };
        if inner.sync.synced() < lsn && inner.wait_durable(lsn).is_err() {
            return;
        }
    }
}

impl Inner {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn io_err(&self, name: &str, op: IoOp) -> impl FnOnce(io::Error) -> LogError {
        let path = self.path(name);
        move |e| LogError::io(path, op, e)
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>, LogError> {
        self.writer.lock().map_err(|_| {
            self.fail(io::ErrorKind::Other);
            LogError::Poisoned {
                cause: io::ErrorKind::Other,
            }
        })
    }

    fn read_guard(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.rewrite
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn segments_snapshot(&self) -> Vec<Arc<Segment>> {
        self.segments
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_segments(&self, f: impl FnOnce(&mut Vec<Arc<Segment>>)) {
        let mut g = self
            .segments
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g);
    }

    /// Marks the log failed (first cause wins) so it refuses appends.
    fn fail(&self, kind: io::ErrorKind) {
        let _ = self.failed.set(kind);
        self.sync.wake_all();
    }

    fn check_open(&self) -> Result<(), LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        Ok(())
    }

    fn check_writable(&self, w: &Writer) -> Result<(), LogError> {
        if w.closed {
            return Err(LogError::Closed);
        }
        if let Some(&cause) = self.failed.get() {
            return Err(LogError::Poisoned { cause });
        }
        Ok(())
    }

    // -------------------------------------------------------------- append

    fn write_batch(&self, batch: &mut EncodedBatch) -> Result<(AppendInfo, u64), LogError> {
        let mut w = self.lock_writer()?;
        self.check_writable(&w)?;
        let cfg = &self.config;
        let len = batch.len() as u64;
        let count = u64::from(batch.record_count);
        let base = self.next_offset.load(Ordering::Acquire);
        let needs_roll = {
            let st = w.active.state();
            st.written_len > 0
                && (st.written_len + len > cfg.segment_max_bytes
                    || base + count - w.active.base > u64::from(u32::MAX)
                    || cfg.segment_max_age.is_some_and(|age| {
                        let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                        self.config.clock.now_ms().saturating_sub(st.created_ms) >= age
                    }))
        };
        if needs_roll {
            self.roll(&mut w)?;
        }
        batch.seal(base);
        let seg = Arc::clone(&w.active);
        let pos = seg.state().written_len;
        let queue = cfg.durability == Durability::Always
            && (!w.pending.is_empty() || batch.buf.len() < DIRECT_WRITE_BYTES);
        if queue {
            if w.pending.is_empty() {
                w.pending_pos = pos;
            }
            w.pending.extend_from_slice(&batch.buf);
        } else if let Err(e) = write_all_at(&*seg.file, &batch.buf, pos) {
            // Nothing of this batch was accounted: cut its partial bytes
            // and go on (the bytes before `pos` are untouched).
            if let Err(cut) = seg.file.set_len(pos) {
                self.fail(cut.kind());
            }
            return Err(LogError::io(&seg.path, IoOp::Write, e));
        }
        let next = base + count;
        {
            let mut st = seg.state_mut();
            st.index.on_batch(
                seg.base,
                base,
                len as u32,
                batch.max_timestamp,
                pos,
                cfg.index_interval_bytes,
            );
            st.written_len = pos + len;
            st.written_end = next;
            if cfg.durability != Durability::Always {
                st.visible_len = st.written_len;
                st.visible_end = next;
            }
        }
        self.next_offset.store(next, Ordering::Release);
        w.lsn += len;
        Ok((
            AppendInfo {
                base_offset: base,
                last_offset: next - 1,
            },
            w.lsn,
        ))
    }

    /// Group commit (see `commit.rs`): returns once an fdatasync covers
    /// `target`.
    fn wait_durable(&self, target: u64) -> Result<(), LogError> {
        self.sync
            .wait(target, || self.sync_once(), || self.failure_for(target))
    }

    /// Why an append whose bytes end at LSN `target` can no longer become
    /// durable: the log failed, or a cut back discarded it.
    fn failure_for(&self, target: u64) -> Option<LogError> {
        if let Some(&cause) = self.failed.get() {
            return Some(LogError::Poisoned { cause });
        }
        relock(&self.cuts)
            .iter()
            .rev()
            .find(|&&(lo, hi, _)| target > lo && target <= hi)
            .map(|&(_, _, cause)| LogError::Discarded { cause })
    }

    /// After a failed write or `fdatasync` of `seg` under `Always`: cuts
    /// the active segment back to what the last sync made durable (nothing
    /// after it was acknowledged or readable), durably, so the log goes
    /// on; the appends cut get [`LogError::Discarded`]. Fails the log
    /// instead when that is not possible (another policy had acknowledged
    /// the unsynced records, `seg` was rolled meanwhile, or the cut fails).
    fn cut_back(&self, w: &mut Writer, seg: &Arc<Segment>, cause: io::ErrorKind) {
        if self.config.durability != Durability::Always || !Arc::ptr_eq(&w.active, seg) {
            self.fail(cause);
            return;
        }
        let (pos, end) = {
            let st = seg.state();
            (st.visible_len, st.visible_end)
        };
        if let Err(e) = seg.file.set_len(pos).and_then(|()| seg.file.sync_data()) {
            self.fail(e.kind());
            return;
        }
        w.pending.clear();
        {
            let mut st = seg.state_mut();
            st.index.cut(pos, end - seg.base);
            st.written_len = pos;
            st.written_end = end;
        }
        self.next_offset.store(end, Ordering::Release);
        // A sync that raced this must not publish the cut bytes.
        w.epoch += 1;
        if w.lsn > w.visible_lsn {
            let mut cuts = relock(&self.cuts);
            if cuts.len() == MAX_CUTS {
                cuts.pop_front();
            }
            cuts.push_back((w.visible_lsn, w.lsn, cause));
        }
        // LSNs up to `w.lsn` now need no sync: the cut ones fail through
        // `failure_for`, the rest were durable already.
        w.visible_lsn = w.lsn;
        self.sync.wake_all();
    }

    /// Writes the queued batches of the active segment (under the writer
    /// lock, so file order is offset order). A failure cuts the log back
    /// to its last synced point (see [`Inner::cut_back`]).
    fn flush_pending(&self, w: &mut Writer) -> Result<(), LogError> {
        if w.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = write_all_at(&*w.active.file, &w.pending, w.pending_pos) {
            let seg = Arc::clone(&w.active);
            self.cut_back(w, &seg, e.kind());
            return Err(LogError::io(&seg.path, IoOp::Write, e));
        }
        w.pending.clear();
        Ok(())
    }

    fn sync_once(&self) -> Result<u64, LogError> {
        let (seg, len, end, lsn, epoch) = {
            let mut w = self.lock_writer()?;
            self.flush_pending(&mut w)?;
            let st = w.active.state();
            (
                Arc::clone(&w.active),
                st.written_len,
                st.written_end,
                w.lsn,
                w.epoch,
            )
        };
        // Sealed segments were synced when they were rolled, so syncing
        // the active one covers everything up to `lsn`.
        if let Err(e) = timed(&self.config.sync_stats, || seg.file.sync_data()) {
            let mut w = self.lock_writer()?;
            self.cut_back(&mut w, &seg, e.kind());
            return Err(LogError::io(&seg.path, IoOp::SyncData, e));
        }
        let mut w = self.lock_writer()?;
        if w.epoch == epoch {
            let mut st = seg.state_mut();
            st.visible_len = st.visible_len.max(len);
            st.visible_end = st.visible_end.max(end);
            w.visible_lsn = w.visible_lsn.max(lsn);
        }
        Ok(lsn)
    }

    fn mark_synced(&self, lsn: u64) {
        self.sync.mark_synced(lsn);
    }

    /// Seals the active segment (sync, write its indexes) and starts a new
    /// one. A failed write or sync cuts back (see [`Inner::cut_back`]); a
    /// failure after the sync (index files, the new segment's file) leaves
    /// the synced segment active, and the next append tries again.
    fn roll(&self, w: &mut Writer) -> Result<(), LogError> {
        self.flush_pending(w)?;
        let old = Arc::clone(&w.active);
        if let Err(e) = timed(&self.config.sync_stats, || old.file.sync_data()) {
            self.cut_back(w, &old, e.kind());
            return Err(LogError::io(&old.path, IoOp::SyncData, e));
        }
        let (len, end, index) = {
            let st = old.state();
            (st.written_len, st.written_end, st.index.clone())
        };
        write_index_files(&*self.storage, &self.dir, old.base, &index, len, end)?;
        {
            let mut st = old.state_mut();
            st.visible_len = len;
            st.visible_end = end;
        }
        w.visible_lsn = w.lsn;
        self.mark_synced(w.lsn);
        let path = self.path(&log_name(end));
        let file = self
            .storage
            .open(&path, true)
            .map_err(|e| LogError::io(&path, IoOp::Open, e))?;
        self.storage
            .sync_dir(&self.dir)
            .map_err(|e| LogError::io(&self.dir, IoOp::SyncDir, e))?;
        let seg = Arc::new(Segment::new(
            end,
            path,
            file,
            SegmentIndex::new(),
            0,
            end,
            self.config.clock.now_ms(),
        ));
        self.set_segments(|s| s.push(Arc::clone(&seg)));
        w.active = seg;
        // Retention failures here are retried at the next roll or by an
        // explicit apply_retention; they must not fail the append.
        let _ = self.retain(w);
        Ok(())
    }

    // --------------------------------------------------------------- close

    fn close(&self) -> Result<(), LogError> {
        let mut w = self.lock_writer()?;
        if w.closed {
            return Ok(());
        }
        w.closed = true;
        self.closed.store(true, Ordering::Release);
        if let Some(&cause) = self.failed.get() {
            return Err(LogError::Poisoned { cause });
        }
        self.flush_pending(&mut w)?;
        let seg = Arc::clone(&w.active);
        timed(&self.config.sync_stats, || seg.file.sync_data())
            .map_err(|e| LogError::io(&seg.path, IoOp::SyncData, e))?;
        self.mark_synced(w.lsn);
        let (len, end, index) = {
            let st = seg.state();
            (st.written_len, st.written_end, st.index.clone())
        };
        write_index_files(&*self.storage, &self.dir, seg.base, &index, len, end)?;
        let marker = CleanMarker {
            active_base: seg.base,
            active_len: len,
            next_offset: end,
        };
        let tmp = self.path(MARKER_TMP);
        write_file(&*self.storage, &tmp, &marker.encode())?;
        let dst = self.path(MARKER_NAME);
        self.storage
            .rename(&tmp, &dst)
            .map_err(self.io_err(MARKER_NAME, IoOp::Rename))?;
        self.storage
            .sync_dir(&self.dir)
            .map_err(|e| LogError::io(&self.dir, IoOp::SyncDir, e))
    }
}

fn read_bytes(file: &dyn StorageFile, path: &Path, pos: u64, len: u64) -> Result<Bytes, LogError> {
    let mut buf = BytesMut::zeroed(len as usize);
    read_exact_at(file, &mut buf, pos).map_err(|e| LogError::io(path, IoOp::Read, e))?;
    Ok(buf.freeze())
}

fn remove_if_exists(storage: &dyn Storage, path: &Path) -> Result<(), LogError> {
    match storage.remove(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LogError::io(path, IoOp::Remove, e)),
    }
}

fn write_file(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let file = storage
        .open(path, true)
        .map_err(|e| LogError::io(path, IoOp::Open, e))?;
    file.set_len(0)
        .map_err(|e| LogError::io(path, IoOp::SetLen, e))?;
    write_all_at(&*file, bytes, 0).map_err(|e| LogError::io(path, IoOp::Write, e))?;
    file.sync_data()
        .map_err(|e| LogError::io(path, IoOp::SyncData, e))
}

fn write_index_files(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
    index: &SegmentIndex,
    len: u64,
    next_offset: u64,
) -> Result<(), LogError> {
    write_file(
        storage,
        &dir.join(index_name(base)),
        &index.encode_offsets(base, len, next_offset),
    )?;
    write_file(
        storage,
        &dir.join(time_index_name(base)),
        &index.encode_times(base, len),
    )
}
