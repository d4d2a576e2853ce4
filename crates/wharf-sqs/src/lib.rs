//! Wharf on Amazon SQS, through the official `aws-sdk-sqs` (rustls on
//! ring, the smithy hyper client; no `aws-config`: credentials are static,
//! from the environment or [`SqsConfig::credentials`]).
//!
//! [`SqsBackend`] implements [`wharf_core::Backend`]: a topic is a queue,
//! every subscription of a topic consumes that queue (they compete), the
//! visibility timeout is the lease.
//!
//! # Mapping
//!
//! | Wharf | SQS |
//! |---|---|
//! | topic `orders.created` | queue `<prefix>orders_created` (`.fifo` appended for FIFO queues): dots become `_`; a topic with a `_` of its own, or one whose name would pass SQS's 80 characters, gets a truncated readable part and `-<16 hex digits of FNV-1a of the topic>`, so no two topics share a queue ([`SqsBackend::queue_name`]). Made by [`Backend::ensure_topic`](wharf_core::Backend::ensure_topic), the first publish or the first subscription (`GetQueueUrl`, then `CreateQueue` if missing) |
//! | publish | `SendMessage`; returns when SQS has accepted it (stored redundantly across availability zones). The receipt has no offset (SQS has none) and is never `duplicate` (SQS does not say) |
//! | [`publish_batch`](wharf_core::Publisher::publish_batch) | `SendMessageBatch` of up to 10 entries and 256 KiB per call; everything is checked before the first call, but SQS batches are not atomic: a failed call or entry fails the publish while earlier entries stay stored |
//! | payload | the body as is when it is SQS text (XML characters, no carriage return); otherwise standard base64 with the message attribute `wharf-body=base64`; an empty payload is the body `-` with `wharf-body=empty`. Other producers' plain bodies read as the payload |
//! | message id | message attribute `wharf-id` (UUID text); a message without it (another producer's) gets a fresh id when read |
//! | key | message attribute `wharf-key` (Binary) |
//! | headers | message attribute `wharf-headers` (Binary): every header in order, each as `u32` big-endian name length, name, `u32` value length, value. One attribute rather than one per header: SQS allows 10 attributes per message, and the dead-letter stamp alone writes 8 headers. At most [`MAX_HEADERS`] |
//! | timestamp | message attribute `wharf-ts` (Number, Unix ms) |
//! | subscription (with or without a group) | a reader task long-polling the queue (`ReceiveMessage`, `WaitTimeSeconds` = [`SqsConfig::wait`], default 20 s, up to 10 messages, never more than the free in-flight slots); every subscription of the topic takes from the same queue |
//! | `StartPosition::Earliest` / `Latest` | applies when the queue's group is new: the first subscription ever tags the queue `wharf-start-ms` = 0 (`Earliest`) or now (`Latest`); every subscription then deletes, unseen, the messages SQS says were sent before it (`SentTimestamp`). Later subscriptions resume the queue as it is, whatever they ask (the group exists). The comparison is of the client's clock with SQS's |
//! | attempt | `ApproximateReceiveCount` |
//! | lease, [`visibility_timeout`](wharf_core::SubscribeOptions::visibility_timeout) | `ReceiveMessage`'s `VisibilityTimeout`, per subscription (default [`SqsConfig::visibility_timeout`], 30 s), rounded up to whole seconds, at most 12 h. A message handed out again while an earlier delivery of it is still held (its lease ran out) makes settling the earlier one fail with [`Error::UnknownDelivery`](wharf_core::Error::UnknownDelivery) |
//! | `extend(by)` | `ChangeMessageVisibility(by)`: SQS counts a new timeout from the call, so one call covers up to 12 h |
//! | `ack` | `DeleteMessage`; an [`AckBatch`](wharf_core::AckBatch) is `DeleteMessageBatch` per 10 |
//! | `nack` / `nack_with_delay(d)` | `ChangeMessageVisibility(0 / d)`, `d` rounded up to whole seconds, at most 12 h |
//! | dropping a delivery | as `nack` (it counts as an attempt: dead-lettered on the last one) |
//! | `reject(reason)` | a copy stamped with the `wharf-dlq-*` headers ([`wharf_core::DeadLetter`]) sent to the dead-letter topic's queue (`dlq.<topic>` or the subscription's), then `DeleteMessage` |
//! | `max_deliveries(n)` | a `nack` (or drop) on attempt `n` dead-letters as `reject` does; a message received at attempt `n + 1` (its lease ran out on the last attempt) is dead-lettered by the subscription without being handed out, with `wharf-attempts = n`. The queue also gets a **redrive policy** to the dead-letter queue with `maxReceiveCount = n + 1`: one receive *past* the subscription's own dead-lettering, so Wharf stamps the headers first and SQS moves the message itself only when no Wharf consumer could (a consumer that dies in between, another client that never deletes). A message SQS moved carries no `wharf-dlq-*` headers |
//! | TTL ([`header::EXPIRES_AT_MS`](wharf_core::header::EXPIRES_AT_MS)) | checked when a message is received: an expired one is deleted, never handed out |
//! | `deliver_at` / `deliver_after` | `DelaySeconds` (rounded up to whole seconds). SQS delays one send by at most 15 minutes ([`MAX_DELAY`]); a message due later goes out delayed by 15 minutes, its due time in the `wharf-deliver-at-ms` header, and whichever subscription receives it before it is due **hops** it: sends it again (same body and attributes) delayed by what is left, at most 15 minutes, then deletes what it received. So a wait of any length costs one send and one delete per 15 minutes, never hands the message out early, and never counts as an attempt (each hop is a fresh SQS message, so the receive count and the redrive policy start again). A crash between the send and the delete leaves two copies (at least once); a failed send leaves the copy received to come back after its lease and hop then. Hops happen only while a subscription reads the queue; a due message waits for one as any other. [`SqsConfig::delay_hop`] shortens the hops (for tests) |
//! | limit | [`MAX_MESSAGE_BYTES`] (190 KiB of payload + key + headers): SQS's 256 KiB counts the base64 body and the attributes. A larger message fails with [`Error::MessageTooLarge`](wharf_core::Error::MessageTooLarge) before anything is sent; SQS's own size refusal maps to the same error |
//! | `max_in_flight` | client side: a poll never asks for more messages than free slots |
//! | closing a subscription | the reader finishes the long poll under way and gives back what it brings (`ChangeMessageVisibility(0)`, which SQS counts as a receive); handed-out deliveries still settle |
//!
//! # FIFO queues
//! With [`SqsConfig::fifo`] (`sqs://…?fifo=true`) queues are FIFO queues:
//! `MessageGroupId` = the key (when it is printable ASCII of at most 128
//! characters, else `wharf-<hash of the key>`; without a key, the message
//! id: a group of its own), `MessageDeduplicationId` = the message id, so a
//! republished id is dropped by SQS within its 5-minute window (the receipt
//! cannot say so). SQS hands out a group's messages in order and holds the
//! rest of a group back while one of its messages is in flight, so one
//! slow key never blocks the others — and keyless messages, each a group
//! of their own, are never held back (nor ordered among themselves).
//! FIFO queues have no per-message delay: publishing with `deliver_at`
//! fails with [`Error::Unsupported`](wharf_core::Error::Unsupported)
//! (`delayed-publish`).
//!
//! # Declared capabilities
//! [`Persistence`](wharf_core::Capability::Persistence) (SQS stores
//! redundantly; the test server, moto, keeps queues in memory for its
//! lifetime), [`Retention`](wharf_core::Capability::Retention) (a queue
//! keeps messages until deleted or its retention period, 4 days by
//! default, ends), [`Redelivery`](wharf_core::Capability::Redelivery),
//! [`VisibilityTimeout`](wharf_core::Capability::VisibilityTimeout),
//! [`ExtendLease`](wharf_core::Capability::ExtendLease),
//! [`NackWithDelay`](wharf_core::Capability::NackWithDelay),
//! [`DeadLetter`](wharf_core::Capability::DeadLetter),
//! [`MaxDeliveries`](wharf_core::Capability::MaxDeliveries),
//! [`Ttl`](wharf_core::Capability::Ttl); on standard queues also
//! [`DelayedPublish`](wharf_core::Capability::DelayedPublish), on FIFO
//! queues [`OrderingPerKey`](wharf_core::Capability::OrderingPerKey)
//! instead.
//!
//! # Not supported (not declared)
//! - `ConsumerGroups`: fan-out is absent. An SQS queue is one work queue:
//!   every subscription of a topic competes for its messages, whatever
//!   group it names (the name is kept for the `wharf-dlq-group` header).
//!   Fan-out with one queue per group would make the publisher send to
//!   each group's queue: not atomic (a failed send leaves some groups
//!   without the message), blind to a group that appears between its
//!   `ListQueues` and its send, and a new group would miss everything
//!   published before it, so `Retention` would be a lie for groups. SNS in
//!   front of per-group queues does fan-out properly; it is outside this
//!   crate.
//! - `OrderingPerKey` on standard queues: SQS orders them best-effort only.
//! - `Dedup`: standard queues do not deduplicate; FIFO queues do, but
//!   SQS's answer does not say a send was a duplicate, so the receipt
//!   cannot report it.
//! - `Wildcards`: a subscription reads one queue; a pattern fails with
//!   `Unsupported`.
//! - `ReplayFromOffset`, `ReplayFromTime`: a queue has no offsets and
//!   keeps no consumed messages.
//! - `PartitionAssignment`, `Priorities`, `Backpressure`.
//!
//! # The router on SQS
//! The router refuses a route that names a group on a backend without
//! `ConsumerGroups`: give SQS routes no `.group(..)` — every route
//! instance of a topic shares its queue anyway, which is what a group
//! would do. `RetryTopicsLayer` publishes a failed message's copy
//! to `<topic>.retry.<n>` with `deliver_after(delay)` (SQS declares
//! `DelayedPublish`), so levels up to 15 minutes wait in SQS itself and
//! longer ones in hops (the `deliver_at` row above; tested with 1-second
//! hops standing in for 15 minutes). `tests/router.rs` runs the shared
//! `wharf_router::testing::retry_dlq_and_dedup_scenario` (its routes
//! without a group here).
//!
//! # Test server
//! The tests run against moto (`moto[server]` from PyPI, pinned), installed
//! into `.venv-moto` and started on 127.0.0.1:15000 by
//! `scripts/ensure-moto.sh`; `WHARF_TEST_SQS_URL` overrides the URL
//! (default `sqs://127.0.0.1:15000?region=us-east-1&wait=1`). Visibility,
//! redrive, FIFO groups and dedup, delays, tags and batches behave there as
//! the tests need; nothing in this crate works around moto.
//!
//! **moto 5.2.6 sends in time linear in the queue's length**, so it is a
//! functional test server, not one to measure SQS with: 50
//! `SendMessageBatch` calls of 10 take 4.5 s into a queue that starts
//! empty and 26 s once it holds 1,500 messages. Reproduction (boto3,
//! moto on :15000):
//!
//! ```text
//! c = boto3.client("sqs", endpoint_url="http://127.0.0.1:15000", region_name="us-east-1",
//!                  aws_access_key_id="a", aws_secret_access_key="b")
//! u = c.create_queue(QueueName="probe")["QueueUrl"]
//! for k in range(4):
//!     t = time.time()
//!     for i in range(50):
//!         c.send_message_batch(QueueUrl=u, Entries=[{"Id": str(j), "MessageBody": "x"} for j in range(10)])
//!     print((k + 1) * 500, time.time() - t)   # 4.5, 11.5, 18.9, 26.2 s
//! ```
//!
//! # Rust version
//! The AWS SDK's runtime crates (`aws-smithy-*`) need Rust 1.94.1, so
//! this crate declares that, above the workspace's 1.88.

#![warn(missing_docs)]

mod backend;
mod config;
mod error;
mod names;
mod subscription;
mod wire;

pub use backend::SqsBackend;
pub use config::{SqsConfig, MAX_DELAY, MAX_HEADERS, MAX_MESSAGE_BYTES, MAX_VISIBILITY};
pub use error::SqsError;
pub use names::queue_name;
pub use subscription::START_TAG;
pub use wire::{
    DecodeError, BODY_ATTRIBUTE, HEADERS_ATTRIBUTE, ID_ATTRIBUTE, KEY_ATTRIBUTE,
    TIMESTAMP_ATTRIBUTE,
};
