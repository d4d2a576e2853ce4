//! Failures specific to the Redis adapter, carried as the `source` of
//! [`wharf_core::Error::Backend`] / [`wharf_core::Error::Unavailable`].

/// What went wrong inside the Redis adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// Redis answered with a shape this adapter does not expect.
    #[error("unexpected reply to {command}: {detail}")]
    UnexpectedReply {
        /// The command sent.
        command: &'static str,
        /// What was wrong with the reply.
        detail: String,
    },
    /// A stream entry lacks a field every Wharf entry has.
    #[error("stream entry {entry} has no {field:?} field")]
    MissingField {
        /// The entry's stream id.
        entry: String,
        /// The missing field.
        field: &'static str,
    },
    /// A Pub/Sub subscription's connection closed without being asked to
    /// (server restart, `CLIENT KILL`, output buffer limit exceeded).
    #[error("the pub/sub connection closed")]
    PubSubClosed,
    /// Redis answered a subscription's stream read with an error.
    #[error("{command}: {message}")]
    Server {
        /// The command sent.
        command: &'static str,
        /// The error Redis replied with (its code first, e.g. `NOGROUP`).
        message: String,
    },
    /// A subscription's read connection failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Any error reported by the `redis` client.
    #[error("{context}: {source}")]
    Client {
        /// What was being done.
        context: &'static str,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
}

/// Maps a client error: connection trouble is [`wharf_core::Error::Unavailable`],
/// a timeout [`wharf_core::Error::Timeout`], anything else [`wharf_core::Error::Backend`].
pub(crate) fn map(context: &'static str, e: redis::RedisError) -> wharf_core::Error {
    map_for(crate::backend::NAME, context, e)
}

/// [`map`] on behalf of the backend named `backend`.
pub(crate) fn map_for(
    backend: &'static str,
    context: &'static str,
    e: redis::RedisError,
) -> wharf_core::Error {
    if e.is_timeout() {
        return wharf_core::Error::Timeout {
            operation: context,
            after: crate::config::RESPONSE_TIMEOUT,
        };
    }
    let unavailable = e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped();
    let source = Box::new(RedisError::Client { context, source: e });
    if unavailable {
        wharf_core::Error::Unavailable { backend, source }
    } else {
        wharf_core::Error::Backend { backend, source }
    }
}

/// [`wharf_core::Error::Backend`] for a reply of the wrong shape.
pub(crate) fn unexpected(command: &'static str, detail: impl Into<String>) -> wharf_core::Error {
    wharf_core::Error::Backend {
        backend: crate::backend::NAME,
        source: Box::new(RedisError::UnexpectedReply {
            command,
            detail: detail.into(),
        }),
    }
}
