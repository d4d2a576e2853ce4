//! Routes for operators' tools (the web console first): `GET /v1/whoami`,
//! the rights of the token presented, so a client shows only the actions
//! it may take; `GET /v1/topics/{topic}/partitions/{partition}/messages`,
//! stored messages of one partition read from an offset or a time without
//! consuming them; and `POST /v1/groups/{group}/topics/{topic}/reset`,
//! moving an idle group's position. All are ordinary documented routes:
//! the console uses nothing else.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wharf_broker::PeekPosition;
use wharf_core::Timestamp;

use super::{bearer, check, find_topic, message_json, ApiError, ApiPath, ApiQuery, ApiResult};
use super::{AppState, MessageJson, PartitionPath};
use crate::auth::Rights;
use crate::error::ErrorBody;
use crate::telemetry;

/// The rights of the token presented. Topic rights are topic patterns
/// (`*` one segment, a final `>` one or more); event store rights are
/// stream-name prefixes (`*`: every stream).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WhoamiJson {
    /// Whether the server checks tokens; without, every request is allowed
    /// and the lists below cover everything.
    auth: bool,
    /// The token's configured name.
    name: Option<String>,
    publish: Vec<String>,
    consume: Vec<String>,
    admin: Vec<String>,
    /// May read `/metrics`.
    metrics: bool,
    events_read: Vec<String>,
    events_append: Vec<String>,
    events_admin: Vec<String>,
}

/// What the token presented may do (no right is needed to ask; an unknown
/// token is refused).
#[utoipa::path(get, path = "/v1/whoami",
    responses((status = 200, body = WhoamiJson), (status = 401, body = ErrorBody, description = "no or unknown token")))]
pub(super) async fn whoami(State(s): AppState, headers: HeaderMap) -> ApiResult<Json<WhoamiJson>> {
    let (auth, r) = match &s.auth {
        None => (false, Rights::everything()),
        Some(a) => (
            true,
            a.rights(bearer(&headers)).map_err(|d| {
                telemetry::refused("auth");
                ApiError::from(d)
            })?,
        ),
    };
    Ok(Json(WhoamiJson {
        auth,
        name: r.name,
        publish: r.publish,
        consume: r.consume,
        admin: r.admin,
        metrics: r.metrics,
        events_read: r.events_read,
        events_append: r.events_append,
        events_admin: r.events_admin,
    }))
}

/// Where to start reading a partition.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct BrowseParams {
    /// First offset to read (default: the partition's first retained one).
    #[param(maximum = 9_223_372_036_854_775_807_i64)]
    offset: Option<u64>,
    /// Start at the first message stored at or after this time (ms since
    /// the epoch); with `offset` too, at the later of the two.
    #[param(maximum = 9_223_372_036_854_775_807_i64)]
    time_ms: Option<u64>,
    /// At most this many (default 50; values above 1000 take 1000, 0 takes 1).
    limit: Option<usize>,
}

/// A stored message of a partition.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StoredMessageJson {
    partition: u32,
    offset: u64,
    message: MessageJson,
}

/// A page of a partition's stored messages.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BrowsePageJson {
    /// The partition's first retained and next offsets now.
    start_offset: u64,
    end_offset: u64,
    /// Where this page started (after resolving `time_ms`).
    from_offset: u64,
    messages: Vec<StoredMessageJson>,
    /// Pass as `offset` for the next page; absent when this page reached
    /// the partition's end.
    next_offset: Option<u64>,
}

/// Stored messages of one partition from an offset or a time, read without
/// consuming (no group moves, no delivery is counted): reading twice returns
/// the same messages. Messages past their TTL but still stored are included.
#[utoipa::path(get, path = "/v1/topics/{topic}/partitions/{partition}/messages",
    params(PartitionPath, BrowseParams),
    responses((status = 200, body = BrowsePageJson),
        (status = 400, body = ErrorBody, description = "bad name or parameter"),
        (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks admin on the topic"),
        (status = 404, body = ErrorBody, description = "unknown topic or partition")))]
pub(super) async fn browse(
    State(s): AppState,
    ApiPath(PartitionPath { topic, partition }): ApiPath<PartitionPath>,
    ApiQuery(p): ApiQuery<BrowseParams>,
    headers: HeaderMap,
) -> ApiResult<Json<BrowsePageJson>> {
    check(&s, &headers, crate::auth::Right::Admin, &topic)?;
    let info = find_topic(&s, &topic)?;
    let Some(&(start, end)) = info.partitions.get(partition as usize) else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "unknown_partition",
            format!(
                "partition {partition}: {topic:?} has {} partitions",
                info.partitions.len()
            ),
        ));
    };
    const MAX: u64 = i64::MAX as u64;
    for (name, v) in [("offset", p.offset), ("time_ms", p.time_ms)] {
        if v.is_some_and(|v| v > MAX) {
            return Err(ApiError::bad_request(format!(
                "{name} is larger than {MAX}"
            )));
        }
    }
    let mut from = p.offset.unwrap_or(start).max(start);
    if let Some(ms) = p.time_ms {
        let at = s
            .broker
            .offset_at_time(&topic, partition, Timestamp::from_millis(ms))?;
        from = from.max(at);
    }
    let limit = p.limit.unwrap_or(50).clamp(1, 1000);
    let messages: Vec<StoredMessageJson> = if from >= end {
        Vec::new()
    } else {
        s.broker
            .peek(&topic, PeekPosition::new(partition, from), limit)?
            .messages
            .iter()
            .take_while(|m| m.partition == partition)
            .map(|m| StoredMessageJson {
                partition: m.partition,
                offset: m.offset,
                message: message_json(&m.message),
            })
            .collect()
    };
    // Re-read: the partition may have grown while the page was read.
    let end = find_topic(&s, &topic)?
        .partitions
        .get(partition as usize)
        .map_or(end, |&(_, e)| e);
    let next = messages.last().map_or(from, |m| m.offset + 1);
    Ok(Json(BrowsePageJson {
        start_offset: start,
        end_offset: end,
        from_offset: from,
        next_offset: (messages.len() == limit && next < end).then_some(next),
        messages,
    }))
}

/// A group on a topic in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct GroupTopicPath {
    /// Consumer group.
    #[param(pattern = r"^[A-Za-z0-9_.\-]{1,128}$")]
    group: String,
    /// Topic name: dot-separated segments of `[A-Za-z0-9_-]`.
    #[param(pattern = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$", max_length = 249)]
    topic: String,
}

/// Where to move a group.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResetBody {
    /// `earliest`, `latest`, an offset (in every partition's range), or
    /// `time:<ms>` (the first message stored at or after it, per partition).
    #[schema(pattern = r"^(earliest|latest|[0-9]{1,19}|time:[0-9]{1,19})$")]
    to: String,
}

/// A group's new position in one partition.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ResetPartitionJson {
    partition: u32,
    /// Every offset below this counts as settled, nothing at or above it.
    offset: u64,
}

/// A group's new position.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ResetJson {
    partitions: Vec<ResetPartitionJson>,
}

/// Moves a consumer group's position on a topic to the earliest or latest
/// offset, an offset or a time, in every partition; pending redeliveries
/// and attempt counts are dropped. Only a group nothing uses may move (as
/// Kafka's offset reset): with a consumer bound or a delivery unsettled it
/// is refused with 409 and nothing changes. An HTTP long poll's
/// subscription stays bound until the server's poller idle time passes.
#[utoipa::path(post, path = "/v1/groups/{group}/topics/{topic}/reset",
    params(GroupTopicPath), request_body = ResetBody,
    responses((status = 200, body = ResetJson),
        (status = 400, body = ErrorBody, description = "malformed JSON, bad name, or an offset outside a partition"),
        (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks admin on the topic"),
        (status = 404, body = ErrorBody, description = "unknown topic, or the group has no position on it"),
        (status = 409, body = ErrorBody, description = "the group is in use (a bound consumer or an unsettled delivery): nothing changed"),
        (status = 413, body = ErrorBody, description = "body too large")))]
pub(super) async fn reset_group(
    State(s): AppState,
    ApiPath(GroupTopicPath { group, topic }): ApiPath<GroupTopicPath>,
    headers: HeaderMap,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Json<ResetJson>> {
    check(&s, &headers, crate::auth::Right::Admin, &topic)?;
    let b: ResetBody = super::parse_json(&super::body_bytes(&s, body)?)?;
    let to =
        super::parse_from(Some(&b.to))?.ok_or_else(|| ApiError::bad_request("`to` is required"))?;
    match s.broker.reset_group(&group, &topic, to)? {
        wharf_broker::GroupReset::Moved(parts) => Ok(Json(ResetJson {
            partitions: parts
                .into_iter()
                .map(|(partition, offset)| ResetPartitionJson { partition, offset })
                .collect(),
        })),
        wharf_broker::GroupReset::InUse => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "group_in_use",
            format!("group {group:?} is in use on {topic:?} (a bound consumer or an unsettled delivery): stop its consumers and retry"),
        )),
        _ => Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "unknown_group",
            format!("group {group:?} has no position on {topic:?}"),
        )),
    }
}
