//! Wharf on NATS, through the `async-nats` client: durable on JetStream,
//! or non-durable on core NATS publish/subscribe.
//!
//! [`NatsBackend`] implements [`wharf_core::Backend`]: it publishes into one
//! JetStream stream per backend namespace and consumes with pull consumers.
//! [`NatsCoreBackend`] is the non-durable mode on plain subjects; see
//! [below](#core-nats-non-durable-mode).
//!
//! # Mapping
//!
//! | Wharf | JetStream |
//! |---|---|
//! | backend namespace | one stream (`NatsConfig::stream`, file storage, limits retention: `NatsConfig::max_age` and `max_bytes` drop the oldest messages of the whole stream) whose only subject filter is `<prefix>.>` |
//! | topic `orders.created` | subject `<prefix>.orders.created`; [`Backend::ensure_topic`](wharf_core::Backend::ensure_topic) only validates, since the stream already covers every subject under the prefix (dead-letter topics `dlq.<topic>` included) |
//! | pattern `orders.*`, `orders.>` | the same NATS wildcards, as the consumer's filter subject |
//! | consumer group | durable pull consumer named `<group>-<hash of group+pattern>`; every member pulls from it, so members compete |
//! | private subscription (no group) | ephemeral pull consumer (deleted when the subscription closes, or by the server after 60 s of inactivity) |
//! | `StartPosition::{Earliest, Latest, Offset}` | `DeliverPolicy::{All, New, ByStartSequence}` |
//! | offset | the stream sequence: increasing within a topic, but with gaps (the stream is shared by all topics of the namespace) |
//! | `ack` / `nack` / `nack_with_delay` | `+ACK` / `-NAK` / `-NAK {"delay": ns}` |
//! | `reject(reason)` | the message is copied to `dlq.<topic>` (or the subscription's dead-letter topic) with the `wharf-dlq-*` headers, then `+TERM` |
//! | `max_deliveries(n)` | `MaxDeliver = n`; JetStream only stops redelivering, so a nack (or drop) on attempt `n` dead-letters the message and terms it, and when the lease of attempt `n` lapses, the group's subscriptions dead-letter it on the `MAX_DELIVERIES` advisory (one copy, by Msg-Id) |
//! | visibility timeout | `AckWait` (default 30 s); settling a delivery after its AckWait ran out (or once the message came back to this subscription) fails with `UnknownDelivery`, since JetStream would apply it to the redelivery |
//! | `extend(by)` | `+WPI` (resets AckWait), repeated every AckWait/2 until `by` has passed or the delivery is settled |
//! | dropping a delivery | `-NAK` (counts as an attempt, dead-letters on the last one) |
//! | `max_in_flight` | client side: a subscription never asks the server for more messages than it has free slots (JetStream's `MaxAckPending` is per consumer, shared by all members, and is left unlimited) |
//! | message id | `Nats-Msg-Id` = `<id>:<topic>`, so a retried publish to the same topic is deduplicated within the stream's duplicate window (2 min); the receipt's `duplicate` flag and offset come from the PubAck |
//! | headers | NATS headers, plus `wharf-hdr-order` (names joined by `:`) because NATS header maps do not keep order |
//! | key | `wharf-key` (raw when it is UTF-8 without control characters) or `wharf-key-b64` (standard base64) |
//! | timestamp | `wharf-timestamp-ms`, only when it is not the time inside the id (a UUIDv7), as for a message made with an explicit timestamp; a reader takes a missing one from the id (versions before 2026-12-07 always sent it and took the read time for a missing one: upgrade their consumers first) |
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
//!
//! # Core NATS (non-durable mode)
//!
//! [`NatsCoreBackend::connect`] takes the same [`NatsConfig`] (only the URL,
//! subject prefix and timeouts apply) and maps Wharf onto core NATS:
//!
//! | Wharf | core NATS |
//! |---|---|
//! | topic `orders.created` | subject `<prefix>.orders.created`; [`Backend::ensure_topic`](wharf_core::Backend::ensure_topic) only validates |
//! | pattern `orders.*`, `orders.>` | the same NATS wildcards on the subscription's subject |
//! | publish | `PUB` with headers, then a flush: it returns once the message is written to the connection (core NATS acknowledges nothing); the receipt has no offset and is never a duplicate |
//! | message id, key, headers, timestamp | the same headers as on JetStream (`Nats-Msg-Id`, `wharf-key`/`wharf-key-b64`, `wharf-hdr-order`, `wharf-timestamp-ms` when the id does not hold it) |
//! | consumer group | a queue subscription with the group as queue name: the server gives each message to one live member, and every group (and private subscription) on the subject gets its own copy |
//! | private subscription | a plain subscription |
//! | `StartPosition::{Earliest, Latest}` | both mean "from now": nothing is stored |
//! | `max_in_flight` | client side: the subscription hands out no more unsettled deliveries; the rest wait in the client's subscription buffer (64 Ki messages; beyond that the client drops them as a slow consumer) |
//! | `ack`, `nack`, dropping a delivery | settle locally: frees the in-flight slot, sends nothing; the message is gone |
//! | attempt | always 1 |
//! | TTL header | a delivery already past its expiry is dropped instead of handed out |
//!
//! It declares [`ConsumerGroups`](wharf_core::Capability::ConsumerGroups),
//! [`Wildcards`](wharf_core::Capability::Wildcards) and
//! [`OrderingPerKey`](wharf_core::Capability::OrderingPerKey) (NATS keeps
//! the order of one publisher's messages to one subscriber; like every
//! queue-mode group, a group with several members spreads a key over them).
//! What it cannot do:
//! - **At-most-once, no [`Redelivery`](wharf_core::Capability::Redelivery)**:
//!   a nack, a dropped delivery or a consumer that goes away loses the
//!   message; a slow consumer loses what overflows its buffer.
//! - **No [`Retention`](wharf_core::Capability::Retention)**: a message
//!   reaches only the subscriptions live when it is published; a group with
//!   no member at that moment never sees it.
//! - No `Persistence`, `NackWithDelay`, `VisibilityTimeout`, `ExtendLease`,
//!   `DeadLetter`, `MaxDeliveries`, `Dedup`, `Ttl`, `DelayedPublish`,
//!   `Priorities`, replay, `PartitionAssignment` or `Backpressure`:
//!   subscribing with a lease, a delivery limit, a replay start or stream
//!   mode, and `nack_with_delay`, `reject` or `extend`, fail with
//!   [`Error::Unsupported`](wharf_core::Error::Unsupported) (the refused
//!   settlement still frees the slot).
//!
//! A JetStream stream whose subjects cover the prefix would store these
//! publishes too: give the two modes different prefixes.

#![warn(missing_docs)]

mod acker;
mod backend;
mod config;
mod core_nats;
mod error;
mod subjects;
mod subscription;
mod wire;

pub use backend::NatsBackend;
pub use config::{NatsConfig, HEADER_ROOM};
pub use core_nats::NatsCoreBackend;
pub use error::NatsError;
