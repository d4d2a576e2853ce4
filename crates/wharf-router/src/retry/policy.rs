//! Which results are worth retrying: [`Policy`], and the default
//! [`RetryableErrors`] (errors that say they are retryable).

use crate::outcome::HandlerResult;

/// Decides whether a handler result should be retried in-process.
pub trait Policy: Clone + Send + Sync + 'static {
    /// `true` to run the handler again (after the backoff).
    fn should_retry(&self, result: &HandlerResult) -> bool;
}

/// Retries errors for which [`crate::HandlerError::is_retryable`] holds;
/// outcomes (including `Retry`, which asks the backend) pass through.
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryableErrors;

impl Policy for RetryableErrors {
    fn should_retry(&self, result: &HandlerResult) -> bool {
        matches!(result, Err(e) if e.is_retryable())
    }
}

impl<F> Policy for F
where
    F: Fn(&HandlerResult) -> bool + Clone + Send + Sync + 'static,
{
    fn should_retry(&self, result: &HandlerResult) -> bool {
        self(result)
    }
}
