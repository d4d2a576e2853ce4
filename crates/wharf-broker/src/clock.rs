//! The broker's one source of time.
//!
//! Wall-clock milliseconds (for `deliver_at`, TTL, dead-letter headers) are
//! derived from tokio's monotonic clock plus the wall time at start-up, so a
//! test that pauses tokio's clock drives leases, delays *and* expiry together
//! without sleeping.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// How far ahead a deadline may lie: longer waits mean "not in this
/// process's lifetime" anyway (a restart re-derives every deadline).
pub(crate) const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Monotonic time with a wall-clock reading derived from it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base_instant: Instant,
    base_wall_ms: u64,
}

impl Clock {
    pub(crate) fn new() -> Self {
        let base_wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Clock {
            base_instant: Instant::now(),
            base_wall_ms,
        }
    }

    pub(crate) fn now(&self) -> Instant {
        Instant::now()
    }

    /// `now() + d`, with `d` capped at [`FAR`]: a delay, lease or delivery
    /// time is the caller's input, and `Instant + Duration::MAX` panics
    /// (inside a group's lock, which would wedge the group).
    pub(crate) fn after(&self, d: Duration) -> Instant {
        let now = Instant::now();
        now.checked_add(d.min(FAR)).unwrap_or(now)
    }

    /// Milliseconds since the Unix epoch, as of `now()`.
    pub(crate) fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    pub(crate) fn ms_at(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.base_instant);
        self.base_wall_ms
            .saturating_add(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    /// The instant at which the wall clock reads `ms` (now, if already past).
    pub(crate) fn instant_at_ms(&self, ms: u64) -> Instant {
        let now_ms = self.now_ms();
        let now = Instant::now();
        if ms <= now_ms {
            now
        } else {
            now.checked_add(Duration::from_millis(ms - now_ms).min(FAR))
                .unwrap_or(now)
        }
    }
}
