//! `wharf-eventstore`: event sourcing on Wharf — an event store with
//! streams, optimistic concurrency, conditional appends across streams (the
//! "dynamic consistency boundary"), a global log with catch-up
//! subscriptions and stream metadata — and aggregates with snapshots and
//! upcasting on top of it.
//!
//! The [`EventStore`] trait is object-safe and async; [`EmbeddedStore`] is
//! its in-process implementation on `wharf-log` (one durable log, group
//! commit, an in-memory index rebuilt on open). With the `postgres` feature,
//! `postgres::PgEventStore` implements it on PostgreSQL (sqlx), assigning
//! global positions under a transaction-scoped lock so a reader of the
//! global log never skips a late commit (the module docs say how). The conformance suite every
//! implementation passes is `wharf_testkit::eventstore`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), wharf_eventstore::EventStoreError> {
//! use wharf_eventstore::{
//!     AppendCondition, AppendRequest, EmbeddedStore, EventData, EventStore, EventStoreError,
//!     ExpectedVersion, GlobalFilter, Position, Query, ReadStream, StreamId, SubscribeFrom,
//! };
//!
//! let dir = tempfile::tempdir().expect("temp dir");
//! let store = EmbeddedStore::open(dir.path()).await?;
//! let order = StreamId::new("order-42")?;
//!
//! // Append two events atomically to a new stream; durable when it returns.
//! let r = store
//!     .append(&order, ExpectedVersion::NoStream, vec![
//!         EventData::new("OrderPlaced", r#"{"total":42}"#).with_tag("customer:7"),
//!         EventData::new("OrderPaid", "{}").with_tag("customer:7"),
//!     ])
//!     .await?;
//! assert_eq!((r.first_version, r.last_version), (0, 1));
//!
//! // A second writer that read version 0 loses the race, typed.
//! let stale = store
//!     .append(&order, ExpectedVersion::Exact(0), vec![EventData::new("OrderCancelled", "{}")])
//!     .await;
//! assert!(matches!(stale, Err(EventStoreError::WrongExpectedVersion { .. })));
//!
//! // Conditional append across streams: only if nothing tagged customer:7
//! // happened after the position our decision read up to.
//! let seen = r.last_position;
//! let credit = StreamId::new("credit-7")?;
//! let req = AppendRequest::new(credit.clone(), ExpectedVersion::Any, vec![
//!     EventData::new("CreditReserved", "{}").with_tag("customer:7"),
//! ])
//! .condition(AppendCondition::new(Query::tags(["customer:7"])).after(seen));
//! store.append_with(req.clone()).await?;
//! // The same decision again is now stale: the reservation matches.
//! assert!(matches!(
//!     store.append_with(req).await,
//!     Err(EventStoreError::ConditionFailed { .. })
//! ));
//!
//! // Read a stream backwards, the global log in commit order, or subscribe.
//! let last = store.read_stream(&order, ReadStream::backwards().max_count(1)).await?;
//! assert_eq!(last[0].event_type, "OrderPaid");
//! let all = store.read_all(Position::START, &GlobalFilter::all(), 100).await?;
//! assert_eq!(all.events.len(), 3);
//! let mut sub = store.subscribe(SubscribeFrom::Start, GlobalFilter::all().stream_prefix("order-")).await?;
//! assert_eq!(sub.next().await.expect("an event")?.event_type, "OrderPlaced");
//! store.close().await?;
//! # Ok(()) }
//! ```
//!
//! Projections — read models with durable checkpoints, run side by side,
//! rebuilt from zero, their lag in metrics — are in [`projection`]; the
//! events as a Wharf topic, for the router's consumers, in [`topic`].
//!
//! Aggregates, the repository (snapshots every N events, bounded retry on
//! conflict), upcasters and the given/when/then test harness are in
//! [`aggregate`].
//!
//! The on-disk layout of the embedded store and what recovery does after a
//! crash at each step of an append are in `FORMAT.md` in this crate.

#![warn(missing_docs)]

pub mod aggregate;
mod embedded;
mod error;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod projection;
mod store;
pub mod topic;
mod types;

pub use crate::embedded::{EmbeddedStore, EmbeddedStoreBuilder};
pub use crate::error::{EventStoreError, Result};
pub use crate::store::{EventStore, EventSubscription, SubscriptionReceiver, SubscriptionSender};
pub use crate::types::{
    AllSlice, AppendCondition, AppendRequest, AppendResult, CurrentVersion, Direction, EventData,
    EventId, ExpectedVersion, GlobalFilter, Limits, Position, Query, QueryItem, ReadStream,
    RecordedEvent, StreamFrom, StreamId, StreamInfo, StreamMetadata, SubscribeFrom, MAX_NAME_BYTES,
    MAX_VERSION, SNAPSHOT_EVENT_TYPE, SNAPSHOT_PREFIX,
};
pub use wharf_log::{Clock, Durability, ManualClock, SimStorage, Storage, SystemClock};
