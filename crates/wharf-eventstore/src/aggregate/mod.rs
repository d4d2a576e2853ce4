//! Aggregates on any [`EventStore`](crate::EventStore): the [`Aggregate`]
//! and [`DomainEvent`] traits, the [`Repository`] that loads an aggregate
//! from its latest snapshot plus later events and runs commands with a
//! bounded retry on conflict, [`Upcasters`] that turn stored events of old
//! schema versions into the current ones on read, and the
//! given/when/then harness [`AggregateTest`] (no I/O).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use serde::{Deserialize, Serialize};
//! use wharf_eventstore::aggregate::{json, Aggregate, CodecError, DomainEvent, JsonSnapshots, Repository};
//! use wharf_eventstore::EmbeddedStore;
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! enum AccountEvent {
//!     Deposited { cents: u64 },
//!     Withdrawn { cents: u64 },
//! }
//!
//! impl DomainEvent for AccountEvent {
//!     fn event_type(&self) -> &'static str {
//!         match self {
//!             AccountEvent::Deposited { .. } => "Deposited",
//!             AccountEvent::Withdrawn { .. } => "Withdrawn",
//!         }
//!     }
//!     fn encode(&self) -> Result<bytes::Bytes, CodecError> {
//!         json::encode(self)
//!     }
//!     fn decode(_type: &str, _version: u32, payload: &[u8]) -> Result<Self, CodecError> {
//!         json::decode(payload)
//!     }
//! }
//!
//! #[derive(Debug, Default, Serialize, Deserialize)]
//! struct Account {
//!     balance: u64,
//! }
//!
//! #[derive(Debug, Clone)]
//! enum Command {
//!     Deposit(u64),
//!     Withdraw(u64),
//! }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("insufficient funds")]
//! struct Insufficient;
//!
//! impl Aggregate for Account {
//!     const NAME: &'static str = "account";
//!     type Command = Command;
//!     type Event = AccountEvent;
//!     type Error = Insufficient;
//!     fn handle(&self, command: Command) -> Result<Vec<AccountEvent>, Insufficient> {
//!         match command {
//!             Command::Deposit(c) => Ok(vec![AccountEvent::Deposited { cents: c }]),
//!             Command::Withdraw(c) if c > self.balance => Err(Insufficient),
//!             Command::Withdraw(c) => Ok(vec![AccountEvent::Withdrawn { cents: c }]),
//!         }
//!     }
//!     fn apply(&mut self, event: &AccountEvent) {
//!         match event {
//!             AccountEvent::Deposited { cents } => self.balance += cents,
//!             AccountEvent::Withdrawn { cents } => self.balance -= cents,
//!         }
//!     }
//! }
//!
//! let store = Arc::new(EmbeddedStore::in_memory().await?);
//! let accounts = Repository::<Account>::new(store).snapshot_every(100, JsonSnapshots::new(1));
//! accounts.execute("alice", Command::Deposit(500)).await?;
//! let done = accounts.execute("alice", Command::Withdraw(200)).await?;
//! assert_eq!(done.state.balance, 300);
//! assert!(accounts.execute("alice", Command::Withdraw(1_000)).await.is_err());
//! assert_eq!(accounts.load("alice").await?.state.balance, 300);
//! # Ok(()) }
//! ```

mod repository;
mod testing;
mod upcast;

use bytes::Bytes;

pub use crate::aggregate::repository::{
    Executed, JsonSnapshots, Loaded, Repository, RepositoryError, SnapshotCodec,
    SNAPSHOT_VERSION_METADATA,
};
pub use crate::aggregate::testing::{AggregateTest, WhenResult};
pub use crate::aggregate::upcast::{RawEvent, Upcaster, Upcasters};

/// Why an event or a snapshot could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// JSON (de)serialization failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// No decoder for this type at this schema version (an upcaster is
    /// missing, or the event is not this aggregate's).
    #[error("unknown event {event_type} at schema version {schema_version}")]
    Unknown {
        /// The stored type.
        event_type: String,
        /// The stored (or upcast) schema version.
        schema_version: u32,
    },
    /// An upcaster returned an event that is not newer (same type, no
    /// higher version), or the chain ran too long: it would loop.
    #[error("upcaster for {event_type} v{from_version} does not move the event forward")]
    UpcastLoop {
        /// The type the upcaster was registered for.
        event_type: String,
        /// The version it was registered for.
        from_version: u32,
    },
    /// Any other codec failure.
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// An aggregate's event: how it is named, versioned, tagged and encoded.
pub trait DomainEvent: Sized + Send + Sync + 'static {
    /// The type name stored with the event.
    fn event_type(&self) -> &'static str;

    /// The schema version this code writes (default 1). Stored events of an
    /// older version reach [`DomainEvent::decode`] only after the
    /// repository's [`Upcasters`] brought them here.
    fn schema_version(&self) -> u32 {
        1
    }

    /// Tags stored with the event, for queries and conditional appends
    /// (default none).
    fn tags(&self) -> Vec<String> {
        Vec::new()
    }

    /// The payload.
    ///
    /// # Errors
    /// [`CodecError`] when the event cannot be encoded.
    fn encode(&self) -> Result<Bytes, CodecError>;

    /// The event from a stored type, schema version (after upcasting) and
    /// payload.
    ///
    /// # Errors
    /// [`CodecError`], e.g. [`CodecError::Unknown`] for a type or version
    /// this code does not know.
    fn decode(event_type: &str, schema_version: u32, payload: &[u8]) -> Result<Self, CodecError>;
}

/// A consistency boundary that decides on commands and evolves by events.
///
/// `handle` must be pure (no I/O): the repository may call it again after a
/// conflict, on a freshly loaded state.
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The category: an aggregate `id` lives in stream `"{NAME}-{id}"`.
    const NAME: &'static str;
    /// What it is asked to do.
    type Command: Send;
    /// What it records.
    type Event: DomainEvent;
    /// Why it refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides: the events a command produces (none is fine), or a refusal.
    ///
    /// # Errors
    /// The aggregate's own refusal.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolves the state by one event. Never fails: an event is a fact.
    fn apply(&mut self, event: &Self::Event);
}

/// JSON helpers for [`DomainEvent`] and snapshot codecs.
pub mod json {
    use bytes::Bytes;
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use super::CodecError;

    /// Serializes `value` to JSON bytes.
    ///
    /// # Errors
    /// [`CodecError::Json`].
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, CodecError> {
        Ok(Bytes::from(serde_json::to_vec(value)?))
    }

    /// Deserializes JSON bytes.
    ///
    /// # Errors
    /// [`CodecError::Json`].
    pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
        Ok(serde_json::from_slice(payload)?)
    }
}
