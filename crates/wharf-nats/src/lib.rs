//! Wharf on NATS JetStream, through the `async-nats` client.
//!
//! [`NatsBackend`] implements [`wharf_core::Backend`]: it publishes into one
//! JetStream stream per backend namespace and consumes with pull consumers.
//!
//! # Mapping
//!
//! | Wharf | JetStream |
//! |---|---|
//! | backend namespace | one stream (`NatsConfig::stream`, file storage, limits retention) whose only subject filter is `<prefix>.>` |
//! | topic `orders.created` | subject `<prefix>.orders.created`; [`Backend::ensure_topic`](wharf_core::Backend::ensure_topic) only validates, since the stream already covers every subject under the prefix (dead-letter topics `dlq.<topic>` included) |
//! | pattern `orders.*`, `orders.>` | the same NATS wildcards, as the consumer's filter subject |
//! | consumer group | durable pull consumer named `<group>-<hash of group+pattern>`; every member pulls from it, so members compete |
//! | private subscription (no group) | ephemeral pull consumer (deleted when the subscription closes, or by the server after 60 s of inactivity) |
//! | `StartPosition::{Earliest, Latest, Offset}` | `DeliverPolicy::{All, New, ByStartSequence}` |
//! | offset | the stream sequence: increasing within a topic, but with gaps (the stream is shared by all topics of the namespace) |
//! | `ack` / `nack` / `nack_with_delay` | `+ACK` / `-NAK` / `-NAK {"delay": ns}` |
//! | `reject(reason)` | the message is copied to `dlq.<topic>` (or the subscription's dead-letter topic) with the `wharf-dlq-*` headers, then `+TERM` |
//! | `max_deliveries(n)` | `MaxDeliver = n`; JetStream only stops redelivering, so a nack (or drop) on attempt `n` dead-letters the message and terms it, and when the lease of attempt `n` lapses, the group's subscriptions dead-letter it on the `MAX_DELIVERIES` advisory (one copy, by Msg-Id) |
//! | visibility timeout | `AckWait` (default 30 s) |
//! | `extend(by)` | `+WPI` (resets AckWait), repeated every AckWait/2 until `by` has passed or the delivery is settled |
//! | dropping a delivery | `-NAK` (counts as an attempt, dead-letters on the last one) |
//! | `max_in_flight` | client side: a subscription never asks the server for more messages than it has free slots (JetStream's `MaxAckPending` is per consumer, shared by all members, and is left unlimited) |
//! | message id | `Nats-Msg-Id` = `<id>:<topic>`, so a retried publish to the same topic is deduplicated within the stream's duplicate window (2 min); the receipt's `duplicate` flag and offset come from the PubAck |
//! | headers | NATS headers, plus `wharf-hdr-order` (names joined by `:`) because NATS header maps do not keep order |
//! | key | `wharf-key` (raw when it is UTF-8 without control characters) or `wharf-key-b64` (standard base64) |
//! | timestamp | `wharf-timestamp-ms` |
//! | TTL ([`header::EXPIRES_AT_MS`](wharf_core::header::EXPIRES_AT_MS)) | checked when a message is pulled: an expired one is acked and never handed out (it stays in the stream until the stream's own limits drop it) |
//!
//! # Not supported (not declared)
//! - `DelayedPublish`: JetStream 2.9 has no scheduled delivery.
//! - `Priorities`: a stream is strictly ordered.
//! - `ReplayFromTime`: JetStream replays by the server's store time, while a
//!   Wharf timestamp is set by the publisher; the two disagree for
//!   back-dated messages, so the capability would be a lie.
//! - `OrderingPerKey`: one consumer gets the stream in order, but members of
//!   a group pull concurrently and a nack reorders, so per-key order is not
//!   guaranteed for a group.
//! - `Backpressure`: JetStream stores regardless of consumers (the stream's
//!   limits discard old messages instead).
//!
//! # A NATS 2.9 quirk this crate works around
//! When a nacked message is redelivered into a pull request whose inbox has
//! lost interest (a subscription that just closed), NATS 2.9.10 rewinds the
//! consumer instead of requeueing: the message stays pending until AckWait
//! and a later message is delivered twice. So deliveries released after
//! their subscription closed are nacked only once its last pull request
//! (1 s expiry) has expired — a released message comes back up to ~1 s later.
//!
//! # Durability
//! A publish returns once JetStream has stored the message in its file
//! store (page cache); NATS 2.9 fsyncs on its own schedule (every 2 minutes
//! by default), not before acking.
//!
//! # Limits
//! [`Limits::max_message_bytes`](wharf_core::Limits) is the server's
//! `max_payload` minus [`HEADER_ROOM`] for the headers this crate adds.

#![warn(missing_docs)]

mod acker;
mod backend;
mod config;
mod error;
mod subscription;
mod wire;

pub use backend::NatsBackend;
pub use config::{NatsConfig, HEADER_ROOM};
pub use error::NatsError;
