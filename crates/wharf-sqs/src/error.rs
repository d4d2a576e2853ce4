//! Failures specific to the SQS adapter, carried as the `source` of
//! [`wharf_core::Error::Backend`] / [`wharf_core::Error::Unavailable`], and
//! the one place SDK errors are sorted into Wharf's error kinds.

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

use crate::backend::NAME;

/// What went wrong inside the SQS adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqsError {
    /// SQS (or the way to it) refused or failed a call.
    #[error("{context}: {code}: {message}")]
    Api {
        /// The operation.
        context: &'static str,
        /// SQS's error code (`QueueDoesNotExist`, …), or `-` when the call
        /// never got an answer.
        code: String,
        /// SQS's message, or the transport error.
        message: String,
    },
    /// One entry of a batch call failed while others succeeded.
    #[error("{context}: entry {entry} failed: {code}: {message}")]
    BatchEntry {
        /// The operation.
        context: &'static str,
        /// The entry's index in the batch.
        entry: usize,
        /// SQS's error code.
        code: String,
        /// SQS's message.
        message: String,
    },
    /// A received message carried Wharf attributes that do not decode.
    #[error(transparent)]
    Decode(#[from] crate::wire::DecodeError),
    /// The configured queue prefix is not usable in queue names.
    #[error("invalid queue prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        /// The rejected prefix.
        prefix: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
}

/// The SQS error code of `e`, if SQS answered.
pub(crate) fn code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    match e {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

/// Sorts an SDK error: no answer (dispatch, timeout, a 5xx-ish response) is
/// [`wharf_core::Error::Unavailable`]; a message over SQS's size limit is
/// [`wharf_core::Error::MessageTooLarge`]; the rest is
/// [`wharf_core::Error::Backend`].
pub(crate) fn sdk<E, R>(context: &'static str, e: SdkError<E, R>) -> wharf_core::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let (code, message, transient) = match &e {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("-").to_owned();
            let message = s.err().message().unwrap_or("").to_owned();
            let transient = matches!(
                code.as_str(),
                "ServiceUnavailable" | "InternalError" | "RequestThrottled" | "ThrottlingException"
            );
            (code, message, transient)
        }
        other => (
            "-".to_owned(),
            aws_sdk_sqs::error::DisplayErrorContext(other).to_string(),
            true,
        ),
    };
    let source = Box::new(SqsError::Api {
        context,
        code,
        message,
    });
    if transient {
        wharf_core::Error::Unavailable {
            backend: NAME,
            source,
        }
    } else {
        wharf_core::Error::Backend {
            backend: NAME,
            source,
        }
    }
}

/// `wharf_core::Error::Backend` for an adapter failure.
pub(crate) fn backend(e: SqsError) -> wharf_core::Error {
    wharf_core::Error::Backend {
        backend: NAME,
        source: Box::new(e),
    }
}
