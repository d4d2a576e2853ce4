//! Metrics through the `metrics` crate facade: [`MetricsLayer`] counts
//! handled and failed messages and records handling time; the retry,
//! retry-topic and dead-letter layers count what they do under the names
//! below. Install a recorder (e.g. a Prometheus exporter) before building
//! layers: handles are registered once, when a layer is made.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use metrics::{Counter, Histogram, Label};
use pin_project_lite::pin_project;
// Durations use quanta's clock (the TSC where it is invariant, the monotonic
// clock elsewhere), read raw at both ends and scaled once: a pair costs about
// the two `rdtsc` it is made of (~20 ns here), against ~25 ns with
// `quanta::Instant` (a thread-local check and a scaling per read) and ~50 ns
// with `std::time::Instant`. tokio's clock (with its `test-util` feature on,
// as in any crate's tests) takes a lock per read. Unit tests here use
// tokio's, so the paused clock drives them.
#[cfg(not(test))]
mod stopwatch {
    /// The clock handling times are measured with.
    #[derive(Clone, Debug)]
    pub(crate) struct Stopwatch(quanta::Clock);

    /// A start reading of a [`Stopwatch`].
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Started(u64);

    impl Stopwatch {
        /// quanta calibrates its clock when made (milliseconds): once per
        /// layer, not in the first message's handling time.
        pub(crate) fn new() -> Self {
            Stopwatch(quanta::Clock::new())
        }
        #[inline]
        pub(crate) fn start(&self) -> Started {
            Started(self.0.raw())
        }
        #[inline]
        pub(crate) fn seconds_since(&self, start: Started) -> f64 {
            self.0.delta(start.0, self.0.raw()).as_secs_f64()
        }
    }
}
#[cfg(test)]
mod stopwatch {
    #[derive(Clone, Debug)]
    pub(crate) struct Stopwatch;
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Started(tokio::time::Instant);
    impl Stopwatch {
        pub(crate) fn new() -> Self {
            Stopwatch
        }
        pub(crate) fn start(&self) -> Started {
            Started(tokio::time::Instant::now())
        }
        pub(crate) fn seconds_since(&self, start: Started) -> f64 {
            start.0.elapsed().as_secs_f64()
        }
    }
}
pub(crate) use stopwatch::{Started, Stopwatch};
use tower::{Layer, Service};

use crate::outcome::{HandlerError, Outcome};
use crate::request::Request;

/// Counter: messages whose handler finished.
pub const HANDLED: &str = "wharf_router_handled_total";
/// Counter: messages whose handler failed or rejected them.
pub const FAILED: &str = "wharf_router_failed_total";
/// Counter: retries scheduled (in-process retries and republishes to retry topics).
pub const RETRIED: &str = "wharf_router_retried_total";
/// Counter: messages published to a dead-letter topic by the router.
pub const DEAD_LETTERED: &str = "wharf_router_dead_lettered_total";
/// Histogram: handler duration in seconds.
pub const DURATION: &str = "wharf_router_handle_duration_seconds";

pub(crate) fn retried() -> Counter {
    metrics::counter!(RETRIED)
}

pub(crate) fn dead_lettered() -> Counter {
    metrics::counter!(DEAD_LETTERED)
}

/// Records [`HANDLED`], [`FAILED`] and [`DURATION`] per message.
#[derive(Clone, Debug)]
pub struct MetricsLayer {
    labels: Vec<Label>,
    durations: bool,
}

impl Default for MetricsLayer {
    fn default() -> Self {
        MetricsLayer {
            labels: Vec::new(),
            durations: true,
        }
    }
}

impl MetricsLayer {
    /// The layer, without labels.
    pub fn new() -> Self {
        MetricsLayer::default()
    }

    /// Adds a label to every metric of this layer (e.g. `route = orders`).
    #[must_use]
    pub fn label(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.labels.push(Label::new(key, value.into()));
        self
    }

    /// Whether to record [`DURATION`] (two clock reads per message, the
    /// layer's main cost; default on).
    #[must_use]
    pub fn durations(mut self, on: bool) -> Self {
        self.durations = on;
        self
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    #[inline]
    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics {
            inner,
            handles: self.handles(),
        }
    }
}

pub(crate) struct Handles {
    handled: Counter,
    failed: Counter,
    duration: Option<(Histogram, Stopwatch)>,
}

impl Handles {
    /// When to start timing a message (`None` with durations off).
    #[inline]
    pub(crate) fn start(&self) -> Option<Started> {
        self.duration.as_ref().map(|(_, clock)| clock.start())
    }

    /// Records a finished message that started at `start`.
    #[inline]
    pub(crate) fn record(&self, start: Option<Started>, out: &Result<Outcome, HandlerError>) {
        if let (Some((d, clock)), Some(start)) = (&self.duration, start) {
            d.record(clock.seconds_since(start));
        }
        self.handled.increment(1);
        if matches!(out, Err(_) | Ok(Outcome::Reject { .. })) {
            self.failed.increment(1);
        }
    }
}

impl MetricsLayer {
    /// The metric handles of this layer, registered with the current recorder.
    pub(crate) fn handles(&self) -> Arc<Handles> {
        Arc::new(Handles {
            handled: metrics::counter!(HANDLED, self.labels.iter()),
            failed: metrics::counter!(FAILED, self.labels.iter()),
            duration: self.durations.then(|| {
                (
                    metrics::histogram!(DURATION, self.labels.iter()),
                    Stopwatch::new(),
                )
            }),
        })
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Clone)]
pub struct Metrics<S> {
    inner: S,
    handles: Arc<Handles>,
}

impl<S> std::fmt::Debug for Metrics<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl<S> Service<Request> for Metrics<S>
where
    S: Service<Request, Response = Outcome, Error = HandlerError>,
{
    type Response = Outcome;
    type Error = HandlerError;
    type Future = MetricsFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request) -> Self::Future {
        MetricsFuture {
            inner: self.inner.call(req),
            start: self.handles.start(),
            handles: self.handles.clone(),
        }
    }
}

pin_project! {
    /// Future of [`Metrics`].
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        start: Option<Started>,
        handles: Arc<Handles>,
    }
}

impl<F: Future<Output = Result<Outcome, HandlerError>>> Future for MetricsFuture<F> {
    type Output = F::Output;
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        this.handles.record(*this.start, &out);
        Poll::Ready(out)
    }
}

#[cfg(test)]
pub(crate) mod test_recorder {
    //! A tiny in-memory recorder for asserting on metrics in tests.
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
        SharedString, Unit,
    };

    #[derive(Default)]
    pub(crate) struct Cell(AtomicU64, Mutex<Vec<f64>>);

    impl CounterFn for Cell {
        fn increment(&self, v: u64) {
            self.0.fetch_add(v, Ordering::Relaxed);
        }
        fn absolute(&self, v: u64) {
            self.0.store(v, Ordering::Relaxed);
        }
    }

    impl HistogramFn for Cell {
        fn record(&self, v: f64) {
            self.1.lock().unwrap().push(v);
        }
    }

    #[derive(Default, Clone)]
    pub(crate) struct TestRecorder {
        cells: Arc<Mutex<HashMap<String, Arc<Cell>>>>,
    }

    impl TestRecorder {
        fn cell(&self, key: &Key) -> Arc<Cell> {
            let mut name = key.name().to_owned();
            for l in key.labels() {
                name.push_str(&format!(",{}={}", l.key(), l.value()));
            }
            self.cells.lock().unwrap().entry(name).or_default().clone()
        }
        pub(crate) fn counter(&self, name: &str) -> u64 {
            self.cells
                .lock()
                .unwrap()
                .get(name)
                .map_or(0, |c| c.0.load(Ordering::Relaxed))
        }
        pub(crate) fn histogram(&self, name: &str) -> Vec<f64> {
            self.cells
                .lock()
                .unwrap()
                .get(name)
                .map_or_else(Vec::new, |c| c.1.lock().unwrap().clone())
        }
    }

    impl Recorder for TestRecorder {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.cell(key))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(self.cell(key))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::test_recorder::TestRecorder;
    use super::*;
    use crate::testing::{call, ctx};
    use crate::{handler_fn, HandlerError};
    use wharf_core::Message;

    #[tokio::test(start_paused = true)]
    async fn counts_handled_and_failed_and_records_duration() {
        let rec = TestRecorder::default();
        let _guard = metrics::set_default_local_recorder(&rec);
        let svc = MetricsLayer::new()
            .label("route", "orders")
            .layer(handler_fn(|req: Request| async move {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if req.message().payload().as_ref() == b"bad" {
                    Err(HandlerError::permanent("bad"))
                } else {
                    Ok(Outcome::Ack)
                }
            }));
        let (c, _) = ctx();
        for p in ["ok", "bad", "ok"] {
            let _ = call(svc.clone(), Request::test("t", Message::new(p), c.clone())).await;
        }
        assert_eq!(rec.counter("wharf_router_handled_total,route=orders"), 3);
        assert_eq!(rec.counter("wharf_router_failed_total,route=orders"), 1);
        let d = rec.histogram("wharf_router_handle_duration_seconds,route=orders");
        assert_eq!(d.len(), 3);
        assert!(d.iter().all(|s| (*s - 0.25).abs() < 0.01), "{d:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn durations_off_records_counters_but_no_histogram() {
        let rec = TestRecorder::default();
        let _guard = metrics::set_default_local_recorder(&rec);
        let svc = MetricsLayer::new()
            .durations(false)
            .layer(handler_fn(|_r: Request| async { Ok(Outcome::Ack) }));
        let (c, _) = ctx();
        call(svc, Request::test("t", Message::new("x"), c))
            .await
            .unwrap();
        assert_eq!(rec.counter("wharf_router_handled_total"), 1);
        assert!(rec
            .histogram("wharf_router_handle_duration_seconds")
            .is_empty());
    }
}
