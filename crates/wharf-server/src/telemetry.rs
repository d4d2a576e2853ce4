//! Prometheus metrics: counters recorded on the request paths, gauges
//! (consumer lag per group, DLQ depth, stored messages) computed from the
//! broker when `/metrics` is scraped, and the fsync latency histogram
//! rendered from the buckets of [`Broker::fsync_stats`] (the log
//! counts them with atomics; no metrics crate reaches the append path).

use std::sync::OnceLock;
use std::time::Duration;

use std::fmt::Write as _;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use wharf_broker::Broker;
use wharf_broker::{SyncStatsSnapshot, SYNC_BUCKET_BOUNDS_MICROS};

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
                let installed = metrics::set_global_recorder(recorder).ok().map(|()| handle);
                describe();
                installed
            })
            .clone();
        Metrics { handle }
    }

    /// Renders the recorded metrics, the broker gauges and the fsync
    /// histogram.
    pub(crate) fn render(&self, broker: &Broker) -> String {
        let mut out = self
            .handle
            .as_ref()
            .map(PrometheusHandle::render)
            .unwrap_or_default();
        broker_gauges(&mut out, broker);
        fsync_histogram(&mut out, &broker.fsync_stats());
        storage_integrity(&mut out, broker);
        process_metrics(&mut out, &crate::process::usage());
        out
    }
}

/// `# HELP` text for every family recorded through the `metrics` facade
/// (a family without a description is rendered without `# HELP`). A new
/// `counter!`/`histogram!` gets its line here; a test scrapes `/metrics`
/// for a family without one.
fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        "wharf_published_messages_total",
        Unit::Count,
        "Messages stored by publishes, per topic and API (grpc, http)."
    );
    describe_counter!(
        "wharf_published_bytes_total",
        Unit::Bytes,
        "Bytes (payload, key and headers) stored by publishes, per topic."
    );
    describe_histogram!(
        "wharf_publish_duration_seconds",
        Unit::Seconds,
        "Time to store a publish call, including the fsync of an `always` topic, per API."
    );
    describe_counter!(
        "wharf_delivered_messages_total",
        Unit::Count,
        "Deliveries handed to consumers (redeliveries included), per topic and API."
    );
    describe_counter!(
        "wharf_delivered_bytes_total",
        Unit::Bytes,
        "Bytes of the deliveries handed to consumers, per topic."
    );
    describe_counter!(
        "wharf_settlements_total",
        Unit::Count,
        "Deliveries settled, per kind (ack, nack, reject, …)."
    );
    describe_counter!(
        "wharf_refused_requests_total",
        Unit::Count,
        "Requests refused (authentication, rights, limits, bad input), per reason."
    );
}

/// One gauge's series from the broker's state now.
struct Gauge {
    name: &'static str,
    help: &'static str,
    series: Vec<(Vec<(&'static str, String)>, u64)>,
}

/// Appends consumer lag per group, stored messages per topic and DLQ depth,
/// read from the broker at scrape time and written straight into the text
/// (not through the recorder, which would keep reporting the last value of
/// a deleted topic or group forever).
fn broker_gauges(out: &mut String, broker: &Broker) {
    let groups = broker.groups();
    let mut lag = Gauge {
        name: "wharf_consumer_lag",
        help: "Messages of the topic a consumer group has not settled yet.",
        series: Vec::new(),
    };
    for g in &groups {
        lag.series.push((
            vec![("group", g.group.clone()), ("topic", g.topic.clone())],
            g.lag,
        ));
    }
    let mut stored = Gauge {
        name: "wharf_topic_messages",
        help: "Messages stored in the topic (all partitions).",
        series: Vec::new(),
    };
    let mut dlq = Gauge {
        name: "wharf_dlq_depth",
        help: "Dead letters not yet replayed or purged.",
        series: Vec::new(),
    };
    for t in broker.topics() {
        let n: u64 = t.partitions.iter().map(|(s, e)| e.saturating_sub(*s)).sum();
        stored.series.push((vec![("topic", t.name.clone())], n));
        if t.name.starts_with(wharf_core::name::DEAD_LETTER_PREFIX) {
            let depth = groups
                .iter()
                .find(|g| g.topic == t.name && g.group == wharf_broker::REDRIVE_GROUP)
                .map_or(n, |g| g.lag);
            dlq.series.push((vec![("topic", t.name.clone())], depth));
        }
    }
    let full = Gauge {
        name: "wharf_storage_full",
        help: "1 while writes fail because the storage is full (no space, or over quota), else 0.",
        series: vec![(Vec::new(), u64::from(broker.storage_full()))],
    };
    for g in [lag, stored, dlq, full] {
        write_gauge(out, &g);
    }
}

/// A label value in the text format: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn write_gauge(out: &mut String, g: &Gauge) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(out, "# HELP {} {}", g.name, g.help);
    let _ = writeln!(out, "# TYPE {} gauge", g.name);
    for (labels, v) in &g.series {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(out, "{} {v}", g.name);
        } else {
            let _ = writeln!(out, "{}{{{}}} {v}", g.name, labels.join(","));
        }
    }
}

/// Appends `wharf_fsync_duration_seconds` in the Prometheus text format.
fn fsync_histogram(out: &mut String, s: &SyncStatsSnapshot) {
    const NAME: &str = "wharf_fsync_duration_seconds";
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "# HELP {NAME} Duration of fdatasync on segment files (group commit, interval flush, roll, close)."
    );
    let _ = writeln!(out, "# TYPE {NAME} histogram");
    let mut cumulative = 0;
    for (bound, n) in SYNC_BUCKET_BOUNDS_MICROS.iter().zip(s.buckets.iter()) {
        cumulative += n;
        let le = *bound as f64 / 1e6;
        let _ = writeln!(out, "{NAME}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{NAME}_bucket{{le=\"+Inf\"}} {}", s.count);
    let _ = writeln!(out, "{NAME}_sum {}", s.total_nanos as f64 / 1e9);
    let _ = writeln!(out, "{NAME}_count {}", s.count);
}

/// Appends the damaged-batch counters (detections, torn tails, repairs by
/// action) and the number of damaged batches each partition holds now.
fn storage_integrity(out: &mut String, broker: &Broker) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let s = broker.integrity_stats();
    let mut counter = |name: &str, help: &str, lines: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (labels, v) in lines {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    counter(
        "wharf_storage_damage_detected_total",
        "Damaged stored batches detected (by CRC on open or on read).",
        &[("", s.detected)],
    );
    counter(
        "wharf_storage_torn_tails_truncated_total",
        "Torn tails (never acknowledged) truncated by recovery.",
        &[("", s.torn_tails)],
    );
    counter(
        "wharf_storage_repairs_total",
        "Damaged batches repaired by an operator, by action.",
        &[
            ("{action=\"skip_batch\"}", s.skipped),
            ("{action=\"truncate\"}", s.truncated),
        ],
    );
    let _ = writeln!(
        out,
        "# HELP wharf_storage_damaged_batches Damaged batches not yet repaired, per partition."
    );
    let _ = writeln!(out, "# TYPE wharf_storage_damaged_batches gauge");
    for t in broker.topics() {
        let mut per: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
        for (p, _) in &t.damage {
            *per.entry(*p).or_default() += 1;
        }
        for (p, n) in per {
            let _ = writeln!(
                out,
                "wharf_storage_damaged_batches{{topic=\"{}\",partition=\"{p}\"}} {n}",
                t.name
            );
        }
    }
}

/// Appends the standard `process_*` series (CPU seconds, resident memory,
/// open files) that the platform reports.
fn process_metrics(out: &mut String, u: &crate::process::Usage) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let mut one = |name: &str, kind: &str, help: &str, v: Option<String>| {
        if let Some(v) = v {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {v}");
        }
    };
    one(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        u.cpu.map(|d| d.as_secs_f64().to_string()),
    );
    one(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        u.resident_bytes.map(|b| b.to_string()),
    );
    one(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        u.open_fds.map(|n| n.to_string()),
    );
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
    settled_n(kind, 1);
}

/// Records `n` settlements of one kind.
pub(crate) fn settled_n(kind: &'static str, n: usize) {
    metrics::counter!("wharf_settlements_total", "kind" => kind).increment(n as u64);
}

/// Records a request refused (auth, limits, bad input).
pub(crate) fn refused(reason: &'static str) {
    metrics::counter!("wharf_refused_requests_total", "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_are_prometheus_text_with_escaped_labels() {
        let g = Gauge {
            name: "wharf_consumer_lag",
            help: "Lag.",
            series: vec![
                (vec![("group", "g1".into()), ("topic", "a.b".into())], 7),
                (vec![("group", "q\"\\\n".into()), ("topic", "t".into())], 0),
            ],
        };
        let mut out = String::from("other 1");
        write_gauge(&mut out, &g);
        assert_eq!(
            out,
            "other 1\n# HELP wharf_consumer_lag Lag.\n# TYPE wharf_consumer_lag gauge\n\
             wharf_consumer_lag{group=\"g1\",topic=\"a.b\"} 7\n\
             wharf_consumer_lag{group=\"q\\\"\\\\\\n\",topic=\"t\"} 0\n"
        );
    }

    #[test]
    fn fsync_histogram_is_cumulative_prometheus_text() {
        let stats = wharf_broker::SyncStats::default();
        stats.record(Duration::from_micros(40));
        stats.record(Duration::from_micros(700));
        stats.record(Duration::from_secs(3));
        let mut out = String::from("other_metric 1");
        fsync_histogram(&mut out, &stats.snapshot());
        assert!(out.starts_with("other_metric 1\n# HELP wharf_fsync_duration_seconds "));
        assert!(out.contains("# TYPE wharf_fsync_duration_seconds histogram\n"));
        assert!(
            out.contains("wharf_fsync_duration_seconds_bucket{le=\"0.00005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("wharf_fsync_duration_seconds_bucket{le=\"0.0005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("wharf_fsync_duration_seconds_bucket{le=\"0.001\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("wharf_fsync_duration_seconds_bucket{le=\"1\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("wharf_fsync_duration_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("wharf_fsync_duration_seconds_count 3\n"),
            "{out}"
        );
        let sum: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("wharf_fsync_duration_seconds_sum "))
            .and_then(|v| v.parse().ok())
            .expect("a sum line");
        assert!((sum - 3.00074).abs() < 1e-9, "{out}");
    }
}
