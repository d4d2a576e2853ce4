//! The store's events as a Wharf topic: [`PublishToTopic`] is a
//! [`Projection`] that publishes each event passing its filter to a topic of
//! any Wharf backend (the embedded broker, `wharf serve`, NATS, Redis…), so
//! the router consumes events unchanged — consumer groups, retries,
//! dead-letter topics — and [`recorded_event`] turns a delivered message back
//! into the [`RecordedEvent`].
//!
//! Each event becomes one message: its id is the event's id (so a republish
//! after a crash between publish and checkpoint is a duplicate the backend's
//! dedup window drops), its key the stream's name (so a stream's events stay
//! in order on one partition), its payload the event's, and headers carry
//! the rest: [`STREAM`], [`EVENT_TYPE`], [`VERSION`], [`POSITION`],
//! [`SCHEMA_VERSION`], [`TIMESTAMP_MS`], [`TAGS`] (a JSON array) and the
//! event's metadata pairs under their own names.
//!
//! The checkpoint lives in a [`CheckpointStore`]: a [`FileCheckpoint`]
//! (one small file, replaced atomically) or one of the application's own.
//! Publishing comes before the checkpoint, so delivery is at least once,
//! and exactly once within the backend's dedup window.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use wharf_core::{Publisher, Subscriber, SubscribeOptions, StartPosition};
//! use wharf_eventstore::projection::ProjectionRunner;
//! use wharf_eventstore::topic::{recorded_event, FileCheckpoint, PublishToTopic};
//! use wharf_eventstore::{EmbeddedStore, EventData, EventStore, ExpectedVersion, StreamId};
//!
//! let dir = tempfile::tempdir()?;
//! let store: Arc<dyn EventStore> = Arc::new(EmbeddedStore::temporary().await?);
//! # let backend = Arc::new(wharf_memory::MemoryBackend::new());
//! // `backend`: any Wharf backend, e.g. `wharf_broker::Broker::open(dir)`.
//! let bridge = PublishToTopic::new(backend.clone(), "events.orders", FileCheckpoint::new(dir.path().join("orders.ckpt")));
//! let handle = ProjectionRunner::new(store.clone()).start("orders-to-topic", Arc::new(bridge));
//!
//! let mut sub = backend.subscribe(SubscribeOptions::new("events.orders").group("mailer").start(StartPosition::Earliest)).await?;
//! store.append(&StreamId::new("order-1")?, ExpectedVersion::NoStream, vec![EventData::new("OrderPlaced", "{}")]).await?;
//! let delivery = sub.next().await.expect("open")?;
//! let event = recorded_event(delivery.message())?;
//! assert_eq!((event.stream.as_str(), event.event_type.as_str(), event.version), ("order-1", "OrderPlaced", 0));
//! delivery.ack().await?;
//! handle.stop().await;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use wharf_core::{Message, Publisher};

use crate::projection::{Projection, ProjectionError};
use crate::types::{EventData, GlobalFilter, Position, RecordedEvent, StreamId};

/// Header: the event's stream.
pub const STREAM: &str = "wharf-event-stream";
/// Header: the event's type.
pub const EVENT_TYPE: &str = "wharf-event-type";
/// Header: the event's version in its stream.
pub const VERSION: &str = "wharf-event-version";
/// Header: the event's position in the global log.
pub const POSITION: &str = "wharf-event-position";
/// Header: the payload's schema version.
pub const SCHEMA_VERSION: &str = "wharf-event-schema-version";
/// Header: when the store appended it, in milliseconds since the Unix epoch.
pub const TIMESTAMP_MS: &str = "wharf-event-timestamp-ms";
/// Header: the event's tags, as a JSON array of strings.
pub const TAGS: &str = "wharf-event-tags";

const OWN: [&str; 7] = [
    STREAM,
    EVENT_TYPE,
    VERSION,
    POSITION,
    SCHEMA_VERSION,
    TIMESTAMP_MS,
    TAGS,
];

/// The message an event is published as (see the [module docs](self)).
pub fn to_message(event: &RecordedEvent) -> Message {
    let tags = serde_json::to_string(&event.tags).unwrap_or_else(|_| "[]".into());
    let mut b = Message::builder()
        .id(event.id)
        .key(event.stream.as_str().to_owned())
        .payload(event.payload.clone())
        .header(STREAM, event.stream.as_str())
        .header(EVENT_TYPE, event.event_type.as_str())
        .header(VERSION, event.version.to_string())
        .header(POSITION, event.position.value().to_string())
        .header(SCHEMA_VERSION, event.schema_version.to_string())
        .header(TIMESTAMP_MS, event.timestamp_ms.to_string())
        .header(TAGS, tags);
    for (k, v) in &event.metadata {
        b = b.header(k.as_str(), v.as_str());
    }
    b.build()
}

/// Why a message is not an event published by [`PublishToTopic`].
#[derive(Debug, thiserror::Error)]
#[error("not an event message: header {header} {problem}")]
pub struct NotAnEvent {
    /// The header at fault.
    pub header: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

/// The event a message published by [`PublishToTopic`] carries.
///
/// # Errors
/// [`NotAnEvent`] when one of the event headers is missing or malformed.
pub fn recorded_event(message: &Message) -> Result<RecordedEvent, NotAnEvent> {
    fn get<'a>(m: &'a Message, h: &'static str) -> Result<&'a str, NotAnEvent> {
        m.headers().get(h).ok_or(NotAnEvent {
            header: h,
            problem: "is missing",
        })
    }
    fn num<T: std::str::FromStr>(m: &Message, h: &'static str) -> Result<T, NotAnEvent> {
        get(m, h)?.parse().map_err(|_| NotAnEvent {
            header: h,
            problem: "is not a number",
        })
    }
    let stream = StreamId::new(get(message, STREAM)?).map_err(|_| NotAnEvent {
        header: STREAM,
        problem: "is not a stream name",
    })?;
    let tags: Vec<String> = serde_json::from_str(get(message, TAGS)?).map_err(|_| NotAnEvent {
        header: TAGS,
        problem: "is not a JSON array of strings",
    })?;
    let mut data = EventData::new(get(message, EVENT_TYPE)?, message.payload().clone())
        .with_id(message.id())
        .with_schema_version(num(message, SCHEMA_VERSION)?);
    for t in tags {
        data = data.with_tag(t);
    }
    for (k, v) in message.headers().iter() {
        if !OWN.contains(&k) {
            data = data.with_metadata(k, v);
        }
    }
    Ok(RecordedEvent::new(
        stream,
        num(message, VERSION)?,
        Position(num(message, POSITION)?),
        num(message, TIMESTAMP_MS)?,
        data,
    ))
}

/// Where a projection without a database of its own keeps its checkpoint.
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// The stored checkpoint, [`Position::START`] if none.
    async fn load(&self) -> Result<Position, ProjectionError>;
    /// Stores `position`, durably when this returns.
    async fn save(&self, position: Position) -> Result<(), ProjectionError>;
}

/// A checkpoint in one small file, replaced atomically (written to a
/// temporary file, synced, renamed over, the directory synced).
#[derive(Debug, Clone)]
pub struct FileCheckpoint {
    path: PathBuf,
}

impl FileCheckpoint {
    /// The checkpoint kept at `path` (created on the first save).
    pub fn new(path: impl AsRef<Path>) -> FileCheckpoint {
        FileCheckpoint {
            path: path.as_ref().to_owned(),
        }
    }
}

#[async_trait]
impl CheckpointStore for FileCheckpoint {
    async fn load(&self) -> Result<Position, ProjectionError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Position(s.trim().parse().map_err(|_| {
                format!(
                    "checkpoint file {} is not a position: {s:?}",
                    path.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Position::START),
            Err(e) => Err(e.into()),
        })
        .await?
    }

    async fn save(&self, position: Position) -> Result<(), ProjectionError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || -> Result<(), ProjectionError> {
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, position.value().to_string().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await?
    }
}

/// A [`Projection`] that publishes events to a Wharf topic (see the
/// [module docs](self)).
pub struct PublishToTopic {
    publisher: Arc<dyn Publisher>,
    topic: String,
    filter: GlobalFilter,
    checkpoint: Arc<dyn CheckpointStore>,
}

impl std::fmt::Debug for PublishToTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishToTopic")
            .field("topic", &self.topic)
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl PublishToTopic {
    /// Publishes every event of a user stream to `topic` through
    /// `publisher`, keeping its checkpoint in `checkpoint`.
    pub fn new(
        publisher: Arc<dyn Publisher>,
        topic: impl Into<String>,
        checkpoint: impl CheckpointStore,
    ) -> PublishToTopic {
        PublishToTopic {
            publisher,
            topic: topic.into(),
            filter: GlobalFilter::all(),
            checkpoint: Arc::new(checkpoint),
        }
    }

    /// Only the events passing `filter`.
    pub fn filter(mut self, filter: GlobalFilter) -> PublishToTopic {
        self.filter = filter;
        self
    }
}

#[async_trait]
impl Projection for PublishToTopic {
    fn filter(&self) -> GlobalFilter {
        self.filter.clone()
    }

    async fn checkpoint(&self) -> Result<Position, ProjectionError> {
        self.checkpoint.load().await
    }

    async fn apply(&self, events: &[RecordedEvent], next: Position) -> Result<(), ProjectionError> {
        let messages: Vec<Message> = events.iter().map(to_message).collect();
        self.publisher.publish_batch(&self.topic, messages).await?;
        self.checkpoint.save(next).await
    }

    async fn reset(&self) -> Result<(), ProjectionError> {
        self.checkpoint.save(Position::START).await
    }
}
