//! [`Log`]: open/recovery, append with group commit, reads, roll,
//! retention, truncation and clean close. Locks, always taken in this
//! order: the writer mutex (appends, roll, truncate, retention, close) →
//! the segment list → one segment's state → the group-commit state.
//! Readers take only the segment list (briefly) and a segment's state.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::batch::{self, Batch, BatchHeader, EncodedBatch, HEADER_LEN};
use crate::commit::GroupCommit;
use crate::config::{Durability, LogConfig};
use crate::error::{CorruptKind, IoOp, LogError};
use crate::index::{CleanMarker, SegmentIndex};
use crate::read::ReadBatches;
use crate::record::Record;
use crate::segment::{
    has_valid_batch_after, index_name, log_name, parse_name, scan, time_index_name, Segment,
};
use crate::storage::{read_exact_at, write_all_at, Storage, StorageFile};

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
}

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
    closed: AtomicBool,
    stop: Mutex<bool>,
    stop_cv: Condvar,
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
    /// or corrupt tail is truncated, unless valid batches follow the damage
    /// (then it is corruption of acknowledged data and open fails).
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
    /// when stored data is damaged in a way recovery must not paper over.
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
    /// [`LogError::Io`] when the write or sync fails (the log is then
    /// failed), [`LogError::Poisoned`] once failed, [`LogError::Closed`].
    pub fn append(&self, records: &[Record]) -> Result<AppendInfo, LogError> {
        let cfg = &self.inner.config;
        let mut batch = batch::encode(records, cfg.compression, cfg.max_batch_bytes)?;
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
    /// that fails validation, [`LogError::Io`], [`LogError::Closed`].
    pub fn read(&self, from_offset: u64, max_bytes: usize) -> Result<ReadBatches, LogError> {
        self.inner.check_open()?;
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

    // ---------------------------------------------------------------- open

    fn open(dir: &Path, config: LogConfig) -> Result<Inner, LogError> {
        let storage = Arc::clone(&config.storage);
        let dir = dir.to_path_buf();
        let dir_err = |op| {
            let d = dir.clone();
            move |e| LogError::io(d, op, e)
        };
        storage
            .create_dir_all(&dir)
            .map_err(dir_err(IoOp::CreateDir))?;
        let names = storage.list(&dir).map_err(dir_err(IoOp::List))?;
        let mut bases = BTreeSet::new();
        let mut index_files = Vec::new();
        let mut marker_present = false;
        for name in names {
            if name == MARKER_NAME {
                marker_present = true;
            } else if name.ends_with(".tmp") {
                remove_if_exists(&*storage, &dir.join(&name))?;
            } else if let Some(b) = parse_name(&name, ".log") {
                bases.insert(b);
            } else if let Some(b) =
                parse_name(&name, ".index").or_else(|| parse_name(&name, ".timeindex"))
            {
                index_files.push((b, name));
            }
        }
        // Index files whose segment is gone (retention crashed midway).
        for (b, name) in index_files {
            if !bases.contains(&b) {
                remove_if_exists(&*storage, &dir.join(name))?;
            }
        }
        let marker = if marker_present {
            read_small_file(&*storage, &dir.join(MARKER_NAME))?
                .and_then(|b| CleanMarker::decode(&b))
        } else {
            None
        };
        if bases.is_empty() {
            let path = dir.join(log_name(0));
            storage
                .open(&path, true)
                .map_err(|e| LogError::io(&path, IoOp::Open, e))?;
            storage.sync_dir(&dir).map_err(dir_err(IoOp::SyncDir))?;
            bases.insert(0);
        }
        let bases: Vec<u64> = bases.into_iter().collect();
        let now = config.clock.now_ms();
        let interval = config.index_interval_bytes;
        let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len());
        for (i, &base) in bases.iter().enumerate() {
            let last = i + 1 == bases.len();
            let path = dir.join(log_name(base));
            let file = storage
                .open(&path, false)
                .map_err(|e| LogError::io(&path, IoOp::Open, e))?;
            let len = file.size().map_err(|e| LogError::io(&path, IoOp::Len, e))?;
            let trusted =
                !last || marker.is_some_and(|m| m.active_base == base && m.active_len == len);
            let loaded = if trusted {
                load_index(&*storage, &dir, base, len)?
            } else {
                None
            };
            let loaded =
                loaded.filter(|(_, next)| !last || marker.is_some_and(|m| m.next_offset == *next));
            let (index, len, next) = match loaded {
                Some((index, next)) => (index, len, next),
                None if !last => {
                    let out = scan(&*file, base, len, interval)
                        .map_err(|e| LogError::io(&path, IoOp::Read, e))?;
                    if out.error.is_none() {
                        write_index_files(&*storage, &dir, base, &out.index, len, out.next_offset)?;
                    }
                    // On corruption, keep what was indexed; reads that reach
                    // the bad batch report it. The next segment's base tells
                    // where this one ends.
                    let next = if out.error.is_some() {
                        bases[i + 1]
                    } else {
                        out.next_offset
                    };
                    (out.index, len, next)
                }
                None => {
                    let out = scan(&*file, base, len, interval)
                        .map_err(|e| LogError::io(&path, IoOp::Read, e))?;
                    if let Some((pos, reason)) = out.error {
                        let resumes = has_valid_batch_after(&*file, pos, len, out.next_offset)
                            .map_err(|e| LogError::io(&path, IoOp::Read, e))?;
                        if resumes && !config.truncate_corrupt_tail {
                            return Err(LogError::corrupt(&path, pos, reason));
                        }
                        // A torn tail: nothing in it was acknowledged as
                        // durable (an fdatasync would have completed it).
                        file.set_len(pos)
                            .map_err(|e| LogError::io(&path, IoOp::SetLen, e))?;
                        file.sync_data()
                            .map_err(|e| LogError::io(&path, IoOp::SyncData, e))?;
                    }
                    (out.index, out.valid_len, out.next_offset)
                }
            };
            if let Some(prev) = segments.last() {
                let prev_end = prev.state().written_end;
                if prev_end != base {
                    return Err(LogError::corrupt(
                        &prev.path,
                        prev.state().written_len,
                        CorruptKind::OffsetMismatch {
                            expected: base,
                            found: prev_end,
                        },
                    ));
                }
            }
            segments.push(Arc::new(Segment::new(
                base, path, file, index, len, next, now,
            )));
        }
        if marker_present {
            let m = dir.join(MARKER_NAME);
            storage
                .remove(&m)
                .map_err(|e| LogError::io(&m, IoOp::Remove, e))?;
            storage.sync_dir(&dir).map_err(dir_err(IoOp::SyncDir))?;
        }
        let active = match segments.last() {
            Some(s) => Arc::clone(s),
            None => unreachable_segments(&dir)?,
        };
        let next_offset = active.state().written_end;
        Ok(Inner {
            dir,
            storage,
            writer: Mutex::new(Writer {
                active,
                lsn: 0,
                epoch: 0,
                closed: false,
                pending: Vec::new(),
                pending_pos: 0,
            }),
            segments: RwLock::new(segments),
            sync: GroupCommit::default(),
            next_offset: AtomicU64::new(next_offset),
            failed: OnceLock::new(),
            closed: AtomicBool::new(false),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
            config,
        })
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
            self.fail(e.kind());
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
        self.sync.wait(
            target,
            || self.sync_once(),
            || self.failed.get().map(|&cause| LogError::Poisoned { cause }),
        )
    }

    /// Writes the queued batches of the active segment (under the writer
    /// lock, so file order is offset order). A failure fails the log.
    fn flush_pending(&self, w: &mut Writer) -> Result<(), LogError> {
        if w.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = write_all_at(&*w.active.file, &w.pending, w.pending_pos) {
            self.fail(e.kind());
            return Err(LogError::io(&w.active.path, IoOp::Write, e));
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
        if let Err(e) = seg.file.sync_data() {
            self.fail(e.kind());
            return Err(LogError::io(&seg.path, IoOp::SyncData, e));
        }
        let w = self.lock_writer()?;
        if w.epoch == epoch {
            let mut st = seg.state_mut();
            st.visible_len = st.visible_len.max(len);
            st.visible_end = st.visible_end.max(end);
        }
        Ok(lsn)
    }

    fn mark_synced(&self, lsn: u64) {
        self.sync.mark_synced(lsn);
    }

    /// Seals the active segment (sync, write its indexes) and starts a new
    /// one. Any failure fails the log.
    fn roll(&self, w: &mut Writer) -> Result<(), LogError> {
        let r = self.roll_inner(w);
        if let Err(LogError::Io { source, .. }) = &r {
            self.fail(source.kind());
        }
        r
    }

    fn roll_inner(&self, w: &mut Writer) -> Result<(), LogError> {
        self.flush_pending(w)?;
        let old = Arc::clone(&w.active);
        old.file
            .sync_data()
            .map_err(|e| LogError::io(&old.path, IoOp::SyncData, e))?;
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

    // ---------------------------------------------------------------- read

    fn segment_for(&self, from: u64) -> Result<Arc<Segment>, LogError> {
        let segs = self
            .segments
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = segs.first().map_or(0, |s| s.base);
        let end = self.next_offset.load(Ordering::Acquire);
        if from < start || from > end {
            return Err(LogError::OffsetOutOfRange {
                requested: from,
                start,
                end,
            });
        }
        let i = segs.partition_point(|s| s.base <= from);
        Ok(Arc::clone(&segs[i.saturating_sub(1)]))
    }

    fn read_segment(
        &self,
        seg: &Segment,
        from: u64,
        max_bytes: usize,
    ) -> Result<ReadBatches, LogError> {
        let (start_pos, vis_len, vis_end) = {
            let st = seg.state();
            (
                st.index.position_for(from.saturating_sub(seg.base)),
                st.visible_len,
                st.visible_end,
            )
        };
        if from >= vis_end {
            return Ok(ReadBatches::empty(from));
        }
        let corrupt = |pos: u64, reason| LogError::corrupt(&seg.path, pos, reason);
        let budget = max_bytes.max(1) as u64;
        let slack = u64::from(self.config.index_interval_bytes) + HEADER_LEN as u64;
        let mut batches = Vec::new();
        let mut positions = Vec::new();
        let mut total = 0u64;
        let mut expected: Option<u64> = None;
        let mut buf = Bytes::new();
        let mut buf_pos = 0u64;
        let mut cur = start_pos;
        while cur < vis_len {
            let avail = vis_len - cur;
            if avail < HEADER_LEN as u64 {
                return Err(corrupt(
                    cur,
                    CorruptKind::Truncated {
                        needed: HEADER_LEN as u64,
                        available: avail,
                    },
                ));
            }
            let in_buf = |pos: u64, n: u64, buf: &Bytes, buf_pos: u64| {
                pos >= buf_pos && pos + n <= buf_pos + buf.len() as u64
            };
            if !in_buf(cur, HEADER_LEN as u64, &buf, buf_pos) {
                let want = (budget.saturating_sub(total) + slack).min(avail);
                buf = read_bytes(&*seg.file, &seg.path, cur, want)?;
                buf_pos = cur;
            }
            let off = (cur - buf_pos) as usize;
            let h = BatchHeader::parse(&buf[off..]).map_err(|e| corrupt(cur, e))?;
            let blen = u64::from(h.len);
            if blen > avail {
                return Err(corrupt(
                    cur,
                    CorruptKind::Truncated {
                        needed: blen,
                        available: avail,
                    },
                ));
            }
            if h.next_offset() <= from {
                cur += blen;
                continue;
            }
            if !batches.is_empty() && total + blen > budget {
                break;
            }
            if !in_buf(cur, blen, &buf, buf_pos) {
                let want = blen
                    .max(budget.saturating_sub(total) + HEADER_LEN as u64)
                    .min(avail);
                buf = read_bytes(&*seg.file, &seg.path, cur, want)?;
                buf_pos = cur;
            }
            let off = (cur - buf_pos) as usize;
            let bytes = buf.slice(off..off + h.len as usize);
            h.verify(&bytes).map_err(|e| corrupt(cur, e))?;
            let want_base = expected.unwrap_or(from);
            let dense = match expected {
                None => h.base_offset <= from,
                Some(e) => h.base_offset == e,
            };
            if !dense {
                return Err(corrupt(
                    cur,
                    CorruptKind::OffsetMismatch {
                        expected: want_base,
                        found: h.base_offset,
                    },
                ));
            }
            expected = Some(h.next_offset());
            batches.push(Batch::from_parts(h, bytes));
            positions.push(cur);
            total += blen;
            cur += blen;
            if total >= budget {
                break;
            }
        }
        Ok(ReadBatches {
            batches,
            positions,
            path: Some(Arc::new(seg.path.clone())),
            from_offset: from,
        })
    }

    // ------------------------------------------------- retention, truncate

    fn retain(&self, w: &Writer) -> Result<usize, LogError> {
        let r = self.config.retention;
        if r.max_bytes.is_none() && r.max_age.is_none() {
            return Ok(0);
        }
        let segs = self.segments_snapshot();
        let mut total: u64 = segs.iter().map(|s| s.state().written_len).sum();
        let now = self.config.clock.now_ms();
        let mut n = 0;
        for seg in &segs[..segs.len().saturating_sub(1)] {
            if Arc::ptr_eq(seg, &w.active) {
                break;
            }
            let (len, max_ts) = {
                let st = seg.state();
                (st.written_len, st.index.max_timestamp)
            };
            let by_size = r.max_bytes.is_some_and(|m| total - len >= m);
            let by_age = r.max_age.is_some_and(|a| {
                let a = i64::try_from(a.as_millis()).unwrap_or(i64::MAX);
                now.saturating_sub(max_ts) > a
            });
            if !(by_size || by_age) {
                break;
            }
            total -= len;
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        self.set_segments(|s| {
            s.drain(..n);
        });
        for seg in &segs[..n] {
            self.remove_segment_files(seg.base)?;
        }
        self.storage
            .sync_dir(&self.dir)
            .map_err(|e| LogError::io(&self.dir, IoOp::SyncDir, e))?;
        Ok(n)
    }

    /// Removes a segment's files, the `.log` first so a crash leaves only
    /// orphan indexes (which open deletes).
    fn remove_segment_files(&self, base: u64) -> Result<(), LogError> {
        for name in [log_name(base), index_name(base), time_index_name(base)] {
            remove_if_exists(&*self.storage, &self.path(&name))?;
        }
        Ok(())
    }

    fn truncate(&self, to: u64) -> Result<(), LogError> {
        let mut w = self.lock_writer()?;
        self.check_writable(&w)?;
        let end = self.next_offset.load(Ordering::Acquire);
        if to >= end {
            return Ok(());
        }
        self.flush_pending(&mut w)?;
        let segs = self.segments_snapshot();
        let start = segs.first().map_or(0, |s| s.base);
        if to < start {
            return Err(LogError::OffsetOutOfRange {
                requested: to,
                start,
                end,
            });
        }
        let i = segs.partition_point(|s| s.base <= to).saturating_sub(1);
        let seg = Arc::clone(&segs[i]);
        let (cut, partial) = self.find_cut(&seg, to)?;
        let r = self.truncate_files(&segs[i + 1..], &seg, cut, partial.as_ref());
        if let Err(LogError::Io { source, .. }) = &r {
            self.fail(source.kind());
        }
        r?;
        self.set_segments(|s| s.truncate(i + 1));
        let len = seg
            .file
            .size()
            .map_err(|e| LogError::io(&seg.path, IoOp::Len, e))?;
        let out = scan(&*seg.file, seg.base, len, self.config.index_interval_bytes)
            .map_err(|e| LogError::io(&seg.path, IoOp::Read, e))?;
        if let Some((pos, reason)) = out.error {
            return Err(LogError::corrupt(&seg.path, pos, reason));
        }
        {
            let mut st = seg.state_mut();
            st.index = out.index;
            st.written_len = len;
            st.visible_len = len;
            st.written_end = to;
            st.visible_end = to;
            st.created_ms = self.config.clock.now_ms();
        }
        self.next_offset.store(to, Ordering::Release);
        w.active = seg;
        w.epoch += 1;
        self.mark_synced(w.lsn);
        Ok(())
    }

    fn truncate_files(
        &self,
        newer: &[Arc<Segment>],
        seg: &Segment,
        cut: u64,
        partial: Option<&EncodedBatch>,
    ) -> Result<(), LogError> {
        for s in newer.iter().rev() {
            self.remove_segment_files(s.base)?;
        }
        for name in [index_name(seg.base), time_index_name(seg.base)] {
            remove_if_exists(&*self.storage, &self.path(&name))?;
        }
        self.storage
            .sync_dir(&self.dir)
            .map_err(|e| LogError::io(&self.dir, IoOp::SyncDir, e))?;
        seg.file
            .set_len(cut)
            .map_err(|e| LogError::io(&seg.path, IoOp::SetLen, e))?;
        if let Some(p) = partial {
            write_all_at(&*seg.file, &p.buf, cut)
                .map_err(|e| LogError::io(&seg.path, IoOp::Write, e))?;
        }
        seg.file
            .sync_data()
            .map_err(|e| LogError::io(&seg.path, IoOp::SyncData, e))
    }

    /// Finds where to cut `seg` so that `to` is the next offset: the start
    /// of the batch holding `to`, plus a re-encoded batch of that batch's
    /// records before `to` when `to` falls inside it.
    fn find_cut(&self, seg: &Segment, to: u64) -> Result<(u64, Option<EncodedBatch>), LogError> {
        let (mut pos, len) = {
            let st = seg.state();
            (st.index.position_for(to - seg.base), st.written_len)
        };
        let mut head = [0u8; HEADER_LEN];
        while pos < len {
            read_exact_at(&*seg.file, &mut head, pos)
                .map_err(|e| LogError::io(&seg.path, IoOp::Read, e))?;
            let h = BatchHeader::parse(&head).map_err(|e| LogError::corrupt(&seg.path, pos, e))?;
            if h.next_offset() <= to {
                pos += u64::from(h.len);
                continue;
            }
            if h.base_offset >= to {
                return Ok((pos, None));
            }
            let bytes = read_bytes(&*seg.file, &seg.path, pos, u64::from(h.len))?;
            let b = Batch::decode(bytes).map_err(|e| LogError::corrupt(&seg.path, pos, e))?;
            let mut keep = Vec::with_capacity((to - h.base_offset) as usize);
            let it = b
                .records()
                .map_err(|e| LogError::corrupt(&seg.path, pos, e))?;
            for r in it {
                let r = r.map_err(|e| LogError::corrupt(&seg.path, pos, e))?;
                if r.offset >= to {
                    break;
                }
                keep.push(r.to_record());
            }
            let mut enc = batch::encode(&keep, h.compression, batch::MAX_BATCH_BYTES)?;
            enc.seal(h.base_offset);
            return Ok((pos, Some(enc)));
        }
        Ok((len, None))
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
        seg.file
            .sync_data()
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

fn unreachable_segments(dir: &Path) -> Result<Arc<Segment>, LogError> {
    // `open` always creates segment 0 in an empty directory, so this is
    // only reachable if the storage lied about the listing.
    Err(LogError::io(
        dir,
        IoOp::List,
        io::Error::new(io::ErrorKind::NotFound, "no segment after recovery"),
    ))
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

fn read_small_file(storage: &dyn Storage, path: &Path) -> Result<Option<Vec<u8>>, LogError> {
    let file = match storage.open(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io(path, IoOp::Open, e)),
    };
    let len = file.size().map_err(|e| LogError::io(path, IoOp::Len, e))?;
    if len > 1 << 30 {
        return Ok(None);
    }
    let mut buf = vec![0u8; len as usize];
    read_exact_at(&*file, &mut buf, 0).map_err(|e| LogError::io(path, IoOp::Read, e))?;
    Ok(Some(buf))
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

fn load_index(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
    len: u64,
) -> Result<Option<(SegmentIndex, u64)>, LogError> {
    let Some(offsets) = read_small_file(storage, &dir.join(index_name(base)))? else {
        return Ok(None);
    };
    let Some(times) = read_small_file(storage, &dir.join(time_index_name(base)))? else {
        return Ok(None);
    };
    Ok(SegmentIndex::decode(&offsets, &times, base, len))
}
