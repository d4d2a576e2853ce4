//! The gRPC message size limit, checked before anything is decoded: a
//! `tower::Layer` on the gRPC routes that reads each request message's
//! 5-byte prefix (compression flag, big-endian length) as the body streams
//! in ([`HeaderScanner`]) and, at the first message announced larger than
//! `max_request_bytes`, ends the call with `RESOURCE_EXHAUSTED` naming the
//! limit and the size — without reading, buffering or decoding that message.
//! It applies to every call: a unary call gets the refusal as its answer, a
//! stream already answering (Consume) ends with it as its trailers.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, HeaderValue, Request, Response};
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use hyper::body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_service::Service;
use wharf_proto::frame::{HeaderScanner, Oversized};

use crate::telemetry;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Refuses gRPC request messages longer than `max` bytes before they are
/// read; see the module docs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageLimitLayer {
    max: usize,
}

impl MessageLimitLayer {
    pub(crate) fn new(max: usize) -> Self {
        MessageLimitLayer { max }
    }
}

impl<S> tower::Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> MessageLimit<S> {
        MessageLimit {
            inner,
            max: self.max,
        }
    }
}

/// The service of [`MessageLimitLayer`].
#[derive(Debug, Clone)]
pub(crate) struct MessageLimit<S> {
    inner: S,
    max: usize,
}

/// What the request body found, shared with the response: `NOT_YET` or the
/// announced length of the first message over the limit; whoever waits
/// for it (the response future, then the response body) is woken.
struct Verdict {
    oversized: AtomicU64,
    waker: AtomicWaker,
    max: usize,
}

const NOT_YET: u64 = u64::MAX;

impl Verdict {
    fn refuse(&self, len: u32) {
        self.oversized.store(u64::from(len), Ordering::Release);
        self.waker.wake();
    }

    fn oversized(&self) -> Option<u64> {
        let len = self.oversized.load(Ordering::Acquire);
        (len != NOT_YET).then_some(len)
    }

    fn status(&self, len: u64) -> tonic::Status {
        tonic::Status::resource_exhausted(format!(
            "message of {len} bytes is larger than the limit of {} bytes (max_request_bytes)",
            self.max
        ))
    }

    /// The refusal as a whole (trailers-only) response.
    fn response<B>(&self, len: u64) -> Response<LimitedResponse<B>> {
        let mut res = Response::new(LimitedResponse {
            inner: None,
            verdict: None,
        });
        let h = res.headers_mut();
        h.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        let _ = self.status(len).add_header(h);
        res
    }

    /// The refusal as the trailers of a response already under way.
    fn trailers(&self, len: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        let _ = self.status(len).add_header(&mut h);
        h
    }
}

impl<S, B, RB> Service<Request<B>> for MessageLimit<S>
where
    S: Service<Request<LimitedRequest<B>>, Response = Response<RB>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Response<LimitedResponse<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let verdict = Arc::new(Verdict {
            oversized: AtomicU64::new(NOT_YET),
            waker: AtomicWaker::new(),
            max: self.max,
        });
        let req = req.map(|inner| LimitedRequest {
            inner,
            scanner: HeaderScanner::new(self.max),
            verdict: verdict.clone(),
            state: ReadState::Reading,
        });
        ResponseFuture {
            inner: self.inner.call(req),
            verdict,
        }
    }
}

pin_project! {
    /// The response of [`MessageLimit`]: the refusal as soon as the request
    /// body finds a message over the limit, else the inner response.
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        inner: F,
        verdict: Arc<Verdict>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<LimitedResponse<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The request body may be read by another task (a stream's handler).
        this.verdict.waker.register(cx.waker());
        if let Some(len) = this.verdict.oversized() {
            return Poll::Ready(Ok(this.verdict.response(len)));
        }
        let res = match this.inner.poll(cx) {
            Poll::Ready(Ok(res)) => res,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                return match this.verdict.oversized() {
                    Some(len) => Poll::Ready(Ok(this.verdict.response(len))),
                    None => Poll::Pending,
                }
            }
        };
        // Found while the inner service read the body: its answer to the
        // broken body gives way to the refusal.
        if let Some(len) = this.verdict.oversized() {
            return Poll::Ready(Ok(this.verdict.response(len)));
        }
        let verdict = this.verdict.clone();
        Poll::Ready(Ok(res.map(|inner| LimitedResponse {
            inner: Some(inner),
            verdict: Some(verdict),
        })))
    }
}

enum ReadState {
    Reading,
    /// The bytes before an oversized header were handed on; the error is next.
    Refusing(u32),
    Done,
}

pin_project! {
    /// A request body whose message headers are checked as it streams in.
    pub(crate) struct LimitedRequest<B> {
        #[pin]
        inner: B,
        scanner: HeaderScanner,
        verdict: Arc<Verdict>,
        state: ReadState,
    }
}

impl<B> Body for LimitedRequest<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match *this.state {
            ReadState::Reading => {}
            ReadState::Refusing(len) => {
                *this.state = ReadState::Done;
                return Poll::Ready(Some(Err(this.verdict.status(u64::from(len)).into())));
            }
            ReadState::Done => return Poll::Ready(None),
        }
        let frame = match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let Err(Oversized { at, len }) = this.scanner.scan(data) else {
            return Poll::Ready(Some(Ok(frame)));
        };
        telemetry::refused("too_large");
        this.verdict.refuse(len);
        // Earlier messages in the chunk go on; the oversized one is never read.
        if at > 0 {
            let before = data.slice(..at);
            *this.state = ReadState::Refusing(len);
            return Poll::Ready(Some(Ok(Frame::data(before))));
        }
        *this.state = ReadState::Done;
        Poll::Ready(Some(Err(this.verdict.status(u64::from(len)).into())))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, ReadState::Done) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A response body that ends with the refusal as its trailers once the
    /// request body finds a message over the limit (a stream's response is
    /// under way by then); `inner: None` is the refusal's empty body.
    pub(crate) struct LimitedResponse<B> {
        #[pin]
        inner: Option<B>,
        verdict: Option<Arc<Verdict>>,
    }
}

impl<B> Body for LimitedResponse<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let len = match (this.verdict.as_ref(), this.inner.as_mut().as_pin_mut()) {
            (Some(verdict), Some(inner)) => {
                verdict.waker.register(cx.waker());
                match verdict.oversized() {
                    Some(len) => len,
                    None => {
                        let polled = inner.poll_frame(cx);
                        // Whatever the stream sent after the refusal (data
                        // it still had, its own trailers) gives way to it.
                        match verdict.oversized() {
                            Some(len) => len,
                            None => return polled,
                        }
                    }
                }
            }
            _ => return Poll::Ready(None),
        };
        let trailers = this.verdict.take().map(|v| v.trailers(len));
        this.inner.set(None);
        Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown while a refusal may still replace the rest.
        match &self.inner {
            None => SizeHint::with_exact(0),
            Some(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Full, StreamBody};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tower::{Layer, ServiceExt};

    use super::*;

    type Chunks = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

    fn header(len: u32) -> Vec<u8> {
        let mut h = vec![0];
        h.extend_from_slice(&len.to_be_bytes());
        h
    }

    /// A request body fed chunk by chunk through the returned sender.
    fn streamed() -> (
        mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
        Request<Chunks>,
    ) {
        let (tx, rx) = mpsc::channel(8);
        (tx, Request::new(StreamBody::new(ReceiverStream::new(rx))))
    }

    fn grpc_status<B>(res: &Response<B>) -> Option<&str> {
        res.headers().get("grpc-status")?.to_str().ok()
    }

    /// An inner service that reads the whole request and answers it back.
    async fn echo<B: Body<Data = Bytes>>(
        req: Request<B>,
    ) -> Result<Response<Full<Bytes>>, Infallible>
    where
        B::Error: std::fmt::Display,
    {
        Ok(match req.into_body().collect().await {
            Ok(body) => Response::new(Full::new(body.to_bytes())),
            Err(e) => Response::new(Full::new(Bytes::from(format!("error: {e}")))),
        })
    }

    #[tokio::test]
    async fn messages_within_the_limit_pass_untouched() {
        let mut body = header(3);
        body.extend_from_slice(b"abc");
        body.extend_from_slice(&header(4));
        body.extend_from_slice(b"wxyz");
        let svc = MessageLimitLayer::new(4).layer(tower::service_fn(echo));
        let req = Request::new(Full::new(Bytes::from(body.clone())));
        let res = svc.oneshot(req).await.expect("infallible");
        assert_eq!(grpc_status(&res), None);
        let got = res.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&got[..], &body[..]);
    }

    #[tokio::test]
    async fn an_oversized_header_is_refused_without_the_message_being_read() {
        let svc = MessageLimitLayer::new(4).layer(tower::service_fn(echo));
        let (tx, req) = streamed();
        // A whole message, then a header over the limit, in one chunk; the
        // oversized message itself never comes and the body never ends.
        let mut chunk = header(1);
        chunk.push(b'a');
        chunk.extend_from_slice(&header(5));
        tx.send(Ok(Frame::data(Bytes::from(chunk))))
            .await
            .expect("send");
        let res = svc.oneshot(req).await.expect("infallible");
        assert_eq!(grpc_status(&res), Some("8"));
        let msg = res.headers()["grpc-message"].to_str().expect("ascii");
        assert!(
            msg.contains("message%20of%205%20bytes") && msg.contains("limit%20of%204%20bytes"),
            "{msg}"
        );
        let body = res.into_body().collect().await.expect("empty body");
        assert!(body.to_bytes().is_empty());
        drop(tx);
    }

    #[tokio::test]
    async fn a_response_under_way_ends_with_the_refusal_as_its_trailers() {
        // A streaming call: the answer starts at once while another task
        // reads the request, as tonic's bidirectional streams do.
        let inner = tower::service_fn(|req: Request<LimitedRequest<Chunks>>| async move {
            let (out, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
            tokio::spawn(async move {
                let mut body = req.into_body();
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data() {
                        // Echo each chunk, then end with OK trailers.
                        let _ = out.send(Ok(Frame::data(data))).await;
                    }
                }
                let mut ok = HeaderMap::new();
                ok.insert("grpc-status", HeaderValue::from_static("0"));
                let _ = out.send(Ok(Frame::trailers(ok))).await;
            });
            Ok::<_, Infallible>(Response::new(StreamBody::new(ReceiverStream::new(rx))))
        });
        let svc = MessageLimitLayer::new(4).layer(inner);
        let (tx, req) = streamed();
        let mut first = header(2);
        first.extend_from_slice(b"hi");
        tx.send(Ok(Frame::data(Bytes::from(first.clone()))))
            .await
            .expect("send");
        let res = svc.oneshot(req).await.expect("infallible");
        assert_eq!(grpc_status(&res), None, "the stream is under way");
        let mut body = res.into_body();
        let echoed = body.frame().await.expect("a frame").expect("ok");
        assert_eq!(echoed.into_data().ok().as_deref(), Some(&first[..]));
        tx.send(Ok(Frame::data(Bytes::from(header(u32::MAX)))))
            .await
            .expect("send");
        let last = body.frame().await.expect("a frame").expect("ok");
        let trailers = last.into_trailers().expect("trailers");
        assert_eq!(trailers["grpc-status"], "8");
        assert!(body.frame().await.is_none(), "nothing after the refusal");
        drop(tx);
    }
}
