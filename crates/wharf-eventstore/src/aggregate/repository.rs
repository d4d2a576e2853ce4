//! [`Repository`]: loads an aggregate from its latest snapshot plus the
//! events after it (upcast on read), runs a command against it and appends
//! the events with the loaded version expected — retrying on a conflict, a
//! bounded number of times — and snapshots every N events into the
//! aggregate's `$snapshot-` stream. It works on any `Arc<dyn EventStore>`.

use std::hash::{BuildHasher, Hasher};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::aggregate::{Aggregate, CodecError, DomainEvent, RawEvent, Upcasters};
use crate::error::EventStoreError;
use crate::store::EventStore;
use crate::types::{
    AppendResult, CurrentVersion, EventData, ExpectedVersion, ReadStream, RecordedEvent,
    StreamFrom, StreamId, SNAPSHOT_EVENT_TYPE,
};

/// The metadata name under which a snapshot records the version of the
/// last event it includes.
pub const SNAPSHOT_VERSION_METADATA: &str = "wharf-aggregate-version";

/// Events read per page while loading.
const PAGE: usize = 4096;

/// How an aggregate's state is written into and read from a snapshot.
pub trait SnapshotCodec<A>: Send + Sync + 'static {
    /// The schema version of the state's encoding. A stored snapshot of
    /// another version is discarded on load (the aggregate is replayed
    /// from its events instead): bump it whenever the state's shape
    /// changes.
    fn schema_version(&self) -> u32;

    /// Encodes the state.
    ///
    /// # Errors
    /// [`CodecError`].
    fn encode(&self, state: &A) -> Result<Bytes, CodecError>;

    /// Decodes a state.
    ///
    /// # Errors
    /// [`CodecError`].
    fn decode(&self, payload: &[u8]) -> Result<A, CodecError>;
}

/// Snapshots as JSON (serde), with the schema version given.
#[derive(Debug, Clone, Copy)]
pub struct JsonSnapshots {
    schema_version: u32,
}

impl JsonSnapshots {
    /// JSON snapshots of `schema_version`.
    pub fn new(schema_version: u32) -> JsonSnapshots {
        JsonSnapshots { schema_version }
    }
}

impl<A: Serialize + DeserializeOwned + 'static> SnapshotCodec<A> for JsonSnapshots {
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
    fn encode(&self, state: &A) -> Result<Bytes, CodecError> {
        crate::aggregate::json::encode(state)
    }
    fn decode(&self, payload: &[u8]) -> Result<A, CodecError> {
        crate::aggregate::json::decode(payload)
    }
}

/// An aggregate as loaded.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The stream's version the state includes (expect it when appending).
    pub version: CurrentVersion,
    /// The version of the snapshot the load started from, if one was used.
    pub snapshot: Option<u64>,
    /// Events applied after the snapshot (or from the start).
    pub replayed: usize,
}

/// The outcome of [`Repository::execute`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Executed<A: Aggregate> {
    /// The state after the new events.
    pub state: A,
    /// The events the command produced (and that were stored).
    pub events: Vec<A::Event>,
    /// Where they were stored; `None` when the command produced none.
    pub appended: Option<AppendResult>,
    /// How many times the command ran (1 without a conflict).
    pub attempts: u32,
}

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepositoryError<E: std::error::Error + 'static> {
    /// The aggregate refused the command.
    #[error("command rejected: {0}")]
    Rejected(#[source] E),
    /// Every attempt met a concurrent append: gave up.
    #[error("stream {stream} kept changing: gave up after {attempts} attempts")]
    Conflict {
        /// The aggregate's stream.
        stream: StreamId,
        /// Attempts made.
        attempts: u32,
    },
    /// A stored event or a new one could not be decoded or encoded.
    #[error("event {version:?} of stream {stream}: {source}")]
    Codec {
        /// The aggregate's stream.
        stream: StreamId,
        /// The stored event's version (`None` for a new event).
        version: Option<u64>,
        /// What failed.
        #[source]
        source: CodecError,
    },
    /// The store failed (or the id makes an invalid stream name).
    #[error(transparent)]
    Store(#[from] EventStoreError),
}

struct Snapshots<A> {
    every: u64,
    codec: Arc<dyn SnapshotCodec<A>>,
}

impl<A> Clone for Snapshots<A> {
    fn clone(&self) -> Self {
        Snapshots {
            every: self.every,
            codec: Arc::clone(&self.codec),
        }
    }
}

/// Loads and saves aggregates of type `A` in an event store.
///
/// See the [module docs](crate::aggregate) for an example.
///
/// Soft-deleting an aggregate's stream does not delete its snapshots:
/// delete (or tombstone) its `$snapshot-` stream
/// ([`StreamId::snapshot_of`]) too.
pub struct Repository<A: Aggregate> {
    store: Arc<dyn EventStore>,
    upcasters: Upcasters,
    snapshots: Option<Snapshots<A>>,
    max_attempts: u32,
    backoff: Duration,
    _aggregate: PhantomData<fn() -> A>,
}

/// A random pause in `0..=cap` ("full jitter"), so writers that lost a
/// race do not retry in lock step.
fn jitter(cap: Duration) -> Duration {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(h.finish() % nanos.saturating_add(1))
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Repository {
            store: Arc::clone(&self.store),
            upcasters: self.upcasters.clone(),
            snapshots: self.snapshots.clone(),
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> std::fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::NAME)
            .field("upcasters", &self.upcasters)
            .field("snapshot_every", &self.snapshots.as_ref().map(|s| s.every))
            .field("max_attempts", &self.max_attempts)
            .field("retry_backoff", &self.backoff)
            .finish()
    }
}

impl<A: Aggregate> Repository<A> {
    /// A repository on `store`: no upcasters, no snapshots, 3 attempts per
    /// command with a 1 ms backoff base.
    pub fn new(store: Arc<dyn EventStore>) -> Repository<A> {
        Repository {
            store,
            upcasters: Upcasters::new(),
            snapshots: None,
            max_attempts: 3,
            backoff: Duration::from_millis(1),
            _aggregate: PhantomData,
        }
    }

    /// The pause before a retry after a conflict: random up to `base`
    /// doubled per attempt (at most 100 ms), so writers that lost a race
    /// spread out instead of colliding again (default 1 ms; zero retries
    /// at once).
    pub fn retry_backoff(mut self, base: Duration) -> Repository<A> {
        self.backoff = base;
        self
    }

    /// Upcasts stored events with `upcasters` before decoding them.
    pub fn upcasters(mut self, upcasters: Upcasters) -> Repository<A> {
        self.upcasters = upcasters;
        self
    }

    /// Writes a snapshot each time the stream passes a multiple of `every`
    /// events (at least 1), and loads from the latest snapshot of `codec`'s
    /// schema version.
    pub fn snapshot_every(mut self, every: u64, codec: impl SnapshotCodec<A>) -> Repository<A> {
        self.snapshots = Some(Snapshots {
            every: every.max(1),
            codec: Arc::new(codec),
        });
        self
    }

    /// How many times [`Repository::execute`] runs a command that keeps
    /// conflicting (at least 1; default 3).
    pub fn max_attempts(mut self, attempts: u32) -> Repository<A> {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The stream of aggregate `id`: `"{A::NAME}-{id}"`.
    ///
    /// # Errors
    /// [`EventStoreError::InvalidArgument`] when that is not a valid
    /// stream name.
    pub fn stream_id(&self, id: &str) -> Result<StreamId, EventStoreError> {
        StreamId::new(format!("{}-{id}", A::NAME))
    }

    /// Decodes a stored event of this aggregate, upcasting it first (also
    /// for projections reading the global log).
    ///
    /// # Errors
    /// [`CodecError`].
    pub fn decode_event(&self, event: &RecordedEvent) -> Result<A::Event, CodecError> {
        if self.upcasters.is_empty() {
            return A::Event::decode(&event.event_type, event.schema_version, &event.payload);
        }
        let raw = self.upcasters.upcast(RawEvent::from(event))?;
        A::Event::decode(&raw.event_type, raw.schema_version, &raw.payload)
    }

    /// Loads aggregate `id`: the latest usable snapshot, then every later
    /// event. An aggregate never written (or soft-deleted) loads as
    /// `A::default()` at [`CurrentVersion::NoStream`].
    ///
    /// # Errors
    /// [`RepositoryError::Codec`] for an event that does not decode,
    /// [`RepositoryError::Store`].
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        let stream = self.stream_id(id)?;
        self.load_stream(&stream).await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<(A, u64)>, EventStoreError> {
        let Some(snap) = &self.snapshots else {
            return Ok(None);
        };
        let last = match self
            .store
            .read_stream(&stream.snapshot_of(), ReadStream::backwards().max_count(1))
            .await
        {
            Ok(mut events) => match events.pop() {
                Some(e) => e,
                None => return Ok(None),
            },
            Err(EventStoreError::StreamNotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if last.schema_version != snap.codec.schema_version() {
            tracing::debug!(
                stream = %stream,
                stored = last.schema_version,
                current = snap.codec.schema_version(),
                "snapshot of another schema version discarded; replaying events"
            );
            return Ok(None);
        }
        let Some(version) = last
            .metadata_value(SNAPSHOT_VERSION_METADATA)
            .and_then(|v| v.parse::<u64>().ok())
        else {
            tracing::warn!(stream = %stream, "snapshot without its version discarded");
            return Ok(None);
        };
        match snap.codec.decode(&last.payload) {
            Ok(state) => Ok(Some((state, version))),
            Err(e) => {
                tracing::warn!(stream = %stream, error = %e, "snapshot that does not decode discarded");
                Ok(None)
            }
        }
    }

    async fn load_stream(&self, stream: &StreamId) -> Result<Loaded<A>, RepositoryError<A::Error>> {
        let snapshot = self.load_snapshot(stream).await?;
        let snapshot_version = snapshot.as_ref().map(|s| s.1);
        let (mut state, mut version) = match snapshot {
            Some((s, v)) => (s, Some(v)),
            None => (A::default(), None),
        };
        let mut from = version.map_or(0, |v| v + 1);
        let mut replayed = 0;
        loop {
            let options = ReadStream::forwards()
                .from(StreamFrom::Version(from))
                .max_count(PAGE);
            let page = match self.store.read_stream(stream, options).await {
                Ok(p) => p,
                Err(EventStoreError::StreamNotFound { .. }) => {
                    return Ok(Loaded {
                        state: A::default(),
                        version: CurrentVersion::NoStream,
                        snapshot: None,
                        replayed: 0,
                    })
                }
                Err(e) => return Err(e.into()),
            };
            let n = page.len();
            for e in &page {
                let event = self
                    .decode_event(e)
                    .map_err(|source| RepositoryError::Codec {
                        stream: stream.clone(),
                        version: Some(e.version),
                        source,
                    })?;
                state.apply(&event);
                version = Some(e.version);
                from = e.version + 1;
                replayed += 1;
            }
            if n < PAGE {
                break;
            }
        }
        let version = match version {
            Some(v) => CurrentVersion::Version(v),
            // The stream exists but its metadata hides every event.
            None => self.store.stream_info(stream).await?.version,
        };
        Ok(Loaded {
            state,
            version,
            snapshot: snapshot_version,
            replayed,
        })
    }

    fn encode(
        &self,
        stream: &StreamId,
        e: &A::Event,
    ) -> Result<EventData, RepositoryError<A::Error>> {
        let payload = e.encode().map_err(|source| RepositoryError::Codec {
            stream: stream.clone(),
            version: None,
            source,
        })?;
        let mut data =
            EventData::new(e.event_type(), payload).with_schema_version(e.schema_version());
        data.tags = e.tags();
        Ok(data)
    }

    /// Runs `command` on aggregate `id`: load, [`Aggregate::handle`],
    /// append the events expecting the loaded version. On a conflict (a
    /// concurrent append to the stream) it waits a random backoff
    /// ([`Repository::retry_backoff`]), loads again and re-runs the
    /// command, up to [`Repository::max_attempts`] times. After a
    /// successful append that passes a multiple of the snapshot interval,
    /// a snapshot is written (a failure to write it is logged, not
    /// returned: the command succeeded).
    ///
    /// # Errors
    /// [`RepositoryError::Rejected`] (nothing stored),
    /// [`RepositoryError::Conflict`] after the last attempt,
    /// [`RepositoryError::Codec`], [`RepositoryError::Store`].
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<Executed<A>, RepositoryError<A::Error>>
    where
        A::Command: Clone,
    {
        let stream = self.stream_id(id)?;
        for attempt in 1..=self.max_attempts {
            let loaded = self.load_stream(&stream).await?;
            let events = loaded
                .state
                .handle(command.clone())
                .map_err(RepositoryError::Rejected)?;
            if events.is_empty() {
                return Ok(Executed {
                    state: loaded.state,
                    events,
                    appended: None,
                    attempts: attempt,
                });
            }
            let data = events
                .iter()
                .map(|e| self.encode(&stream, e))
                .collect::<Result<Vec<_>, _>>()?;
            let expected = loaded.version.expected();
            match self.store.append(&stream, expected, data).await {
                Ok(r) => {
                    let mut state = loaded.state;
                    for e in &events {
                        state.apply(e);
                    }
                    self.maybe_snapshot(&stream, &state, loaded.version.next(), &r)
                        .await;
                    return Ok(Executed {
                        state,
                        events,
                        appended: Some(r),
                        attempts: attempt,
                    });
                }
                Err(EventStoreError::WrongExpectedVersion { .. }) => {
                    tracing::debug!(stream = %stream, attempt, "conflict; loading again");
                    if attempt < self.max_attempts && !self.backoff.is_zero() {
                        let cap = self
                            .backoff
                            .saturating_mul(1 << (attempt - 1).min(16))
                            .min(Duration::from_millis(100));
                        tokio::time::sleep(jitter(cap)).await;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RepositoryError::Conflict {
            stream,
            attempts: self.max_attempts,
        })
    }

    /// Writes a snapshot when the append moved the event count past a
    /// multiple of the interval.
    async fn maybe_snapshot(&self, stream: &StreamId, state: &A, before: u64, r: &AppendResult) {
        let Some(snap) = &self.snapshots else {
            return;
        };
        let after = r.last_version + 1;
        if after / snap.every == before / snap.every {
            return;
        }
        let payload = match snap.codec.encode(state) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(stream = %stream, error = %e, "snapshot not encoded");
                return;
            }
        };
        let data = EventData::new(SNAPSHOT_EVENT_TYPE, payload)
            .with_schema_version(snap.codec.schema_version())
            .with_metadata(SNAPSHOT_VERSION_METADATA, r.last_version.to_string());
        if let Err(e) = self
            .store
            .append(&stream.snapshot_of(), ExpectedVersion::Any, vec![data])
            .await
        {
            tracing::warn!(stream = %stream, error = %e, "snapshot not written");
        }
    }
}
