//! The event store over HTTP/JSON (`/v1/eventstore/...`): append with an
//! expected version and an optional condition, stream reads forwards or
//! backwards, global reads with filters, stream info, metadata, delete and
//! tombstone, stream listings, the head position, and a catch-up-then-live
//! subscription as SSE. Every stream a request names (its path, a filter's
//! prefix, an append condition that reads every stream) is checked against
//! the token's event store rights before the store is touched.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wharf_eventstore::{
    AppendCondition, AppendRequest, CurrentVersion, EventData, EventId, EventStore,
    ExpectedVersion, GlobalFilter, Position, Query, QueryItem, ReadStream, RecordedEvent,
    StreamFrom, StreamId, StreamMetadata, SubscribeFrom,
};

use super::{
    body_bytes, check, parse_json, payload_json, ApiPath, ApiQuery, ApiResult, AppState, Encoding,
};
use crate::auth::{Right, ALL_STREAMS};
use crate::error::{ApiError, ErrorBody};
use crate::Shared;

/// The most events one read returns.
pub(crate) const MAX_READ: usize = 10_000;

/// The stream a request addresses.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct StreamPath {
    /// The stream's name (1 to 255 bytes of UTF-8, no control characters;
    /// percent-encode `/`).
    stream: String,
}

fn stream_id(name: &str) -> ApiResult<StreamId> {
    Ok(StreamId::new(name)?)
}

/// An event to append.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewEventJson {
    /// Event id (UUID) — the server assigns one when absent.
    #[schema(format = "uuid")]
    id: Option<String>,
    /// The event type (1 to 255 bytes, not starting with `$`).
    #[serde(rename = "type")]
    event_type: String,
    /// The payload's schema version (at least 1; default 1).
    #[serde(default = "one")]
    schema_version: u32,
    /// Tags that queries and append conditions select on.
    #[serde(default)]
    tags: Vec<String>,
    /// Free-form metadata (correlation ids, `traceparent`).
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// The payload: a string is its UTF-8 text (or base64 with `encoding:
    /// base64`); any other JSON value is stored as its JSON text.
    payload: serde_json::Value,
    #[serde(default)]
    encoding: Encoding,
}

fn one() -> u32 {
    1
}

/// An expectation: `"any"`, `"no_stream"`, `"stream_exists"`, or the exact
/// version of the stream's last event (an integer from 0).
// Describes the field for the document; `expected_from_json` reads it, so a
// negative or fractional version is a typed `invalid_argument`.
#[allow(dead_code)]
#[derive(ToSchema)]
#[serde(untagged)]
pub(crate) enum ExpectedJson {
    /// A kind.
    Kind(ExpectedKind),
    /// The exact version (0 to 9223372036854775807).
    Version(u64),
}

/// An expectation that is not a version.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ExpectedKind {
    /// No check.
    Any,
    /// The stream has no events.
    NoStream,
    /// The stream has events.
    StreamExists,
}

fn bad_expected(v: &str) -> ApiError {
    wharf_eventstore::EventStoreError::InvalidArgument {
        field: "expected version",
        value: v.chars().take(64).collect(),
        requirement: "must be \"any\", \"no_stream\", \"stream_exists\" or an integer from 0 to 9223372036854775807",
    }
    .into()
}

fn expected_from_json(v: Option<&serde_json::Value>) -> ApiResult<ExpectedVersion> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(ExpectedVersion::Any),
        Some(serde_json::Value::String(s)) => expected_from_str(s),
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(v) => Ok(ExpectedVersion::Exact(v)),
            None => Err(bad_expected(&n.to_string())),
        },
        Some(other) => Err(bad_expected(&other.to_string())),
    }
}

fn expected_from_str(s: &str) -> ApiResult<ExpectedVersion> {
    match s {
        "any" => Ok(ExpectedVersion::Any),
        "no_stream" => Ok(ExpectedVersion::NoStream),
        "stream_exists" => Ok(ExpectedVersion::StreamExists),
        n => n
            .parse::<u64>()
            .map(ExpectedVersion::Exact)
            .map_err(|_| bad_expected(n)),
    }
}

/// One alternative of a query: all of `tags`, and one of `types` (any
/// type when empty).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryItemJson {
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// Append only if no event matching `query` (any of its items) was written
/// after position `after` (the whole log when absent).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConditionJson {
    query: Vec<QueryItemJson>,
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    after: Option<u64>,
}

fn query_from_json(items: Vec<QueryItemJson>) -> Query {
    items.into_iter().fold(Query::new(), |q, i| {
        q.item(QueryItem {
            types: i.types,
            tags: i.tags,
        })
    })
}

/// An append: events, the expected version, an optional condition.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppendBody {
    /// What the stream must be at (default `"any"`).
    #[schema(value_type = Option<ExpectedJson>)]
    expected: Option<serde_json::Value>,
    /// The events, stored together or not at all.
    events: Vec<NewEventJson>,
    condition: Option<ConditionJson>,
}

/// Where an append was stored.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AppendResponseJson {
    first_version: u64,
    last_version: u64,
    first_position: u64,
    last_position: u64,
}

/// An event as stored.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventJson {
    stream: String,
    version: u64,
    position: u64,
    timestamp_ms: i64,
    #[schema(format = "uuid")]
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    schema_version: u32,
    tags: Vec<String>,
    metadata: BTreeMap<String, String>,
    /// UTF-8 text, or base64 when `encoding` is `base64`.
    payload: String,
    encoding: Encoding,
}

fn event_json(e: &RecordedEvent) -> EventJson {
    let (payload, encoding) = payload_json(&e.payload);
    EventJson {
        stream: e.stream.as_str().to_owned(),
        version: e.version,
        position: e.position.0,
        timestamp_ms: e.timestamp_ms,
        id: e.id.to_string(),
        event_type: e.event_type.clone(),
        schema_version: e.schema_version,
        tags: e.tags.clone(),
        metadata: e.metadata.iter().cloned().collect(),
        payload,
        encoding,
    }
}

fn event_data(e: NewEventJson) -> ApiResult<EventData> {
    let payload = super::payload_bytes(e.payload, e.encoding)?;
    let mut d = EventData::new(e.event_type, payload).with_schema_version(e.schema_version);
    if let Some(id) = e.id {
        let parsed = id
            .parse::<EventId>()
            .map_err(|_| ApiError::bad_request(format!("id {id:?} is not a UUID")))?;
        d = d.with_id(parsed);
    }
    d.tags = e.tags;
    d.metadata = e.metadata.into_iter().collect();
    Ok(d)
}

/// Appends events to a stream, atomically, if the stream is at `expected`
/// and (with a `condition`) no event matching its query was written after
/// its position. A refused append stores nothing. Needs the
/// `events_append` right on the stream, and with a condition the
/// `events_read` right on every stream (`*`): the condition reads them.
#[utoipa::path(post, path = "/v1/eventstore/streams/{stream}",
    params(StreamPath),
    request_body = AppendBody,
    responses(
        (status = 200, body = AppendResponseJson),
        (status = 400, body = ErrorBody, description = "malformed JSON, bad name, version, id or encoding (`invalid_argument` with `details`)"),
        (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"),
        (status = 409, body = ErrorBody, description = "`wrong_expected_version` (details: stream, expected, actual) or `condition_failed` (details: after, conflict); nothing stored"),
        (status = 410, body = ErrorBody, description = "the stream is tombstoned"),
        (status = 413, body = ErrorBody, description = "the body, an event or the append is too large"),
        (status = 503, body = ErrorBody, description = "the server is shutting down"),
        (status = 507, body = ErrorBody, description = "the disk is full: nothing was stored"),
    ))]
pub(crate) async fn append(
    State(s): AppState,
    ApiPath(StreamPath { stream }): ApiPath<StreamPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<AppendResponseJson>> {
    check(&s, &headers, Right::EventsAppend, &stream)?;
    let body = body_bytes(&s, body)?;
    let body: AppendBody = parse_json(&body)?;
    if body.condition.is_some() {
        super::check_field(
            &s,
            &headers,
            Right::EventsRead,
            ALL_STREAMS,
            "append condition",
        )?;
    }
    let stream = stream_id(&stream)?;
    let expected = expected_from_json(body.expected.as_ref())?;
    let events = body
        .events
        .into_iter()
        .map(event_data)
        .collect::<ApiResult<Vec<_>>>()?;
    let mut req = AppendRequest::new(stream, expected, events);
    if let Some(c) = body.condition {
        let mut cond = AppendCondition::new(query_from_json(c.query));
        if let Some(p) = c.after {
            cond = cond.after(Position(p));
        }
        req = req.condition(cond);
    }
    let r = s.events.append_with(req).await?;
    Ok(Json(AppendResponseJson {
        first_version: r.first_version,
        last_version: r.last_version,
        first_position: r.first_position.0,
        last_position: r.last_position.0,
    }))
}

/// Which way a read goes.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DirectionJson {
    /// Oldest first.
    #[default]
    Forwards,
    /// Newest first.
    Backwards,
}

/// How to read a stream.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReadStreamParams {
    /// `forwards` (default) or `backwards`.
    #[serde(default)]
    #[param(inline)]
    direction: DirectionJson,
    /// `start`, `end`, or a version to start at (inclusive); default
    /// `start` forwards and `end` backwards.
    from: Option<String>,
    /// At most this many events (default and maximum 10000).
    max_count: Option<usize>,
}

fn parse_stream_from(s: &str) -> ApiResult<StreamFrom> {
    match s {
        "start" => Ok(StreamFrom::Start),
        "end" => Ok(StreamFrom::End),
        n => n.parse::<u64>().map(StreamFrom::Version).map_err(|_| {
            wharf_eventstore::EventStoreError::InvalidArgument {
                field: "from version",
                value: n.chars().take(64).collect(),
                requirement: "must be \"start\", \"end\" or an integer from 0",
            }
            .into()
        }),
    }
}

fn max_count(n: Option<usize>) -> usize {
    n.map_or(MAX_READ, |n| n.min(MAX_READ))
}

/// Events of the stream.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventsJson {
    events: Vec<EventJson>,
}

/// Reads a stream forwards or backwards from a version. Needs the
/// `events_read` right on the stream.
#[utoipa::path(get, path = "/v1/eventstore/streams/{stream}",
    params(StreamPath, ReadStreamParams),
    responses(
        (status = 200, body = EventsJson),
        (status = 400, body = ErrorBody, description = "bad name or parameter"),
        (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"),
        (status = 404, body = ErrorBody, description = "`stream_not_found`: no events (or soft-deleted)"),
        (status = 410, body = ErrorBody, description = "the stream is tombstoned"),
    ))]
pub(crate) async fn read_stream(
    State(s): AppState,
    ApiPath(StreamPath { stream }): ApiPath<StreamPath>,
    ApiQuery(p): ApiQuery<ReadStreamParams>,
    headers: HeaderMap,
) -> ApiResult<Json<EventsJson>> {
    check(&s, &headers, Right::EventsRead, &stream)?;
    let stream = stream_id(&stream)?;
    let mut o = match p.direction {
        DirectionJson::Forwards => ReadStream::forwards(),
        DirectionJson::Backwards => ReadStream::backwards(),
    };
    if let Some(f) = p.from.as_deref() {
        o = o.from(parse_stream_from(f)?);
    }
    o = o.max_count(max_count(p.max_count));
    let events = s.events.read_stream(&stream, o).await?;
    Ok(Json(EventsJson {
        events: events.iter().map(event_json).collect(),
    }))
}

/// How to delete a stream.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeleteParams {
    /// `any` (default), `no_stream`, `stream_exists` or the exact version.
    expected: Option<String>,
    /// Tombstone: the stream can never be read or written again.
    #[serde(default)]
    tombstone: bool,
}

/// A position in the global log.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PositionJson {
    position: u64,
}

/// Deletes a stream: soft (it reads as not found until an append recreates
/// it) or, with `tombstone=true`, for ever. Needs the `events_admin` right
/// on the stream.
#[utoipa::path(delete, path = "/v1/eventstore/streams/{stream}",
    params(StreamPath, DeleteParams),
    responses(
        (status = 200, body = PositionJson),
        (status = 400, body = ErrorBody, description = "bad name or parameter"),
        (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"),
        (status = 404, body = ErrorBody, description = "`stream_not_found` (soft delete of a stream without events)"),
        (status = 409, body = ErrorBody, description = "`wrong_expected_version`"),
        (status = 410, body = ErrorBody, description = "the stream is tombstoned"),
    ))]
pub(crate) async fn delete_stream(
    State(s): AppState,
    ApiPath(StreamPath { stream }): ApiPath<StreamPath>,
    ApiQuery(p): ApiQuery<DeleteParams>,
    headers: HeaderMap,
) -> ApiResult<Json<PositionJson>> {
    check(&s, &headers, Right::EventsAdmin, &stream)?;
    let stream = stream_id(&stream)?;
    let expected = match p.expected.as_deref() {
        None => ExpectedVersion::Any,
        Some(e) => expected_from_str(e)?,
    };
    let pos = if p.tombstone {
        s.events.tombstone_stream(&stream, expected).await?
    } else {
        s.events.delete_stream(&stream, expected).await?
    };
    Ok(Json(PositionJson { position: pos.0 }))
}

/// A stream's metadata: what reads still show.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetadataJson {
    /// Events older than this many ms are not read.
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    max_age_ms: Option<u64>,
    /// Only the last this many events are read.
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    max_count: Option<u64>,
    /// Versions below this are not read.
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    truncate_before: Option<u64>,
}

fn metadata_json(m: &StreamMetadata) -> MetadataJson {
    MetadataJson {
        max_age_ms: m
            .max_age
            .map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
        max_count: m.max_count,
        truncate_before: m.truncate_before,
    }
}

/// A stream's version, metadata and deletion state.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StreamInfoJson {
    stream: String,
    /// The last event's version; absent for a stream never written.
    version: Option<u64>,
    metadata: MetadataJson,
    soft_deleted: bool,
}

/// A stream's version, metadata and deletion state (a stream never written
/// has no `version`). Needs the `events_read` right on the stream.
#[utoipa::path(get, path = "/v1/eventstore/streams/{stream}/info",
    params(StreamPath),
    responses(
        (status = 200, body = StreamInfoJson),
        (status = 400, body = ErrorBody, description = "bad name"),
        (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"),
        (status = 410, body = ErrorBody, description = "the stream is tombstoned"),
    ))]
pub(crate) async fn stream_info(
    State(s): AppState,
    ApiPath(StreamPath { stream }): ApiPath<StreamPath>,
    headers: HeaderMap,
) -> ApiResult<Json<StreamInfoJson>> {
    check(&s, &headers, Right::EventsRead, &stream)?;
    let stream = stream_id(&stream)?;
    let i = s.events.stream_info(&stream).await?;
    Ok(Json(StreamInfoJson {
        stream: i.stream.as_str().to_owned(),
        version: match i.version {
            CurrentVersion::NoStream => None,
            CurrentVersion::Version(n) => Some(n),
        },
        metadata: metadata_json(&i.metadata),
        soft_deleted: i.soft_deleted,
    }))
}

/// Replaces a stream's metadata (allowed before its first event). Needs
/// the `events_admin` right on the stream.
#[utoipa::path(put, path = "/v1/eventstore/streams/{stream}/metadata",
    params(StreamPath),
    request_body = MetadataJson,
    responses(
        (status = 200, body = PositionJson),
        (status = 400, body = ErrorBody, description = "malformed JSON, bad name or value"),
        (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"),
        (status = 410, body = ErrorBody, description = "the stream is tombstoned"),
        (status = 413, body = ErrorBody, description = "the body is too large"),
    ))]
pub(crate) async fn set_metadata(
    State(s): AppState,
    ApiPath(StreamPath { stream }): ApiPath<StreamPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<PositionJson>> {
    check(&s, &headers, Right::EventsAdmin, &stream)?;
    let body = body_bytes(&s, body)?;
    let m: MetadataJson = parse_json(&body)?;
    let stream = stream_id(&stream)?;
    let mut meta = StreamMetadata::new();
    if let Some(a) = m.max_age_ms {
        meta = meta.with_max_age(Duration::from_millis(a));
    }
    if let Some(n) = m.max_count {
        meta = meta.with_max_count(n);
    }
    if let Some(v) = m.truncate_before {
        meta = meta.with_truncate_before(v);
    }
    let pos = s.events.set_stream_metadata(&stream, meta).await?;
    Ok(Json(PositionJson { position: pos.0 }))
}

/// Which streams to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListStreamsParams {
    /// Only names starting with this.
    #[serde(default)]
    prefix: String,
    /// Only names after this one (the last of the previous page).
    after: Option<String>,
    /// At most this many (default and maximum 10000).
    max_count: Option<usize>,
}

/// Stream names, in byte order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StreamsJson {
    streams: Vec<String>,
}

/// Lists streams with events or metadata, by prefix, in pages. Needs the
/// `events_read` right on the prefix (`*` without one).
#[utoipa::path(get, path = "/v1/eventstore/streams",
    params(ListStreamsParams),
    responses(
        (status = 200, body = StreamsJson),
        (status = 400, body = ErrorBody, description = "bad parameter"),
        (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"),
    ))]
pub(crate) async fn list_streams(
    State(s): AppState,
    ApiQuery(p): ApiQuery<ListStreamsParams>,
    headers: HeaderMap,
) -> ApiResult<Json<StreamsJson>> {
    let target = if p.prefix.is_empty() {
        ALL_STREAMS
    } else {
        &p.prefix
    };
    check(&s, &headers, Right::EventsRead, target)?;
    let after = p.after.as_deref().map(stream_id).transpose()?;
    let names = s
        .events
        .list_streams(&p.prefix, after.as_ref(), max_count(p.max_count))
        .await?;
    Ok(Json(StreamsJson {
        streams: names.iter().map(|n| n.as_str().to_owned()).collect(),
    }))
}

/// A global-log filter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AllParams {
    /// Start at this position (inclusive; default 0).
    #[param(minimum = 0)]
    from: Option<u64>,
    /// Only streams whose names start with this.
    prefix: Option<String>,
    /// Only these event types (comma-separated).
    types: Option<String>,
    /// Only events carrying all these tags (comma-separated).
    tags: Option<String>,
    /// Include system streams (`$snapshot-…`).
    #[serde(default)]
    include_system: bool,
    /// At most this many events (default 100, maximum 10000).
    max_count: Option<usize>,
}

/// Where a subscription starts.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SubscribeParams {
    /// `start` (default), `end`, or a position (inclusive).
    from: Option<String>,
    /// Only streams whose names start with this.
    prefix: Option<String>,
    /// Only these event types (comma-separated).
    types: Option<String>,
    /// Only events carrying all these tags (comma-separated).
    tags: Option<String>,
    /// Include system streams (`$snapshot-…`).
    #[serde(default)]
    include_system: bool,
}

fn split(list: Option<&str>) -> Vec<String> {
    list.map(|l| {
        l.split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

/// The filter, after checking the right it needs: `events_read` on its
/// prefix, or on every stream (`*`) without one or with system streams.
fn filter(
    s: &Shared,
    headers: &HeaderMap,
    prefix: Option<String>,
    types: Option<&str>,
    tags: Option<&str>,
    include_system: bool,
) -> ApiResult<GlobalFilter> {
    let target = match prefix.as_deref() {
        Some(p) if !p.is_empty() && !include_system => p,
        _ => ALL_STREAMS,
    };
    check(s, headers, Right::EventsRead, target)?;
    let mut f = GlobalFilter::all();
    if let Some(p) = prefix {
        f = f.stream_prefix(p);
    }
    let (types, tags) = (split(types), split(tags));
    if !types.is_empty() || !tags.is_empty() {
        f = f.query(Query::new().item(QueryItem { types, tags }));
    }
    if include_system {
        f = f.include_system();
    }
    Ok(f)
}

/// A page of the global log.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AllSliceJson {
    events: Vec<EventJson>,
    /// Where the next page starts.
    next: u64,
    /// Whether the page reached the end of the log.
    is_end: bool,
}

/// Reads the global log in commit order from a position, filtered by
/// stream prefix, event types and tags. Needs the `events_read` right on
/// the prefix (`*` without one).
#[utoipa::path(get, path = "/v1/eventstore/all",
    params(AllParams),
    responses(
        (status = 200, body = AllSliceJson),
        (status = 400, body = ErrorBody, description = "bad parameter"),
        (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"),
    ))]
pub(crate) async fn read_all(
    State(s): AppState,
    ApiQuery(p): ApiQuery<AllParams>,
    headers: HeaderMap,
) -> ApiResult<Json<AllSliceJson>> {
    let f = filter(
        &s,
        &headers,
        p.prefix,
        p.types.as_deref(),
        p.tags.as_deref(),
        p.include_system,
    )?;
    let n = p.max_count.map_or(100, |n| max_count(Some(n)));
    let slice = s
        .events
        .read_all(Position(p.from.unwrap_or(0)), &f, n)
        .await?;
    Ok(Json(AllSliceJson {
        events: slice.events.iter().map(event_json).collect(),
        next: slice.next.0,
        is_end: slice.is_end,
    }))
}

/// The position the next committed event will get at least.
#[utoipa::path(get, path = "/v1/eventstore/head",
    responses(
        (status = 200, body = PositionJson),
        (status = 401, body = ErrorBody, description = "no or unknown token"),
    ))]
pub(crate) async fn head(State(s): AppState, headers: HeaderMap) -> ApiResult<Json<PositionJson>> {
    super::authenticated(&s, &headers)?;
    let p = s.events.head().await?;
    Ok(Json(PositionJson { position: p.0 }))
}

/// Server-Sent Events: every stored event from `from` passing the filter,
/// then each new one as it is committed, in commit order, one `event`
/// event each (a JSON `EventJson`, SSE id = its position). A reconnecting
/// client's `Last-Event-ID` (a position) resumes after that event, in
/// place of `from`. Needs the `events_read` right on the prefix (`*`
/// without one).
#[utoipa::path(get, path = "/v1/eventstore/subscribe",
    params(SubscribeParams),
    responses((status = 200, description = "`event` events, each an EventJson", content_type = "text/event-stream"),
        (status = 400, body = ErrorBody, description = "bad parameter"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right")))]
pub(crate) async fn subscribe(
    State(s): AppState,
    ApiQuery(p): ApiQuery<SubscribeParams>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let f = filter(
        &s,
        &headers,
        p.prefix,
        p.types.as_deref(),
        p.tags.as_deref(),
        p.include_system,
    )?;
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let from = match (last_id, p.from.as_deref()) {
        (Some(id), _) => SubscribeFrom::Position(Position(id).next()),
        (None, None | Some("start")) => SubscribeFrom::Start,
        (None, Some("end")) => SubscribeFrom::End,
        (None, Some(n)) => SubscribeFrom::Position(Position(n.parse::<u64>().map_err(|_| {
            ApiError::from(wharf_eventstore::EventStoreError::InvalidArgument {
                field: "from",
                value: n.chars().take(64).collect(),
                requirement: "must be \"start\", \"end\" or a position",
            })
        })?)),
    };
    let sub = s.events.subscribe(from, f).await?;
    let stream = futures_util::stream::unfold((sub, s), |(mut sub, s)| async move {
        let next = tokio::select! {
            e = sub.next() => e,
            () = s.stopping() => None,
        };
        let ev = match next? {
            Ok(e) => Event::default()
                .event("event")
                .id(e.position.0.to_string())
                .json_data(event_json(&e))
                .unwrap_or_else(|_| Event::default().event("error")),
            Err(e) => Event::default().event("error").data(e.to_string()),
        };
        Some((Ok(ev), (sub, s)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_parse_from_json_and_refuse_negative_or_fractional_versions() {
        let v = |j: serde_json::Value| expected_from_json(Some(&j));
        assert_eq!(v(serde_json::json!("any")).ok(), Some(ExpectedVersion::Any));
        assert_eq!(
            v(serde_json::json!("no_stream")).ok(),
            Some(ExpectedVersion::NoStream)
        );
        assert_eq!(
            v(serde_json::json!(3)).ok(),
            Some(ExpectedVersion::Exact(3))
        );
        for bad in [
            serde_json::json!(-1),
            serde_json::json!(1.5),
            serde_json::json!(1e30),
            serde_json::json!("nope"),
            serde_json::json!([1]),
        ] {
            let e = v(bad.clone()).expect_err("refused");
            assert_eq!(e.code, "invalid_argument", "{bad}");
        }
        assert_eq!(
            crate::error::expected_json(ExpectedVersion::Exact(7)),
            serde_json::json!(7)
        );
    }
}
