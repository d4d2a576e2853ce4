//! Configuration of a [`Log`](crate::Log): segment sizing, index density,
//! durability policy, retention, compression, and the two seams (storage and
//! clock) that tests replace. Build it with [`LogConfig::builder`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::damage::IntegrityStats;
use crate::error::LogError;
use crate::stats::SyncStats;
use crate::storage::{FsStorage, Storage};

/// When an append is made durable with `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Never sync on the append path; data reaches disk when the OS writes
    /// it back (and on segment roll and clean close).
    Never,
    /// A background thread syncs at this interval when there is unsynced data.
    Interval(Duration),
    /// `append` returns only after an `fdatasync` covers the batch.
    /// Concurrent appenders share one `fdatasync` (group commit).
    Always,
}

/// Per-batch compression of the record body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Records are stored as encoded.
    None,
    /// LZ4 block compression (kept only when it makes the batch smaller).
    Lz4,
}

/// Retention limits; sealed segments beyond them are deleted whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Keep at most about this many bytes (the active segment is never
    /// deleted, so the log can exceed it by up to one segment).
    pub max_bytes: Option<u64>,
    /// Delete sealed segments whose newest record is older than this.
    pub max_age: Option<Duration>,
}

/// Source of "now" for age-based roll and retention.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to, for tests of age-based behaviour.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        ManualClock {
            now: AtomicI64::new(now_ms),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, now_ms: i64) {
        self.now.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// Configuration of a log. `LogConfig::default()` is a sensible production
/// setting: 256 MiB segments, an index entry every 4 KiB, `Always`
/// durability, no retention, no compression, 8 MiB batches.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub(crate) segment_max_bytes: u64,
    pub(crate) segment_max_age: Option<Duration>,
    pub(crate) index_interval_bytes: u32,
    pub(crate) durability: Durability,
    pub(crate) retention: Retention,
    pub(crate) compression: Compression,
    pub(crate) max_batch_bytes: usize,
    pub(crate) truncate_corrupt_tail: bool,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) sync_stats: Arc<SyncStats>,
    pub(crate) integrity_stats: Arc<IntegrityStats>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_max_bytes: 256 * 1024 * 1024,
            segment_max_age: None,
            index_interval_bytes: 4096,
            durability: Durability::Always,
            retention: Retention::default(),
            compression: Compression::None,
            max_batch_bytes: 8 * 1024 * 1024,
            truncate_corrupt_tail: false,
            storage: Arc::new(FsStorage),
            clock: Arc::new(SystemClock),
            sync_stats: Arc::new(SyncStats::default()),
            integrity_stats: Arc::new(IntegrityStats::default()),
        }
    }
}

impl LogConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> LogConfigBuilder {
        LogConfigBuilder {
            config: LogConfig::default(),
        }
    }

    /// The durability policy.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The compression applied to new batches.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The largest encoded batch `append` accepts.
    pub fn max_batch_bytes(&self) -> usize {
        self.max_batch_bytes
    }

    /// Where the log records how long its `fdatasync`s take.
    pub fn sync_stats(&self) -> &Arc<SyncStats> {
        &self.sync_stats
    }
}

/// Builder for [`LogConfig`].
///
/// ```
/// use std::time::Duration;
/// use wharf_log::{Durability, LogConfig};
///
/// let config = LogConfig::builder()
///     .segment_max_bytes(64 * 1024 * 1024)
///     .durability(Durability::Interval(Duration::from_millis(50)))
///     .build()?;
/// assert_eq!(config.durability(), Durability::Interval(Duration::from_millis(50)));
/// # Ok::<(), wharf_log::LogError>(())
/// ```
#[derive(Debug, Clone)]
pub struct LogConfigBuilder {
    config: LogConfig,
}

impl LogConfigBuilder {
    /// Roll to a new segment when the active one would exceed this size
    /// (4 KiB ..= 4 GiB - 1).
    pub fn segment_max_bytes(mut self, bytes: u64) -> Self {
        self.config.segment_max_bytes = bytes;
        self
    }

    /// Roll to a new segment when the active one is older than this.
    pub fn segment_max_age(mut self, age: Duration) -> Self {
        self.config.segment_max_age = Some(age);
        self
    }

    /// Bytes of batches between two sparse index entries (at least 1).
    pub fn index_interval_bytes(mut self, bytes: u32) -> Self {
        self.config.index_interval_bytes = bytes;
        self
    }

    /// When appends are synced.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.config.durability = durability;
        self
    }

    /// Retention limits.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.config.retention = retention;
        self
    }

    /// Compression for new batches.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.config.compression = compression;
        self
    }

    /// Largest encoded batch accepted by `append`.
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.config.max_batch_bytes = bytes;
        self
    }

    /// When recovery finds damage in the last segment that is followed by
    /// valid batches, truncate at the damage instead of recording it as a
    /// damaged batch that reads report until an operator repairs it
    /// (default `false`: never drop possibly acknowledged records silently).
    pub fn truncate_corrupt_tail(mut self, truncate: bool) -> Self {
        self.config.truncate_corrupt_tail = truncate;
        self
    }

    /// The storage seam (defaults to the real file system).
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.config.storage = storage;
        self
    }

    /// The clock seam (defaults to the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.config.clock = clock;
        self
    }

    /// Where to record `fdatasync` durations (defaults to counters of this
    /// log's own); pass one `Arc` to several logs to count them together.
    pub fn sync_stats(mut self, stats: Arc<SyncStats>) -> Self {
        self.config.sync_stats = stats;
        self
    }

    /// Where to count damaged batches found and repaired (defaults to
    /// counters of this log's own); pass one `Arc` to several logs to count
    /// them together.
    pub fn integrity_stats(mut self, stats: Arc<IntegrityStats>) -> Self {
        self.config.integrity_stats = stats;
        self
    }

    /// Validates and returns the configuration.
    ///
    /// # Errors
    /// [`LogError::InvalidConfig`] when a value is out of range.
    pub fn build(self) -> Result<LogConfig, LogError> {
        let c = self.config;
        if !(4096..=u64::from(u32::MAX)).contains(&c.segment_max_bytes) {
            return Err(LogError::InvalidConfig {
                field: "segment_max_bytes",
                requirement: "between 4096 and 4294967295",
            });
        }
        if c.index_interval_bytes == 0 {
            return Err(LogError::InvalidConfig {
                field: "index_interval_bytes",
                requirement: "at least 1",
            });
        }
        if c.max_batch_bytes < crate::batch::HEADER_LEN + 8
            || c.max_batch_bytes > crate::batch::MAX_BATCH_BYTES
        {
            return Err(LogError::InvalidConfig {
                field: "max_batch_bytes",
                requirement: "between 56 and 268435456",
            });
        }
        if let Durability::Interval(d) = c.durability {
            if d.is_zero() {
                return Err(LogError::InvalidConfig {
                    field: "durability",
                    requirement: "a non-zero interval",
                });
            }
        }
        Ok(c)
    }
}
