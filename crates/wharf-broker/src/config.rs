//! Broker and topic configuration.
//!
//! [`TopicConfig`] is stored in the metadata database with each topic, so a
//! topic keeps its settings across restarts; [`BrokerConfig`] holds the
//! defaults new topics get and the broker-wide knobs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When a publish is acknowledged relative to `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Durability {
    /// Acknowledged once written to the OS page cache (survives a process
    /// crash, not a power loss).
    Never,
    /// Acknowledged once written; a background sync runs every `ms` milliseconds.
    IntervalMs(u64),
    /// Acknowledged only after `fdatasync` covers the message (group commit
    /// shares one sync among concurrent publishers). The default.
    Always,
}

impl Durability {
    pub(crate) fn to_log(self) -> wharf_log::Durability {
        match self {
            Durability::Never => wharf_log::Durability::Never,
            Durability::IntervalMs(ms) => {
                wharf_log::Durability::Interval(Duration::from_millis(ms.max(1)))
            }
            Durability::Always => wharf_log::Durability::Always,
        }
    }
}

/// Settings of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TopicConfig {
    /// Number of partitions (≥ 1); can be raised later, never lowered.
    pub partitions: u32,
    /// When publishes are acknowledged.
    pub durability: Durability,
    /// Delete old segments beyond this many bytes per partition.
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest message is older than this many milliseconds.
    pub retention_ms: Option<u64>,
    /// Largest message accepted ([`wharf_core::Message::size`]).
    pub max_message_bytes: usize,
    /// Messages older than this (by their timestamp) are not delivered.
    pub ttl_ms: Option<u64>,
    /// Publishing an id seen within this window returns the original receipt.
    pub dedup_window_ms: Option<u64>,
    /// Dead-letter topic; `None` means `dlq.<topic>`.
    pub dead_letter_topic: Option<String>,
    /// Default `max_deliveries` for groups that don't set one.
    pub max_deliveries: Option<u32>,
    /// Default visibility timeout (lease) in milliseconds for groups that don't set one.
    pub visibility_timeout_ms: Option<u64>,
    /// Segment file size at which a new segment is started.
    pub segment_bytes: u64,
    /// The per-topic policy for a damaged stored batch: `false` (default)
    /// stops its partition at the damage until an operator repairs it
    /// ([`Broker::repair`](crate::Broker::repair)); `true` skips it at once,
    /// as a `SkipBatch` repair would (its messages are lost, logged and
    /// counted), so consumers go on without an operator.
    #[serde(default)]
    pub skip_damaged_batches: bool,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            partitions: 1,
            durability: Durability::Always,
            retention_bytes: None,
            retention_ms: None,
            max_message_bytes: 1024 * 1024,
            ttl_ms: None,
            dedup_window_ms: Some(120_000),
            dead_letter_topic: None,
            max_deliveries: None,
            visibility_timeout_ms: None,
            segment_bytes: 64 * 1024 * 1024,
            skip_damaged_batches: false,
        }
    }
}

impl TopicConfig {
    /// Sets the partition count.
    #[must_use]
    pub fn partitions(mut self, n: u32) -> Self {
        self.partitions = n;
        self
    }

    /// Sets the durability policy.
    #[must_use]
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// Sets the largest accepted message.
    #[must_use]
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.max_message_bytes = n;
        self
    }

    /// Sets a time to live for every message of the topic.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl_ms = Some(duration_ms(ttl));
        self
    }

    /// Sets (or with `None` disables) the dedup window.
    #[must_use]
    pub fn dedup_window(mut self, window: Option<Duration>) -> Self {
        self.dedup_window_ms = window.map(duration_ms);
        self
    }

    /// Sets retention by size and age.
    #[must_use]
    pub fn retention(mut self, bytes: Option<u64>, age: Option<Duration>) -> Self {
        self.retention_bytes = bytes;
        self.retention_ms = age.map(duration_ms);
        self
    }

    /// Sets the dead-letter topic.
    #[must_use]
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// Sets the default max deliveries.
    #[must_use]
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = Some(n);
        self
    }

    /// Sets the default visibility timeout.
    #[must_use]
    pub fn visibility_timeout(mut self, t: Duration) -> Self {
        self.visibility_timeout_ms = Some(duration_ms(t));
        self
    }

    /// Sets the segment size.
    #[must_use]
    pub fn segment_bytes(mut self, n: u64) -> Self {
        self.segment_bytes = n;
        self
    }

    /// Skips a damaged stored batch as soon as it is found instead of
    /// waiting for an operator's repair (see
    /// [`TopicConfig::skip_damaged_batches`]).
    #[must_use]
    pub fn skip_damaged_batches(mut self, on: bool) -> Self {
        self.skip_damaged_batches = on;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), wharf_core::Error> {
        let bad = |name, reason: &str| {
            Err(wharf_core::Error::InvalidArgument {
                name,
                reason: reason.to_owned(),
            })
        };
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return bad("partitions", "must be between 1 and 4096");
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_MESSAGE_BYTES {
            return bad("max_message_bytes", "must be between 1 and 64 MiB");
        }
        if self.segment_bytes < 4096 {
            return bad("segment_bytes", "must be at least 4096");
        }
        if self.max_deliveries == Some(0) {
            return bad("max_deliveries", "must be at least 1");
        }
        if let Some(t) = &self.dead_letter_topic {
            wharf_core::name::validate_topic(t)?;
        }
        Ok(())
    }
}

/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 4096;
/// Largest `max_message_bytes` a topic may set.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Broker-wide settings; see [`crate::Broker::builder`].
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Settings for topics created on first use.
    pub default_topic: TopicConfig,
    /// Create topics on first publish/subscribe (otherwise `UnknownTopic`).
    pub auto_create_topics: bool,
    /// How often consumer-group positions are persisted. An ack younger than
    /// this may be redelivered after a crash (never after a clean close).
    pub commit_interval: Duration,
    /// Messages a group reads ahead per partition (the window that
    /// priorities and redeliveries are ordered within).
    pub read_ahead: usize,
    /// Bytes of messages a group reads ahead per partition (by
    /// [`wharf_core::Message::size`]); reading stops at whichever of this and
    /// `read_ahead` is reached first, so large messages don't multiply a
    /// group's memory. A read may pass it by one stored batch.
    pub read_ahead_bytes: usize,
    /// Publishes that may wait on the log at once; more wait their turn.
    pub max_pending_publishes: usize,
    /// Most headers a published message may have (dead letters and
    /// replays, which add `wharf-*` headers of their own, are exempt).
    pub max_headers: usize,
    /// Most bytes of header names and values a published message may have
    /// (with the same exemption).
    pub max_header_bytes: usize,
    /// A group that has had no consumer and no unsettled delivery for this
    /// long is unloaded: its position is persisted and its read-ahead
    /// freed; the next subscriber loads it again from the saved position.
    pub group_idle: Duration,
    /// Most groups (per topic: a group consuming two topics counts twice)
    /// loaded at once; subscribing a new one past it fails with
    /// [`wharf_core::Error::ResourceExhausted`] until idle ones unload.
    pub max_groups: usize,
}

/// Default [`BrokerConfig::max_headers`].
pub const DEFAULT_MAX_HEADERS: usize = 256;
/// Default [`BrokerConfig::max_header_bytes`] (64 KiB).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            default_topic: TopicConfig::default(),
            auto_create_topics: true,
            commit_interval: Duration::from_millis(100),
            read_ahead: 1024,
            read_ahead_bytes: 1024 * 1024,
            max_pending_publishes: 1024,
            max_headers: DEFAULT_MAX_HEADERS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            group_idle: Duration::from_secs(60),
            max_groups: 10_000,
        }
    }
}
