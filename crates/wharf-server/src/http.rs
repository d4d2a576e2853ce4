//! The HTTP/JSON API: publish (one or a batch; UTF-8 or base64 payloads),
//! long-poll consume with settlement by opaque delivery id, SSE and WebSocket
//! streams, topic/group/DLQ admin, the event store (`events.rs`), health,
//! metrics and the OpenAPI document (generated from these handlers by
//! `utoipa`, so it cannot drift).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::BytesRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wharf_broker::Redrive;
use wharf_core::{
    header, Delivery, Error, Message, MessageId, Publisher, Settlement, StartPosition,
    SubscribeOptions, Subscriber, Subscription, Timestamp,
};

use crate::admin::{self, durability_str, TopicSettings};
use crate::auth::{Right, ORIGINAL_TOPIC_HEADER, REPLAY_TARGET};
use crate::backoff::ErrorBackoff;
use crate::error::{ApiError, ErrorBody};
use crate::{telemetry, Shared};

mod events;
mod operator;
mod projections;

type AppState = State<Arc<Shared>>;
type ApiResult<T> = Result<T, ApiError>;

/// The HTTP routes with their OpenAPI operations: each handler is registered
/// through `routes!`, which adds the route and its `#[utoipa::path]` together,
/// so the document lists exactly the routes served (see [`openapi`]).
fn api() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(operator::whoami))
        .routes(routes!(list_topics, create_topic))
        .routes(routes!(describe_topic, delete_topic))
        .routes(routes!(repair_partition))
        .routes(routes!(operator::browse))
        .routes(routes!(publish))
        .routes(routes!(consume))
        .routes(routes!(sse))
        .routes(routes!(ws))
        .routes(routes!(ack))
        .routes(routes!(nack))
        .routes(routes!(reject))
        .routes(routes!(extend))
        .routes(routes!(list_groups))
        .routes(routes!(operator::reset_group))
        .routes(routes!(dlq_list))
        .routes(routes!(dlq_show))
        .routes(routes!(dlq_replay))
        .routes(routes!(dlq_purge))
        .routes(routes!(
            events::read_stream,
            events::append,
            events::delete_stream
        ))
        .routes(routes!(events::stream_info))
        .routes(routes!(events::set_metadata))
        .routes(routes!(events::list_streams))
        .routes(routes!(events::read_all))
        .routes(routes!(events::head))
        .routes(routes!(events::subscribe))
        .routes(routes!(projections::list, projections::create))
        .routes(routes!(projections::status, projections::delete))
        .routes(routes!(projections::rebuild))
}

/// The HTTP routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.config.max_request_bytes;
    let (router, _) = api().split_for_parts();
    router
        .merge(crate::console::router())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

/// The OpenAPI document of the HTTP API, generated from the routes the
/// server registers (served at `/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// The document's fixed parts; the paths and their schemas come from the
/// routes in [`openapi`].
#[derive(OpenApi)]
#[openapi(info(
    title = "Wharf HTTP API",
    description = "Durable messaging over HTTP/JSON. Send `Authorization: Bearer <token>` when the server has tokens configured."
))]
pub struct ApiDoc;

// ---------- JSON types ----------

/// How a payload is written in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Encoding {
    /// The payload is the string's UTF-8 bytes.
    #[default]
    Utf8,
    /// The payload is standard base64.
    Base64,
}

/// A message to publish.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishMessage {
    /// The payload: a string is its UTF-8 text (or base64 with `encoding:
    /// base64`); any other JSON value (object, array, number, boolean,
    /// null) is stored as its JSON text.
    payload: serde_json::Value,
    #[serde(default)]
    encoding: Encoding,
    /// Partitioning / ordering key.
    key: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Message id (UUID) for deduplication; assigned by the server if absent.
    #[schema(format = "uuid")]
    id: Option<String>,
}

/// Several messages, published together in order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishBatch {
    messages: Vec<PublishMessage>,
}

/// One message, or a batch (`{"messages": [..]}`).
// The variants describe the body for the document; `PublishBody::parse`
// reads it (by `messages`, for errors that name the field at fault).
#[allow(dead_code)]
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum PublishBody {
    Batch(PublishBatch),
    One(PublishMessage),
}

impl PublishBody {
    /// The messages of a publish body. An object with `messages` is a batch,
    /// any other a single message, so a refusal names the field at fault
    /// (serde's untagged enum only says no variant matched).
    fn parse(bytes: &[u8]) -> ApiResult<Vec<PublishMessage>> {
        let value: serde_json::Value = parse_json(bytes)?;
        let malformed = |e: serde_json::Error| {
            telemetry::refused("malformed");
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("malformed JSON: {e}"),
            )
        };
        if value.get("messages").is_some() {
            let b: PublishBatch = serde_json::from_value(value).map_err(malformed)?;
            Ok(b.messages)
        } else if value.is_object() {
            let m: PublishMessage = serde_json::from_value(value).map_err(malformed)?;
            Ok(vec![m])
        } else {
            telemetry::refused("malformed");
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "malformed JSON: expected an object: {\"payload\": ..} or {\"messages\": [..]}",
            ))
        }
    }
}

/// Where a message was stored.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReceiptJson {
    #[schema(format = "uuid")]
    id: String,
    partition: u32,
    offset: Option<u64>,
    duplicate: bool,
}

/// The receipts, one per message in order.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PublishResponse {
    receipts: Vec<ReceiptJson>,
}

/// A message as delivered.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MessageJson {
    #[schema(format = "uuid")]
    id: String,
    key: Option<String>,
    headers: BTreeMap<String, String>,
    payload: String,
    encoding: Encoding,
    timestamp_ms: u64,
}

/// A delivery; settle it by `delivery_id` (long poll and manual-ack WebSocket).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeliveryJson {
    delivery_id: Option<String>,
    topic: String,
    partition: u32,
    offset: Option<u64>,
    attempt: u32,
    message: MessageJson,
}

/// Deliveries from a long poll (empty when the wait ran out).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ConsumeResponse {
    deliveries: Vec<DeliveryJson>,
}

/// Nack options.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NackBody {
    /// Redeliver after this many ms (default 0).
    #[serde(default, deserialize_with = "whole::opt_u64")]
    #[schema(maximum = 86_400_000)]
    delay_ms: Option<u64>,
}

/// Reject options.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RejectBody {
    /// Why; stored in the dead letter's `wharf-dlq-reason` header.
    reason: Option<String>,
}

/// Lease extension.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExtendBody {
    /// New lease length from now, in ms.
    #[schema(maximum = 86_400_000)]
    #[serde(deserialize_with = "whole::u64")]
    by_ms: u64,
}

/// Topic settings; omitted fields take the server defaults.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTopicBody {
    #[schema(pattern = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$", max_length = 249)]
    name: String,
    #[schema(minimum = 1, maximum = 4096)]
    #[serde(default, deserialize_with = "whole::opt_u32")]
    partitions: Option<u32>,
    /// `always`, `never` or `interval:<ms>`.
    #[schema(pattern = "^(always|never|interval:[0-9]{1,19}|[0-9]{1,19}ms)$")]
    durability: Option<String>,
    #[serde(default, deserialize_with = "whole::opt_u64")]
    retention_bytes: Option<u64>,
    #[serde(default, deserialize_with = "whole::opt_u64")]
    retention_ms: Option<u64>,
    #[schema(minimum = 1, maximum = 67_108_864)]
    #[serde(default, deserialize_with = "whole::opt_u64")]
    max_message_bytes: Option<u64>,
    #[serde(default, deserialize_with = "whole::opt_u64")]
    ttl_ms: Option<u64>,
    #[schema(pattern = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$", max_length = 249)]
    dead_letter_topic: Option<String>,
    #[schema(minimum = 1)]
    #[serde(default, deserialize_with = "whole::opt_u32")]
    max_deliveries: Option<u32>,
    #[serde(default, deserialize_with = "whole::opt_u64")]
    visibility_timeout_ms: Option<u64>,
    /// Dedup window in ms; 0 turns dedup off.
    #[serde(default, deserialize_with = "whole::opt_u64")]
    dedup_window_ms: Option<u64>,
    /// The policy for a damaged stored batch: `false` (default) stops the
    /// partition at the damage until an operator repairs it; `true` skips
    /// the batch at once (its messages are lost, logged and counted).
    skip_damaged_batches: Option<bool>,
    /// Size at which a partition starts a new segment file; retention
    /// deletes whole sealed segments, so it acts in steps of this size.
    #[schema(minimum = 4096)]
    #[serde(default, deserialize_with = "whole::opt_u64")]
    segment_bytes: Option<u64>,
}

/// A partition's stored offsets.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PartitionJson {
    partition: u32,
    start_offset: u64,
    end_offset: u64,
    /// Damaged batches found and not repaired: the partition delivers
    /// nothing past the first one until it is repaired.
    damage: Vec<DamageJson>,
    /// Bytes the partition's log holds in its segment files (index files
    /// not counted; includes bytes written but not yet synced).
    bytes: u64,
}

/// A stored batch that fails its CRC (or other validation) with valid data
/// after it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DamageJson {
    /// The segment file.
    file: String,
    /// Byte range of the damaged batch in the file.
    position: u64,
    end_position: u64,
    /// The offsets it held: `[start_offset, end_offset)`.
    start_offset: u64,
    end_offset: u64,
    /// What is wrong with the bytes.
    reason: String,
}

/// What a repair does with the partition's first damaged batch.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RepairKind {
    /// Replace it with a void batch: its offsets are skipped, every other
    /// record stays.
    SkipBatch,
    /// Drop everything from `truncate_at` (default: the damaged batch's
    /// first offset) on.
    Truncate,
}

/// Body of a repair.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RepairBody {
    action: RepairKind,
    /// With `truncate`: the cut (at most the damaged batch's first offset).
    #[serde(default, deserialize_with = "whole::opt_u64")]
    truncate_at: Option<u64>,
    /// Report what would be lost, change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// What a repair did (or, as a dry run, would do).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RepairJson {
    dry_run: bool,
    /// The damaged batch acted on; null when the partition has none.
    damage: Option<DamageJson>,
    /// Offsets lost (or that would be): `[lost_from, lost_to)`.
    lost_from: u64,
    lost_to: u64,
    lost_count: u64,
    /// Damaged batches left in the partition.
    remaining: usize,
}

fn damage_json(d: &wharf_broker::Damage) -> DamageJson {
    DamageJson {
        file: d.path.display().to_string(),
        position: d.position,
        end_position: d.end_position,
        start_offset: d.start_offset,
        end_offset: d.end_offset,
        reason: d.reason.to_string(),
    }
}

/// A topic and its settings.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TopicJson {
    name: String,
    partitions: u32,
    durability: String,
    retention_bytes: Option<u64>,
    retention_ms: Option<u64>,
    max_message_bytes: u64,
    ttl_ms: Option<u64>,
    dedup_window_ms: Option<u64>,
    dead_letter_topic: Option<String>,
    max_deliveries: Option<u32>,
    visibility_timeout_ms: Option<u64>,
    /// `true`: a damaged stored batch is skipped at once; `false`: its
    /// partition stops at the damage until an operator repairs it.
    skip_damaged_batches: bool,
    /// Size at which a partition starts a new segment file.
    segment_bytes: u64,
    offsets: Vec<PartitionJson>,
    /// Bytes the topic holds on disk: the sum of its partitions' `bytes`.
    bytes: u64,
}

/// A consumer group's position on a topic.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupJson {
    group: String,
    topic: String,
    /// Messages stored but not settled by the group (sum over partitions).
    lag: u64,
    /// `queue` or `stream`.
    mode: String,
    /// Live consumers' ids (one per subscription), in join order.
    members: Vec<u64>,
    partitions: Vec<GroupPartitionJson>,
    /// Whether the group is loaded in memory; `false`: its persisted
    /// position (no consumer since the server started, or unloaded when
    /// idle), shown as `queue` mode.
    loaded: bool,
}

/// A group's position in one partition.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GroupPartitionJson {
    partition: u32,
    /// Every offset below this is settled by the group (queue mode: acks
    /// may arrive out of order, so some offsets above it are settled too).
    committed_offset: u64,
    /// Offsets at or above `committed_offset` already settled.
    settled_above: u64,
    /// The partition's next offset.
    end_offset: u64,
    /// Messages stored but not settled by the group.
    lag: u64,
    /// Stream mode: the member the partition is assigned to.
    member: Option<u64>,
}

/// A dead letter as stored in its dead-letter topic.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetterJson {
    partition: u32,
    offset: u64,
    /// The message with its `wharf-dlq-*` and `wharf-original-*` headers.
    message: MessageJson,
}

/// A page of dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DlqPageJson {
    letters: Vec<DeadLetterJson>,
    /// Pass as `cursor` for the next page; absent when this page reached the end.
    next_cursor: Option<String>,
}

/// How many messages an operation affected.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CountJson {
    count: u64,
}

/// Which dead letters to replay: one `id`, or `all`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayBody {
    /// The message id of one dead letter.
    #[schema(format = "uuid")]
    id: Option<String>,
    all: Option<bool>,
}

// The name rules of `wharf_core::name` as JSON Schema patterns, for the
// document (the server checks names with `wharf_core::name` itself).
// A topic: dot-separated segments of [A-Za-z0-9_-].
// A pattern: the same, where a segment may be `*` and the last one `>`.
// A group: [A-Za-z0-9_.-], 1 to 128 bytes.

/// Long-poll parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ConsumeParams {
    /// Consumer group.
    #[param(pattern = r"^[A-Za-z0-9_.\-]{1,128}$")]
    group: String,
    /// At most this many deliveries (default 1; values above 1000 take 1000).
    max: Option<usize>,
    /// Wait up to this long for the first delivery (default 1000; values
    /// above 30000 wait 30000).
    wait_ms: Option<u64>,
    /// Lease length in ms before an unsettled delivery is redelivered
    /// (default: the server's `lease`).
    #[param(maximum = 86_400_000)]
    lease_ms: Option<u64>,
    /// For a new group: `earliest` (default), `latest`, an offset, or `time:<ms>`.
    #[param(pattern = r"^(earliest|latest|[0-9]{1,19}|time:[0-9]{1,19})$")]
    from: Option<String>,
}

/// Stream parameters (SSE).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StreamParams {
    /// Consumer group; without one the stream is private.
    #[param(pattern = r"^[A-Za-z0-9_.\-]{1,128}$")]
    group: Option<String>,
    /// `earliest`, `latest` (default without a group), an offset, or `time:<ms>`.
    #[param(pattern = r"^(earliest|latest|[0-9]{1,19}|time:[0-9]{1,19})$")]
    from: Option<String>,
}

/// WebSocket parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WsParams {
    /// Consumer group; without one the stream is private.
    #[param(pattern = r"^[A-Za-z0-9_.\-]{1,128}$")]
    group: Option<String>,
    /// `earliest`, `latest` (default without a group), an offset, or `time:<ms>`.
    #[param(pattern = r"^(earliest|latest|[0-9]{1,19}|time:[0-9]{1,19})$")]
    from: Option<String>,
    /// `auto` (default) acks each message when sent; `manual` waits for
    /// `{"op":"ack","delivery_id":..}` messages.
    #[param(pattern = "^(auto|manual)$")]
    ack: Option<String>,
}

/// DLQ listing parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DlqParams {
    /// At most this many (default 100; values above 10000 take 10000, 0 takes 1).
    limit: Option<usize>,
    /// `PARTITION:OFFSET` to start at: a previous page's `next_cursor`.
    #[param(pattern = "^[0-9]{1,9}:[0-9]{1,19}$")]
    cursor: Option<String>,
}

/// Group listing filters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct GroupParams {
    /// Only this group.
    group: Option<String>,
    /// Only this topic.
    topic: Option<String>,
}

/// A topic in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct TopicPath {
    /// Topic name: dot-separated segments of `[A-Za-z0-9_-]`.
    #[param(pattern = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$", max_length = 249)]
    topic: String,
}

/// A partition of a topic in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct PartitionPath {
    /// Topic name: dot-separated segments of `[A-Za-z0-9_-]`.
    #[param(pattern = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$", max_length = 249)]
    topic: String,
    /// Partition number (from 0).
    partition: u32,
}

/// A topic or subscription pattern in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct PatternPath {
    /// Topic name or pattern: segments of `[A-Za-z0-9_-]`, `*` for one
    /// segment, a final `>` for one or more.
    #[param(
        pattern = r"^(([A-Za-z0-9_\-]+|\*)\.)*([A-Za-z0-9_\-]+|\*|>)$",
        max_length = 249
    )]
    topic: String,
}

/// A dead-letter topic in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct DlqPath {
    /// A topic (its dead-letter topic is meant) or a dead-letter topic.
    #[param(pattern = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$", max_length = 249)]
    topic: String,
}

/// One dead letter in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct LetterPath {
    /// A topic (its dead-letter topic is meant) or a dead-letter topic.
    #[param(pattern = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$", max_length = 249)]
    topic: String,
    /// The dead letter's message id.
    #[param(format = "uuid")]
    id: String,
}

/// A long-poll delivery in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct DeliveryPath {
    /// The `delivery_id` from a long poll.
    id: String,
}

/// Axum's `Query`, refusing with the API's JSON error body.
pub(crate) struct ApiQuery<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(t)) => Ok(ApiQuery(t)),
            Err(r) => {
                telemetry::refused("malformed");
                Err(ApiError::bad_request(r.body_text()))
            }
        }
    }
}

/// Axum's `Path`, refusing with the API's JSON error body.
pub(crate) struct ApiPath<T>(T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(t)) => Ok(ApiPath(t)),
            Err(r) => Err(ApiError::new(r.status(), "bad_request", r.body_text())),
        }
    }
}

// ---------- helpers ----------

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get("authorization")?.to_str().ok()?;
    Some(v.strip_prefix("Bearer ").unwrap_or(v).trim())
}

fn check(s: &Shared, headers: &HeaderMap, right: Right, topic: &str) -> ApiResult<()> {
    match &s.auth {
        None => Ok(()),
        Some(a) => a.check(bearer(headers), right, topic).map_err(|d| {
            telemetry::refused("auth");
            d.into()
        }),
    }
}

/// As [`check`] for a topic that `field` of the request names.
fn check_field(
    s: &Shared,
    headers: &HeaderMap,
    right: Right,
    topic: &str,
    field: &'static str,
) -> ApiResult<()> {
    match &s.auth {
        None => Ok(()),
        Some(a) => a
            .check_field(bearer(headers), right, topic, field)
            .map_err(|d| {
                telemetry::refused("auth");
                d.into()
            }),
    }
}

fn check_any(s: &Shared, headers: &HeaderMap, right: Right) -> ApiResult<()> {
    match &s.auth {
        None => Ok(()),
        Some(a) => a.check_any(bearer(headers), right).map_err(|d| {
            telemetry::refused("auth");
            d.into()
        }),
    }
}

fn authenticated(s: &Shared, headers: &HeaderMap) -> ApiResult<()> {
    match &s.auth {
        None => Ok(()),
        Some(a) => a.authenticate(bearer(headers)).map_err(Into::into),
    }
}

fn allowed(s: &Shared, headers: &HeaderMap, right: Right, topic: &str) -> bool {
    s.auth
        .as_ref()
        .is_none_or(|a| a.check(bearer(headers), right, topic).is_ok())
}

fn body_bytes(s: &Shared, body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            telemetry::refused("too_large");
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!(
                    "request body exceeds the limit of {} bytes",
                    s.config.max_request_bytes
                ),
            )
        } else if let Some(t) = body_timeout(&r) {
            telemetry::refused("body_timeout");
            ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", t.to_string())
        } else {
            ApiError::bad_request(r.body_text())
        }
    })
}

/// The body-read deadline, if that is why reading the body failed.
fn body_timeout(r: &BytesRejection) -> Option<&crate::listen::BodyTimeout> {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(r);
    while let Some(err) = e {
        if let Some(t) = err.downcast_ref() {
            return Some(t);
        }
        e = err.source();
    }
    None
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        telemetry::refused("malformed");
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("malformed JSON: {e}"),
        )
    })
}

/// An optional body: empty or `null` takes the defaults.
fn parse_json_or_default<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> ApiResult<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        Ok(parse_json::<Option<T>>(bytes)?.unwrap_or_default())
    }
}

/// Integers in request bodies as JSON Schema counts them: `5` and `5.0`
/// are both the integer 5 (serde alone refuses `5.0` for a `u64`).
mod whole {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};

    /// Largest integer taken: the document's `int64` format.
    const MAX: u64 = i64::MAX as u64;

    fn from_number<E: serde::de::Error>(n: &serde_json::Number) -> Result<u64, E> {
        let v = match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => v,
            // 2^63 is exactly representable, so `< 2^63` keeps the cast in range.
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < 9_223_372_036_854_775_808.0 => {
                f as u64
            }
            _ => return Err(E::custom(format!("{n} is not a non-negative integer"))),
        };
        if v > MAX {
            return Err(E::custom(format!("{v} is larger than {MAX}")));
        }
        Ok(v)
    }

    pub(super) fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        from_number(&serde_json::Number::deserialize(d)?)
    }

    pub(super) fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<serde_json::Number>::deserialize(d)?
            .map(|n| from_number(&n))
            .transpose()
    }

    pub(super) fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        // The document's `int32` format.
        const MAX32: u64 = i32::MAX as u64;
        opt_u64(d)?
            .map(|v| match u32::try_from(v) {
                Ok(v) if u64::from(v) <= MAX32 => Ok(v),
                _ => Err(D::Error::custom(format!("{v} is larger than {MAX32}"))),
            })
            .transpose()
    }
}

/// A JSON payload as bytes: a string as its UTF-8 bytes (or decoded, under
/// `base64`), any other JSON value as its text. Messages and events alike.
pub(crate) fn payload_bytes(
    payload: serde_json::Value,
    encoding: Encoding,
) -> Result<Bytes, ApiError> {
    Ok(match (payload, encoding) {
        (serde_json::Value::String(s), Encoding::Utf8) => Bytes::from(s.into_bytes()),
        (serde_json::Value::String(s), Encoding::Base64) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("payload is not valid base64: {e}")))?,
        ),
        (other, Encoding::Utf8) => Bytes::from(other.to_string().into_bytes()),
        (_, Encoding::Base64) => {
            return Err(ApiError::bad_request(
                "encoding base64 needs the payload as a base64 string",
            ))
        }
    })
}

fn to_message(m: PublishMessage) -> Result<Message, ApiError> {
    let payload = payload_bytes(m.payload, m.encoding)?;
    let mut b = Message::builder().payload(payload);
    if let Some(id) = m.id {
        let id = id
            .parse::<MessageId>()
            .map_err(|_| ApiError::bad_request(format!("id {id:?} is not a UUID")))?;
        b = b.id(id);
    }
    if let Some(k) = m.key {
        b = b.key(k);
    }
    Ok(b.headers(m.headers.into_iter().collect()).build())
}

fn payload_json(bytes: &[u8]) -> (String, Encoding) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), Encoding::Utf8),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            Encoding::Base64,
        ),
    }
}

fn message_json(m: &Message) -> MessageJson {
    let (payload, encoding) = payload_json(m.payload());
    MessageJson {
        id: m.id().to_string(),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        headers: m
            .headers()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        payload,
        encoding,
        timestamp_ms: m.timestamp().as_millis(),
    }
}

fn delivery_json(d: &Delivery, id: Option<String>) -> DeliveryJson {
    let info = d.info();
    DeliveryJson {
        delivery_id: id,
        topic: info.topic.to_string(),
        partition: info.partition,
        offset: info.offset,
        attempt: info.attempt,
        message: message_json(d.message()),
    }
}

/// Longest lease a client may ask for (a day), so a deadline never overflows.
const MAX_LEASE_MS: u64 = 86_400_000;

fn lease_duration(name: &str, ms: u64) -> ApiResult<Duration> {
    if ms > MAX_LEASE_MS {
        return Err(ApiError::bad_request(format!(
            "{name} {ms} is longer than the maximum of {MAX_LEASE_MS} ms"
        )));
    }
    Ok(Duration::from_millis(ms))
}

fn parse_from(from: Option<&str>) -> ApiResult<Option<StartPosition>> {
    Ok(match from {
        None => None,
        Some("earliest") => Some(StartPosition::Earliest),
        Some("latest") => Some(StartPosition::Latest),
        Some(s) => {
            if let Some(ms) = s.strip_prefix("time:") {
                Some(StartPosition::Time(Timestamp::from_millis(
                    ms.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "from {s:?}: time must be ms since the epoch"
                        ))
                    })?,
                )))
            } else {
                Some(StartPosition::Offset(s.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "from {s:?} is not earliest, latest, an offset or time:<ms>"
                    ))
                })?))
            }
        }
    })
}

fn topic_json(t: &wharf_broker::TopicInfo) -> TopicJson {
    let c = &t.config;
    TopicJson {
        name: t.name.clone(),
        partitions: c.partitions,
        durability: durability_str(c.durability),
        retention_bytes: c.retention_bytes,
        retention_ms: c.retention_ms,
        max_message_bytes: c.max_message_bytes as u64,
        ttl_ms: c.ttl_ms,
        dedup_window_ms: c.dedup_window_ms,
        dead_letter_topic: c.dead_letter_topic.clone(),
        max_deliveries: c.max_deliveries,
        visibility_timeout_ms: c.visibility_timeout_ms,
        skip_damaged_batches: c.skip_damaged_batches,
        segment_bytes: c.segment_bytes,
        offsets: t
            .partitions
            .iter()
            .enumerate()
            .map(|(i, (s, e))| PartitionJson {
                partition: i as u32,
                start_offset: *s,
                end_offset: *e,
                damage: t
                    .damage
                    .iter()
                    .filter(|(p, _)| *p as usize == i)
                    .map(|(_, d)| damage_json(d))
                    .collect(),
                bytes: t.partition_bytes.get(i).copied().unwrap_or(0),
            })
            .collect(),
        bytes: t.bytes(),
    }
}

/// Decodes `data` as every request body the server parses (HTTP publish
/// JSON and every gRPC request message); used by the fuzz target and its
/// corpus test. Never panics; returns how many decoders accepted the input.
pub fn fuzz_decode_http(data: &[u8]) -> usize {
    use wharf_proto::codec::decode;
    use wharf_proto::v1;
    let mut ok = 0;
    if let Ok(msgs) = PublishBody::parse(data) {
        ok += msgs
            .into_iter()
            .map(to_message)
            .filter(Result::is_ok)
            .count();
    }
    ok += usize::from(serde_json::from_slice::<CreateTopicBody>(data).is_ok());
    ok += usize::from(serde_json::from_slice::<ReplayBody>(data).is_ok());
    if let Ok(p) = decode::<v1::PublishRequest>(data) {
        ok += p
            .messages
            .into_iter()
            .map(wharf_proto::convert::message_from_proto)
            .filter(Result::is_ok)
            .count();
    }
    // The gRPC server's own publish decoder, which skips prost's structs.
    let direct = wharf_proto::publish::decode_publish(&bytes::Bytes::copy_from_slice(data));
    // Read every message back out of the request (spans, header strings).
    ok += direct
        .ok()
        .and_then(|p| p.messages.ok())
        .map_or(0, |m| m.to_messages().len());
    ok += usize::from(decode::<v1::ConsumeRequest>(data).is_ok());
    ok += usize::from(decode::<v1::CreateTopicRequest>(data).is_ok());
    ok += usize::from(decode::<v1::DlqReplayRequest>(data).is_ok());
    ok
}

/// Any path no route matches (gRPC calls never get here: they are routed by
/// content type, see [`crate::route`]).
async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {method} {}", uri.path()),
    )
}

// ---------- health, metrics, docs ----------

/// Liveness: 200 while the process runs. Never needs a token.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: 200 while accepting work; 503 once shutting down, or while
/// writes fail because the storage is full (reads still work; it turns 200
/// again by itself once space is freed). Never needs a token.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready", body = String, content_type = "text/plain"), (status = 503, description = "shutting down, or the storage is full", body = String, content_type = "text/plain")))]
async fn readyz(State(s): AppState) -> Response {
    if *s.shutdown.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if s.broker.storage_full() {
        (StatusCode::SERVICE_UNAVAILABLE, "storage full").into_response()
    } else {
        "ready".into_response()
    }
}

/// Prometheus metrics (text format). They name every topic, so with auth on
/// they need the metrics right (`metrics = true`, or admin on `>`).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "no metrics right")))]
async fn metrics(State(s): AppState, headers: HeaderMap) -> ApiResult<String> {
    check_any(&s, &headers, Right::Metrics)?;
    Ok(s.metrics.render(&s.broker))
}

/// This document (OpenAPI 3.1, JSON).
#[utoipa::path(get, path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"), (status = 401, body = ErrorBody)))]
async fn openapi_json(State(s): AppState, headers: HeaderMap) -> ApiResult<Response> {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    authenticated(&s, &headers)?;
    let doc = DOC.get_or_init(|| openapi().to_json().unwrap_or_default());
    Ok(([(CONTENT_TYPE, "application/json")], doc.as_str()).into_response())
}

// ---------- publish ----------

/// Publishes one message (`{"payload": ..}`) or a batch (`{"messages": [..]}`).
/// An accepted publish to an unknown topic creates it with the default
/// settings (unless the server runs with `--no-auto-create-topics`); a
/// refused one creates nothing.
#[utoipa::path(post, path = "/v1/topics/{topic}/messages",
    params(TopicPath),
    request_body(content = PublishBody, description = "One message, or a batch as `{\"messages\": [..]}`"),
    responses(
        (status = 200, body = PublishResponse),
        (status = 400, body = ErrorBody, description = "malformed JSON, bad name, id or encoding"),
        (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"),
        (status = 404, body = ErrorBody, description = "unknown topic, when the server does not create topics on publish"),
        (status = 413, body = ErrorBody, description = "body or message too large"),
        (status = 503, body = ErrorBody, description = "the server is shutting down"),
        (status = 507, body = ErrorBody, description = "the disk is full: nothing was stored; retry once space is back"),
    ))]
async fn publish(
    State(s): AppState,
    ApiPath(TopicPath { topic }): ApiPath<TopicPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<PublishResponse>> {
    check(&s, &headers, Right::Publish, &topic)?;
    let body = body_bytes(&s, body)?;
    let msgs = PublishBody::parse(&body)?;
    let msgs = msgs
        .into_iter()
        .map(to_message)
        .collect::<Result<Vec<_>, _>>()?;
    if s.auth.is_some() {
        for m in &msgs {
            if let Some(t) = m.headers().get(header::ORIGINAL_TOPIC) {
                check_field(&s, &headers, Right::Publish, t, ORIGINAL_TOPIC_HEADER)?;
            }
        }
    }
    let started = Instant::now();
    let n = msgs.len();
    let bytes: usize = msgs.iter().map(Message::size).sum();
    let receipts = s.broker.publish_batch(&topic, msgs).await?;
    telemetry::published(&topic, "http", n, bytes, started.elapsed());
    Ok(Json(PublishResponse {
        receipts: receipts
            .iter()
            .map(|r| ReceiptJson {
                id: r.id.to_string(),
                partition: r.partition,
                offset: r.offset,
                duplicate: r.duplicate,
            })
            .collect(),
    }))
}

// ---------- long-poll consume ----------

/// The broker subscription behind the long polls of one (topic, group).
struct Poller {
    sub: tokio::sync::Mutex<Subscription>,
    /// When a poll last started or ended (for idle expiry).
    used: Mutex<tokio::time::Instant>,
}

impl Poller {
    fn touch(&self) {
        *self.used.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
    }
}

type PollerMap = HashMap<(String, String), Arc<Poller>>;

/// The shared broker subscriptions behind long polls, one per (topic,
/// group), at most `max_pollers`. One not polled for `poller_idle` is
/// dropped by [`reap_pollers`], so its consumer leaves the group and the
/// group can unload.
#[derive(Default)]
pub(crate) struct Pollers {
    subs: Mutex<PollerMap>,
}

fn too_many_pollers(max: usize) -> ApiError {
    telemetry::refused("too_many_pollers");
    Error::ResourceExhausted {
        resource: "long-poll subscriptions",
        limit: max as u64,
    }
    .into()
}

impl Pollers {
    async fn get(
        &self,
        s: &Shared,
        topic: &str,
        group: &str,
        start: Option<StartPosition>,
    ) -> ApiResult<Arc<Poller>> {
        let key = (topic.to_owned(), group.to_owned());
        let max = s.config.max_pollers;
        {
            let map = self.lock();
            if let Some(found) = map.get(&key) {
                found.touch();
                return Ok(found.clone());
            }
            if map.len() >= max {
                return Err(too_many_pollers(max));
            }
        }
        let mut opts = SubscribeOptions::new(topic)
            .group(group)
            .max_in_flight(1024);
        if let Some(st) = start {
            opts = opts.start(st);
        }
        let sub = s.broker.subscribe(opts).await?;
        let mut map = self.lock();
        if let Some(found) = map.get(&key) {
            // Made meanwhile by a concurrent first poll: use that one.
            found.touch();
            return Ok(found.clone());
        }
        if map.len() >= max {
            drop(map);
            drop(sub);
            return Err(too_many_pollers(max));
        }
        let poller = Arc::new(Poller {
            sub: tokio::sync::Mutex::new(sub),
            used: Mutex::new(tokio::time::Instant::now()),
        });
        map.insert(key, poller.clone());
        Ok(poller)
    }

    /// Drops the subscriptions no poll is using that were last used
    /// `idle` or longer before `now`; returns how many.
    fn expire(&self, now: tokio::time::Instant, idle: Duration) -> usize {
        let mut gone = Vec::new();
        self.lock().retain(|_, p| {
            // A poll in progress holds a clone.
            let keep = Arc::strong_count(p) > 1
                || now.saturating_duration_since(*p.used.lock().unwrap_or_else(|e| e.into_inner()))
                    < idle;
            if !keep {
                gone.push(p.clone());
            }
            keep
        });
        // Dropped outside the map's lock: each leaves its group.
        let n = gone.len();
        drop(gone);
        n
    }

    fn remove(&self, topic: &str, group: &str) {
        self.lock().remove(&(topic.to_owned(), group.to_owned()));
    }

    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// Drops the long-poll subscriptions of a deleted topic.
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.lock().retain(|(t, _), _| t != topic);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PollerMap> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Long poll: waits up to `wait_ms` for deliveries, leases them for
/// `lease_ms`; settle each by its `delivery_id` before the lease runs out.
#[utoipa::path(post, path = "/v1/topics/{topic}/consume",
    params(PatternPath, ConsumeParams),
    responses(
        (status = 200, body = ConsumeResponse),
        (status = 400, body = ErrorBody, description = "bad name or parameter"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"),
        (status = 404, body = ErrorBody, description = "unknown topic"),
        (status = 429, body = ErrorBody, description = "too many consumer groups or long-poll subscriptions (`resource_exhausted`)"),
    ))]
async fn consume(
    State(s): AppState,
    ApiPath(PatternPath { topic }): ApiPath<PatternPath>,
    ApiQuery(p): ApiQuery<ConsumeParams>,
    headers: HeaderMap,
) -> ApiResult<Json<ConsumeResponse>> {
    check(&s, &headers, Right::Consume, &topic)?;
    let group = p.group;
    let start = parse_from(p.from.as_deref())?;
    let max = p.max.unwrap_or(1).clamp(1, 1000);
    let wait = Duration::from_millis(p.wait_ms.unwrap_or(1000).min(30_000));
    let lease = match p.lease_ms {
        None => s.config.lease,
        Some(ms) => lease_duration("lease_ms", ms)?,
    };
    let poller = s.pollers.get(&s, &topic, &group, start).await?;
    let mut batch = Vec::new();
    // The wait covers taking the subscription too: polls of one group take
    // turns on it, and each gives up when its own `wait_ms` ends rather than
    // after the waits of every poll ahead of it. Both the lock and
    // `next_batch` (while waiting for its first delivery) are cancel safe.
    let poll = async {
        let mut guard = poller.sub.lock().await;
        guard.next_batch(max, &mut batch).await
    };
    let got = tokio::select! {
        r = tokio::time::timeout(wait, poll) => r,
        () = s.stopping() => Ok(Ok(0)),
    };
    poller.touch();
    drop(poller);
    match got {
        Ok(Ok(0)) if batch.is_empty() && !*s.shutdown.borrow() => {
            // The subscription ended (broker closing): forget it.
            s.pollers.remove(&topic, &group);
        }
        Ok(Err(e)) => return Err(e.into()),
        _ => {}
    }
    let deliveries = batch
        .into_iter()
        .map(|d| {
            telemetry::delivered(d.topic(), "http", d.message().size());
            let mut json = delivery_json(&d, None);
            json.delivery_id = Some(s.leases.insert(d, lease));
            json
        })
        .collect();
    Ok(Json(ConsumeResponse { deliveries }))
}

/// Drops idle long-poll subscriptions every 250 ms until the task is aborted.
pub(crate) async fn reap_pollers(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let n = shared
            .pollers
            .expire(tokio::time::Instant::now(), shared.config.poller_idle);
        if n > 0 {
            tracing::debug!(expired = n, "idle long-poll subscriptions dropped");
        }
    }
}

async fn settle_lease(
    s: &Shared,
    headers: &HeaderMap,
    id: &str,
    settlement: Settlement,
    kind: &'static str,
) -> ApiResult<StatusCode> {
    authenticated(s, headers)?;
    let unknown = || ApiError::from(Error::UnknownDelivery { id: id.to_owned() });
    let topic = s.leases.topic(id).ok_or_else(unknown)?;
    check(s, headers, Right::Consume, &topic)?;
    let d = s.leases.take(id).ok_or_else(unknown)?;
    d.settle(settlement).await?;
    telemetry::settled(kind);
    Ok(StatusCode::NO_CONTENT)
}

/// Acknowledges a long-poll delivery.
#[utoipa::path(post, path = "/v1/deliveries/{id}/ack",
    params(DeliveryPath),
    responses((status = 204, description = "acked"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"), (status = 404, body = ErrorBody, description = "unknown or expired delivery")))]
async fn ack(
    State(s): AppState,
    ApiPath(DeliveryPath { id }): ApiPath<DeliveryPath>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    settle_lease(&s, &headers, &id, Settlement::Ack, "ack").await
}

/// Returns a delivery for redelivery, optionally after `delay_ms`.
#[utoipa::path(post, path = "/v1/deliveries/{id}/nack",
    params(DeliveryPath),
    request_body(content = Option<NackBody>, description = "optional: an empty body takes the defaults"),
    responses((status = 204, description = "nacked"), (status = 400, body = ErrorBody, description = "malformed JSON"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"),
        (status = 404, body = ErrorBody, description = "unknown or expired delivery"), (status = 413, body = ErrorBody, description = "body too large")))]
async fn nack(
    State(s): AppState,
    ApiPath(DeliveryPath { id }): ApiPath<DeliveryPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let b: NackBody = parse_json_or_default(&body_bytes(&s, body)?)?;
    let delay = lease_duration("delay_ms", b.delay_ms.unwrap_or(0))?;
    settle_lease(&s, &headers, &id, Settlement::Nack { delay }, "nack").await
}

/// Moves a delivery to its dead-letter topic.
#[utoipa::path(post, path = "/v1/deliveries/{id}/reject",
    params(DeliveryPath),
    request_body(content = Option<RejectBody>, description = "optional: an empty body takes the defaults"),
    responses((status = 204, description = "rejected"), (status = 400, body = ErrorBody, description = "malformed JSON"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"),
        (status = 404, body = ErrorBody, description = "unknown or expired delivery"), (status = 413, body = ErrorBody, description = "body too large")))]
async fn reject(
    State(s): AppState,
    ApiPath(DeliveryPath { id }): ApiPath<DeliveryPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let b: RejectBody = parse_json_or_default(&body_bytes(&s, body)?)?;
    let reason = b.reason.unwrap_or_else(|| "rejected over HTTP".into());
    settle_lease(&s, &headers, &id, Settlement::Reject { reason }, "reject").await
}

/// Extends a delivery's lease to `by_ms` from now.
#[utoipa::path(post, path = "/v1/deliveries/{id}/extend",
    params(DeliveryPath),
    request_body(content = ExtendBody),
    responses((status = 204, description = "extended"), (status = 400, body = ErrorBody, description = "malformed JSON or lease too long"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"),
        (status = 404, body = ErrorBody, description = "unknown or expired delivery"), (status = 413, body = ErrorBody, description = "body too large")))]
async fn extend(
    State(s): AppState,
    ApiPath(DeliveryPath { id }): ApiPath<DeliveryPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    authenticated(&s, &headers)?;
    let unknown = || ApiError::from(Error::UnknownDelivery { id: id.clone() });
    let b: ExtendBody = parse_json(&body_bytes(&s, body)?)?;
    let topic = s.leases.topic(&id).ok_or_else(unknown)?;
    check(&s, &headers, Right::Consume, &topic)?;
    let d = s.leases.take(&id).ok_or_else(unknown)?;
    let by = lease_duration("by_ms", b.by_ms)?;
    let r = d.extend(by).await;
    s.leases.put(id.clone(), d, by);
    r?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------- streams ----------

async fn stream_subscription(
    s: &Shared,
    topic: &str,
    group: Option<&str>,
    from: Option<&str>,
) -> ApiResult<Subscription> {
    let mut opts = SubscribeOptions::new(topic);
    if let Some(g) = group {
        opts = opts.group(g);
    }
    if let Some(st) = parse_from(from)? {
        opts = opts.start(st);
    }
    Ok(s.broker.subscribe(opts).await?)
}

/// Server-Sent Events: one `message` event per delivery (acked when sent).
#[utoipa::path(get, path = "/v1/topics/{topic}/events",
    params(PatternPath, StreamParams),
    responses((status = 200, description = "`message` events, each a DeliveryJson", content_type = "text/event-stream"),
        (status = 400, body = ErrorBody, description = "bad name or parameter"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"), (status = 404, body = ErrorBody, description = "unknown topic"), (status = 429, body = ErrorBody, description = "too many consumer groups (`resource_exhausted`)")))]
async fn sse(
    State(s): AppState,
    ApiPath(PatternPath { topic }): ApiPath<PatternPath>,
    ApiQuery(p): ApiQuery<StreamParams>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    check(&s, &headers, Right::Consume, &topic)?;
    let sub = stream_subscription(&s, &topic, p.group.as_deref(), p.from.as_deref()).await?;
    let state = (sub, s, ErrorBackoff::default());
    let stream = futures_util::stream::unfold(state, |(mut sub, s, mut backoff)| async move {
        let next = tokio::select! {
            d = sub.next() => d,
            () = s.stopping() => None,
        };
        let event = match next? {
            Ok(d) => {
                backoff.succeeded();
                telemetry::delivered(d.topic(), "sse", d.message().size());
                let json = delivery_json(&d, None);
                let mut ev = Event::default().event("message");
                if let Some(o) = d.info().offset {
                    ev = ev.id(format!("{}:{o}", d.info().partition));
                }
                let ev = ev
                    .json_data(json)
                    .unwrap_or_else(|_| Event::default().event("error"));
                let _ = d.ack().await;
                ev
            }
            Err(e) => {
                // Repeated errors: pause longer each time, not spin.
                tokio::select! {
                    () = tokio::time::sleep(backoff.failed()) => {}
                    () = s.stopping() => return None,
                }
                Event::default().event("error").data(e.to_string())
            }
        };
        Some((Ok(event), (sub, s, backoff)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(Deserialize)]
struct WsCommand {
    op: String,
    delivery_id: String,
    delay_ms: Option<u64>,
    reason: Option<String>,
}

/// WebSocket: one JSON DeliveryJson text message per delivery; with
/// `ack=manual` the client settles with `{"op":"ack"|"nack"|"reject","delivery_id":..}`.
#[utoipa::path(get, path = "/v1/topics/{topic}/ws",
    params(PatternPath, WsParams),
    responses((status = 101, description = "WebSocket of DeliveryJson messages"),
        (status = 400, body = ErrorBody, description = "not a WebSocket upgrade request, bad name or parameter"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"),
        (status = 404, body = ErrorBody, description = "unknown topic"), (status = 426, body = ErrorBody, description = "the connection cannot be upgraded"), (status = 429, body = ErrorBody, description = "too many consumer groups (`resource_exhausted`)")))]
async fn ws(
    State(s): AppState,
    ApiPath(PatternPath { topic }): ApiPath<PatternPath>,
    ApiQuery(p): ApiQuery<WsParams>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let upgrade = upgrade.map_err(|r| ApiError::new(r.status(), "not_websocket", r.body_text()))?;
    check(&s, &headers, Right::Consume, &topic)?;
    let manual = match p.ack.as_deref() {
        None | Some("auto") => false,
        Some("manual") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "ack={other:?}: use auto or manual"
            )))
        }
    };
    let sub = stream_subscription(&s, &topic, p.group.as_deref(), p.from.as_deref()).await?;
    Ok(upgrade.on_upgrade(move |socket| ws_loop(s, sub, socket, manual)))
}

async fn ws_loop(s: Arc<Shared>, mut sub: Subscription, mut socket: WebSocket, manual: bool) {
    let mut held: HashMap<String, Delivery> = HashMap::new();
    let mut next_id: u64 = 1;
    let mut backoff = ErrorBackoff::default();
    let mut paused: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(paused.unwrap_or_else(tokio::time::Instant::now)), if paused.is_some() => {
                paused = None;
            }
            d = sub.next(), if paused.is_none() && (!manual || held.len() < 256) => {
                let Some(d) = d else { break };
                let text = match d {
                    Ok(d) => {
                        backoff.succeeded();
                        telemetry::delivered(d.topic(), "ws", d.message().size());
                        let id = manual.then(|| { let id = next_id.to_string(); next_id += 1; id });
                        let json = delivery_json(&d, id.clone());
                        match id {
                            Some(id) => { held.insert(id, d); }
                            None => { let _ = d.ack().await; }
                        }
                        serde_json::to_string(&json).unwrap_or_default()
                    }
                    Err(e) => {
                        // Repeated errors: pause longer each time, not spin.
                        paused = Some(tokio::time::Instant::now() + backoff.failed());
                        serde_json::json!({"error": e.to_string()}).to_string()
                    }
                };
                if socket.send(WsMessage::Text(text.into())).await.is_err() {
                    break;
                }
            }
            m = socket.recv() => {
                let text = match m {
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let reply = match serde_json::from_str::<WsCommand>(&text) {
                    Err(e) => Some(format!("malformed command: {e}")),
                    Ok(c) => match held.remove(&c.delivery_id) {
                        None => Some(format!("unknown delivery {:?}", c.delivery_id)),
                        Some(d) => {
                            let r = match c.op.as_str() {
                                "ack" => d.ack().await,
                                "nack" => d.nack_with_delay(Duration::from_millis(c.delay_ms.unwrap_or(0))).await,
                                "reject" => d.reject(c.reason.unwrap_or_else(|| "rejected over WebSocket".into())).await,
                                other => Err(Error::InvalidArgument { name: "op", reason: format!("unknown op {other:?}") }),
                            };
                            r.err().map(|e| e.to_string())
                        }
                    },
                };
                if let Some(err) = reply {
                    let msg = serde_json::json!({"error": err}).to_string();
                    if socket.send(WsMessage::Text(msg.into())).await.is_err() {
                        break;
                    }
                }
            }
            () = s.stopping() => {
                let _ = socket.send(WsMessage::Close(None)).await;
                break;
            }
        }
    }
}

// ---------- admin ----------

/// Every topic the token may administer.
#[utoipa::path(get, path = "/v1/topics", responses((status = 200, body = Vec<TopicJson>), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right")))]
async fn list_topics(State(s): AppState, headers: HeaderMap) -> ApiResult<Json<Vec<TopicJson>>> {
    check_any(&s, &headers, Right::Admin)?;
    Ok(Json(
        s.broker
            .topics()
            .iter()
            .filter(|t| allowed(&s, &headers, Right::Admin, &t.name))
            .map(topic_json)
            .collect(),
    ))
}

/// Creates a topic (an existing topic keeps its settings).
#[utoipa::path(post, path = "/v1/topics", request_body = CreateTopicBody,
    responses((status = 201, body = TopicJson), (status = 400, body = ErrorBody, description = "malformed JSON, bad name or setting"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"), (status = 413, body = ErrorBody, description = "body too large")))]
async fn create_topic(
    State(s): AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<TopicJson>)> {
    let b: CreateTopicBody = parse_json(&body_bytes(&s, body)?)?;
    check(&s, &headers, Right::Admin, &b.name)?;
    // Rejects from any consumer will be written there.
    if let Some(dlq) = &b.dead_letter_topic {
        check_field(&s, &headers, Right::Publish, dlq, "dead_letter_topic")?;
    }
    let settings = TopicSettings {
        partitions: b.partitions,
        durability: b.durability,
        retention_bytes: b.retention_bytes,
        retention_ms: b.retention_ms,
        max_message_bytes: b.max_message_bytes,
        ttl_ms: b.ttl_ms,
        dead_letter_topic: b.dead_letter_topic,
        max_deliveries: b.max_deliveries,
        visibility_timeout_ms: b.visibility_timeout_ms,
        dedup_window_ms: b.dedup_window_ms,
        skip_damaged_batches: b.skip_damaged_batches,
        segment_bytes: b.segment_bytes,
    };
    s.broker
        .create_topic(&b.name, settings.to_config()?)
        .await?;
    let info = find_topic(&s, &b.name)?;
    Ok((StatusCode::CREATED, Json(topic_json(&info))))
}

fn find_topic(s: &Shared, name: &str) -> ApiResult<wharf_broker::TopicInfo> {
    s.broker
        .topics()
        .into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| Error::UnknownTopic { topic: name.into() }.into())
}

/// One topic's settings and offsets.
#[utoipa::path(get, path = "/v1/topics/{topic}", params(TopicPath),
    responses((status = 200, body = TopicJson), (status = 400, body = ErrorBody, description = "bad name"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"), (status = 404, body = ErrorBody, description = "unknown topic")))]
async fn describe_topic(
    State(s): AppState,
    ApiPath(TopicPath { topic }): ApiPath<TopicPath>,
    headers: HeaderMap,
) -> ApiResult<Json<TopicJson>> {
    check(&s, &headers, Right::Admin, &topic)?;
    Ok(Json(topic_json(&find_topic(&s, &topic)?)))
}

/// Repairs the first damaged batch of a partition: skips it (its offsets
/// are lost, every other record stays) or truncates the partition at it.
/// With `dry_run` it only reports what would be lost.
#[utoipa::path(post, path = "/v1/topics/{topic}/partitions/{partition}/repair", params(PartitionPath),
    request_body = RepairBody,
    responses((status = 200, body = RepairJson), (status = 400, body = ErrorBody, description = "malformed JSON, no such partition, or an action that cannot apply"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"), (status = 404, body = ErrorBody, description = "unknown topic"), (status = 413, body = ErrorBody, description = "body too large")))]
async fn repair_partition(
    State(s): AppState,
    ApiPath(PartitionPath { topic, partition }): ApiPath<PartitionPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<RepairJson>> {
    check(&s, &headers, Right::Admin, &topic)?;
    let b: RepairBody = parse_json(&body_bytes(&s, body)?)?;
    let action = match b.action {
        RepairKind::SkipBatch => wharf_broker::RepairAction::SkipBatch,
        RepairKind::Truncate => wharf_broker::RepairAction::TruncateAt(b.truncate_at),
    };
    let r = s
        .broker
        .repair(&topic, partition, action, b.dry_run)
        .await?;
    Ok(Json(RepairJson {
        dry_run: r.dry_run,
        damage: r.damage.as_ref().map(damage_json),
        lost_from: r.lost.start,
        lost_to: r.lost.end,
        lost_count: r.lost_count(),
        remaining: r.remaining,
    }))
}

/// Deletes a topic, its data and its group positions.
#[utoipa::path(delete, path = "/v1/topics/{topic}", params(TopicPath),
    responses((status = 204, description = "deleted"), (status = 400, body = ErrorBody, description = "bad name"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"), (status = 404, body = ErrorBody, description = "unknown topic")))]
async fn delete_topic(
    State(s): AppState,
    ApiPath(TopicPath { topic }): ApiPath<TopicPath>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    check(&s, &headers, Right::Admin, &topic)?;
    s.pollers.forget_topic(&topic);
    s.broker.delete_topic(&topic).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn group_json(g: wharf_broker::GroupDetail) -> GroupJson {
    GroupJson {
        group: g.group,
        topic: g.topic,
        lag: g.lag,
        mode: match g.mode {
            wharf_core::GroupMode::Stream => "stream",
            _ => "queue",
        }
        .to_owned(),
        members: g.members,
        loaded: g.loaded,
        partitions: g
            .partitions
            .into_iter()
            .map(|p| GroupPartitionJson {
                partition: p.partition,
                committed_offset: p.committed_offset,
                settled_above: p.settled_above,
                end_offset: p.end_offset,
                lag: p.lag,
                member: p.member,
            })
            .collect(),
    }
}

/// Consumer groups with a position, also those with no consumer since the
/// server started (their persisted position; shown as `queue` with no
/// members): mode, members, and per partition the committed offset, end
/// offset, lag and (stream mode) assigned member.
#[utoipa::path(get, path = "/v1/groups", params(GroupParams), responses((status = 200, body = Vec<GroupJson>), (status = 400, body = ErrorBody, description = "bad parameter"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right")))]
async fn list_groups(
    State(s): AppState,
    ApiQuery(p): ApiQuery<GroupParams>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<GroupJson>>> {
    check_any(&s, &headers, Right::Admin)?;
    Ok(Json(
        s.broker
            .group_details()
            .into_iter()
            .filter(|g| p.group.as_ref().is_none_or(|w| *w == g.group))
            .filter(|g| p.topic.as_ref().is_none_or(|w| *w == g.topic))
            .filter(|g| allowed(&s, &headers, Right::Admin, &g.topic))
            .map(group_json)
            .collect(),
    ))
}

fn dead_letter_json(p: &wharf_broker::Peeked) -> DeadLetterJson {
    DeadLetterJson {
        partition: p.partition,
        offset: p.offset,
        message: message_json(&p.message),
    }
}

/// Dead letters not yet replayed or purged, by partition then offset. Read
/// from the topic without consuming: listing twice returns the same letters.
#[utoipa::path(get, path = "/v1/dlq/{topic}", params(DlqPath, DlqParams),
    responses((status = 200, body = DlqPageJson), (status = 400, body = ErrorBody, description = "bad name or cursor"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"), (status = 404, body = ErrorBody, description = "unknown topic")))]
async fn dlq_list(
    State(s): AppState,
    ApiPath(DlqPath { topic }): ApiPath<DlqPath>,
    ApiQuery(p): ApiQuery<DlqParams>,
    headers: HeaderMap,
) -> ApiResult<Json<DlqPageJson>> {
    let topic = admin::dlq_topic(&s.broker, &topic);
    check(&s, &headers, Right::Admin, &topic)?;
    let page = admin::dlq_page(
        &s.broker,
        &topic,
        p.cursor.as_deref(),
        p.limit.unwrap_or(100),
    )?;
    Ok(Json(DlqPageJson {
        letters: page.messages.iter().map(dead_letter_json).collect(),
        next_cursor: page.next.map(|n| n.to_string()),
    }))
}

/// One dead letter (not yet replayed or purged) by message id.
#[utoipa::path(get, path = "/v1/dlq/{topic}/{id}", params(LetterPath),
    responses((status = 200, body = DeadLetterJson), (status = 400, body = ErrorBody, description = "bad name or id"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"), (status = 404, body = ErrorBody, description = "unknown topic or dead letter")))]
async fn dlq_show(
    State(s): AppState,
    ApiPath(LetterPath { topic, id }): ApiPath<LetterPath>,
    headers: HeaderMap,
) -> ApiResult<Json<DeadLetterJson>> {
    let topic = admin::dlq_topic(&s.broker, &topic);
    check(&s, &headers, Right::Admin, &topic)?;
    let mid = id
        .parse::<MessageId>()
        .map_err(|_| ApiError::bad_request(format!("id {id:?} is not a message id")))?;
    let found = admin::dlq_find(&s.broker, &topic, mid)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_dead_letter",
            format!("no dead letter {id} in {topic}"),
        )
    })?;
    Ok(Json(dead_letter_json(&found)))
}

/// Moves dead letters back to their original topics: one by `id`, or `all`.
/// Needs admin on the dead-letter topic and publish on every original topic
/// a moved letter names (refused with nothing moved otherwise).
#[utoipa::path(post, path = "/v1/dlq/{topic}/replay", params(DlqPath),
    request_body = ReplayBody, responses((status = 200, body = CountJson), (status = 400, body = ErrorBody, description = "malformed JSON, bad name or id"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks admin on the dead-letter topic or publish on a letter's original topic"),
        (status = 404, body = ErrorBody, description = "unknown topic"), (status = 413, body = ErrorBody, description = "body too large")))]
async fn dlq_replay(
    State(s): AppState,
    ApiPath(DlqPath { topic }): ApiPath<DlqPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<CountJson>> {
    let topic = admin::dlq_topic(&s.broker, &topic);
    check(&s, &headers, Right::Admin, &topic)?;
    let b: ReplayBody = parse_json(&body_bytes(&s, body)?)?;
    let which = match (b.id, b.all) {
        (Some(id), None | Some(false)) => Redrive::Id(
            id.parse::<MessageId>()
                .map_err(|_| ApiError::bad_request(format!("id {id:?} is not a message id")))?,
        ),
        (None, Some(true)) => Redrive::All,
        _ => return Err(ApiError::bad_request("give either `id` or `all: true`")),
    };
    // Replay writes each letter to the topic its header names: the caller
    // needs the publish right there. Refused before anything moves; a
    // letter arriving meanwhile with a refused target is left in place.
    if s.auth.is_some() {
        for t in admin::replay_targets(&s.broker, &topic, which)? {
            check_field(&s, &headers, Right::Publish, &t, REPLAY_TARGET)?;
        }
    }
    let allow = |t: &str| allowed(&s, &headers, Right::Publish, t);
    let n = admin::dlq_replay(&s.broker, &topic, which, &allow).await?;
    Ok(Json(CountJson { count: n as u64 }))
}

/// Discards every dead letter of the topic (they are no longer listed or replayed).
#[utoipa::path(post, path = "/v1/dlq/{topic}/purge", params(DlqPath),
    responses((status = 200, body = CountJson), (status = 400, body = ErrorBody, description = "bad name"), (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"), (status = 404, body = ErrorBody, description = "unknown topic")))]
async fn dlq_purge(
    State(s): AppState,
    ApiPath(DlqPath { topic }): ApiPath<DlqPath>,
    headers: HeaderMap,
) -> ApiResult<Json<CountJson>> {
    let topic = admin::dlq_topic(&s.broker, &topic);
    check(&s, &headers, Right::Admin, &topic)?;
    let n = admin::dlq_purge(&s.broker, &topic).await?;
    Ok(Json(CountJson { count: n as u64 }))
}
