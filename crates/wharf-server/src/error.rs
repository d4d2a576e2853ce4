//! How failures reach clients: typed core errors and auth refusals become an
//! HTTP status with a JSON body `{"error": {"code", "message"}}`, or a gRPC
//! status with the typed error in its details.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use wharf_core::Error;

use crate::auth::Denied;

/// An HTTP error response.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
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
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
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
            },
        };
        (self.status, axum::Json(body)).into_response()
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
