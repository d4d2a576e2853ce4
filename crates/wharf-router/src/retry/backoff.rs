//! How long to wait before each retry: [`Backoff`], and the usual
//! [`ExponentialBackoff`] with full jitter.

use std::time::Duration;

/// Chooses the delay before retry number `retry` (1 = the first retry).
pub trait Backoff: Clone + Send + Sync + 'static {
    /// The delay before retry `retry` (≥ 1).
    fn delay(&self, retry: u32) -> Duration;
}

/// Exponential backoff with full jitter: the delay before retry `n` is
/// uniformly random in `[0, min(max, base · 2^(n-1))]` (AWS's "full
/// jitter", which spreads retries of many consumers apart).
///
/// ```
/// use std::time::Duration;
/// use wharf_router::retry::{Backoff, ExponentialBackoff};
/// let b = ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(10))
///     .without_jitter();
/// assert_eq!(b.delay(1), Duration::from_millis(100));
/// assert_eq!(b.delay(4), Duration::from_millis(800));
/// assert_eq!(b.delay(30), Duration::from_secs(10));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExponentialBackoff {
    base: Duration,
    max: Duration,
    jitter: bool,
}

impl ExponentialBackoff {
    /// Starts at `base`, doubles each retry, never exceeds `max`; full jitter.
    pub fn new(base: Duration, max: Duration) -> Self {
        ExponentialBackoff {
            base,
            max,
            jitter: true,
        }
    }

    /// The same schedule without jitter: exactly `min(max, base · 2^(n-1))`.
    #[must_use]
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The upper bound of the delay before retry `retry`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

impl Default for ExponentialBackoff {
    /// 100 ms doubling up to 10 s, with full jitter.
    fn default() -> Self {
        ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl Backoff for ExponentialBackoff {
    fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        if !self.jitter {
            return ceiling;
        }
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        let r = crate::trace::next_random() % (nanos + 1).max(1);
        Duration::from_nanos(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_and_is_capped_without_overflow() {
        let b = ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let c: Vec<u64> = (1..=8).map(|n| b.ceiling(n).as_secs()).collect();
        assert_eq!(c, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn full_jitter_spreads_delays_over_zero_to_the_ceiling() {
        let b = ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let ceiling = b.ceiling(4);
        let d: Vec<Duration> = (0..2000).map(|_| b.delay(4)).collect();
        assert!(d.iter().all(|x| *x <= ceiling));
        assert!(d.iter().any(|x| *x < ceiling / 4));
        assert!(d.iter().any(|x| *x > ceiling * 3 / 4));
    }
}
