//! Well-known header names shared by every backend and the router.
//!
//! Names starting with `wharf-` are reserved for Wharf itself; applications
//! should use their own names (or the standard ones below) for their data.

/// MIME type of the payload, set by [`crate::MessageBuilder::encode`].
pub const CONTENT_TYPE: &str = "content-type";
/// W3C trace context, propagated from consumed to published messages.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state, carried alongside [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";
/// Correlates a reply (or any follow-up message) with the message that caused it.
pub const CORRELATION_ID: &str = "correlation-id";
/// Topic a request's reply should be published to.
pub const REPLY_TO: &str = "reply-to";

/// Why a message was dead-lettered (the `reject` reason or "max deliveries exceeded").
pub const DLQ_REASON: &str = "wharf-dlq-reason";
/// Topic the dead-lettered message was originally published to.
pub const ORIGINAL_TOPIC: &str = "wharf-original-topic";
/// Partition the dead-lettered message was originally stored in.
pub const ORIGINAL_PARTITION: &str = "wharf-original-partition";
/// Offset the dead-lettered message had in its original partition, if any.
pub const ORIGINAL_OFFSET: &str = "wharf-original-offset";
/// Consumer group that gave up on the message.
pub const DLQ_GROUP: &str = "wharf-dlq-group";
/// How many delivery attempts were made before the message was dead-lettered.
pub const ATTEMPTS: &str = "wharf-attempts";
/// When the first failed attempt happened, in milliseconds since the Unix epoch.
pub const FIRST_FAILURE_MS: &str = "wharf-first-failure-ms";
/// When the last failed attempt happened, in milliseconds since the Unix epoch.
pub const LAST_FAILURE_MS: &str = "wharf-last-failure-ms";

/// Prefix of every header name reserved for Wharf.
pub const RESERVED_PREFIX: &str = "wharf-";

/// Deliver no earlier than this time (ms since the Unix epoch); set by
/// [`crate::MessageBuilder::deliver_at`]. Needs [`crate::Capability::DelayedPublish`].
pub const DELIVER_AT_MS: &str = "wharf-deliver-at-ms";
/// Do not deliver after this time (ms since the Unix epoch); set by
/// [`crate::MessageBuilder::ttl`]. Needs [`crate::Capability::Ttl`].
pub const EXPIRES_AT_MS: &str = "wharf-expires-at-ms";
/// Delivery priority 0 (lowest) to 9 (highest); set by
/// [`crate::MessageBuilder::priority`]. Needs [`crate::Capability::Priorities`].
pub const PRIORITY: &str = "wharf-priority";
