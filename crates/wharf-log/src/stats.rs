//! [`SyncStats`]: how long `fdatasync` takes, counted with relaxed atomics
//! so the append path pays a clock read and three `fetch_add`s per sync
//! round (no lock, no allocation). Several logs may share one (the broker
//! passes the same `Arc` to every partition) and whoever exports metrics
//! reads a [`SyncStatsSnapshot`]; the log itself depends on no metrics crate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the histogram buckets, in microseconds (an observation
/// goes into the first bucket whose bound is at least its duration; longer
/// ones go into the last, unbounded, bucket).
pub const SYNC_BUCKET_BOUNDS_MICROS: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];

const BUCKETS: usize = SYNC_BUCKET_BOUNDS_MICROS.len() + 1;

/// Durations of the data syncs (`fdatasync`) of segment files: the group
/// commit's, the `Interval` flusher's, and those of segment roll and close.
///
/// ```
/// use std::sync::Arc;
/// use wharf_log::{Durability, Log, LogConfig, Record, SyncStats};
///
/// let stats = Arc::new(SyncStats::default());
/// let dir = tempfile::tempdir()?;
/// let config = LogConfig::builder()
///     .durability(Durability::Always)
///     .sync_stats(Arc::clone(&stats))
///     .build()?;
/// let log = Log::open(dir.path(), config)?;
/// log.append(&[Record::new(1, "x")])?;
/// let s = stats.snapshot();
/// assert!(s.count >= 1);
/// assert_eq!(s.count, s.buckets.iter().sum::<u64>());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct SyncStats {
    total_nanos: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// A point-in-time copy of [`SyncStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncStatsSnapshot {
    /// Syncs observed (the sum of `buckets`).
    pub count: u64,
    /// Their total duration in nanoseconds.
    pub total_nanos: u64,
    /// Syncs per bucket (not cumulative); `buckets[i]` took at most
    /// `SYNC_BUCKET_BOUNDS_MICROS[i]` µs and more than the bound before it;
    /// the last entry counts the ones above every bound.
    pub buckets: [u64; BUCKETS],
}

impl SyncStats {
    /// Records one sync that took `took`.
    pub fn record(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let micros = nanos.div_ceil(1_000);
        let i = SYNC_BUCKET_BOUNDS_MICROS.partition_point(|&b| b < micros);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.total_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> SyncStatsSnapshot {
        let buckets: [u64; BUCKETS] =
            std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed));
        SyncStatsSnapshot {
            count: buckets.iter().sum(),
            total_nanos: self.total_nanos.load(Ordering::Relaxed),
            buckets,
        }
    }
}

/// Runs `sync` and records how long it took (also when it failed).
pub(crate) fn timed<T>(stats: &SyncStats, sync: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let r = sync();
    stats.record(start.elapsed());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_first_bucket_whose_bound_holds_them() {
        let s = SyncStats::default();
        s.record(Duration::from_micros(10));
        s.record(Duration::from_micros(50));
        s.record(Duration::from_micros(51));
        s.record(Duration::from_millis(3));
        s.record(Duration::from_secs(5));
        let snap = s.snapshot();
        assert_eq!(snap.count, 5);
        assert_eq!(snap.buckets[0], 2, "10 µs and exactly 50 µs");
        assert_eq!(snap.buckets[1], 1, "51 µs");
        assert_eq!(snap.buckets[6], 1, "3 ms is in the 5 ms bucket");
        assert_eq!(snap.buckets[BUCKETS - 1], 1, "5 s is above every bound");
        assert_eq!(
            snap.total_nanos,
            10_000 + 50_000 + 51_000 + 3_000_000 + 5_000_000_000
        );
    }
}
