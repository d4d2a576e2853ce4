//! Which API answers a request on the one port: gRPC when the request says
//! so by its content type (`application/grpc`, `application/grpc+proto`, …),
//! the HTTP/JSON router otherwise. So an unknown HTTP path gets the HTTP
//! API's 404 JSON error, and only gRPC requests get gRPC's UNIMPLEMENTED.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::header::CONTENT_TYPE;
use axum::routing::future::RouteFuture;
use tower_service::Service;

/// The two routers, picked per request by content type.
#[derive(Clone)]
pub(crate) struct Api {
    http: axum::Router,
    grpc: axum::Router,
}

impl Api {
    pub(crate) fn new(http: axum::Router, grpc: axum::Router) -> Self {
        Api { http, grpc }
    }
}

/// Whether `req` is a gRPC call (by its content type, as the gRPC over
/// HTTP/2 protocol defines it).
pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl<B> Service<Request<B>> for Api
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = RouteFuture<Infallible>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        if is_grpc(&req) {
            self.grpc.call(req)
        } else {
            self.http.call(req)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_is_recognised_by_content_type_only() {
        let req = |ct: Option<&str>| {
            let mut b = Request::builder().uri("/wharf.v1.Wharf/Publish");
            if let Some(ct) = ct {
                b = b.header(CONTENT_TYPE, ct);
            }
            b.body(axum::body::Body::empty()).expect("request")
        };
        assert!(is_grpc(&req(Some("application/grpc"))));
        assert!(is_grpc(&req(Some("application/grpc+proto"))));
        assert!(!is_grpc(&req(Some("application/json"))));
        assert!(!is_grpc(&req(None)));
    }
}
