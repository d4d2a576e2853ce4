//! Failures specific to the Kafka adapter, carried as the `source` of
//! [`wharf_core::Error::Backend`] / [`wharf_core::Error::Unavailable`].

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::backend::NAME;

/// What went wrong inside the Kafka adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaAdapterError {
    /// An error reported by librdkafka.
    #[error("{context}: {source}")]
    Client {
        /// What was being done.
        context: &'static str,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// The broker answered an admin request for `topic` with an error.
    #[error("{context} {topic}: {code}")]
    Admin {
        /// What was being done.
        context: &'static str,
        /// The topic concerned (the Kafka name, with the prefix).
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
    /// A delivery report never came (the producer was dropped).
    #[error("the producer dropped the delivery report")]
    ReportLost,
}

fn is_unavailable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::NotCoordinator
    )
}

/// Maps a client error: broker trouble is [`wharf_core::Error::Unavailable`],
/// a timeout [`wharf_core::Error::Timeout`], anything else
/// [`wharf_core::Error::Backend`].
pub(crate) fn map(
    context: &'static str,
    e: KafkaError,
    timeout: std::time::Duration,
) -> wharf_core::Error {
    let code = e.rdkafka_error_code();
    if matches!(
        code,
        Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::OperationTimedOut)
            | Some(RDKafkaErrorCode::RequestTimedOut)
    ) {
        return wharf_core::Error::Timeout {
            operation: context,
            after: timeout,
        };
    }
    let source = Box::new(KafkaAdapterError::Client { context, source: e });
    if code.is_some_and(is_unavailable) {
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

/// [`wharf_core::Error::Backend`] for a failed admin operation on `topic`.
pub(crate) fn admin(
    context: &'static str,
    topic: &str,
    code: RDKafkaErrorCode,
) -> wharf_core::Error {
    let source = Box::new(KafkaAdapterError::Admin {
        context,
        topic: topic.to_owned(),
        code,
    });
    if is_unavailable(code) {
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
