//! The vocabulary shared by every event store implementation: stream names
//! and their rules, events as written ([`EventData`]) and as read
//! ([`RecordedEvent`]), expected versions, queries and append conditions,
//! read options, stream metadata and the size limits. All validation lives
//! here, so the embedded, PostgreSQL and remote stores refuse the same input
//! with the same error.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::{EventStoreError, Result};

/// An event's unique id: a UUIDv7 (sorts by creation time), the same type
/// as a Wharf message id, so an event published to a topic keeps its id.
pub type EventId = wharf_core::MessageId;

/// The largest version or position any store accepts: `i64::MAX`, so every
/// value fits a PostgreSQL `bigint` and a JSON number parsers keep exact
/// up to 2^63.
pub const MAX_VERSION: u64 = i64::MAX as u64;

/// Longest stream name, event type, tag or metadata name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// The prefix of the system streams that hold an aggregate's snapshots
/// (`$snapshot-<stream>`), written by the
/// [`Repository`](crate::aggregate::Repository).
pub const SNAPSHOT_PREFIX: &str = "$snapshot-";

/// The event type of a snapshot in a `$snapshot-` stream.
pub const SNAPSHOT_EVENT_TYPE: &str = "$snapshot";

fn check_name(field: &'static str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(EventStoreError::invalid(field, name, "must not be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(EventStoreError::invalid(
            field,
            name,
            "must be at most 255 bytes",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(EventStoreError::invalid(
            field,
            name,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A stream's name: 1 to 255 bytes of UTF-8 without control characters.
///
/// Names starting with `$` are reserved for Wharf's own system streams;
/// the only one accepted is `$snapshot-<stream>` ([`StreamId::snapshot_of`]).
/// Cloning is cheap (the name is reference counted).
///
/// ```
/// use wharf_eventstore::StreamId;
/// let s = StreamId::new("order-42")?;
/// assert_eq!(s.as_str(), "order-42");
/// assert!(StreamId::new("").is_err());
/// assert!(StreamId::new("$all").is_err());
/// assert_eq!(s.snapshot_of().as_str(), "$snapshot-order-42");
/// # Ok::<(), wharf_eventstore::EventStoreError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(Arc<str>);

impl StreamId {
    /// Validates `name`.
    ///
    /// # Errors
    /// [`EventStoreError::InvalidArgument`] (field `stream`) when the name is
    /// empty, longer than 255 bytes, holds a control character, or starts
    /// with `$` without being a snapshot stream of a valid name.
    pub fn new(name: impl Into<String>) -> Result<StreamId> {
        let name: String = name.into();
        check_name("stream", &name)?;
        if let Some(rest) = name.strip_prefix('$') {
            match rest.strip_prefix(&SNAPSHOT_PREFIX[1..]) {
                Some(inner) if !inner.starts_with('$') && !inner.is_empty() => {}
                _ => {
                    return Err(EventStoreError::invalid(
                        "stream",
                        &name,
                        "names starting with '$' are reserved for system streams",
                    ))
                }
            }
        }
        Ok(StreamId(name.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for a system stream (`$snapshot-…`), which global reads leave
    /// out unless [`GlobalFilter::include_system`] asks for them.
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }

    /// The stream holding this stream's snapshots: `$snapshot-<name>`.
    ///
    /// # Panics
    /// Never for a user stream whose name leaves room for the prefix; a
    /// name within 10 bytes of the limit gets a shortened snapshot stream
    /// name that still identifies it (hash suffix).
    pub fn snapshot_of(&self) -> StreamId {
        let full = format!("{SNAPSHOT_PREFIX}{}", self.0);
        if full.len() <= MAX_NAME_BYTES {
            return StreamId(full.into());
        }
        // Keep the name unique: a prefix of the name plus a hash of all of it.
        let hash = crc32c::crc32c(self.0.as_bytes());
        let mut cut = MAX_NAME_BYTES - SNAPSHOT_PREFIX.len() - 9;
        while !self.0.is_char_boundary(cut) {
            cut -= 1;
        }
        StreamId(format!("{SNAPSHOT_PREFIX}{}#{hash:08x}", &self.0[..cut]).into())
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl TryFrom<&str> for StreamId {
    type Error = EventStoreError;
    fn try_from(s: &str) -> Result<StreamId> {
        StreamId::new(s)
    }
}

impl std::str::FromStr for StreamId {
    type Err = EventStoreError;
    fn from_str(s: &str) -> Result<StreamId> {
        StreamId::new(s)
    }
}

/// A position in the global log: every event has one, unique and
/// increasing in commit order. Positions are not contiguous (stream
/// metadata records take positions too); resume a read after event `e` at
/// `e.position.next()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Position(pub u64);

impl Position {
    /// The start of the log.
    pub const START: Position = Position(0);

    /// The position after this one.
    pub fn next(self) -> Position {
        Position(self.0.saturating_add(1))
    }

    /// The raw value.
    pub fn value(self) -> u64 {
        self.0
    }

    pub(crate) fn validate(self, field: &'static str) -> Result<Position> {
        if self.0 > MAX_VERSION {
            return Err(EventStoreError::invalid(
                field,
                &self.0.to_string(),
                "must be at most 9223372036854775807",
            ));
        }
        Ok(self)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What an append (or a delete) expects of its stream: optimistic
/// concurrency. Versions count from 0: a stream's first event has version 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream has no events (never written, or soft-deleted).
    NoStream,
    /// The stream has at least one event and is not soft-deleted.
    StreamExists,
    /// The stream's last event has exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    pub(crate) fn validate(self) -> Result<ExpectedVersion> {
        if let ExpectedVersion::Exact(n) = self {
            if n > MAX_VERSION {
                return Err(EventStoreError::invalid(
                    "expected version",
                    &n.to_string(),
                    "must be at most 9223372036854775807",
                ));
            }
        }
        Ok(self)
    }

    /// Whether a stream at `current` (soft-deleted or not) satisfies this
    /// expectation. A soft-deleted stream counts as absent for `NoStream`
    /// and `StreamExists`; its numbering goes on, so `Exact(last)` holds too.
    pub fn is_satisfied_by(self, current: CurrentVersion, soft_deleted: bool) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == CurrentVersion::NoStream || soft_deleted,
            ExpectedVersion::StreamExists => current != CurrentVersion::NoStream && !soft_deleted,
            ExpectedVersion::Exact(n) => current == CurrentVersion::Version(n),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(n) => write!(f, "version {n}"),
        }
    }
}

/// Where a stream is: no event yet, or the version of its last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CurrentVersion {
    /// No event was ever appended.
    NoStream,
    /// The version of the last event (counting from 0).
    Version(u64),
}

impl CurrentVersion {
    /// The version the next appended event gets.
    pub fn next(self) -> u64 {
        match self {
            CurrentVersion::NoStream => 0,
            CurrentVersion::Version(n) => n + 1,
        }
    }

    /// The expectation that holds exactly at this version.
    pub fn expected(self) -> ExpectedVersion {
        match self {
            CurrentVersion::NoStream => ExpectedVersion::NoStream,
            CurrentVersion::Version(n) => ExpectedVersion::Exact(n),
        }
    }
}

impl fmt::Display for CurrentVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CurrentVersion::NoStream => f.write_str("no stream"),
            CurrentVersion::Version(n) => write!(f, "version {n}"),
        }
    }
}

/// An event to append.
///
/// `event_type` and `schema_version` name what the payload is; upcasters
/// ([`Upcasters`](crate::aggregate::Upcasters)) turn an old `schema_version` into the
/// current one on read. `tags` are what [`Query`]s and append conditions
/// select on; `metadata` is free-form (correlation and causation ids, a W3C
/// `traceparent`); `payload` is opaque bytes.
///
/// ```
/// use wharf_eventstore::EventData;
/// let e = EventData::new("OrderPlaced", r#"{"total":42}"#)
///     .with_tag("customer:7")
///     .with_metadata("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// assert_eq!(e.schema_version, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventData {
    /// Unique id (a fresh UUIDv7 unless set).
    pub id: EventId,
    /// The event's type name.
    pub event_type: String,
    /// The schema version of the payload (1 unless set).
    pub schema_version: u32,
    /// Tags for queries and append conditions, e.g. `"course:c1"`.
    pub tags: Vec<String>,
    /// Free-form name/value pairs, in order.
    pub metadata: Vec<(String, String)>,
    /// The payload.
    pub payload: Bytes,
}

impl EventData {
    /// An event of `event_type` with `payload`, a fresh id, schema version 1,
    /// no tags and no metadata.
    pub fn new(event_type: impl Into<String>, payload: impl Into<Bytes>) -> EventData {
        EventData {
            id: EventId::new(),
            event_type: event_type.into(),
            schema_version: 1,
            tags: Vec::new(),
            metadata: Vec::new(),
            payload: payload.into(),
        }
    }

    /// Sets the id.
    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = id;
        self
    }

    /// Sets the schema version.
    pub fn with_schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// Adds a tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds a metadata pair.
    pub fn with_metadata(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((name.into(), value.into()));
        self
    }

    /// The bytes this event counts against [`Limits::max_event_bytes`]:
    /// payload, type, tags and metadata names and values.
    pub fn size(&self) -> usize {
        self.payload.len()
            + self.event_type.len()
            + self.tags.iter().map(String::len).sum::<usize>()
            + self
                .metadata
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
    }

    /// Checks the event against the naming rules and `limits`, for
    /// appending to `stream`, and returns its [`size`](Self::size).
    ///
    /// # Errors
    /// [`EventStoreError::InvalidArgument`] for a bad type, tag, metadata
    /// name or schema version 0; [`EventStoreError::TooLarge`] past
    /// `limits`.
    pub fn validate(&self, stream: &StreamId, limits: &Limits) -> Result<usize> {
        check_name("event type", &self.event_type)?;
        if self.event_type.starts_with('$') && !stream.is_system() {
            return Err(EventStoreError::invalid(
                "event type",
                &self.event_type,
                "types starting with '$' are reserved for system streams",
            ));
        }
        if self.schema_version == 0 {
            return Err(EventStoreError::invalid(
                "schema version",
                "0",
                "must be at least 1",
            ));
        }
        if self.tags.len() > limits.max_tags_per_event {
            return Err(EventStoreError::invalid(
                "tags",
                &self.tags.len().to_string(),
                "too many tags on one event (see Limits::max_tags_per_event)",
            ));
        }
        for t in &self.tags {
            check_name("tag", t)?;
        }
        for (n, _) in &self.metadata {
            check_name("metadata name", n)?;
        }
        let size = self.size();
        if size > limits.max_event_bytes {
            return Err(EventStoreError::TooLarge {
                what: "event",
                size,
                max: limits.max_event_bytes,
            });
        }
        Ok(size)
    }
}

/// An event as stored: its [`EventData`] plus where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordedEvent {
    /// The stream it belongs to.
    pub stream: StreamId,
    /// Its version in the stream (the stream's first event is 0).
    pub version: u64,
    /// Its position in the global log.
    pub position: Position,
    /// When the store appended it, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Unique id.
    pub id: EventId,
    /// The event's type name.
    pub event_type: String,
    /// The schema version of the payload.
    pub schema_version: u32,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata pairs, in order.
    pub metadata: Vec<(String, String)>,
    /// The payload.
    pub payload: Bytes,
}

impl RecordedEvent {
    /// Assembles a recorded event (for store implementations).
    pub fn new(
        stream: StreamId,
        version: u64,
        position: Position,
        timestamp_ms: i64,
        data: EventData,
    ) -> RecordedEvent {
        RecordedEvent {
            stream,
            version,
            position,
            timestamp_ms,
            id: data.id,
            event_type: data.event_type,
            schema_version: data.schema_version,
            tags: data.tags,
            metadata: data.metadata,
            payload: data.payload,
        }
    }

    /// The event as written (to copy it to another stream or store).
    pub fn to_event_data(&self) -> EventData {
        EventData {
            id: self.id,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            tags: self.tags.clone(),
            metadata: self.metadata.clone(),
            payload: self.payload.clone(),
        }
    }

    /// The first metadata value named `name`.
    pub fn metadata_value(&self, name: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One alternative of a [`Query`]: an event matches when its type is one of
/// `types` (an empty list: any type) **and** it carries every tag in `tags`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryItem {
    /// Accepted event types; empty accepts any.
    pub types: Vec<String>,
    /// Tags the event must all carry; empty requires none.
    pub tags: Vec<String>,
}

impl QueryItem {
    /// Whether an event of `event_type` with `tags` matches.
    pub fn matches(&self, event_type: &str, tags: &[impl AsRef<str>]) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
            && self
                .tags
                .iter()
                .all(|t| tags.iter().any(|have| have.as_ref() == t))
    }
}

/// Which events a decision depends on: the items are alternatives (an event
/// matches the query when it matches any item). A query without items
/// matches nothing; [`Query::all`] matches every event of a user stream.
///
/// ```
/// use wharf_eventstore::{Query, QueryItem};
/// // "StudentSubscribed or CourseCapacityChanged events tagged course:c1"
/// let q = Query::new().item(QueryItem {
///     types: vec!["StudentSubscribed".into(), "CourseCapacityChanged".into()],
///     tags: vec!["course:c1".into()],
/// });
/// assert!(q.matches("StudentSubscribed", &["course:c1", "student:s9"]));
/// assert!(!q.matches("StudentSubscribed", &["course:c2"]));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    items: Vec<QueryItem>,
}

impl Query {
    /// A query matching nothing (add items).
    pub fn new() -> Query {
        Query::default()
    }

    /// A query matching every event (of user streams).
    pub fn all() -> Query {
        Query {
            items: vec![QueryItem::default()],
        }
    }

    /// Events of any of these types.
    pub fn types<I, S>(types: I) -> Query
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Query::new().item(QueryItem {
            types: types.into_iter().map(Into::into).collect(),
            tags: Vec::new(),
        })
    }

    /// Events carrying all of these tags.
    pub fn tags<I, S>(tags: I) -> Query
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Query::new().item(QueryItem {
            types: Vec::new(),
            tags: tags.into_iter().map(Into::into).collect(),
        })
    }

    /// Adds an alternative.
    pub fn item(mut self, item: QueryItem) -> Query {
        self.items.push(item);
        self
    }

    /// The alternatives.
    pub fn items(&self) -> &[QueryItem] {
        &self.items
    }

    /// Whether an event of `event_type` with `tags` matches.
    pub fn matches(&self, event_type: &str, tags: &[impl AsRef<str>]) -> bool {
        self.items.iter().any(|i| i.matches(event_type, tags))
    }

    /// Checks every type and tag against the naming rules.
    ///
    /// # Errors
    /// [`EventStoreError::InvalidArgument`] (field `query type` or
    /// `query tag`).
    pub fn validate(&self) -> Result<()> {
        for item in &self.items {
            for t in &item.types {
                check_name("query type", t)?;
            }
            for t in &item.tags {
                check_name("query tag", t)?;
            }
        }
        Ok(())
    }
}

/// The condition of a conditional append (the "dynamic consistency
/// boundary"): the append fails with
/// [`EventStoreError::ConditionFailed`] if any event of a user stream
/// matching `query` was written after `after` (`None`: anywhere in the
/// log). Typically `after` is the last position the caller read when it
/// built its decision from the events the same query selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendCondition {
    /// The events the decision depends on.
    pub query: Query,
    /// Only events after this position are checked; `None` checks all.
    pub after: Option<Position>,
}

impl AppendCondition {
    /// Fails if any event matching `query` exists at all (a uniqueness
    /// guard); bound it with [`AppendCondition::after`].
    pub fn new(query: Query) -> AppendCondition {
        AppendCondition { query, after: None }
    }

    /// Checks only events after `position`.
    pub fn after(mut self, position: Position) -> AppendCondition {
        self.after = Some(position);
        self
    }
}

/// One append: events to a stream, atomically, with an expected version and
/// optionally a condition across streams.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AppendRequest {
    /// The stream to append to.
    pub stream: StreamId,
    /// What the stream must be at.
    pub expected: ExpectedVersion,
    /// The events, stored together or not at all.
    pub events: Vec<EventData>,
    /// A condition across streams, checked with the expected version.
    pub condition: Option<AppendCondition>,
}

impl AppendRequest {
    /// An append of `events` to `stream` expecting `expected`.
    pub fn new(stream: StreamId, expected: ExpectedVersion, events: Vec<EventData>) -> Self {
        AppendRequest {
            stream,
            expected,
            events,
            condition: None,
        }
    }

    /// Adds a condition across streams.
    pub fn condition(mut self, condition: AppendCondition) -> Self {
        self.condition = Some(condition);
        self
    }

    /// Checks the whole request against the rules and `limits`: nothing of
    /// an invalid request is stored.
    ///
    /// # Errors
    /// [`EventStoreError::InvalidArgument`], [`EventStoreError::TooLarge`].
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        self.expected.validate()?;
        if self.events.is_empty() {
            return Err(EventStoreError::invalid(
                "events",
                "[]",
                "an append needs at least one event",
            ));
        }
        if self.events.len() > limits.max_events_per_append {
            return Err(EventStoreError::TooLarge {
                what: "events in one append",
                size: self.events.len(),
                max: limits.max_events_per_append,
            });
        }
        let mut total = 0usize;
        for e in &self.events {
            total += e.validate(&self.stream, limits)?;
        }
        if total > limits.max_append_bytes {
            return Err(EventStoreError::TooLarge {
                what: "append",
                size: total,
                max: limits.max_append_bytes,
            });
        }
        if let Some(c) = &self.condition {
            c.query.validate()?;
            if let Some(p) = c.after {
                p.validate("condition position")?;
            }
        }
        Ok(())
    }
}

/// What a successful append stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// Version of the first event appended.
    pub first_version: u64,
    /// Version of the last event appended: expect `Exact` of it next.
    pub last_version: u64,
    /// Global position of the first event.
    pub first_position: Position,
    /// Global position of the last event.
    pub last_position: Position,
}

/// Which way a stream read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Ascending versions.
    Forwards,
    /// Descending versions.
    Backwards,
}

/// Where a stream read starts (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFrom {
    /// The first version.
    Start,
    /// This version.
    Version(u64),
    /// After the last version (backwards: the last version).
    End,
}

/// Options of [`EventStore::read_stream`](crate::EventStore::read_stream).
///
/// ```
/// use wharf_eventstore::{ReadStream, StreamFrom};
/// let last_ten = ReadStream::backwards().max_count(10);
/// let from_five = ReadStream::forwards().from(StreamFrom::Version(5));
/// # let _ = (last_ten, from_five);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadStream {
    /// Forwards or backwards.
    pub direction: Direction,
    /// The first version returned (inclusive).
    pub from: StreamFrom,
    /// At most this many events (default: all).
    pub max_count: usize,
}

impl ReadStream {
    /// Forwards from the first version, all events.
    pub fn forwards() -> ReadStream {
        ReadStream {
            direction: Direction::Forwards,
            from: StreamFrom::Start,
            max_count: usize::MAX,
        }
    }

    /// Backwards from the last version, all events.
    pub fn backwards() -> ReadStream {
        ReadStream {
            direction: Direction::Backwards,
            from: StreamFrom::End,
            max_count: usize::MAX,
        }
    }

    /// Starts at `from` (inclusive).
    pub fn from(mut self, from: StreamFrom) -> ReadStream {
        self.from = from;
        self
    }

    /// Returns at most `n` events.
    pub fn max_count(mut self, n: usize) -> ReadStream {
        self.max_count = n;
        self
    }

    pub(crate) fn validate(self) -> Result<ReadStream> {
        if let StreamFrom::Version(v) = self.from {
            if v > MAX_VERSION {
                return Err(EventStoreError::invalid(
                    "from version",
                    &v.to_string(),
                    "must be at most 9223372036854775807",
                ));
            }
        }
        Ok(self)
    }

    /// The versions in scope of a stream whose visible versions are
    /// `first..=last`, as an inclusive range `(lo, hi)` — read upwards from
    /// `lo` forwards, downwards from `hi` backwards — before `max_count`;
    /// `None` when nothing is in scope.
    pub fn bounds(self, first: u64, last: u64) -> Option<(u64, u64)> {
        if first > last {
            return None;
        }
        let (lo, hi) = match self.direction {
            Direction::Forwards => match self.from {
                StreamFrom::Start => (first, last),
                StreamFrom::Version(v) => (v.max(first), last),
                StreamFrom::End => return None,
            },
            Direction::Backwards => match self.from {
                StreamFrom::Start => (first, first),
                StreamFrom::Version(v) => (first, v.min(last)),
                StreamFrom::End => (first, last),
            },
        };
        (lo <= hi && self.max_count > 0).then_some((lo, hi))
    }
}

/// Which events a global read or a subscription returns. Default: every
/// event of a user stream (system streams such as `$snapshot-…` are left
/// out unless [`GlobalFilter::include_system`]).
///
/// ```
/// use wharf_eventstore::GlobalFilter;
/// let f = GlobalFilter::all().stream_prefix("order-").event_types(["OrderPlaced"]);
/// # let _ = f;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GlobalFilter {
    stream_prefix: Option<String>,
    query: Option<Query>,
    include_system: bool,
}

impl GlobalFilter {
    /// Every event of a user stream.
    pub fn all() -> GlobalFilter {
        GlobalFilter::default()
    }

    /// Only streams whose name starts with `prefix`.
    pub fn stream_prefix(mut self, prefix: impl Into<String>) -> GlobalFilter {
        self.stream_prefix = Some(prefix.into());
        self
    }

    /// Only events of these types (replaces a query set before).
    pub fn event_types<I, S>(mut self, types: I) -> GlobalFilter
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.query = Some(Query::types(types));
        self
    }

    /// Only events matching `query` (types and/or tags).
    pub fn query(mut self, query: Query) -> GlobalFilter {
        self.query = Some(query);
        self
    }

    /// Also system streams' events (`$snapshot-…`).
    pub fn include_system(mut self) -> GlobalFilter {
        self.include_system = true;
        self
    }

    /// The stream prefix, if any.
    pub fn prefix(&self) -> Option<&str> {
        self.stream_prefix.as_deref()
    }

    /// The query, if any.
    pub fn event_query(&self) -> Option<&Query> {
        self.query.as_ref()
    }

    /// Whether system streams are included.
    pub fn includes_system(&self) -> bool {
        self.include_system
    }

    /// Whether an event passes the stream part of the filter.
    pub fn matches_stream(&self, stream: &str) -> bool {
        (self.include_system || !stream.starts_with('$'))
            && self
                .stream_prefix
                .as_deref()
                .is_none_or(|p| stream.starts_with(p))
    }

    /// Whether an event passes the filter.
    pub fn matches(&self, stream: &str, event_type: &str, tags: &[impl AsRef<str>]) -> bool {
        self.matches_stream(stream)
            && self
                .query
                .as_ref()
                .is_none_or(|q| q.matches(event_type, tags))
    }

    /// Checks the prefix and query against the naming rules.
    ///
    /// # Errors
    /// [`EventStoreError::InvalidArgument`].
    pub fn validate(&self) -> Result<()> {
        if let Some(p) = &self.stream_prefix {
            if p.len() > MAX_NAME_BYTES || p.chars().any(char::is_control) {
                return Err(EventStoreError::invalid(
                    "stream prefix",
                    p,
                    "must be at most 255 bytes without control characters",
                ));
            }
        }
        if let Some(q) = &self.query {
            q.validate()?;
        }
        Ok(())
    }
}

/// A page of the global log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllSlice {
    /// Matching events in commit order.
    pub events: Vec<RecordedEvent>,
    /// Where to read next: past every position this read looked at, so a
    /// filtered read never rescans what it skipped.
    pub next: Position,
    /// True when the read reached the end of the log as it was then.
    pub is_end: bool,
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeFrom {
    /// The beginning of the log.
    Start,
    /// This position (inclusive).
    Position(Position),
    /// Only events appended after the subscription started.
    End,
}

/// A stream's settings, stored with the stream. They shape what reads of
/// the stream return; the global log and subscriptions still hold every
/// event (as in EventStoreDB, where they are input to scavenging).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StreamMetadata {
    /// Events older than this are no longer read.
    pub max_age: Option<Duration>,
    /// Only the last this many events are read.
    pub max_count: Option<u64>,
    /// Versions before this one are no longer read (a soft delete sets it
    /// past the last version).
    pub truncate_before: Option<u64>,
}

impl StreamMetadata {
    /// No limits.
    pub fn new() -> StreamMetadata {
        StreamMetadata::default()
    }

    /// Sets the maximum age.
    pub fn with_max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Sets the maximum count.
    pub fn with_max_count(mut self, n: u64) -> Self {
        self.max_count = Some(n);
        self
    }

    /// Sets truncate-before.
    pub fn with_truncate_before(mut self, version: u64) -> Self {
        self.truncate_before = Some(version);
        self
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`EventStoreError::InvalidArgument`] for a version or count above
    /// [`MAX_VERSION`] or a zero `max_count`.
    pub fn validate(&self) -> Result<()> {
        if let Some(v) = self.truncate_before {
            if v > MAX_VERSION {
                return Err(EventStoreError::invalid(
                    "truncate before",
                    &v.to_string(),
                    "must be at most 9223372036854775807",
                ));
            }
        }
        if let Some(n) = self.max_count {
            if n == 0 || n > MAX_VERSION {
                return Err(EventStoreError::invalid(
                    "max count",
                    &n.to_string(),
                    "must be between 1 and 9223372036854775807",
                ));
            }
        }
        if let Some(a) = self.max_age {
            if a.as_millis() == 0 || a.as_millis() > u128::from(MAX_VERSION) {
                return Err(EventStoreError::invalid(
                    "max age",
                    &format!("{a:?}"),
                    "must be at least 1 ms",
                ));
            }
        }
        Ok(())
    }

    /// The first version a read returns of a stream whose last version is
    /// `last` (ignoring `max_age`, which is per event).
    pub fn first_visible(&self, last: u64) -> u64 {
        let by_tb = self.truncate_before.unwrap_or(0);
        let by_count = self.max_count.map_or(0, |n| (last + 1).saturating_sub(n));
        by_tb.max(by_count)
    }

    /// Whether an event stamped `timestamp_ms` is still read at `now_ms`.
    pub fn is_fresh(&self, timestamp_ms: i64, now_ms: i64) -> bool {
        self.max_age.is_none_or(|a| {
            let a = i64::try_from(a.as_millis()).unwrap_or(i64::MAX);
            now_ms.saturating_sub(timestamp_ms) <= a
        })
    }
}

/// What [`EventStore::stream_info`](crate::EventStore::stream_info) reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamInfo {
    /// The stream.
    pub stream: StreamId,
    /// Its last version (including events its metadata hides).
    pub version: CurrentVersion,
    /// Its metadata.
    pub metadata: StreamMetadata,
    /// True after a soft delete, until the next append.
    pub soft_deleted: bool,
}

impl StreamInfo {
    /// Assembles the info (for store implementations).
    pub fn new(
        stream: StreamId,
        version: CurrentVersion,
        metadata: StreamMetadata,
        soft_deleted: bool,
    ) -> StreamInfo {
        StreamInfo {
            stream,
            version,
            metadata,
            soft_deleted,
        }
    }
}

/// Size bounds a store enforces; [`EventStore::limits`](crate::EventStore::limits)
/// reports them, so callers (and the conformance suite) can check first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest [`EventData::size`] (default 1 MiB).
    pub max_event_bytes: usize,
    /// Largest sum of event sizes in one append (default 4 MiB).
    pub max_append_bytes: usize,
    /// Most events in one append (default 10,000).
    pub max_events_per_append: usize,
    /// Most tags on one event (default 32).
    pub max_tags_per_event: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 1024 * 1024,
            max_append_bytes: 4 * 1024 * 1024,
            max_events_per_append: 10_000,
            max_tags_per_event: 32,
        }
    }
}

impl Limits {
    /// Sets the largest event.
    pub fn with_max_event_bytes(mut self, n: usize) -> Self {
        self.max_event_bytes = n;
        self
    }

    /// Sets the largest append.
    pub fn with_max_append_bytes(mut self, n: usize) -> Self {
        self.max_append_bytes = n;
        self
    }

    /// Sets the most events per append.
    pub fn with_max_events_per_append(mut self, n: usize) -> Self {
        self.max_events_per_append = n;
        self
    }

    /// Sets the most tags per event.
    pub fn with_max_tags_per_event(mut self, n: usize) -> Self {
        self.max_tags_per_event = n;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_follow_the_rules() {
        assert!(StreamId::new("a").is_ok());
        assert!(StreamId::new("x".repeat(255)).is_ok());
        assert!(StreamId::new("x".repeat(256)).is_err());
        assert!(StreamId::new("a\nb").is_err());
        assert!(StreamId::new("a\0b").is_err());
        assert!(StreamId::new("$snapshot-a").is_ok());
        assert!(StreamId::new("$snapshot-").is_err());
        assert!(StreamId::new("$snapshot-$snapshot-a").is_err());
        assert!(StreamId::new("$other").is_err());
    }

    #[test]
    fn long_names_get_a_unique_snapshot_stream() {
        let a = StreamId::new("é".repeat(127)).unwrap();
        let b = StreamId::new(format!("{}x", "é".repeat(126))).unwrap();
        let (sa, sb) = (a.snapshot_of(), b.snapshot_of());
        assert!(sa.as_str().len() <= MAX_NAME_BYTES);
        assert_ne!(sa, sb);
        assert!(StreamId::new(sa.as_str()).is_ok());
    }

    #[test]
    fn expected_versions_against_current() {
        use CurrentVersion::Version;
        use ExpectedVersion::{Any, Exact, StreamExists};
        assert!(ExpectedVersion::NoStream.is_satisfied_by(CurrentVersion::NoStream, false));
        assert!(!ExpectedVersion::NoStream.is_satisfied_by(Version(0), false));
        assert!(ExpectedVersion::NoStream.is_satisfied_by(Version(3), true));
        assert!(!StreamExists.is_satisfied_by(Version(3), true));
        assert!(StreamExists.is_satisfied_by(Version(3), false));
        assert!(Exact(3).is_satisfied_by(Version(3), true));
        assert!(!Exact(2).is_satisfied_by(Version(3), false));
        assert!(Any.is_satisfied_by(CurrentVersion::NoStream, false));
    }

    #[test]
    fn read_stream_bounds() {
        let f = ReadStream::forwards();
        assert_eq!(f.bounds(0, 3), Some((0, 3)));
        assert_eq!(f.from(StreamFrom::Version(2)).bounds(0, 3), Some((2, 3)));
        assert_eq!(f.from(StreamFrom::Version(9)).bounds(0, 3), None);
        assert_eq!(f.from(StreamFrom::Version(0)).bounds(1, 3), Some((1, 3)));
        assert_eq!(f.from(StreamFrom::End).bounds(0, 3), None);
        assert_eq!(f.max_count(0).bounds(0, 3), None);
        let b = ReadStream::backwards();
        assert_eq!(b.bounds(0, 3), Some((0, 3)));
        assert_eq!(b.from(StreamFrom::Version(1)).bounds(0, 3), Some((0, 1)));
        assert_eq!(b.from(StreamFrom::Version(1)).bounds(2, 3), None);
        assert_eq!(b.from(StreamFrom::Start).bounds(2, 3), Some((2, 2)));
        assert_eq!(b.bounds(2, 1), None);
    }

    #[test]
    fn metadata_hides_by_truncate_before_count_and_age() {
        let m = StreamMetadata::new()
            .with_truncate_before(3)
            .with_max_count(5);
        assert_eq!(m.first_visible(4), 3);
        assert_eq!(m.first_visible(20), 16);
        let m = StreamMetadata::new().with_max_age(Duration::from_secs(1));
        assert!(m.is_fresh(1000, 2000));
        assert!(!m.is_fresh(1000, 2001));
    }

    #[test]
    fn query_items_are_alternatives_and_tags_all_required() {
        let q = Query::tags(["a", "b"]).item(QueryItem {
            types: vec!["T".into()],
            tags: vec![],
        });
        assert!(q.matches("X", &["a", "b", "c"]));
        assert!(!q.matches("X", &["a"]));
        assert!(q.matches("T", &[] as &[&str]));
        assert!(!Query::new().matches("T", &["a"]));
        assert!(Query::all().matches("T", &[] as &[&str]));
    }
}
