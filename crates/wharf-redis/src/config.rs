//! How to reach Redis and which key prefix a backend owns.

use std::time::Duration;

/// How long a command may take before it fails with `Error::Timeout`
/// (longer than the blocking reads' `BLOCK`).
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest message accepted: 1 MiB of payload, key and headers (Redis
/// itself would take up to 512 MB per value, which no stream should hold).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Connection and namespace settings for a [`crate::RedisBackend`].
///
/// ```
/// use wharf_redis::RedisConfig;
/// let cfg = RedisConfig::new("redis://127.0.0.1:6379")
///     .key_prefix("shop")
///     .max_len(Some(100_000));
/// assert_eq!(cfg.key_prefix_value(), "shop");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisConfig {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) max_len: Option<u64>,
    pub(crate) dedup_window: Duration,
    pub(crate) dedup: bool,
    pub(crate) connect_timeout: Duration,
}

impl RedisConfig {
    /// Settings for the server at `url`, with key prefix `wharf`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "wharf".into(),
            max_len: Some(1_000_000),
            dedup_window: Duration::from_secs(120),
            dedup: true,
            connect_timeout: Duration::from_secs(2),
        }
    }

    /// Every key this backend touches starts with `<prefix>:`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// `XADD … MAXLEN ~ n`: keep about `n` entries per topic (default one
    /// million; `None` never trims). Trimming drops the oldest entries even
    /// if a group has not read them yet.
    pub fn max_len(mut self, n: Option<u64>) -> Self {
        self.max_len = n;
        self
    }

    /// How long a message id is remembered for dedup (default 2 minutes).
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = window;
        self
    }

    /// Whether a publish keeps each message id for the dedup window, so a
    /// second publish of the id on the topic is stored once and its receipt
    /// says `duplicate` (default on). Off, a publish is only the `XADD`
    /// (no `GET`/`SET` of a dedup key per message, nothing kept), and the
    /// backend does not declare [`Capability::Dedup`](wharf_core::Capability::Dedup).
    pub fn dedup(mut self, on: bool) -> Self {
        self.dedup = on;
        self
    }

    /// How long to wait for a connection (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The key prefix.
    pub fn key_prefix_value(&self) -> &str {
        &self.prefix
    }
}
