//! [`EventStoreError`]: the one error type of every [`EventStore`](crate::EventStore)
//! implementation, so code written against the trait handles a conflict the
//! same way on the embedded store, PostgreSQL or a remote server.

use crate::types::{CurrentVersion, ExpectedVersion, Position, StreamId};

/// What can go wrong in an event store operation.
///
/// The conflicts ([`WrongExpectedVersion`](Self::WrongExpectedVersion),
/// [`ConditionFailed`](Self::ConditionFailed)) and the input errors
/// ([`InvalidArgument`](Self::InvalidArgument), [`TooLarge`](Self::TooLarge))
/// guarantee that nothing was stored. So does
/// [`StorageFull`](Self::StorageFull); [`Storage`](Self::Storage) does on the
/// embedded store (a failed write or sync is cut back), see
/// [`EventStoreError::is_retryable`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventStoreError {
    /// The stream was not at the version the append (or delete) expected.
    #[error("wrong expected version on stream {stream}: expected {expected}, actual {actual}")]
    WrongExpectedVersion {
        /// The stream appended to.
        stream: StreamId,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// What the stream was at when the append was decided.
        actual: CurrentVersion,
    },
    /// A conditional append found an event matching its query after its
    /// position (the "dynamic consistency boundary" moved).
    #[error("append condition failed: event at position {conflict} matches the query (checked after {after:?})")]
    ConditionFailed {
        /// The condition's bound: events after it were checked (`None`: the
        /// whole log).
        after: Option<Position>,
        /// A matching event written after `after` (the latest one found).
        conflict: Position,
    },
    /// The stream has no events (never written, or soft-deleted).
    #[error("stream {stream} not found")]
    StreamNotFound {
        /// The stream.
        stream: StreamId,
    },
    /// The stream was tombstoned (hard-deleted): it can never be read or
    /// written again.
    #[error("stream {stream} is deleted (tombstoned)")]
    StreamDeleted {
        /// The stream.
        stream: StreamId,
    },
    /// A name, version, position or option broke a rule.
    #[error("invalid {field} {value:?}: {requirement}")]
    InvalidArgument {
        /// Which argument.
        field: &'static str,
        /// The value given (shortened to 64 characters).
        value: String,
        /// The rule it broke.
        requirement: &'static str,
    },
    /// An event or an append exceeded a [`Limits`](crate::Limits) bound.
    #[error("{what} is {size} bytes, more than the maximum {max}")]
    TooLarge {
        /// What was too large: `"event"`, `"append"`, or `"events in one append"`
        /// (then `size`/`max` count events).
        what: &'static str,
        /// Its size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// The storage is full; nothing was stored, retry once space is freed.
    #[error("storage full: {source}")]
    StorageFull {
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The storage failed (I/O error, corrupt data, a failed log).
    #[error("storage error: {source}")]
    Storage {
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A remote store or database could not be reached; the outcome of a
    /// write in flight is unknown.
    #[error("event store unavailable: {source}")]
    Unavailable {
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store was closed.
    #[error("event store closed")]
    Closed,
    /// A projection's read model failed (its reset, in a rebuild).
    #[error("projection read model failed: {0}")]
    Projection(String),
    /// A remote store refused the caller: no or an unknown token, or a
    /// token without the right on the stream (or streams) named. Nothing
    /// was stored.
    #[error("permission denied: {reason}")]
    PermissionDenied {
        /// The server's explanation (which right on which stream).
        reason: String,
    },
}

impl EventStoreError {
    /// True for the two conflict errors: re-read, decide again, retry.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            EventStoreError::WrongExpectedVersion { .. } | EventStoreError::ConditionFailed { .. }
        )
    }

    /// True when the same request may succeed later unchanged: storage
    /// full, an unavailable remote, or a storage error after which the
    /// store goes on (the embedded store cuts a failed write back and keeps
    /// serving). Conflicts are not retryable unchanged: decide again first.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EventStoreError::StorageFull { .. }
                | EventStoreError::Storage { .. }
                | EventStoreError::Unavailable { .. }
        )
    }

    pub(crate) fn invalid(
        field: &'static str,
        value: &str,
        requirement: &'static str,
    ) -> EventStoreError {
        let value: String = value.chars().take(64).collect();
        EventStoreError::InvalidArgument {
            field,
            value,
            requirement,
        }
    }
}

impl From<wharf_log::LogError> for EventStoreError {
    fn from(e: wharf_log::LogError) -> Self {
        match e {
            wharf_log::LogError::Closed => EventStoreError::Closed,
            e if e.is_storage_full() => EventStoreError::StorageFull {
                source: Box::new(e),
            },
            e => EventStoreError::Storage {
                source: Box::new(e),
            },
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = EventStoreError> = std::result::Result<T, E>;
