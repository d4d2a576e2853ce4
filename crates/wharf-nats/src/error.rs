//! Failures specific to the NATS adapter, carried as the `source` of
//! [`wharf_core::Error::Backend`] / [`wharf_core::Error::Unavailable`].

/// What went wrong inside the NATS adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The stream name is not usable as a JetStream stream name.
    #[error("invalid stream name {name:?}: {reason}")]
    InvalidStreamName {
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A delivered message had no JetStream ack subject (not from a pull consumer).
    #[error("message on {subject:?} has no JetStream ack subject")]
    NoAckSubject {
        /// The message's subject.
        subject: String,
    },
    /// The server ended a pull request with an error status.
    #[error("pull request failed with status {status}: {description}")]
    PullStatus {
        /// The NATS status code.
        status: u16,
        /// The server's description.
        description: String,
    },
    /// Any error reported by the `async-nats` client.
    #[error("{context}: {source}")]
    Client {
        /// What was being done.
        context: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// `wharf_core::Error::Backend` for a client error.
pub(crate) fn backend(
    context: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> wharf_core::Error {
    wharf_core::Error::Backend {
        backend: crate::backend::NAME,
        source: Box::new(NatsError::Client {
            context,
            source: Box::new(e),
        }),
    }
}

/// `wharf_core::Error::Unavailable` for a client error.
pub(crate) fn unavailable(
    context: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> wharf_core::Error {
    unavailable_for(crate::backend::NAME, context, e)
}

/// [`unavailable`] on behalf of the backend named `backend`.
pub(crate) fn unavailable_for(
    backend: &'static str,
    context: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> wharf_core::Error {
    wharf_core::Error::Unavailable {
        backend,
        source: Box::new(NatsError::Client {
            context,
            source: Box::new(e),
        }),
    }
}
