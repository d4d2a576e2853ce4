//! The accept loop for the one port: plain TCP or TLS, each connection
//! served by hyper's auto builder (HTTP/1.1 and HTTP/2 — gRPC needs h2 —
//! with WebSocket upgrades), with large HTTP/2 windows so batched publishes
//! are not throttled by the 64 KiB default, and a graceful drain at stop.
//! It also holds what keeps one client from tying the server up: a cap on
//! open connections and deadlines for the TLS handshake, request headers,
//! request bodies and idle connections (see [`ConnLimits`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower_service::Service;

use crate::route::{is_grpc, Api};
use crate::Acceptor;

/// How long stop waits for open connections to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// How long a connection closed for idleness may take to finish its
/// graceful close (HTTP/2 GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The gRPC call whose request body is a long-lived stream, so the
/// body-read deadline does not apply to it.
const CONSUME_PATH: &str = "/wharf.v1.Wharf/Consume";

/// The per-connection limits (see `ServerConfig` for what each means).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// Open connections at once; more wait in the listen backlog.
    pub(crate) max_connections: usize,
    /// From accept (or the previous response) to a complete request head.
    pub(crate) header_read: Duration,
    /// From a request's start to the end of its body.
    pub(crate) body_read: Duration,
    /// With no request in flight, a connection is closed after this long.
    pub(crate) idle: Duration,
    /// From accept to a finished TLS handshake (read only with the `tls`
    /// feature).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) tls_handshake: Duration,
}

fn builder(limits: &ConnLimits) -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    b.http2()
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .max_send_buf_size(4 << 20);
    b
}

/// Logs accept failures (out of file descriptors and the like) at most
/// once per interval, with how many were left out, instead of once per
/// retry.
struct AcceptErrors {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    fn new(every: Duration) -> Self {
        AcceptErrors {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether to log this failure now; `Some(n)` with the failures left
    /// out since the last one logged.
    fn note(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Connections the kernel queues for accept (tokio's default is 1,024).
const BACKLOG: u32 = 4096;

/// Binds `addr` with a listen backlog of [`BACKLOG`], so a burst of
/// connections (thousands of idle ones at once) waits in the kernel's queue
/// instead of overflowing it, which drops the SYN of whoever connects next
/// and costs them a one-second retransmit.
pub(crate) fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves `app` on `listener` until `stop` resolves, then stops accepting and
/// drains open connections for up to five seconds.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Acceptor>,
    app: Api,
    limits: ConnLimits,
    stop: impl Future<Output = ()>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let builder = builder(&limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut errors = AcceptErrors::new(Duration::from_secs(10));
    tokio::pin!(stop);
    loop {
        // A free slot first: at the cap, new connections wait in the
        // kernel's backlog until a connection closes (timeouts see to it
        // that idle ones do).
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    if let Some(left_out) = errors.note(Instant::now()) {
                        tracing::warn!(error = %e, left_out, "accept failed; retrying (failures in between are not logged)");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        let builder = builder.clone();
        let app = app.clone();
        let stopping = stopping.clone();
        match &tls {
            None => {
                let io = Counted {
                    io: tcp,
                    _permit: permit,
                };
                tokio::spawn(serve_conn(io, builder, app, limits, stopping));
            }
            #[cfg(feature = "tls")]
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(
                        limits.tls_handshake,
                        acceptor.accept(tcp),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                    let io = Counted {
                        io: stream,
                        _permit: permit,
                    };
                    serve_conn(io, builder, app, limits, stopping).await;
                });
            }
            #[cfg(not(feature = "tls"))]
            Some(never) => match *never {},
        }
    }
    drop(listener);
    // Every open connection holds a slot: all slots back means all closed.
    let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN:?}; closing anyway");
    }
    Ok(())
}

/// Serves one connection until it ends, it stays idle too long (no
/// request in flight), or the server stops; the last two close it
/// gracefully (HTTP/2 GOAWAY; HTTP/1 after the response in progress).
async fn serve_conn<I>(
    io: I,
    builder: Builder<TokioExecutor>,
    app: Api,
    limits: ConnLimits,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(Instant::now()));
    let svc = TowerToHyperService::new(ConnService {
        api: app,
        activity: activity.clone(),
        body_read: limits.body_read,
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let idle = idle_watch(&activity, limits.header_read, limits.idle);
    tokio::pin!(idle);
    let stop = stopping.wait_for(|s| *s);
    tokio::pin!(stop);
    let why = tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        () = &mut idle => "idle",
        _ = &mut stop => "stopping",
    };
    tracing::debug!(why, "closing connection");
    conn.as_mut().graceful_shutdown();
    if let Ok(Err(e)) = tokio::time::timeout(CLOSE_GRACE, conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// A connection's requests in flight and when the last one ended.
#[derive(Debug)]
struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    /// Requests started so far.
    started: AtomicU64,
    /// When `in_flight` last fell to zero, in ns since `born`.
    idle_since_ns: AtomicU64,
}

impl Activity {
    fn new(now: Instant) -> Self {
        Activity {
            born: now,
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            idle_since_ns: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// When the connection must close if nothing starts first: `header_read`
    /// after accept while no request has come, `idle` after the last
    /// request ended; `None` while a request is in flight.
    fn deadline(&self, header_read: Duration, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.started.load(Ordering::Relaxed) == 0 {
            return Some(self.born + header_read);
        }
        let since = Duration::from_nanos(self.idle_since_ns.load(Ordering::Acquire));
        Some(self.born + since + idle)
    }
}

/// A request in flight on a connection: from the call until its response
/// body is finished or dropped (so a consume stream, an SSE stream or a
/// long poll keeps its connection from counting as idle).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ns =
            u64::try_from(Instant::now().duration_since(a.born).as_nanos()).unwrap_or(u64::MAX);
        a.idle_since_ns.store(ns, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves once the connection has been without a request in flight for
/// its limit: `header_read` for a connection that has sent no request yet
/// (so a silent or slow-to-start client is dropped), `idle` after that.
async fn idle_watch(activity: &Activity, header_read: Duration, idle: Duration) {
    loop {
        match activity.deadline(header_read, idle) {
            // Busy: look again in `idle` (the earliest it could be due).
            None => tokio::time::sleep(idle).await,
            Some(at) if Instant::now() >= at => return,
            Some(at) => tokio::time::sleep_until(at).await,
        }
    }
}

/// The service hyper calls for each request of one connection: counts the
/// request in flight, puts the body-read deadline on its body, and hands it
/// to the API.
#[derive(Clone)]
struct ConnService {
    api: Api,
    activity: Arc<Activity>,
    body_read: Duration,
}

impl<B> Service<Request<B>> for ConnService
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<Tracked<Body>>;
    type Error = std::convert::Infallible;
    type Future = TrackedFuture<<Api as Service<Request>>::Future>;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let guard = self.activity.begin();
        let streaming = is_grpc(&req) && req.uri().path() == CONSUME_PATH;
        let req = if streaming {
            req.map(Body::new)
        } else {
            let deadline = Instant::now() + self.body_read;
            let limit = self.body_read;
            req.map(|b| Body::new(DeadlineBody::new(b, deadline, limit)))
        };
        TrackedFuture {
            inner: self.api.call(req),
            guard: Some(guard),
        }
    }
}

pin_project_lite::pin_project! {
    /// The API's response future, handing the in-flight guard to the body.
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlight>,
    }
}

impl<F> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response, std::convert::Infallible>>,
{
    type Output = Result<Response<Tracked<Body>>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match ready!(this.inner.poll(cx)) {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let guard = this.guard.take();
        Poll::Ready(Ok(res.map(|inner| Tracked {
            inner,
            _guard: guard,
        })))
    }
}

/// A response body that keeps its request counted in flight until it is
/// finished or dropped.
pub(crate) struct Tracked<B> {
    inner: B,
    _guard: Option<InFlight>,
}

impl<B: HttpBody + Unpin> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that must arrive by a deadline (a `Content-Length` whose
/// bytes never come, or come a byte at a time, would otherwise hold the
/// request open for ever).
struct DeadlineBody<B> {
    inner: B,
    deadline: Instant,
    limit: Duration,
    /// Created the first time the body is not ready (most bodies are).
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> DeadlineBody<B> {
    fn new(inner: B, deadline: Instant, limit: Duration) -> Self {
        DeadlineBody {
            inner,
            deadline,
            limit,
            sleep: None,
        }
    }
}

/// A request body did not arrive within the body-read timeout.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {after:?}")]
pub(crate) struct BodyTimeout {
    /// The limit in force.
    pub(crate) after: Duration,
}

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(f) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(f.map(|r| r.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyTimeout { after: self.limit }))))
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's socket holding its slot of the connection cap for as long
/// as it is open (also after an upgrade hands it to a WebSocket).
struct Counted<T> {
    io: T,
    _permit: OwnedSemaphorePermit,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    #[inline]
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_no_request_in_flight() {
        let header_read = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        let a = Arc::new(Activity::new(Instant::now()));
        // No request yet: the header-read limit from accept.
        let t0 = Instant::now();
        idle_watch(&a, header_read, idle).await;
        assert_eq!(t0.elapsed(), header_read);

        // A request in flight for ten minutes (a long poll, a stream) keeps
        // it open; the idle limit runs from the request's end.
        let a = Arc::new(Activity::new(Instant::now()));
        let req = a.begin();
        let watch = idle_watch(&a, header_read, idle);
        tokio::pin!(watch);
        assert!(
            tokio::time::timeout(Duration::from_secs(600), &mut watch)
                .await
                .is_err(),
            "closed with a request in flight"
        );
        let ended = Instant::now();
        drop(req);
        watch.await;
        assert_eq!(ended.elapsed(), idle);
    }

    #[test]
    fn accept_errors_are_logged_once_per_interval_with_a_count() {
        let mut e = AcceptErrors::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(e.note(t), Some(0));
        for ms in (50..10_000).step_by(50) {
            assert_eq!(e.note(t + Duration::from_millis(ms)), None);
        }
        assert_eq!(e.note(t + Duration::from_secs(10)), Some(199));
    }
}
