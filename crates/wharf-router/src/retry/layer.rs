//! [`RetryLayer`]: the retry settings, applied to a service as [`super::Retry`].

use std::time::Duration;

use tower::Layer;

use super::backoff::{Backoff, ExponentialBackoff};
use super::policy::{Policy, RetryableErrors};
use super::Retry;

/// In-process retry with backoff; see the [module docs](super).
///
/// ```
/// use std::time::Duration;
/// use wharf_router::retry::{ExponentialBackoff, RetryLayer};
/// let layer = RetryLayer::new()
///     .max_attempts(5)
///     .max_elapsed(Duration::from_secs(30))
///     .backoff(ExponentialBackoff::new(Duration::from_millis(200), Duration::from_secs(5)));
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct RetryLayer<P = RetryableErrors, B = ExponentialBackoff> {
    pub(super) policy: P,
    pub(super) backoff: B,
    pub(super) max_attempts: u32,
    pub(super) max_elapsed: Option<Duration>,
}

impl RetryLayer {
    /// 3 attempts, [`ExponentialBackoff::default`], retrying retryable errors.
    pub fn new() -> Self {
        RetryLayer {
            policy: RetryableErrors,
            backoff: ExponentialBackoff::default(),
            max_attempts: 3,
            max_elapsed: None,
        }
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Policy, B: Backoff> RetryLayer<P, B> {
    /// Runs the handler at most `n` times in all (≥ 1).
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Gives up instead of waiting for a retry that would start more than
    /// `limit` after the first attempt began.
    #[must_use]
    pub fn max_elapsed(mut self, limit: Duration) -> Self {
        self.max_elapsed = Some(limit);
        self
    }

    /// Uses `backoff` between attempts.
    pub fn backoff<B2: Backoff>(self, backoff: B2) -> RetryLayer<P, B2> {
        RetryLayer {
            policy: self.policy,
            backoff,
            max_attempts: self.max_attempts,
            max_elapsed: self.max_elapsed,
        }
    }

    /// Uses `policy` to decide what to retry.
    pub fn policy<P2: Policy>(self, policy: P2) -> RetryLayer<P2, B> {
        RetryLayer {
            policy,
            backoff: self.backoff,
            max_attempts: self.max_attempts,
            max_elapsed: self.max_elapsed,
        }
    }
}

impl<S, P: Clone, B: Clone> Layer<S> for RetryLayer<P, B> {
    type Service = Retry<S, P, B>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            layer: RetryLayer {
                policy: self.policy.clone(),
                backoff: self.backoff.clone(),
                max_attempts: self.max_attempts,
                max_elapsed: self.max_elapsed,
            },
            retried: crate::metrics::retried(),
        }
    }
}
