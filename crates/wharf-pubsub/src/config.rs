//! How to reach Pub/Sub and which namespace of topics and subscriptions a
//! backend owns.
//!
//! [`PubSubConfig`] is a small builder; [`PubSubBackend::connect`](crate::PubSubBackend::connect)
//! consumes it.

use std::time::Duration;

use wharf_core::Error;

/// Bytes of Pub/Sub's 10 MB message limit kept for the attributes this
/// crate adds (message id, timestamp, a binary key's base64, the header
/// order list, which repeats every header name).
pub const HEADER_ROOM: usize = 32 * 1024;

/// Pub/Sub's limit on a message (data and attributes), in bytes.
pub const PUBSUB_MAX_MESSAGE_BYTES: usize = 10_000_000;

/// Connection and namespace settings for a [`crate::PubSubBackend`].
///
/// ```
/// use std::time::Duration;
/// use wharf_pubsub::PubSubConfig;
/// let cfg = PubSubConfig::new("pubsub://127.0.0.1:8085/my-project")?
///     .prefix("shop")
///     .max_outstanding_bytes(8 << 20)
///     .ack_deadline(Duration::from_secs(20));
/// assert_eq!(cfg.host(), "127.0.0.1:8085");
/// assert_eq!(cfg.project(), "my-project");
/// assert_eq!(cfg.prefix_value(), "shop");
/// # Ok::<(), wharf_core::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct PubSubConfig {
    pub(crate) host: String,
    pub(crate) project: String,
    pub(crate) prefix: String,
    pub(crate) max_outstanding_bytes: i64,
    pub(crate) ack_deadline: Duration,
    pub(crate) message_ordering: bool,
    pub(crate) retention: Option<Duration>,
    pub(crate) max_message_bytes: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
}

/// A topic's message retention unless configured otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The project used when the URL names none.
pub const DEFAULT_PROJECT: &str = "wharf";

impl PubSubConfig {
    /// Settings for the emulator at `url`, `pubsub://<host>:<port>[/<project>]`
    /// (project `wharf` when the URL names none), with prefix `wharf`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] (`url`) for another scheme, a missing
    /// port or a bad project id.
    pub fn new(url: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::InvalidArgument {
            name: "url",
            reason: format!("{url}: {reason} (expected pubsub://<host>:<port>[/<project>])"),
        };
        let rest = url
            .strip_prefix("pubsub://")
            .ok_or_else(|| bad("not a pubsub:// URL"))?;
        let (host, project) = match rest.split_once('/') {
            Some((h, p)) => (h, p.trim_end_matches('/')),
            None => (rest, ""),
        };
        if host
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(bad("no host:port"));
        }
        let project = if project.is_empty() {
            DEFAULT_PROJECT
        } else {
            project
        };
        if !project
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad("a project id is [a-z0-9-]"));
        }
        Ok(PubSubConfig {
            host: host.to_owned(),
            project: project.to_owned(),
            prefix: "wharf".into(),
            max_outstanding_bytes: 100 << 20,
            ack_deadline: Duration::from_secs(30),
            message_ordering: true,
            retention: Some(DEFAULT_RETENTION),
            max_message_bytes: PUBSUB_MAX_MESSAGE_BYTES - HEADER_ROOM,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        })
    }

    /// The namespace: topic `t` is the Pub/Sub topic `<prefix>.t`, group
    /// `g` on it the subscription `<prefix>.t~g`. Must be a valid Wharf
    /// topic name starting with a letter (Pub/Sub ids must).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Flow control: the most bytes of unsettled messages the server sends
    /// one subscription (StreamingPull's `max_outstanding_bytes`; default
    /// 100 MiB). The message count limit is the subscription's `max_in_flight`.
    pub fn max_outstanding_bytes(mut self, bytes: i64) -> Self {
        self.max_outstanding_bytes = bytes;
        self
    }

    /// The lease of a delivery when the subscription sets no visibility
    /// timeout (default 30 s).
    pub fn ack_deadline(mut self, deadline: Duration) -> Self {
        self.ack_deadline = deadline;
        self
    }

    /// Whether subscriptions are created with `enable_message_ordering`
    /// (default `true`): messages with the same key are delivered in
    /// publish order. Only applied when a subscription is created.
    pub fn message_ordering(mut self, on: bool) -> Self {
        self.message_ordering = on;
        self
    }

    /// How long a topic keeps its messages, acknowledged or not (the topic's
    /// `message_retention_duration`; default 7 days, Pub/Sub allows 10
    /// minutes to 31 days). A group created later starts from what is still
    /// kept (`StartPosition::Earliest` seeks its new subscription back to
    /// it). `None` creates topics without retention: a message published
    /// while a topic has no subscription is dropped, and the backend no
    /// longer declares `Retention`. Only applied when a topic is created.
    pub fn retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// The largest [`wharf_core::Message::size`] accepted (default
    /// [`PUBSUB_MAX_MESSAGE_BYTES`] − [`HEADER_ROOM`]).
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// How long to wait for the connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one RPC may take (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The emulator's `host:port`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The project id.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The namespace prefix.
    pub fn prefix_value(&self) -> &str {
        &self.prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_without_a_port_or_of_another_scheme_are_refused() {
        for bad in [
            "nats://h:1",
            "pubsub://h",
            "pubsub://:1",
            "pubsub://h:x/p",
            "pubsub://h:1/Bad_Project",
        ] {
            assert!(PubSubConfig::new(bad).is_err(), "{bad}");
        }
        let c = PubSubConfig::new("pubsub://h:1").expect("valid");
        assert_eq!(c.project(), DEFAULT_PROJECT);
    }
}
