//! The one error type of the core traits.
//!
//! Variants separate what the caller did wrong (bad input), what the backend
//! can't do, and what went wrong at run time (unavailable, timeout, closed),
//! so callers can decide whether to retry without parsing messages.

use std::fmt;
use std::time::Duration;

use crate::capability::Capability;
use crate::codec::CodecError;

/// A boxed error from a backend's own client or storage.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with Wharf's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of name failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NameKind {
    /// A topic name, e.g. `orders.created`.
    Topic,
    /// A subscription pattern, e.g. `orders.*` or `orders.>`.
    Pattern,
    /// A consumer group name.
    Group,
    /// A header name.
    Header,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Topic => "topic",
            NameKind::Pattern => "pattern",
            NameKind::Group => "group",
            NameKind::Header => "header",
        })
    }
}

/// Errors returned by publishers, subscribers, deliveries and codecs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A topic, pattern, group or header name is not valid. Nothing was stored.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// What the name is for.
        kind: NameKind,
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// A message is larger than the backend or topic allows. Nothing was stored.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Size of the message (payload + key + headers) in bytes.
        size: usize,
        /// The limit in force.
        max: usize,
    },

    /// A message has more headers than the backend allows
    /// ([`crate::Limits::max_headers`]). Nothing was stored.
    #[error("message has {count} headers, more than the limit of {max}")]
    TooManyHeaders {
        /// Number of headers of the message (each name once).
        count: usize,
        /// The limit in force.
        max: usize,
    },

    /// A message's header names and values together are larger than the
    /// backend allows ([`crate::Limits::max_header_bytes`]). Nothing was stored.
    #[error("message headers of {size} bytes exceed the limit of {max} bytes")]
    HeadersTooLarge {
        /// Bytes of all header names and values.
        size: usize,
        /// The limit in force.
        max: usize,
    },

    /// The topic does not exist and the backend does not create topics on demand.
    #[error("unknown topic {topic:?}")]
    UnknownTopic {
        /// The topic that was named.
        topic: String,
    },

    /// An offset outside what the partition holds.
    #[error("offset {offset} is out of range for {topic:?} partition {partition} (valid: {start}..={end})")]
    InvalidOffset {
        /// Topic of the partition.
        topic: String,
        /// Partition number.
        partition: u32,
        /// The requested offset.
        offset: u64,
        /// First offset still stored.
        start: u64,
        /// Next offset to be assigned.
        end: u64,
    },

    /// An option or argument is out of its valid range.
    #[error("invalid argument {name}: {reason}")]
    InvalidArgument {
        /// Name of the option or argument.
        name: &'static str,
        /// Which rule it breaks.
        reason: String,
    },

    /// The backend cannot do what was asked; check [`crate::Backend::capabilities`] at start-up.
    #[error("backend {backend} does not support {capability}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// The capability that is missing.
        capability: Capability,
    },

    /// The backend cannot be reached right now; retrying later may succeed.
    #[error("backend {backend} is unavailable: {source}")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },

    /// A server-wide cap is reached (consumer groups, pollers); retrying
    /// after others are released may succeed. Nothing was changed.
    #[error("too many {resource}: the limit is {limit}")]
    ResourceExhausted {
        /// What ran out, e.g. `"consumer groups"`.
        resource: &'static str,
        /// The cap in force.
        limit: u64,
    },

    /// The backend's storage is full (no space left, or over quota).
    /// Nothing of the failed call was stored; retrying once space is freed
    /// (retention, a deleted topic, a bigger disk) succeeds.
    #[error("backend {backend} is out of storage space: {source}")]
    StorageFull {
        /// The backend's name.
        backend: &'static str,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },

    /// An operation did not complete in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        operation: &'static str,
        /// How long was waited.
        after: Duration,
    },

    /// The backend, publisher or subscription has been closed.
    #[error("{what} is closed")]
    Closed {
        /// What was closed.
        what: &'static str,
    },

    /// The delivery is no longer held by this consumer (already settled, lease
    /// expired and redelivered elsewhere, or unknown id).
    #[error("delivery {id} is not held by this consumer")]
    UnknownDelivery {
        /// The delivery's id as the backend knows it.
        id: String,
    },

    /// A payload could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),

    /// Any other failure inside a backend (storage, protocol, server error).
    #[error("backend {backend} failed: {source}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Whether retrying the same call later may succeed (the backend was
    /// unavailable, slow, or out of storage space), as opposed to bad input
    /// or a closed handle.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. }
                | Error::Timeout { .. }
                | Error::ResourceExhausted { .. }
                | Error::StorageFull { .. }
        )
    }

    /// Whether the error is the caller's fault: the same input will always fail.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::InvalidName { .. }
                | Error::MessageTooLarge { .. }
                | Error::TooManyHeaders { .. }
                | Error::HeadersTooLarge { .. }
                | Error::InvalidOffset { .. }
                | Error::InvalidArgument { .. }
                | Error::Codec(_)
        )
    }
}
