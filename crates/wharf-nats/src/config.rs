//! How to reach NATS and which stream and subject prefix a backend owns.
//!
//! [`NatsConfig`] is a small builder; [`NatsBackend::connect`](crate::NatsBackend::connect)
//! consumes it.

use std::time::Duration;

/// Bytes of the server's `max_payload` kept for the headers this crate adds
/// (message id, timestamp, key, header order).
pub const HEADER_ROOM: usize = 4 * 1024;

/// Connection and namespace settings for a [`crate::NatsBackend`].
///
/// ```
/// use std::time::Duration;
/// use wharf_nats::NatsConfig;
/// let cfg = NatsConfig::new("nats://127.0.0.1:4222")
///     .stream("ORDERS")
///     .subject_prefix("shop")
///     .max_age(Duration::from_secs(7 * 24 * 3600));
/// assert_eq!(cfg.stream_name(), "ORDERS");
/// assert_eq!(cfg.subject_prefix_value(), "shop");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct NatsConfig {
    pub(crate) url: String,
    pub(crate) stream: String,
    pub(crate) prefix: String,
    pub(crate) max_age: Duration,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) duplicate_window: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
}

impl NatsConfig {
    /// Settings for the server at `url`, with stream `WHARF` and prefix `wharf`.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            stream: "WHARF".into(),
            prefix: "wharf".into(),
            max_age: Duration::ZERO,
            max_bytes: None,
            duplicate_window: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// The JetStream stream this backend stores into (created if missing).
    /// Stream names may not contain `.`, `*`, `>`, `/`, `\` or whitespace.
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream = name.into();
        self
    }

    /// The subject prefix: topic `t` is subject `<prefix>.t`. Must be a valid
    /// Wharf topic name (dot-separated `[A-Za-z0-9_-]` segments).
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Discard messages older than `age` (zero, the default, keeps them until
    /// the stream is deleted). Only applied when the stream is created. A
    /// dedup window longer than `age` is shortened to it (JetStream refuses
    /// a stream that would remember ids longer than messages).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// Discard the oldest messages once the stream (every topic of the
    /// namespace together) holds more than `bytes` (default: no limit).
    /// Only applied when the stream is created.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// The Msg-Id dedup window (default 2 minutes). Only applied when the
    /// stream is created.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// How long to wait for the connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for a JetStream API reply or PubAck (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The stream name.
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    /// The subject prefix.
    pub fn subject_prefix_value(&self) -> &str {
        &self.prefix
    }
}
