//! Wharf on Google Cloud Pub/Sub, through the `gcloud-pubsub` client
//! (gRPC), tested against the Pub/Sub emulator.
//!
//! [`PubSubBackend`] implements [`wharf_core::Backend`]: topics and groups
//! are Pub/Sub topics and subscriptions under a prefix of their own;
//! subscriptions read a StreamingPull with flow control; the ack deadline
//! is the lease.
//!
//! # The client
//!
//! `gcloud-pubsub` 1.8 (yoshidan/google-cloud-rust, maintained, MIT) on
//! tonic 0.14 / prost 0.14 — the workspace's own, so no second gRPC stack
//! is compiled — with its generated types (`gcloud-googleapis`, feature
//! `pubsub` only) and its connection and emulator plumbing (`gcloud-gax`).
//! It exposes the low-level `apiv1` subscriber (Acknowledge,
//! ModifyAckDeadline, Seek, subscription admin) besides its high-level
//! subscriber. Google's own `google-cloud-pubsub` 1.x was the other
//! candidate: also tonic 0.14, but its subscriber hides the ack id (no
//! ModifyAckDeadline with a chosen deadline, so no nack with delay) and
//! extends leases by itself, and it pulls in reqwest 0.13, google-cloud-auth
//! and aws-lc by default. Generating a client from the googleapis protos
//! with protox (as `wharf-proto` does) would have meant hand-writing the
//! plumbing a maintained crate already has.
//!
//! Two pieces of `gcloud-pubsub` are bypassed, each for a reason: its
//! publisher client is private, so publishing and topic admin use the
//! generated gRPC client on its connection; and its StreamingPull cannot be
//! ended from the client side (its request stream pings for ever), which
//! the emulator turns into a stream that keeps receiving messages nobody
//! reads (see [below](#what-the-emulator-does-not-do)), so the subscription
//! runs its own StreamingPull on a connection of its own.
//!
//! This version talks to the **emulator only** (no credentials: the
//! client's `auth` feature is off, which keeps google-cloud-auth and its
//! TLS out of the build); [`PubSubConfig::new`] takes
//! `pubsub://<host>:<port>[/<project>]`.
//!
//! # Mapping
//!
//! | Wharf | Pub/Sub |
//! |---|---|
//! | backend namespace | a prefix: topic `t` is the Pub/Sub topic `<prefix>.t`; ids past Pub/Sub's 255 characters are refused (topics) or hashed (subscriptions) |
//! | topic | a topic, created on first use (publish, subscribe, [`ensure_topic`](wharf_core::Backend::ensure_topic)) with `message_retention_duration` = [`PubSubConfig::retention`] (7 days by default) |
//! | consumer group `g` on `t` | the subscription `<prefix>.t~g`, created on first subscribe (its settings — ordering, dead-letter policy, ack deadline — are those of that first subscribe); every member opens a StreamingPull on it, so members compete |
//! | private subscription (no group) | a subscription `<prefix>.t~p-<unique>`, deleted once it is closed and nothing it handed out is unsettled (and expiring after a day unused, should the process die) |
//! | `StartPosition::Earliest` / `Latest` | on the subscription's creation, a Seek to the epoch (what the topic still keeps) or to now |
//! | publish / `publish_batch` | one `Publish` request (a batch in order, split past 1000 messages or 9 MB); the receipt has no offset (Pub/Sub message ids are opaque strings) |
//! | message id, timestamp | attributes `wharf-id`, `wharf-timestamp-ms` (Pub/Sub assigns its own message id) |
//! | key | the **ordering key** (UTF-8 as is; other bytes as base64, also kept in `wharf-key-b64`); at most 1024 bytes |
//! | headers | attributes, plus `wharf-hdr-order` (names joined by `\n`) because attributes are a map; names of at most 256 bytes not starting with `goog`, values of at most 1024 bytes, at most 96 headers |
//! | `OrderingPerKey` | subscriptions are created with `enable_message_ordering` ([`PubSubConfig::message_ordering`]) |
//! | visibility timeout (lease) | the ack deadline: the stream's `stream_ack_deadline_seconds` (Pub/Sub's minimum is 10 s), and a lease below that is set per message with ModifyAckDeadline on arrival; whole seconds, rounded up, at most 10 minutes |
//! | `ack` / [`AckBatch`](wharf_core::AckBatch) | `Acknowledge` (a batch is one request per 1000 ack ids) |
//! | `nack` / `nack_with_delay(d)` / dropping a delivery | ModifyAckDeadline to 0 / to `d` (whole seconds rounded up, at most 600 s) / to 0 |
//! | `extend(by)` | ModifyAckDeadline to `by` (at most 600 s at a time, renewed every half of that until `by` is covered) |
//! | `reject(reason)`, and a failed last attempt | the message is published with the `wharf-dlq-*` headers to `dlq.<topic>` (or the subscription's dead-letter topic), then acked |
//! | `max_deliveries(n)` | counted with Pub/Sub's `delivery_attempt`, which it reports only with a dead-letter policy: every subscription has one, to Wharf's dead-letter topic, with `max_delivery_attempts` = n + 1 within Pub/Sub's 5..=100. A nack or drop on attempt n dead-letters it (stamped); a message whose lease lapsed on attempt n comes back as attempt n + 1 and is dead-lettered then (stamped with n attempts), never handed out. Past 100 (and for no `max_deliveries`: 100) Pub/Sub itself forwards the message, unstamped |
//! | `max_in_flight` | StreamingPull's `max_outstanding_messages`, and client side: a message is handed out only on a free slot |
//! | [`PubSubConfig::max_outstanding_bytes`] | StreamingPull's `max_outstanding_bytes`, and client side: a message is handed out only within the byte budget (one larger than the budget when nothing else is held) |
//! | TTL ([`header::EXPIRES_AT_MS`](wharf_core::header::EXPIRES_AT_MS)) | checked on arrival: an expired message is acked, never handed out |
//! | closing a subscription | nothing more is handed out; its stream stays open (anything else the server sends it is nacked) until what it handed out is settled and 200 ms have passed without a message received or nacked, at most one lease (the server counts what it sent that stream as delivery attempts) — see below |
//!
//! # Capabilities
//!
//! `Persistence` (Pub/Sub stores what it acknowledges; the emulator keeps
//! it in memory), `OrderingPerKey`, `ConsumerGroups`, `NackWithDelay`,
//! `VisibilityTimeout`, `ExtendLease`, `Ttl`, `DeadLetter`, `MaxDeliveries`,
//! `Redelivery`, and `Retention` while topics are created with retention
//! (without it Pub/Sub drops a message published while a topic has no
//! subscription). Not declared:
//! - `Dedup`: Pub/Sub's publish is not idempotent (exactly-once delivery is
//!   a subscriber-side feature and does not drop a re-published id).
//! - `DelayedPublish`, `Priorities`: Pub/Sub has neither.
//! - `ReplayFromOffset`: no offsets. `ReplayFromTime`: Seek works by the
//!   server's publish time, not the Wharf timestamp the publisher sets
//!   (as for NATS, the two disagree for back-dated messages).
//! - `Wildcards`: a subscription has one topic.
//! - `PartitionAssignment`: no partitions (ordering keys give per-key order
//!   without assignment).
//! - `Backpressure`: Pub/Sub stores regardless of consumers.
//!
//! The conformance factory provides no topic settings (Pub/Sub keeps
//! messages by age only, 10 minutes at least; there is no dedup window) and
//! no consumer processes (see below).
//!
//! # What the emulator does not do
//!
//! The tests run against the gcloud SDK's emulator
//! (`cloud-pubsub-emulator-0.8.20`), which differs from Pub/Sub here:
//!
//! 1. **No Seek on an ordered subscription**: it answers `UNIMPLEMENTED`
//!    (`curl -X POST …/subscriptions/<ordered sub>:seek -d
//!    '{"time":"1970-01-01T00:00:00Z"}'` → 501), while Seek works on an
//!    unordered one. It also hands a new subscription the backlog of a
//!    topic with retention without any Seek (Pub/Sub gives it only what is
//!    published after its creation). So an `UNIMPLEMENTED` Seek is not an
//!    error: Earliest gets the backlog anyway, and for Latest the
//!    subscription acks, instead of handing out, what was published before
//!    it was created. With ordering off the Seek runs and works:
//!    `with_ordering_off_a_new_group_seeks_to_its_start` checks that a
//!    Latest group skips the backlog through it (Earliest's Seek cannot be
//!    told apart from the emulator's own backlog delivery).
//! 2. **No StreamingPull flow control**: `max_outstanding_messages` and
//!    `max_outstanding_bytes` are accepted and ignored (a stream asking for 3
//!    gets all 10 messages waiting). The client-side bounds are what the
//!    tests check (`max_in_flight_is_respected`,
//!    `max_outstanding_bytes_bounds_what_a_subscription_holds`); that the
//!    stream asks the server for them is a unit test. Messages the server
//!    sends past the bounds wait in the stream, their ack deadline running.
//! 3. **Streams that end**: it ignores a client's half-close and keeps
//!    sending the stream messages; it takes a stream off only when its
//!    connection closes (hence a connection per StreamingPull); a message
//!    it sent a stream that has closed — including one nacked just before
//!    the close, which it redelivers to the same stream at once — comes
//!    back only after the ack deadline, and one whose deadline was changed
//!    with ModifyAckDeadline after its stream closed had not come back
//!    45 s later. So a closing subscription keeps its stream open
//!    until what it handed out is settled (a delivery acked, nacked or
//!    dropped after `close` is settled while the stream is open) and
//!    then until 200 ms pass with nothing nacked or received (what the
//!    emulator sends back meanwhile is nacked again), as described in
//!    the mapping. The emulator counts those receipts as delivery
//!    attempts.
//! 4. **A consumer that dies** (its connection cut): the emulator keeps
//!    its stream. When a message's lease lapses it redelivers it to the
//!    dead stream or to a live member, and each time it picks the dead one
//!    the message waits out a stream deadline (10 s at least, the
//!    emulator's minimum) before the next try: in five runs with a 1 s
//!    lease a surviving member got it after 11, 21, 21, 41 and 51 s. That
//!    is past the conformance suite's 10 s wait, so the factory offers no
//!    consumer processes;
//!    `a_killed_consumers_unsettled_messages_come_back_to_its_group`
//!    checks the death with a 120 s wait.
//!
//! # Limits
//! [`Limits::max_message_bytes`](wharf_core::Limits) is Pub/Sub's 10 MB
//! minus [`HEADER_ROOM`] for the attributes this crate adds; at most 96
//! headers (Pub/Sub's 100 attributes less this crate's).

#![warn(missing_docs)]

mod acker;
mod backend;
mod config;
mod error;
mod subscription;
mod wire;

pub use backend::PubSubBackend;
pub use config::{
    PubSubConfig, DEFAULT_PROJECT, DEFAULT_RETENTION, HEADER_ROOM, PUBSUB_MAX_MESSAGE_BYTES,
};
pub use error::PubSubError;
