//! The `Publish` call, sent as a prebuilt HTTP/2 request instead of
//! through tonic's `Grpc::unary`.
//!
//! A batch of 1000 messages of 100 B is a ~130 KB request. Encoded by tonic,
//! every call asks the allocator for a fresh buffer of that size, and glibc
//! hands the freed one back to the kernel (`madvise`) soon after, so every
//! call page-faults its buffer in again: about a sixth of the client's CPU
//! in `wharf bench`. Here requests are encoded into buffers from a small
//! pool that come back when hyper has written them ([`Bytes::from_owner`]),
//! and the response is read the way tonic would: a trailers-only error,
//! then the one message, then `grpc-status` in the trailers.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use prost::Message as _;
use tonic::codegen::http;
use tonic::codegen::Service as _;
use tonic::{Code, Status};
use wharf_proto::frame;
use wharf_proto::publish::PublishBatch;
use wharf_proto::v1;

use crate::AuthChannel;

const PATH: &str = "/wharf.v1.Wharf/Publish";
/// Buffers kept for reuse: about the requests a client has in flight.
const POOL_BUFFERS: usize = 16;
/// Larger buffers are freed rather than kept.
const POOL_MAX_BYTES: usize = 8 << 20;

/// Request buffers for reuse.
#[derive(Default)]
pub(crate) struct BufPool(Mutex<Vec<Vec<u8>>>);

impl BufPool {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() > POOL_MAX_BYTES {
            return;
        }
        buf.clear();
        let mut bufs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if bufs.len() < POOL_BUFFERS {
            bufs.push(buf);
        }
    }
}

/// A pooled buffer as the owner of a request's [`Bytes`]: back to the pool
/// when the last `Bytes` of it is dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

/// `batch` as one gRPC message in a pooled buffer.
fn encode(pool: &Arc<BufPool>, batch: &PublishBatch) -> Result<Bytes, Status> {
    let mut buf = pool.take();
    batch
        .encode_framed(&mut buf)
        .map_err(|e| Status::resource_exhausted(e.to_string()))?;
    Ok(Bytes::from_owner(Pooled {
        buf,
        pool: Arc::clone(pool),
    }))
}

/// The status of a response that ended without `grpc-status` (as tonic
/// infers it from the HTTP status).
fn status_from_http(code: http::StatusCode) -> Status {
    let c = match code {
        http::StatusCode::BAD_REQUEST => Code::Internal,
        http::StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        http::StatusCode::FORBIDDEN => Code::PermissionDenied,
        http::StatusCode::NOT_FOUND => Code::Unimplemented,
        http::StatusCode::TOO_MANY_REQUESTS
        | http::StatusCode::BAD_GATEWAY
        | http::StatusCode::SERVICE_UNAVAILABLE
        | http::StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(
        c,
        format!("publish response without grpc-status (HTTP {code})"),
    )
}

/// Sends `batch` on `channel` and reads its response.
pub(crate) async fn call(
    channel: &AuthChannel,
    pool: &Arc<BufPool>,
    batch: &PublishBatch,
) -> Result<v1::PublishResponse, Status> {
    let body = encode(pool, batch)?;
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(PATH)
        .version(http::Version::HTTP_2)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(tonic::body::Body::new(Full::new(body)))
        .map_err(|e| Status::internal(format!("building the publish request: {e}")))?;
    let mut channel = channel.clone();
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(Status::from_error)?;
    let response = channel.call(request).await.map_err(Status::from_error)?;
    let (parts, body) = response.into_parts();
    // A trailers-only response: the call failed before any message.
    if let Some(s) = Status::from_header_map(&parts.headers) {
        if s.code() != Code::Ok {
            return Err(s);
        }
    }
    let collected = body
        .collect()
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let status = collected
        .trailers()
        .and_then(Status::from_header_map)
        .or_else(|| Status::from_header_map(&parts.headers))
        .unwrap_or_else(|| status_from_http(parts.status));
    if status.code() != Code::Ok {
        return Err(status);
    }
    let data = collected.to_bytes();
    let message = frame::unary_message(&data, usize::MAX)
        .map_err(|e| Status::internal(format!("publish response: {e}")))?;
    v1::PublishResponse::decode(message)
        .map_err(|e| Status::internal(format!("publish response: malformed protobuf: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_core::Message;

    #[test]
    fn a_request_buffer_goes_back_to_the_pool_when_its_bytes_are_dropped() {
        let pool = Arc::new(BufPool::default());
        let batch = PublishBatch {
            topic: "t".into(),
            messages: vec![Message::new("hello"); 3],
            compact_receipts: true,
        };
        let body = encode(&pool, &batch).unwrap();
        assert_eq!(
            &body[frame::GRPC_HEADER..],
            &batch.encode_to_vec()[..],
            "the framed message is the batch"
        );
        let ptr = body.as_ptr();
        let copy = body.clone();
        drop(body);
        assert!(pool.0.lock().unwrap().is_empty(), "a clone still holds it");
        drop(copy);
        let again = encode(&pool, &batch).unwrap();
        assert_eq!(again.as_ptr(), ptr, "the same buffer, reused");
    }

    #[test]
    fn the_pool_keeps_few_and_small_buffers() {
        let pool = BufPool::default();
        pool.give(Vec::with_capacity(POOL_MAX_BYTES + 1));
        assert!(pool.0.lock().unwrap().is_empty());
        for _ in 0..POOL_BUFFERS + 3 {
            pool.give(vec![1, 2, 3]);
        }
        let bufs = pool.0.lock().unwrap();
        assert_eq!(bufs.len(), POOL_BUFFERS);
        assert!(bufs.iter().all(Vec::is_empty), "given back cleared");
    }
}
