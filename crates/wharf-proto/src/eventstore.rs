//! The `wharf.v1.EventStore` messages to and from `wharf-eventstore`'s
//! types, and its typed errors to and from gRPC statuses (an
//! [`v1::EsErrorDetail`] in the status details), shared by the server and
//! the client so both ends read the wire the same way. Decoding never
//! trusts the wire: a bad id, stream name or version is an
//! [`EventStoreError::InvalidArgument`], checked again by the store.

use std::time::Duration;

use prost::Message as _;
use tonic::{Code, Status};
use wharf_eventstore::{
    AllSlice, AppendCondition, AppendRequest, AppendResult, CurrentVersion, Direction, EventData,
    EventId, EventStoreError, ExpectedVersion, GlobalFilter, Limits, Position, Query, QueryItem,
    ReadStream, RecordedEvent, StreamFrom, StreamId, StreamInfo, StreamMetadata, SubscribeFrom,
};

use crate::convert::intern;
use crate::v1;
use crate::v1::es_error_detail::Kind;

type Result<T, E = EventStoreError> = std::result::Result<T, E>;

fn invalid(field: &'static str, value: &str, requirement: &'static str) -> EventStoreError {
    EventStoreError::InvalidArgument {
        field,
        value: value.chars().take(64).collect(),
        requirement,
    }
}

/// A stream name from the wire.
///
/// # Errors
/// [`EventStoreError::InvalidArgument`] (see [`StreamId::new`]).
pub fn stream_from_proto(name: &str) -> Result<StreamId> {
    StreamId::new(name)
}

/// An expectation from the wire.
///
/// # Errors
/// [`EventStoreError::InvalidArgument`] for an unknown kind.
pub fn expected_from_proto(kind: i32, version: u64) -> Result<ExpectedVersion> {
    match v1::EsExpectedKind::try_from(kind) {
        Ok(v1::EsExpectedKind::EsExpectedAny) => Ok(ExpectedVersion::Any),
        Ok(v1::EsExpectedKind::EsExpectedNoStream) => Ok(ExpectedVersion::NoStream),
        Ok(v1::EsExpectedKind::EsExpectedStreamExists) => Ok(ExpectedVersion::StreamExists),
        Ok(v1::EsExpectedKind::EsExpectedExact) => Ok(ExpectedVersion::Exact(version)),
        Err(_) => Err(invalid(
            "expected version",
            &kind.to_string(),
            "unknown expectation kind",
        )),
    }
}

/// An expectation for the wire: its kind and version.
pub fn expected_to_proto(e: ExpectedVersion) -> (i32, u64) {
    match e {
        ExpectedVersion::Any => (v1::EsExpectedKind::EsExpectedAny as i32, 0),
        ExpectedVersion::NoStream => (v1::EsExpectedKind::EsExpectedNoStream as i32, 0),
        ExpectedVersion::StreamExists => (v1::EsExpectedKind::EsExpectedStreamExists as i32, 0),
        ExpectedVersion::Exact(n) => (v1::EsExpectedKind::EsExpectedExact as i32, n),
    }
}

fn id_from_proto(id: &[u8]) -> Result<EventId> {
    if id.is_empty() {
        return Ok(EventId::new());
    }
    let bytes: [u8; 16] = id.try_into().map_err(|_| {
        invalid(
            "event id",
            &format!("{} bytes", id.len()),
            "must be 16 bytes",
        )
    })?;
    Ok(EventId::from_bytes(bytes))
}

/// An event to append, for the wire.
pub fn event_to_proto(e: &EventData) -> v1::EsEvent {
    v1::EsEvent {
        id: e.id.to_bytes().to_vec().into(),
        event_type: e.event_type.clone(),
        schema_version: e.schema_version,
        tags: e.tags.clone(),
        metadata: e
            .metadata
            .iter()
            .map(|(n, v)| v1::Header {
                name: n.clone(),
                value: v.clone(),
            })
            .collect(),
        payload: e.payload.clone(),
    }
}

/// An event to append, from the wire.
///
/// # Errors
/// [`EventStoreError::InvalidArgument`] for an id that is not 16 bytes.
pub fn event_from_proto(e: v1::EsEvent) -> Result<EventData> {
    let mut d = EventData::new(e.event_type, e.payload)
        .with_id(id_from_proto(&e.id)?)
        .with_schema_version(e.schema_version);
    d.tags = e.tags;
    d.metadata = e.metadata.into_iter().map(|h| (h.name, h.value)).collect();
    Ok(d)
}

/// A stored event, for the wire.
pub fn recorded_to_proto(e: &RecordedEvent) -> v1::EsRecordedEvent {
    let d = event_to_proto(&e.to_event_data());
    v1::EsRecordedEvent {
        stream: e.stream.as_str().to_owned(),
        version: e.version,
        position: e.position.0,
        timestamp_ms: e.timestamp_ms,
        id: d.id,
        event_type: d.event_type,
        schema_version: d.schema_version,
        tags: d.tags,
        metadata: d.metadata,
        payload: d.payload,
    }
}

/// A stored event, from the wire.
///
/// # Errors
/// [`EventStoreError::InvalidArgument`] for a bad stream name or id.
pub fn recorded_from_proto(e: v1::EsRecordedEvent) -> Result<RecordedEvent> {
    let stream = StreamId::new(e.stream)?;
    let data = event_from_proto(v1::EsEvent {
        id: e.id,
        event_type: e.event_type,
        schema_version: e.schema_version,
        tags: e.tags,
        metadata: e.metadata,
        payload: e.payload,
    })?;
    Ok(RecordedEvent::new(
        stream,
        e.version,
        Position(e.position),
        e.timestamp_ms,
        data,
    ))
}

/// Stored events, from the wire.
///
/// # Errors
/// As [`recorded_from_proto`].
pub fn events_from_proto(events: Vec<v1::EsRecordedEvent>) -> Result<Vec<RecordedEvent>> {
    events.into_iter().map(recorded_from_proto).collect()
}

/// A query, for the wire.
pub fn query_to_proto(q: &Query) -> v1::EsQuery {
    v1::EsQuery {
        items: q
            .items()
            .iter()
            .map(|i| v1::EsQueryItem {
                types: i.types.clone(),
                tags: i.tags.clone(),
            })
            .collect(),
    }
}

/// A query, from the wire.
pub fn query_from_proto(q: v1::EsQuery) -> Query {
    q.items.into_iter().fold(Query::new(), |q, i| {
        q.item(QueryItem {
            types: i.types,
            tags: i.tags,
        })
    })
}

/// An append, for the wire.
pub fn append_to_proto(r: &AppendRequest) -> v1::EsAppendRequest {
    let (expected, expected_version) = expected_to_proto(r.expected);
    v1::EsAppendRequest {
        stream: r.stream.as_str().to_owned(),
        expected,
        expected_version,
        events: r.events.iter().map(event_to_proto).collect(),
        condition: r.condition.as_ref().map(|c| v1::EsCondition {
            query: Some(query_to_proto(&c.query)),
            after: c.after.map(|p| p.0),
        }),
    }
}

/// An append, from the wire (the store validates it further).
///
/// # Errors
/// [`EventStoreError::InvalidArgument`] for a bad stream name, expectation or id.
pub fn append_from_proto(r: v1::EsAppendRequest) -> Result<AppendRequest> {
    let stream = StreamId::new(r.stream)?;
    let expected = expected_from_proto(r.expected, r.expected_version)?;
    let events = r
        .events
        .into_iter()
        .map(event_from_proto)
        .collect::<Result<Vec<_>>>()?;
    let mut req = AppendRequest::new(stream, expected, events);
    if let Some(c) = r.condition {
        let mut cond = AppendCondition::new(query_from_proto(c.query.unwrap_or_default()));
        if let Some(p) = c.after {
            cond = cond.after(Position(p));
        }
        req = req.condition(cond);
    }
    Ok(req)
}

/// An append's result, for the wire.
pub fn append_result_to_proto(r: &AppendResult) -> v1::EsAppendResponse {
    v1::EsAppendResponse {
        first_version: r.first_version,
        last_version: r.last_version,
        first_position: r.first_position.0,
        last_position: r.last_position.0,
    }
}

/// An append's result, from the wire.
pub fn append_result_from_proto(r: &v1::EsAppendResponse) -> AppendResult {
    AppendResult {
        first_version: r.first_version,
        last_version: r.last_version,
        first_position: Position(r.first_position),
        last_position: Position(r.last_position),
    }
}

/// Stream read options, for the wire.
pub fn read_stream_to_proto(stream: &StreamId, o: &ReadStream) -> v1::EsReadStreamRequest {
    let (from, from_version) = match o.from {
        StreamFrom::Start => (v1::EsStreamFrom::EsFromStart, 0),
        StreamFrom::Version(v) => (v1::EsStreamFrom::EsFromVersion, v),
        StreamFrom::End => (v1::EsStreamFrom::EsFromEnd, 0),
    };
    v1::EsReadStreamRequest {
        stream: stream.as_str().to_owned(),
        backwards: o.direction == Direction::Backwards,
        from: from as i32,
        from_version,
        max_count: (o.max_count != usize::MAX).then_some(o.max_count as u64),
    }
}

/// Stream read options, from the wire.
///
/// # Errors
/// [`EventStoreError::InvalidArgument`] for a bad stream name or `from` kind.
pub fn read_stream_from_proto(r: &v1::EsReadStreamRequest) -> Result<(StreamId, ReadStream)> {
    let stream = StreamId::new(r.stream.as_str())?;
    let mut o = if r.backwards {
        ReadStream::backwards()
    } else {
        ReadStream::forwards()
    };
    let from = match v1::EsStreamFrom::try_from(r.from) {
        Ok(v1::EsStreamFrom::EsFromStart) => StreamFrom::Start,
        Ok(v1::EsStreamFrom::EsFromVersion) => StreamFrom::Version(r.from_version),
        Ok(v1::EsStreamFrom::EsFromEnd) => StreamFrom::End,
        Err(_) => return Err(invalid("from", &r.from.to_string(), "unknown start kind")),
    };
    o = o.from(from);
    if let Some(n) = r.max_count {
        o = o.max_count(usize::try_from(n).unwrap_or(usize::MAX));
    }
    Ok((stream, o))
}

/// A global filter, for the wire.
pub fn filter_to_proto(f: &GlobalFilter) -> v1::EsFilter {
    v1::EsFilter {
        stream_prefix: f.prefix().map(str::to_owned),
        query: f.event_query().map(query_to_proto),
        include_system: f.includes_system(),
    }
}

/// A global filter, from the wire.
pub fn filter_from_proto(f: Option<v1::EsFilter>) -> GlobalFilter {
    let Some(f) = f else {
        return GlobalFilter::all();
    };
    let mut g = GlobalFilter::all();
    if let Some(p) = f.stream_prefix {
        g = g.stream_prefix(p);
    }
    if let Some(q) = f.query {
        g = g.query(query_from_proto(q));
    }
    if f.include_system {
        g = g.include_system();
    }
    g
}

/// A page of the global log, for the wire.
pub fn slice_to_proto(s: &AllSlice) -> v1::EsAllSlice {
    v1::EsAllSlice {
        events: s.events.iter().map(recorded_to_proto).collect(),
        next: s.next.0,
        is_end: s.is_end,
    }
}

/// Where a subscription starts, for the wire: its kind and position.
pub fn subscribe_from_to_proto(from: SubscribeFrom) -> (i32, u64) {
    match from {
        SubscribeFrom::Start => (v1::EsSubscribeFrom::EsSubscribeStart as i32, 0),
        SubscribeFrom::Position(p) => (v1::EsSubscribeFrom::EsSubscribePosition as i32, p.0),
        SubscribeFrom::End => (v1::EsSubscribeFrom::EsSubscribeEnd as i32, 0),
    }
}

/// Where a subscription starts, from the wire.
///
/// # Errors
/// [`EventStoreError::InvalidArgument`] for an unknown kind.
pub fn subscribe_from_from_proto(kind: i32, position: u64) -> Result<SubscribeFrom> {
    match v1::EsSubscribeFrom::try_from(kind) {
        Ok(v1::EsSubscribeFrom::EsSubscribeStart) => Ok(SubscribeFrom::Start),
        Ok(v1::EsSubscribeFrom::EsSubscribePosition) => {
            Ok(SubscribeFrom::Position(Position(position)))
        }
        Ok(v1::EsSubscribeFrom::EsSubscribeEnd) => Ok(SubscribeFrom::End),
        Err(_) => Err(invalid("from", &kind.to_string(), "unknown start kind")),
    }
}

/// Stream metadata, for the wire.
pub fn metadata_to_proto(m: &StreamMetadata) -> v1::EsMetadata {
    v1::EsMetadata {
        max_age_ms: m
            .max_age
            .map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
        max_count: m.max_count,
        truncate_before: m.truncate_before,
    }
}

/// Stream metadata, from the wire (the store validates it).
pub fn metadata_from_proto(m: Option<v1::EsMetadata>) -> StreamMetadata {
    let m = m.unwrap_or_default();
    let mut out = StreamMetadata::new();
    if let Some(a) = m.max_age_ms {
        out = out.with_max_age(Duration::from_millis(a));
    }
    if let Some(n) = m.max_count {
        out = out.with_max_count(n);
    }
    if let Some(v) = m.truncate_before {
        out = out.with_truncate_before(v);
    }
    out
}

/// A stream's info, for the wire.
pub fn info_to_proto(i: &StreamInfo) -> v1::EsStreamInfo {
    v1::EsStreamInfo {
        stream: i.stream.as_str().to_owned(),
        version: match i.version {
            CurrentVersion::NoStream => None,
            CurrentVersion::Version(n) => Some(n),
        },
        metadata: Some(metadata_to_proto(&i.metadata)),
        soft_deleted: i.soft_deleted,
    }
}

/// A stream's info, from the wire.
///
/// # Errors
/// [`EventStoreError::InvalidArgument`] for a bad stream name.
pub fn info_from_proto(i: v1::EsStreamInfo) -> Result<StreamInfo> {
    Ok(StreamInfo::new(
        StreamId::new(i.stream)?,
        i.version
            .map_or(CurrentVersion::NoStream, CurrentVersion::Version),
        metadata_from_proto(i.metadata),
        i.soft_deleted,
    ))
}

/// Size limits, for the wire.
pub fn limits_to_proto(l: &Limits) -> v1::EsLimits {
    v1::EsLimits {
        max_event_bytes: l.max_event_bytes as u64,
        max_append_bytes: l.max_append_bytes as u64,
        max_events_per_append: l.max_events_per_append as u64,
        max_tags_per_event: l.max_tags_per_event as u64,
    }
}

/// Size limits, from the wire.
pub fn limits_from_proto(l: &v1::EsLimits) -> Limits {
    let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    Limits::default()
        .with_max_event_bytes(n(l.max_event_bytes))
        .with_max_append_bytes(n(l.max_append_bytes))
        .with_max_events_per_append(n(l.max_events_per_append))
        .with_max_tags_per_event(n(l.max_tags_per_event))
}

/// The gRPC code of an event store error: conflicts are
/// `FAILED_PRECONDITION`, bad input `INVALID_ARGUMENT`, a missing or
/// tombstoned stream `NOT_FOUND`, a full disk `RESOURCE_EXHAUSTED`.
pub fn es_code_for(e: &EventStoreError) -> Code {
    match e {
        EventStoreError::WrongExpectedVersion { .. } | EventStoreError::ConditionFailed { .. } => {
            Code::FailedPrecondition
        }
        EventStoreError::StreamNotFound { .. } | EventStoreError::StreamDeleted { .. } => {
            Code::NotFound
        }
        EventStoreError::InvalidArgument { .. } | EventStoreError::TooLarge { .. } => {
            Code::InvalidArgument
        }
        EventStoreError::StorageFull { .. } => Code::ResourceExhausted,
        EventStoreError::Unavailable { .. } | EventStoreError::Closed => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// The typed detail of an event store error.
pub fn es_error_to_proto(e: &EventStoreError) -> v1::EsErrorDetail {
    let mut d = v1::EsErrorDetail {
        message: e.to_string(),
        ..Default::default()
    };
    match e {
        EventStoreError::WrongExpectedVersion {
            stream,
            expected,
            actual,
        } => {
            d.kind = Kind::WrongExpectedVersion as i32;
            d.stream = stream.as_str().to_owned();
            (d.expected, d.expected_version) = expected_to_proto(*expected);
            d.actual_version = match actual {
                CurrentVersion::NoStream => None,
                CurrentVersion::Version(n) => Some(*n),
            };
        }
        EventStoreError::ConditionFailed { after, conflict } => {
            d.kind = Kind::ConditionFailed as i32;
            d.after = after.map(|p| p.0);
            d.conflict = conflict.0;
        }
        EventStoreError::StreamNotFound { stream } => {
            d.kind = Kind::StreamNotFound as i32;
            d.stream = stream.as_str().to_owned();
        }
        EventStoreError::StreamDeleted { stream } => {
            d.kind = Kind::StreamDeleted as i32;
            d.stream = stream.as_str().to_owned();
        }
        EventStoreError::InvalidArgument {
            field,
            value,
            requirement,
        } => {
            d.kind = Kind::InvalidArgument as i32;
            d.field = (*field).to_owned();
            d.value.clone_from(value);
            d.requirement = (*requirement).to_owned();
        }
        EventStoreError::TooLarge { what, size, max } => {
            d.kind = Kind::TooLarge as i32;
            d.what = (*what).to_owned();
            d.size = *size as u64;
            d.max = *max as u64;
        }
        EventStoreError::StorageFull { .. } => d.kind = Kind::StorageFull as i32,
        EventStoreError::Storage { .. } => d.kind = Kind::Storage as i32,
        EventStoreError::Unavailable { .. } => d.kind = Kind::Unavailable as i32,
        EventStoreError::Closed => d.kind = Kind::Closed as i32,
        _ => d.kind = Kind::Other as i32,
    }
    d
}

/// A gRPC status for `e`, with the typed error in its details.
pub fn es_status_for(e: &EventStoreError) -> Status {
    let detail = es_error_to_proto(e);
    Status::with_details(es_code_for(e), e.to_string(), detail.encode_to_vec().into())
}

fn boxed(message: String) -> Box<dyn std::error::Error + Send + Sync> {
    message.into()
}

/// The typed error in a detail from a Wharf server.
pub fn es_error_from_proto(d: v1::EsErrorDetail) -> EventStoreError {
    let stream = |name: &str| StreamId::new(name);
    match Kind::try_from(d.kind).unwrap_or(Kind::Other) {
        Kind::WrongExpectedVersion => match stream(&d.stream) {
            Ok(stream) => EventStoreError::WrongExpectedVersion {
                stream,
                expected: expected_from_proto(d.expected, d.expected_version)
                    .unwrap_or(ExpectedVersion::Any),
                actual: d
                    .actual_version
                    .map_or(CurrentVersion::NoStream, CurrentVersion::Version),
            },
            Err(e) => e,
        },
        Kind::ConditionFailed => EventStoreError::ConditionFailed {
            after: d.after.map(Position),
            conflict: Position(d.conflict),
        },
        Kind::StreamNotFound => match stream(&d.stream) {
            Ok(stream) => EventStoreError::StreamNotFound { stream },
            Err(e) => e,
        },
        Kind::StreamDeleted => match stream(&d.stream) {
            Ok(stream) => EventStoreError::StreamDeleted { stream },
            Err(e) => e,
        },
        Kind::InvalidArgument => EventStoreError::InvalidArgument {
            field: intern(&d.field),
            value: d.value,
            requirement: intern(&d.requirement),
        },
        Kind::TooLarge => EventStoreError::TooLarge {
            what: intern(&d.what),
            size: usize::try_from(d.size).unwrap_or(usize::MAX),
            max: usize::try_from(d.max).unwrap_or(usize::MAX),
        },
        Kind::StorageFull => EventStoreError::StorageFull {
            source: boxed(d.message),
        },
        Kind::Storage | Kind::Other => EventStoreError::Storage {
            source: boxed(d.message),
        },
        Kind::Unavailable => EventStoreError::Unavailable {
            source: boxed(d.message),
        },
        Kind::Closed => EventStoreError::Closed,
    }
}

/// The typed error in a status from a Wharf server. A status without a
/// detail (a transport failure, an auth refusal, the size limit) becomes
/// [`EventStoreError::Unavailable`] for transport failures,
/// [`EventStoreError::PermissionDenied`] for auth refusals and
/// [`EventStoreError::InvalidArgument`] (field `request`) for a refused request.
pub fn es_error_from_status(s: &Status) -> EventStoreError {
    if !s.details().is_empty() {
        if let Ok(d) = v1::EsErrorDetail::decode(s.details()) {
            return es_error_from_proto(d);
        }
    }
    match s.code() {
        Code::Unauthenticated | Code::PermissionDenied => EventStoreError::PermissionDenied {
            reason: s.message().to_owned(),
        },
        Code::ResourceExhausted | Code::InvalidArgument => EventStoreError::InvalidArgument {
            field: "request",
            value: String::new(),
            requirement: intern(s.message()),
        },
        Code::Unimplemented | Code::Internal => EventStoreError::Storage {
            source: boxed(format!("{:?}: {}", s.code(), s.message())),
        },
        _ => EventStoreError::Unavailable {
            source: boxed(format!("{:?}: {}", s.code(), s.message())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(s: &str) -> StreamId {
        StreamId::new(s).expect("name")
    }

    #[test]
    fn errors_round_trip_through_a_status_with_their_typed_fields() {
        let cases = vec![
            EventStoreError::WrongExpectedVersion {
                stream: stream("order-1"),
                expected: ExpectedVersion::Exact(3),
                actual: CurrentVersion::NoStream,
            },
            EventStoreError::WrongExpectedVersion {
                stream: stream("order-1"),
                expected: ExpectedVersion::NoStream,
                actual: CurrentVersion::Version(0),
            },
            EventStoreError::ConditionFailed {
                after: Some(Position(7)),
                conflict: Position(9),
            },
            EventStoreError::ConditionFailed {
                after: None,
                conflict: Position(0),
            },
            EventStoreError::StreamNotFound {
                stream: stream("a"),
            },
            EventStoreError::StreamDeleted {
                stream: stream("b"),
            },
            EventStoreError::InvalidArgument {
                field: "expected version",
                value: "9223372036854775808".into(),
                requirement: "must be at most 9223372036854775807",
            },
            EventStoreError::TooLarge {
                what: "event",
                size: 10,
                max: 5,
            },
            EventStoreError::Closed,
        ];
        for e in cases {
            let status = es_status_for(&e);
            let back = es_error_from_status(&status);
            assert_eq!(format!("{back:?}"), format!("{e:?}"), "{e}");
        }
        let conflict = es_status_for(&EventStoreError::ConditionFailed {
            after: None,
            conflict: Position(1),
        });
        assert_eq!(conflict.code(), Code::FailedPrecondition);
        // A status without a detail (the auth layer) is typed by its code.
        assert!(matches!(
            es_error_from_status(&Status::permission_denied("no")),
            EventStoreError::PermissionDenied { .. }
        ));
        assert!(matches!(
            es_error_from_status(&Status::unavailable("gone")),
            EventStoreError::Unavailable { .. }
        ));
    }

    #[test]
    fn an_append_request_round_trips_every_field() {
        let e = EventData::new("OrderPlaced", "{}")
            .with_schema_version(3)
            .with_tag("customer:7")
            .with_metadata("b", "2")
            .with_metadata("a", "1");
        let req = AppendRequest::new(stream("order-1"), ExpectedVersion::Exact(4), vec![e])
            .condition(AppendCondition::new(Query::tags(["customer:7"])).after(Position(2)));
        let back = append_from_proto(append_to_proto(&req)).expect("decodes");
        assert_eq!(back.stream, req.stream);
        assert_eq!(back.expected, req.expected);
        assert_eq!(back.events, req.events, "metadata keeps its order");
        assert_eq!(back.condition, req.condition);
        let mut bad = append_to_proto(&req);
        bad.events[0].id = vec![1, 2, 3].into();
        assert!(matches!(
            append_from_proto(bad),
            Err(EventStoreError::InvalidArgument {
                field: "event id",
                ..
            })
        ));
    }
}
