//! Hosted projections over HTTP/JSON (`/v1/eventstore/projections`):
//! define one (a name, a topic, an optional stream-name prefix), list them
//! and read one's status, delete one, rebuild one. A projection reads every
//! stream under its prefix and writes its topic, so defining or rebuilding
//! one needs `events_admin` and `events_read` on the prefix and `publish`
//! on the topic; deleting needs `events_admin`, reading a status
//! `events_read`, on the prefix (`*` without one).

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::{body_bytes, check, check_field, parse_json, ApiPath, ApiResult, AppState};
use crate::auth::{Right, ALL_STREAMS};
use crate::error::{ApiError, ErrorBody};
use crate::projections::{ProjectionsError, Report, Spec};
use crate::Shared;

impl From<ProjectionsError> for ApiError {
    fn from(e: ProjectionsError) -> Self {
        let message = e.to_string();
        match e {
            ProjectionsError::Invalid {
                field,
                value,
                requirement,
            } => ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
                .with_details(json!({"field": field, "value": value, "requirement": requirement})),
            ProjectionsError::Exists(name) => {
                ApiError::new(StatusCode::CONFLICT, "projection_exists", message)
                    .with_details(json!({ "projection": name }))
            }
            ProjectionsError::NotFound(name) => {
                ApiError::new(StatusCode::NOT_FOUND, "projection_not_found", message)
                    .with_details(json!({ "projection": name }))
            }
            ProjectionsError::NoTopic(topic) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_topic", message)
                    .with_details(json!({ "topic": topic }))
            }
            ProjectionsError::Failed { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            ProjectionsError::Io(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
        }
    }
}

/// A projection to define.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewProjectionJson {
    /// Its name: 1 to 128 ASCII letters, digits, `-`, `_` or `.`, not
    /// starting with `.`.
    #[schema(pattern = r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}$")]
    name: String,
    /// The topic each event is published to (it must exist).
    #[schema(pattern = r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$", max_length = 249)]
    topic: String,
    /// Only streams whose names start with this (default: every stream):
    /// at most 255 characters, no control characters.
    #[serde(default)]
    #[schema(pattern = r"^[^\u0000-\u001f\u007f-\u009f]{0,255}$")]
    prefix: String,
}

/// A projection: its definition and its progress.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProjectionJson {
    name: String,
    topic: String,
    /// The stream-name prefix it reads (empty: every stream).
    prefix: String,
    /// `starting`, `running`, `failed` (it resumes from its checkpoint
    /// after a pause) or `stopped`.
    state: String,
    /// The last failure, while `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The position after the last event published.
    checkpoint: u64,
    /// The store's head now.
    head: u64,
    /// Positions between checkpoint and head while events were waiting at
    /// the last batch (0 when none were): `wharf_projection_lag`.
    lag: u64,
    /// Events published since the server started it (or it was rebuilt).
    applied: u64,
    /// Failed batches since the server started it.
    failures: u64,
    /// Whether every event under its prefix committed before this answer
    /// has been published.
    caught_up: bool,
}

fn projection_json(r: Report) -> ProjectionJson {
    ProjectionJson {
        name: r.spec.name,
        topic: r.spec.topic,
        prefix: r.spec.prefix,
        state: r.state.to_owned(),
        error: r.error,
        checkpoint: r.checkpoint.0,
        head: r.head.0,
        lag: r.lag,
        applied: r.applied,
        failures: r.failures,
        caught_up: r.caught_up,
    }
}

/// The projections the token may read.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProjectionsJson {
    projections: Vec<ProjectionJson>,
}

/// The projection a request addresses.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct ProjectionPath {
    /// The projection's name.
    #[param(pattern = r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}$")]
    name: String,
}

/// The stream-name target of a projection's rights.
fn streams(prefix: &str) -> &str {
    if prefix.is_empty() {
        ALL_STREAMS
    } else {
        prefix
    }
}

/// The rights to define or rebuild `spec`: it reads every stream under its
/// prefix and publishes to its topic.
fn check_feeds(s: &Shared, headers: &HeaderMap, spec: &Spec) -> ApiResult<()> {
    check(s, headers, Right::EventsAdmin, streams(&spec.prefix))?;
    check_field(
        s,
        headers,
        Right::EventsRead,
        streams(&spec.prefix),
        "prefix",
    )?;
    check_field(s, headers, Right::Publish, &spec.topic, "topic")
}

/// Defines a projection and starts it from the start of the log: each
/// event of a stream under `prefix` is published to `topic` (message id =
/// event id, key = stream). The definition and its checkpoint survive
/// restarts. Needs `events_admin` and `events_read` on the prefix (`*`
/// without one) and `publish` on the topic.
#[utoipa::path(post, path = "/v1/eventstore/projections",
    request_body = NewProjectionJson,
    responses(
        (status = 201, body = ProjectionJson),
        (status = 400, body = ErrorBody, description = "malformed JSON, bad name, topic or prefix (`invalid_argument` with `details`)"),
        (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks a right"),
        (status = 404, body = ErrorBody, description = "`unknown_topic`: the topic does not exist"),
        (status = 409, body = ErrorBody, description = "`projection_exists`"),
        (status = 413, body = ErrorBody, description = "the body is too large"),
    ))]
pub(crate) async fn create(
    State(s): AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<ProjectionJson>)> {
    super::authenticated(&s, &headers)?;
    let body = body_bytes(&s, body)?;
    let body: NewProjectionJson = parse_json(&body)?;
    let spec = Spec {
        name: body.name,
        topic: body.topic,
        prefix: body.prefix,
    };
    check_feeds(&s, &headers, &spec)?;
    let r = s.projections.create(spec).await?;
    Ok((StatusCode::CREATED, Json(projection_json(r))))
}

/// Lists the projections whose prefix the token may read, with their
/// status. Needs `events_read` on some streams.
#[utoipa::path(get, path = "/v1/eventstore/projections",
    responses(
        (status = 200, body = ProjectionsJson),
        (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token has no `events_read` right"),
    ))]
pub(crate) async fn list(
    State(s): AppState,
    headers: HeaderMap,
) -> ApiResult<Json<ProjectionsJson>> {
    super::check_any(&s, &headers, Right::EventsRead)?;
    let projections = s
        .projections
        .list()
        .await
        .into_iter()
        .filter(|r| super::allowed(&s, &headers, Right::EventsRead, streams(&r.spec.prefix)))
        .map(projection_json)
        .collect();
    Ok(Json(ProjectionsJson { projections }))
}

/// A projection's status: state, checkpoint against the store's head, lag,
/// events published, failures. Needs `events_read` on its prefix.
#[utoipa::path(get, path = "/v1/eventstore/projections/{name}",
    params(ProjectionPath),
    responses(
        (status = 200, body = ProjectionJson),
        (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"),
        (status = 404, body = ErrorBody, description = "`projection_not_found`"),
    ))]
pub(crate) async fn status(
    State(s): AppState,
    ApiPath(ProjectionPath { name }): ApiPath<ProjectionPath>,
    headers: HeaderMap,
) -> ApiResult<Json<ProjectionJson>> {
    super::authenticated(&s, &headers)?;
    let spec = s.projections.spec(&name).await?;
    check(&s, &headers, Right::EventsRead, streams(&spec.prefix))?;
    Ok(Json(projection_json(s.projections.status(&name).await?)))
}

/// Stops and forgets a projection; its topic and the messages published
/// stay. Needs `events_admin` on its prefix.
#[utoipa::path(delete, path = "/v1/eventstore/projections/{name}",
    params(ProjectionPath),
    responses(
        (status = 204, description = "deleted"),
        (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks the right"),
        (status = 404, body = ErrorBody, description = "`projection_not_found`"),
    ))]
pub(crate) async fn delete(
    State(s): AppState,
    ApiPath(ProjectionPath { name }): ApiPath<ProjectionPath>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    super::authenticated(&s, &headers)?;
    let spec = s.projections.spec(&name).await?;
    check(&s, &headers, Right::EventsAdmin, streams(&spec.prefix))?;
    s.projections.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rebuilds a projection: resets its checkpoint and publishes the log
/// again from the start (events still in the topic's dedup window are
/// dropped there as duplicates). Returns once the reset is done; follow
/// the replay with the status (`checkpoint` against `head`, `caught_up`).
/// Needs what defining it needs.
#[utoipa::path(post, path = "/v1/eventstore/projections/{name}/rebuild",
    params(ProjectionPath),
    responses(
        (status = 200, body = ProjectionJson),
        (status = 401, body = ErrorBody, description = "no or unknown token"), (status = 403, body = ErrorBody, description = "the token lacks a right"),
        (status = 404, body = ErrorBody, description = "`projection_not_found`"),
        (status = 503, body = ErrorBody, description = "the projection stopped or its reset failed"),
    ))]
pub(crate) async fn rebuild(
    State(s): AppState,
    ApiPath(ProjectionPath { name }): ApiPath<ProjectionPath>,
    headers: HeaderMap,
) -> ApiResult<Json<ProjectionJson>> {
    super::authenticated(&s, &headers)?;
    let spec = s.projections.spec(&name).await?;
    check_feeds(&s, &headers, &spec)?;
    Ok(Json(projection_json(s.projections.rebuild(&name).await?)))
}
