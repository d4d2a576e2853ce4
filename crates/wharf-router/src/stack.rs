//! The default middleware stack: tracing span + trace propagation, metrics,
//! and panic recovery — the layers every handler should have, none of which
//! allocates per message.
//!
//! Reliability policy (retry, retry topics, dead-lettering, dedup) depends
//! on the handler, so it is added explicitly around or inside this stack.

use tower::Layer;

use crate::metrics::{Metrics, MetricsLayer};
use crate::recover::{Recover, RecoverLayer};
use crate::trace::{Trace, TraceLayer};

/// [`TraceLayer`] ∘ [`MetricsLayer`] ∘ [`RecoverLayer`], outermost first.
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
    type Service = Trace<Metrics<Recover<S>>>;
    #[inline]
    fn layer(&self, inner: S) -> Self::Service {
        TraceLayer::new().layer(self.metrics.layer(RecoverLayer::new().layer(inner)))
    }
}
