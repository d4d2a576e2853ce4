//! What a handler returns: an [`Outcome`] that says how to settle the
//! delivery, or a [`HandlerError`] that says whether trying again may help.
//!
//! The router turns both into exactly one settlement (ack, nack, nack with
//! delay, reject); middleware in between may change one into the other.

use std::time::Duration;

use wharf_core::BoxError;

/// How the router settles a delivery once its handler has finished.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Processed: acknowledge.
    Ack,
    /// Not processed: redeliver after `delay` (zero = as soon as possible).
    ///
    /// On a backend without [`wharf_core::Capability::NackWithDelay`] the
    /// delay is ignored and the delivery is nacked for immediate redelivery.
    Retry {
        /// How long to wait before redelivery.
        delay: Duration,
    },
    /// Cannot be processed: dead-letter it with `reason`.
    Reject {
        /// Why; stored in the `wharf-dlq-reason` header.
        reason: String,
    },
}

impl Outcome {
    /// [`Outcome::Retry`] with no delay.
    pub const fn retry() -> Self {
        Outcome::Retry {
            delay: Duration::ZERO,
        }
    }

    /// [`Outcome::Retry`] after `delay`.
    pub const fn retry_after(delay: Duration) -> Self {
        Outcome::Retry { delay }
    }

    /// [`Outcome::Reject`] with `reason`.
    pub fn reject(reason: impl Into<String>) -> Self {
        Outcome::Reject {
            reason: reason.into(),
        }
    }
}

/// Why a handler failed, classified so middleware knows whether to retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// A failure that may go away (a database was down, a call timed out).
    #[error("retryable failure: {source}")]
    Retryable {
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// A failure that will happen again for this message (bad payload, a
    /// business rule): retrying is pointless, dead-letter it.
    #[error("permanent failure: {source}")]
    Permanent {
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The handler did not finish within the [`crate::timeout`] limit (retryable).
    #[error("handler timed out after {after:?}")]
    Timeout {
        /// The limit that was exceeded.
        after: Duration,
    },
    /// The handler panicked; caught by [`crate::recover`] (permanent).
    #[error("handler panicked: {message}")]
    Panicked {
        /// The panic payload, if it was a string.
        message: String,
    },
    /// [`crate::retry`] gave up; the last failure is kept (permanent).
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// How many times the handler ran.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        last: Box<HandlerError>,
    },
    /// The payload could not be decoded into the handler's type (permanent).
    #[error(transparent)]
    Decode(#[from] wharf_core::CodecError),
    /// A backend call made by middleware or the handler failed; retryable
    /// when [`wharf_core::Error::is_transient`] or not bad input.
    #[error(transparent)]
    Backend(#[from] wharf_core::Error),
}

impl HandlerError {
    /// A failure that may go away on retry.
    pub fn retryable(source: impl Into<BoxError>) -> Self {
        HandlerError::Retryable {
            source: source.into(),
        }
    }

    /// A failure that will repeat for this message.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        HandlerError::Permanent {
            source: source.into(),
        }
    }

    /// Whether handling the same message again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            HandlerError::Retryable { .. } | HandlerError::Timeout { .. } => true,
            HandlerError::Backend(e) => !e.is_bad_input(),
            HandlerError::Permanent { .. }
            | HandlerError::Panicked { .. }
            | HandlerError::RetriesExhausted { .. }
            | HandlerError::Decode(_) => false,
        }
    }
}

/// Classifies any error as retryable or permanent with `?`.
///
/// ```
/// use wharf_router::{HandlerError, ResultExt};
/// fn parse(s: &str) -> Result<u32, HandlerError> {
///     s.parse::<u32>().permanent()
/// }
/// assert!(!parse("x").unwrap_err().is_retryable());
/// ```
pub trait ResultExt<T> {
    /// Maps the error to [`HandlerError::Retryable`].
    ///
    /// # Errors
    /// The original error, classified.
    fn retryable(self) -> Result<T, HandlerError>;
    /// Maps the error to [`HandlerError::Permanent`].
    ///
    /// # Errors
    /// The original error, classified.
    fn permanent(self) -> Result<T, HandlerError>;
}

impl<T, E: Into<BoxError>> ResultExt<T> for Result<T, E> {
    fn retryable(self) -> Result<T, HandlerError> {
        self.map_err(HandlerError::retryable)
    }
    fn permanent(self) -> Result<T, HandlerError> {
        self.map_err(HandlerError::permanent)
    }
}

/// What every handler and middleware in this crate returns.
pub type HandlerResult = Result<Outcome, HandlerError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_separates_retryable_from_permanent() {
        assert!(HandlerError::retryable("db down").is_retryable());
        assert!(HandlerError::Timeout {
            after: Duration::from_secs(1)
        }
        .is_retryable());
        assert!(!HandlerError::permanent("bad").is_retryable());
        assert!(!HandlerError::Panicked {
            message: "boom".into()
        }
        .is_retryable());
        let unavailable = wharf_core::Error::Unavailable {
            backend: "x",
            source: "down".into(),
        };
        assert!(HandlerError::from(unavailable).is_retryable());
        let too_large = wharf_core::Error::MessageTooLarge { size: 2, max: 1 };
        assert!(!HandlerError::from(too_large).is_retryable());
    }

    #[test]
    fn result_ext_wraps_foreign_errors() {
        let r: Result<u8, _> = "300".parse::<u8>().retryable();
        assert!(r.unwrap_err().is_retryable());
    }
}
