//! The default middleware stack: tracing span + trace propagation, metrics,
//! and panic recovery — the layers every handler should have, none of which
//! allocates per message.
//!
//! Reliability policy (retry, retry topics, dead-lettering, dedup) depends
//! on the handler, so it is added explicitly around or inside this stack.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::metrics::{Handles, MetricsLayer, Started};
use crate::outcome::{HandlerError, Outcome};
use crate::recover;
use crate::request::Request;
use crate::trace;

/// [`TraceLayer`](crate::trace::TraceLayer) ∘ [`MetricsLayer`] ∘
/// [`RecoverLayer`](crate::recover::RecoverLayer), outermost first, fused
/// into one service and one future (the same behaviour as stacking the three
/// layers, without three nested futures and moves of the request).
///
/// ```
/// use tower::ServiceBuilder;
/// use wharf_router::{handler_fn, DefaultLayer, Outcome, Request, HandlerError};
/// let svc = ServiceBuilder::new()
///     .layer(DefaultLayer::new())
///     .service(handler_fn(|_r: Request| async { Ok::<_, HandlerError>(Outcome::Ack) }));
/// # let _ = svc;
/// ```
#[derive(Clone, Debug, Default)]
pub struct DefaultLayer {
    metrics: MetricsLayer,
}

impl DefaultLayer {
    /// The stack with unlabelled metrics.
    pub fn new() -> Self {
        DefaultLayer::default()
    }

    /// The stack with `metrics` (e.g. labelled per route).
    pub fn with_metrics(metrics: MetricsLayer) -> Self {
        DefaultLayer { metrics }
    }
}

impl<S> Layer<S> for DefaultLayer {
    type Service = DefaultService<S>;
    #[inline]
    fn layer(&self, inner: S) -> Self::Service {
        DefaultService {
            inner,
            handles: self.metrics.handles(),
        }
    }
}

/// The service made by [`DefaultLayer`].
#[derive(Clone)]
pub struct DefaultService<S> {
    inner: S,
    handles: Arc<Handles>,
}

impl<S> std::fmt::Debug for DefaultService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefaultService").finish_non_exhaustive()
    }
}

impl<S> Service<Request> for DefaultService<S>
where
    S: Service<Request, Response = Outcome, Error = HandlerError>,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = DefaultFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request) -> Self::Future {
        let span = trace::prepare(&mut req);
        let start = self.handles.start();
        let called = {
            let _entered = span.as_ref().map(tracing::Span::enter);
            recover::call_catching(&mut self.inner, req)
        };
        let (inner, early) = match called {
            Ok(fut) => (Some(fut), None),
            Err(message) => (None, Some(Box::new(message))),
        };
        DefaultFuture {
            inner,
            early,
            span: span.map(Box::new),
            start,
            handles: self.handles.clone(),
        }
    }
}

pin_project! {
    /// Future of [`DefaultService`].
    pub struct DefaultFuture<F> {
        #[pin]
        inner: Option<F>,
        // Rare (a panic in `call`, a subscriber listening): boxed, so the
        // future the router moves per message stays small.
        early: Option<Box<String>>,
        span: Option<Box<tracing::Span>>,
        start: Option<Started>,
        handles: Arc<Handles>,
    }
}

impl<F: Future<Output = Result<Outcome, HandlerError>>> Future for DefaultFuture<F> {
    type Output = F::Output;
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.as_deref().map(tracing::Span::enter);
        let out = match this.inner.as_pin_mut() {
            Some(f) => std::task::ready!(catch_unwind(AssertUnwindSafe(|| f.poll(cx)))
                .unwrap_or_else(|panic| Poll::Ready(Err(recover::panicked(&*panic))))),
            None => Err(HandlerError::Panicked {
                message: this.early.take().map(|m| *m).unwrap_or_default(),
            }),
        };
        this.handles.record(*this.start, &out);
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::handler_fn;
    use crate::metrics::test_recorder::TestRecorder;
    use crate::testing::{call, ctx};
    use crate::trace::TraceContext;
    use wharf_core::{header, Message};

    /// A service whose `call` itself panics (before any future exists).
    #[derive(Clone)]
    struct PanicsInCall;

    impl Service<Request> for PanicsInCall {
        type Response = Outcome;
        type Error = HandlerError;
        type Future = std::future::Ready<Result<Outcome, HandlerError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request) -> Self::Future {
            panic!("boom in call")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn counts_times_and_recovers_like_the_three_layers() {
        let rec = TestRecorder::default();
        let _guard = metrics::set_default_local_recorder(&rec);
        let svc = DefaultLayer::with_metrics(MetricsLayer::new().label("route", "r")).layer(
            handler_fn(|req: Request| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match req.message().payload().as_ref() {
                    b"panic" => panic!("boom in poll"),
                    b"bad" => Err(HandlerError::permanent("bad")),
                    _ => Ok(Outcome::Ack),
                }
            }),
        );
        let (c, _) = ctx();
        let req = |p: &'static str| Request::test("t", Message::new(p), c.clone());
        assert_eq!(call(svc.clone(), req("ok")).await.unwrap(), Outcome::Ack);
        assert!(matches!(
            call(svc.clone(), req("bad")).await,
            Err(HandlerError::Permanent { .. })
        ));
        match call(svc.clone(), req("panic")).await {
            Err(HandlerError::Panicked { message }) => assert_eq!(message, "boom in poll"),
            other => panic!("expected a panic error, got {other:?}"),
        }
        assert_eq!(rec.counter("wharf_router_handled_total,route=r"), 3);
        assert_eq!(rec.counter("wharf_router_failed_total,route=r"), 2);
        let d = rec.histogram("wharf_router_handle_duration_seconds,route=r");
        assert_eq!(d.len(), 3);
        assert!(d.iter().all(|s| (*s - 0.1).abs() < 0.01), "{d:?}");
    }

    #[tokio::test]
    async fn a_panic_in_call_becomes_an_error_and_is_counted() {
        let rec = TestRecorder::default();
        let _guard = metrics::set_default_local_recorder(&rec);
        let svc = DefaultLayer::new().layer(PanicsInCall);
        let (c, _) = ctx();
        match call(svc, Request::test("t", Message::new("x"), c)).await {
            Err(HandlerError::Panicked { message }) => assert_eq!(message, "boom in call"),
            other => panic!("expected a panic error, got {other:?}"),
        }
        assert_eq!(rec.counter("wharf_router_handled_total"), 1);
        assert_eq!(rec.counter("wharf_router_failed_total"), 1);
    }

    #[tokio::test]
    async fn carries_the_incoming_trace_over_to_published_messages() {
        let (c, published) = ctx();
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let msg = Message::builder()
            .header(header::TRACEPARENT, incoming)
            .build();
        let svc = DefaultLayer::new().layer(handler_fn(|req: Request| async move {
            req.publish("out", Message::new("x")).await?;
            Ok(Outcome::Ack)
        }));
        call(svc, Request::test("in", msg, c)).await.unwrap();
        let out = published.published();
        let tp = out[0].1.headers().get(header::TRACEPARENT).unwrap();
        let tp = TraceContext::parse(tp).unwrap();
        let parent = TraceContext::parse(incoming).unwrap();
        assert_eq!(tp.trace_id, parent.trace_id);
        assert_ne!(tp.span_id, parent.span_id);
    }
}
