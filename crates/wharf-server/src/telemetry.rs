//! Prometheus metrics: counters recorded on the request paths, and gauges
//! (consumer lag per group, DLQ depth, stored messages) computed from the
//! broker when `/metrics` is scraped.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use wharf_broker::Broker;

/// Handle that renders the Prometheus text format.
#[derive(Clone)]
pub(crate) struct Metrics {
    handle: Option<PrometheusHandle>,
}

impl Metrics {
    /// Installs the process-wide recorder once; later calls share it.
    pub(crate) fn install() -> Metrics {
        static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
        let handle = HANDLE
            .get_or_init(|| {
                let recorder = PrometheusBuilder::new().build_recorder();
                let handle = recorder.handle();
                metrics::set_global_recorder(recorder).ok().map(|()| handle)
            })
            .clone();
        Metrics { handle }
    }

    /// Refreshes the broker gauges and renders everything.
    pub(crate) fn render(&self, broker: &Broker) -> String {
        for g in broker.groups() {
            metrics::gauge!("wharf_consumer_lag", "group" => g.group.clone(), "topic" => g.topic.clone())
                .set(g.lag as f64);
        }
        let groups = broker.groups();
        for t in broker.topics() {
            let stored: u64 = t.partitions.iter().map(|(s, e)| e.saturating_sub(*s)).sum();
            metrics::gauge!("wharf_topic_messages", "topic" => t.name.clone()).set(stored as f64);
            if t.name.starts_with(wharf_core::name::DEAD_LETTER_PREFIX) {
                let depth = groups
                    .iter()
                    .find(|g| g.topic == t.name && g.group == wharf_broker::REDRIVE_GROUP)
                    .map_or(stored, |g| g.lag);
                metrics::gauge!("wharf_dlq_depth", "topic" => t.name.clone()).set(depth as f64);
            }
        }
        self.handle
            .as_ref()
            .map(PrometheusHandle::render)
            .unwrap_or_default()
    }
}

/// Records a successful publish of `n` messages of `bytes` total taking `took`
/// (which includes the fsync for `Always` topics).
pub(crate) fn published(topic: &str, api: &'static str, n: usize, bytes: usize, took: Duration) {
    metrics::counter!("wharf_published_messages_total", "topic" => topic.to_owned(), "api" => api)
        .increment(n as u64);
    metrics::counter!("wharf_published_bytes_total", "topic" => topic.to_owned())
        .increment(bytes as u64);
    metrics::histogram!("wharf_publish_duration_seconds", "api" => api).record(took.as_secs_f64());
}

/// Records deliveries handed to consumers.
pub(crate) fn delivered(topic: &str, api: &'static str, bytes: usize) {
    metrics::counter!("wharf_delivered_messages_total", "topic" => topic.to_owned(), "api" => api)
        .increment(1);
    metrics::counter!("wharf_delivered_bytes_total", "topic" => topic.to_owned())
        .increment(bytes as u64);
}

/// Records a settlement (`ack`, `nack`, `reject`).
pub(crate) fn settled(kind: &'static str) {
    metrics::counter!("wharf_settlements_total", "kind" => kind).increment(1);
}

/// Records a request refused (auth, limits, bad input).
pub(crate) fn refused(reason: &'static str) {
    metrics::counter!("wharf_refused_requests_total", "reason" => reason).increment(1);
}
