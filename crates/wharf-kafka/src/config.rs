//! [`KafkaConfig`]: where the brokers are and how the adapter uses them.

use std::time::Duration;

/// Largest [`Message::size`](wharf_core::Message::size) accepted: 900 KiB,
/// so that the record with its `wharf-id` header and batch framing stays
/// under Kafka's default `message.max.bytes` (1 MB) on every broker.
pub const MAX_MESSAGE_BYTES: usize = 900 * 1024;

/// How the adapter connects and what it creates; build with
/// [`KafkaConfig::new`].
///
/// ```
/// use wharf_kafka::KafkaConfig;
/// let c = KafkaConfig::new("kafka://127.0.0.1:19092").topic_prefix("tests.");
/// assert_eq!(c.bootstrap_servers(), "127.0.0.1:19092");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct KafkaConfig {
    pub(crate) bootstrap: String,
    pub(crate) prefix: String,
    pub(crate) partitions: i32,
    pub(crate) replication: i32,
    pub(crate) linger: Duration,
    pub(crate) timeout: Duration,
    pub(crate) extra: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Brokers from `url`: `kafka://host:port[,host:port…]` or the bare
    /// `host:port` list librdkafka's `bootstrap.servers` takes.
    pub fn new(url: impl AsRef<str>) -> Self {
        let url = url.as_ref();
        let bootstrap = url.strip_prefix("kafka://").unwrap_or(url);
        KafkaConfig {
            bootstrap: bootstrap.trim_end_matches('/').to_owned(),
            prefix: String::new(),
            partitions: 1,
            replication: 1,
            linger: Duration::from_millis(5),
            timeout: Duration::from_secs(10),
            extra: Vec::new(),
        }
    }

    /// The `bootstrap.servers` list.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Prefix of every Kafka topic and group name this backend uses (Wharf
    /// topic `t` is Kafka topic `<prefix>t`); default empty. Lets tests
    /// and tenants share a cluster ([`KafkaBackend::delete_all`](crate::KafkaBackend::delete_all)
    /// deletes the prefix's topics).
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Partitions of topics this backend creates (`ensure_topic`, first
    /// publish); default 1, Kafka's own `num.partitions` default.
    pub fn partitions(mut self, n: u32) -> Self {
        self.partitions = i32::try_from(n.max(1)).unwrap_or(i32::MAX);
        self
    }

    /// Replication factor of topics this backend creates; default 1.
    pub fn replication(mut self, n: u16) -> Self {
        self.replication = i32::from(n.max(1));
        self
    }

    /// The producer's `linger.ms`: how long it waits to fill a batch;
    /// default 5 ms (librdkafka's own default).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Bound on connecting, admin calls, commits and a publish's wait for
    /// the broker's acknowledgement (`message.timeout.ms`); default 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Any other librdkafka property, given to the producer and consumers
    /// alike (e.g. `batch.size`, `security.protocol`). The properties the
    /// adapter's guarantees rest on (`acks`, `enable.idempotence`,
    /// `enable.auto.commit`, `partitioner`) are set after these and win.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.push((key.into(), value.into()));
        self
    }
}
