//! Failures specific to the Pub/Sub adapter, carried as the `source` of
//! [`wharf_core::Error::Backend`] / [`wharf_core::Error::Unavailable`], and
//! how a gRPC status from Pub/Sub becomes a Wharf error.

use std::time::Duration;

use gcloud_gax::grpc::{Code, Status};

/// What went wrong inside the Pub/Sub adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PubSubError {
    /// The namespace prefix cannot start a Pub/Sub id.
    #[error("invalid prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        /// The rejected prefix.
        prefix: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A Pub/Sub call failed with a gRPC status.
    #[error("{context}: {code:?}: {message}")]
    Status {
        /// What was being done.
        context: &'static str,
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// Connecting failed.
    #[error("connect: {0}")]
    Connect(#[source] gcloud_gax::conn::Error),
}

/// The Wharf error for a failed call: `Unavailable` for a server that
/// cannot be reached or is overloaded, `Timeout` for a deadline, `Backend`
/// for everything else.
pub(crate) fn status(context: &'static str, s: Status, timeout: Duration) -> wharf_core::Error {
    let code = s.code();
    let source = Box::new(PubSubError::Status {
        context,
        code,
        message: s.message().to_owned(),
    });
    match code {
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted | Code::Cancelled => {
            wharf_core::Error::Unavailable {
                backend: crate::backend::NAME,
                source,
            }
        }
        Code::DeadlineExceeded => wharf_core::Error::Timeout {
            operation: context,
            after: timeout,
        },
        _ => wharf_core::Error::Backend {
            backend: crate::backend::NAME,
            source,
        },
    }
}
