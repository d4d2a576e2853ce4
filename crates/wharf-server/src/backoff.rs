//! Backoff for delivery streams (SSE, WebSocket, gRPC consume) that meet
//! repeated errors: each consecutive error doubles the pause before the
//! stream asks its subscription again (10 ms up to 5 s) and a delivery resets
//! it, so a failing subscription costs a few wake-ups a second, not a core.

use std::time::Duration;

/// Consecutive-error counter of one stream.
#[derive(Debug, Default)]
pub(crate) struct ErrorBackoff {
    failures: u32,
}

impl ErrorBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(5);

    /// Records an error; returns how long to pause before asking again.
    pub(crate) fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let factor = 1u32 << (self.failures - 1).min(16);
        Self::FIRST.saturating_mul(factor).min(Self::MAX)
    }

    /// Records a delivery: the next error pauses briefly again.
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_five_seconds_and_a_delivery_resets_them() {
        let mut b = ErrorBackoff::default();
        let ms: Vec<u128> = (0..12).map(|_| b.failed().as_millis()).collect();
        assert_eq!(
            ms,
            [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5000, 5000, 5000]
        );
        // A stream erroring for a minute asks about 20 times, not millions.
        let mut b = ErrorBackoff::default();
        let mut spent = Duration::ZERO;
        let mut asks = 0;
        while spent < Duration::from_secs(60) {
            spent += b.failed();
            asks += 1;
        }
        assert!(asks < 25, "{asks}");
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(10));
    }
}
