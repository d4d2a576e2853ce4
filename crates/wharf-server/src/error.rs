//! How failures reach clients: typed core errors and auth refusals become an
//! HTTP status with a JSON body `{"error": {"code", "message", "details"?}}`,
//! or a gRPC status with the typed error in its details. Event store errors
//! map here too: a conflict is 409 naming stream, expected and actual.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use wharf_core::Error;
use wharf_eventstore::{CurrentVersion, EventStoreError, ExpectedVersion};

use crate::auth::Denied;

/// An HTTP error response.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    /// Typed fields of the error (an event store conflict's stream,
    /// expected and actual version), for clients that act on them.
    pub(crate) details: Option<serde_json::Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorInfo,
}

/// What went wrong.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorInfo {
    /// Stable machine-readable code, e.g. `invalid_name`, `message_too_large`.
    pub(crate) code: &'static str,
    /// Human-readable explanation.
    pub(crate) message: String,
    /// The error's typed fields, where it has some: for
    /// `wrong_expected_version` `stream`, `expected` and `actual`; for
    /// `condition_failed` `after` and `conflict`; for `stream_not_found` and
    /// `stream_deleted` `stream`; for `invalid_argument` (event store)
    /// `field`, `value` and `requirement`; for `too_large` `what`, `size`
    /// and `max`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub(crate) details: Option<serde_json::Value>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// The same error with typed `details`.
    pub(crate) fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, code) = match &e {
            Error::InvalidName { .. } => (StatusCode::BAD_REQUEST, "invalid_name"),
            Error::InvalidArgument { .. } => (StatusCode::BAD_REQUEST, "invalid_argument"),
            Error::InvalidOffset { .. } => (StatusCode::BAD_REQUEST, "invalid_offset"),
            Error::Codec(_) => (StatusCode::BAD_REQUEST, "codec"),
            Error::MessageTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "message_too_large"),
            Error::TooManyHeaders { .. } => (StatusCode::BAD_REQUEST, "too_many_headers"),
            Error::HeadersTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "headers_too_large"),
            Error::UnknownTopic { .. } => (StatusCode::NOT_FOUND, "unknown_topic"),
            Error::UnknownDelivery { .. } => (StatusCode::NOT_FOUND, "unknown_delivery"),
            Error::Unsupported { .. } => (StatusCode::NOT_IMPLEMENTED, "unsupported"),
            Error::Closed { .. } => (StatusCode::SERVICE_UNAVAILABLE, "closed"),
            Error::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Error::ResourceExhausted { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted")
            }
            Error::StorageFull { .. } => (StatusCode::INSUFFICIENT_STORAGE, "storage_full"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Unauthenticated => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", d.to_string())
            }
            Denied::Forbidden { .. } | Denied::ForbiddenField { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "permission_denied", d.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorInfo {
                code: self.code,
                message: self.message,
                details: self.details,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// An expectation as the HTTP API writes it: `"any"`, `"no_stream"`,
/// `"stream_exists"` or the exact version.
pub(crate) fn expected_json(e: ExpectedVersion) -> serde_json::Value {
    match e {
        ExpectedVersion::Any => "any".into(),
        ExpectedVersion::NoStream => "no_stream".into(),
        ExpectedVersion::StreamExists => "stream_exists".into(),
        ExpectedVersion::Exact(n) => n.into(),
    }
}

impl From<EventStoreError> for ApiError {
    fn from(e: EventStoreError) -> Self {
        use serde_json::json;
        let message = e.to_string();
        let (status, code, details) = match e {
            EventStoreError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            } => (
                StatusCode::CONFLICT,
                "wrong_expected_version",
                Some(json!({
                    "stream": stream.as_str(),
                    "expected": expected_json(expected),
                    "actual": match actual {
                        CurrentVersion::NoStream => serde_json::Value::from("no_stream"),
                        CurrentVersion::Version(n) => n.into(),
                    },
                })),
            ),
            EventStoreError::ConditionFailed { after, conflict } => (
                StatusCode::CONFLICT,
                "condition_failed",
                Some(json!({"after": after.map(|p| p.0), "conflict": conflict.0})),
            ),
            EventStoreError::StreamNotFound { stream } => (
                StatusCode::NOT_FOUND,
                "stream_not_found",
                Some(json!({"stream": stream.as_str()})),
            ),
            EventStoreError::StreamDeleted { stream } => (
                StatusCode::GONE,
                "stream_deleted",
                Some(json!({"stream": stream.as_str()})),
            ),
            EventStoreError::InvalidArgument {
                field,
                value,
                requirement,
            } => (
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                Some(json!({"field": field, "value": value, "requirement": requirement})),
            ),
            EventStoreError::TooLarge { what, size, max } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                Some(json!({"what": what, "size": size, "max": max})),
            ),
            EventStoreError::StorageFull { .. } => {
                (StatusCode::INSUFFICIENT_STORAGE, "storage_full", None)
            }
            EventStoreError::Closed | EventStoreError::Unavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "closed", None)
            }
            EventStoreError::PermissionDenied { .. } => {
                (StatusCode::FORBIDDEN, "permission_denied", None)
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "storage", None),
        };
        let err = ApiError::new(status, code, message);
        match details {
            Some(d) => err.with_details(d),
            None => err,
        }
    }
}

/// The gRPC status for an auth refusal.
pub(crate) fn denied_status(d: &Denied) -> tonic::Status {
    match d {
        Denied::Unauthenticated => tonic::Status::unauthenticated(d.to_string()),
        Denied::Forbidden { .. } | Denied::ForbiddenField { .. } => {
            tonic::Status::permission_denied(d.to_string())
        }
    }
}
