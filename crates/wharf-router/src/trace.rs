//! Correlation and tracing: a `tracing` span per message and W3C
//! `traceparent` propagation from consumed to published messages.
//!
//! [`TraceLayer`] parses the incoming `traceparent` (or starts a new trace),
//! stores a child context in the [`Request`] so that [`Request::publish`] and
//! [`Request::reply`] stamp it on outgoing messages, and runs the handler
//! inside a span carrying topic, partition, offset, attempt and trace id.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::{Layer, Service};
use wharf_core::{header, Message};

use crate::outcome::{HandlerError, Outcome};
use crate::request::Request;

/// A W3C trace context: `00-<trace-id>-<parent-id>-<flags>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// 16-byte trace id shared by every span of the trace.
    pub trace_id: [u8; 16],
    /// 8-byte id of the span that is the parent of the next one.
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceContext {
    /// A new trace with random ids, sampled.
    pub fn new_root() -> Self {
        let a = next_random();
        let b = next_random();
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&a.to_be_bytes());
        trace_id[8..].copy_from_slice(&b.to_be_bytes());
        TraceContext {
            trace_id,
            span_id: next_random().to_be_bytes(),
            flags: 1,
        }
    }

    /// The same trace with a new span id (for a message caused by this one).
    #[must_use]
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: next_random().to_be_bytes(),
            ..*self
        }
    }

    /// Parses a `traceparent` header value; `None` if malformed or all-zero.
    pub fn parse(value: &str) -> Option<Self> {
        let b = value.as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = hex_byte(&b[0..2])?;
        if version == 0xff || (version == 0 && b.len() != 55) {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, out) in trace_id.iter_mut().enumerate() {
            *out = hex_byte(&b[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, out) in span_id.iter_mut().enumerate() {
            *out = hex_byte(&b[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&b[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The context in `message`'s `traceparent` header, if valid.
    pub fn from_message(message: &Message) -> Option<Self> {
        message
            .headers()
            .get(header::TRACEPARENT)
            .and_then(Self::parse)
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({self})")
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    Some(nibble(two[0])? << 4 | nibble(two[1])?)
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        h.finish() | 1
    });
}

/// A non-zero pseudo-random u64 (xorshift64*, per-thread random seed): ids,
/// not cryptography.
pub(crate) fn next_random() -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1
    })
}

/// Adds a span and trace context per message; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceLayer {
    _priv: (),
}

impl TraceLayer {
    /// The layer.
    pub fn new() -> Self {
        TraceLayer { _priv: () }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    #[inline]
    fn layer(&self, inner: S) -> Trace<S> {
        Trace { inner }
    }
}

/// The service made by [`TraceLayer`].
#[derive(Clone, Debug)]
pub struct Trace<S> {
    inner: S,
}

impl<S> Service<Request> for Trace<S>
where
    S: Service<Request, Response = Outcome, Error = HandlerError>,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = TraceFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request) -> Self::Future {
        let span = prepare(&mut req);
        let inner = match &span {
            None => self.inner.call(req),
            Some(span) => {
                let _entered = span.enter();
                self.inner.call(req)
            }
        };
        TraceFuture { inner, span }
    }
}

/// Carries the message's trace context over to `req` (a child of an
/// incoming `traceparent`, or a new root when a span is recorded) and
/// returns the message's `wharf.handle` span when a subscriber listens.
#[inline]
pub(crate) fn prepare(req: &mut Request) -> Option<tracing::Span> {
    let span = tracing::info_span!(
        "wharf.handle",
        topic = %req.topic(),
        partition = req.info().partition,
        offset = req.info().offset,
        attempt = req.attempt(),
        message_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let incoming = TraceContext::from_message(req.message());
    if span.is_disabled() {
        if let Some(tc) = incoming {
            req.set_trace(tc.child());
        }
        return None;
    }
    span.record("message_id", tracing::field::display(req.message().id()));
    let tc = incoming.map_or_else(TraceContext::new_root, |t| t.child());
    span.record("trace_id", tracing::field::display(tc.trace_id_hex()));
    req.set_trace(tc);
    Some(span)
}

pin_project! {
    /// Future of [`Trace`]: polls the handler inside its span (if enabled).
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        span: Option<tracing::Span>,
    }
}

impl<F: Future<Output = Result<Outcome, HandlerError>>> Future for TraceFuture<F> {
    type Output = F::Output;
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.as_ref().map(tracing::Span::enter);
        this.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{call, ctx};
    use crate::{handler_fn, Request};
    use std::sync::{Arc, Mutex};

    #[test]
    fn traceparent_round_trips_and_rejects_malformed() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tc = TraceContext::parse(s).unwrap();
        assert_eq!(tc.to_string(), s);
        assert_eq!(tc.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
    }

    #[tokio::test]
    async fn published_messages_carry_the_trace_id_with_the_consumer_span_as_parent() {
        let (c, published) = ctx();
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let msg = Message::builder()
            .header(header::TRACEPARENT, incoming)
            .header(header::TRACESTATE, "vendor=1")
            .header(header::CORRELATION_ID, "corr-1")
            .build();
        let consumer_span: Arc<Mutex<Option<TraceContext>>> = Arc::default();
        let seen = consumer_span.clone();
        let svc = TraceLayer::new().layer(handler_fn(move |req: Request| {
            *seen.lock().unwrap() = req.trace();
            async move {
                req.publish("out", Message::new("x")).await?;
                Ok(Outcome::Ack)
            }
        }));
        assert_eq!(
            call(svc, Request::test("in", msg, c)).await.unwrap(),
            Outcome::Ack
        );
        let out = published.published();
        assert_eq!(out.len(), 1);
        let h = out[0].1.headers();
        let tp = TraceContext::parse(h.get(header::TRACEPARENT).unwrap()).unwrap();
        let parent = TraceContext::parse(incoming).unwrap();
        assert_eq!(tp.trace_id, parent.trace_id);
        assert_ne!(tp.span_id, parent.span_id);
        assert_eq!(Some(tp), *consumer_span.lock().unwrap());
        assert_eq!(h.get(header::TRACESTATE), Some("vendor=1"));
        assert_eq!(h.get(header::CORRELATION_ID), Some("corr-1"));
    }

    #[tokio::test]
    async fn message_without_traceparent_publishes_nothing_when_untraced() {
        let (c, published) = ctx();
        let svc = TraceLayer::new().layer(handler_fn(|req: Request| async move {
            req.publish("out", Message::new("x")).await?;
            Ok(Outcome::Ack)
        }));
        call(svc, Request::test("in", Message::new("m"), c))
            .await
            .unwrap();
        // No subscriber is installed, so no span is enabled and no trace
        // is started: the outgoing message carries no traceparent.
        assert!(!published.published()[0]
            .1
            .headers()
            .contains(header::TRACEPARENT));
    }

    #[test]
    fn random_ids_differ() {
        let a = TraceContext::new_root();
        let b = TraceContext::new_root();
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, a.child().span_id);
    }

    #[tokio::test]
    async fn without_the_layer_the_incoming_traceparent_passes_through() {
        let (c, published) = ctx();
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let msg = Message::builder()
            .header(header::TRACEPARENT, incoming)
            .build();
        let req = Request::test("in", msg, c);
        req.publish("out", Message::new("x")).await.unwrap();
        let out = published.published();
        assert_eq!(out[0].1.headers().get(header::TRACEPARENT), Some(incoming));
    }
}
