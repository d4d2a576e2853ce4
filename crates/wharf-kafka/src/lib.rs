//! Wharf on Kafka, through [`rdkafka`] (a bundled librdkafka, built from
//! source with its own configure/make; no system library needed).
//!
//! [`KafkaBackend`] implements [`wharf_core::Backend`]: publish with the
//! guarantees of an idempotent `acks=all` producer, consume through Kafka
//! consumer groups with Wharf's at-least-once settlement on committed
//! offsets, and create/delete topics.
//!
//! # Mapping
//!
//! | Wharf | Kafka |
//! |---|---|
//! | topic `orders.created` | topic `<prefix>orders.created` ([`KafkaConfig::topic_prefix`], default empty); created by [`Backend::ensure_topic`](wharf_core::Backend::ensure_topic), the first publish or a subscription with [`KafkaConfig::partitions`] partitions (default 1); [`KafkaBackend::create_topic`] / [`KafkaBackend::delete_topic`] for other counts |
//! | publish | a record per message from an idempotent producer (`acks=all`, `enable.idempotence=true`, `compression.type=lz4`, `linger.ms` from [`KafkaConfig::linger`]); it returns when the broker has acknowledged the record (its delivery report), with the partition and offset in the [`Receipt`](wharf_core::Receipt); a batch is handed to the producer whole and each report awaited |
//! | key | record key; the partition is Kafka's default partitioner's (`partitioner=murmur2_random`: `toPositive(murmur2(key)) % partitions`, as the Java client, see [`partition_for_key`]); messages without a key go to a random partition |
//! | message id | record header `wharf-id` (UUID text), first; a record without it (another producer's) gets a fresh id when read |
//! | headers | record headers after `wharf-id`, in order (values are UTF-8 text; other bytes are read lossily) |
//! | timestamp | record timestamp (CreateTime); a topic set to `LogAppendTime` reports the broker's time instead |
//! | consumer group `billing` | Kafka group `<prefix>billing`, `subscribe` to the topic (Kafka's group protocol assigns its partitions among the members, `partition.assignment.strategy=cooperative-sticky`: a rebalance moves only the partitions that change owner); `subscribe` returns once the group has assigned this member (within [`KafkaConfig::timeout`]) |
//! | private subscription | a consumer with `assign` of every partition (no group membership, no commits); with a pattern, a regex `subscribe` under a throwaway group id that never commits |
//! | pattern `orders.*`, `orders.>` | a Kafka regex subscription `^<prefix>orders\.[^.]+$` / `^<prefix>orders\..+$` (`*` stays one segment); librdkafka re-reads the topic list every second (`topic.metadata.refresh.interval.ms=1000`), and a topic found later is read from its beginning; each group member gets the matching partitions the group assigns it |
//! | `StartPosition::Earliest` | `auto.offset.reset=earliest` (a group with committed offsets resumes there) |
//! | `StartPosition::Latest` | each partition's high watermark at subscribe |
//! | `StartPosition::Offset(n)` | offset `n` in every partition |
//! | `StartPosition::Time(t)` | per partition the first offset whose record timestamp is at or after `t` (ListOffsets by time, `offsets_for_times`), or the high watermark when there is none |
//! | start of a group | a private subscription is assigned at the start offsets; a group reads from its committed offset where it has one, and elsewhere from the beginning, passing over (reading, not delivering) records below the start |
//! | `ack` | the offset is settled; the group commits (synchronously, `ack` returns after the commit) the **contiguous settled prefix** per partition: the lowest offset handed out and not acked, or one past the highest handed out. Acks may come in any order; an offset past an unsettled one is committed only once everything before it is settled. The offsets acked past that point travel in the commit's metadata (`w1:` and their distances from the point, up to 4,000 bytes), so a consumer resuming the partition skips them: a restart redelivers exactly the unsettled deliveries (on a broker that returns commit metadata; see [Test broker](#test-broker)). An [`AckBatch`](wharf_core::AckBatch) is one commit |
//! | `nack` (no delay), dropping a delivery | the offset stays unsettled: nothing past it in its partition is committed, and it is delivered again when the partition is next assigned (a restart of the consumer, a rebalance) — not sooner, as Kafka has no per-message redelivery |
//! | attempt | always 1 (Kafka keeps no delivery count) |
//! | `max_in_flight` | client side: the subscription hands out no more unsettled deliveries (librdkafka still prefetches into its own queue, up to `queued.min.messages`; when that queue is full the fetcher looks again after `fetch.queue.backoff.ms=10`, not librdkafka's default 1 s, which stalled a slower-than-the-fetcher drain for most of each second) |
//! | reading | the application's own `next` / `try_next` reads librdkafka's queue (rdkafka's `StreamConsumer`, up to 256 records per read, registered as one batch): no reader task and no channel between librdkafka and the handler. While the application is not reading (busy handling, or holding deliveries), a keeper task serves the consumer every 100 ms instead, so a slow handler does not hold up rebalances and revocations; what it reads waits for `next`. Both read only into free `max_in_flight` slots: a subscription holding `max_in_flight` unsettled deliveries reads nothing, and serves the group's events again once one is settled |
//! | closing a subscription | it stops handing out deliveries; the consumer stays a group member (fetching nothing, serving rebalances) until every delivery it handed out is settled or dropped, so those acks still commit; then it leaves the group |
//! | rebalance | incremental (cooperative): partitions that keep their owner are not revoked, and their deliveries settle and commit as before; on revocation the settled prefix of each revoked partition is committed; a delivery of a revoked partition settled later fails with [`Error::UnknownDelivery`](wharf_core::Error::UnknownDelivery) and the partition's new owner delivers it again (at-least-once: the duplicates are exactly the unsettled deliveries) |
//! | limit | [`MAX_MESSAGE_BYTES`] (900 KiB) of payload + key + headers, under Kafka's default 1 MB `message.max.bytes` with the record framing |
//!
//! # Declared capabilities
//! [`ConsumerGroups`](wharf_core::Capability::ConsumerGroups),
//! [`OrderingPerKey`](wharf_core::Capability::OrderingPerKey) (one key is
//! one partition, read in order by one member of a group) and
//! [`Retention`](wharf_core::Capability::Retention) (records stay until the
//! topic's retention drops them; a new group at `Earliest` reads the
//! backlog), [`ReplayFromOffset`](wharf_core::Capability::ReplayFromOffset)
//! [`ReplayFromTime`](wharf_core::Capability::ReplayFromTime) and
//! [`Wildcards`](wharf_core::Capability::Wildcards).
//!
//! # Not supported (not declared)
//! - `Redelivery`: a `nack` or a dropped delivery comes back only after the
//!   partition is assigned again (see the table), not in the same session.
//! - `NackWithDelay`, `DeadLetter`, `MaxDeliveries`: `nack_with_delay` with a
//!   non-zero delay and `reject` fail with
//!   [`Error::Unsupported`](wharf_core::Error::Unsupported) (the offset stays
//!   unsettled); retry levels and dead-letter topics belong to the router on
//!   top (see [The router on Kafka](#the-router-on-kafka)).
//! - `VisibilityTimeout`, `ExtendLease`: a delivery is held until settled or
//!   until its partition is revoked; `extend` fails with `Unsupported`.
//! - `PartitionAssignment` ([`GroupMode::Stream`](wharf_core::GroupMode::Stream)):
//!   Kafka groups do assign partitions, but the suite's
//!   `stream_mode_join_with_work_in_flight_loses_nothing` asks that
//!   deliveries held across a join, acked afterwards, are not delivered
//!   again; here those of a partition that moved are (see
//!   [Rebalances](#rebalances)). The conformance factory's topics have one
//!   partition, on which the case would pass without testing that, so it is
//!   not declared; asking for `Stream` fails with `Unsupported`.
//! - `Dedup`: the idempotent producer removes the duplicates of its own
//!   retries, not a second publish of the same message id.
//! - `Persistence`: depends on the broker (the test broker runs in memory).
//! - `DelayedPublish`, `Priorities`, `Ttl`, `Backpressure`.
//! - Transactions (consume-transform-produce exactly once): not
//!   implemented and not declared. Neither Kafka-protocol broker that
//!   installs here (nisshi 0.8.1, tansu 0.6.0; see issue #21) supports
//!   transactions, so there is nothing to test them against; the producer
//!   is idempotent (no duplicates from its own retries), and
//!   consume-transform-produce runs at least once.
//!
//! # Consumer groups across topics
//! The Kafka group id is the Wharf group name (with the prefix), so a
//! Java consumer in the same group shares the work (it must use the
//! `cooperative-sticky` assignor too: Kafka refuses a member whose
//! assignors share none with the group's). One Kafka group spans every
//! topic subscribed with that name: a member joining on one topic makes
//! the group rebalance. With the eager protocol that revoked every
//! partition of every member, so in-flight deliveries on the other topics
//! failed to settle and were delivered again (the router test below saw
//! its `fine` message handled three times as its three routes joined);
//! the cooperative protocol leaves the partitions of the other topics
//! where they are.
//!
//! # Rebalances
//! What happens to the deliveries in flight when a member joins or leaves
//! (`tests/rebalance.rs`, a 4-partition topic):
//! - Only the partitions that change owner are revoked (cooperative); the
//!   deliveries of the others settle and commit as if nothing happened.
//! - On revocation the member commits the settled prefix of each revoked
//!   partition and forgets the partition. Its unsettled deliveries there can
//!   no longer commit: acking one fails with
//!   [`Error::UnknownDelivery`](wharf_core::Error::UnknownDelivery) and
//!   sends no commit, so a stale ack never moves the group's offset past
//!   what the new owner has processed (the test reads the group's offsets
//!   after the stale acks: unchanged; after the new owner's first ack: its
//!   prefix).
//! - The new owner resumes at the committed prefix, so it delivers again
//!   exactly the deliveries that were unsettled at the revocation (plus,
//!   on a broker that drops commit metadata, the acked ones past the
//!   prefix): those duplicates are the at-least-once window. Nothing is
//!   lost.
//! - A member that closes its subscription stays in the group until its
//!   deliveries are settled or dropped, then leaves; the unsettled ones go
//!   to the remaining members.
//!
//! # The router on Kafka
//! Kafka has no per-message redelivery, so retries and dead letters are
//! copies: `wharf_router`'s `RetryTopicsLayer` acks the failed delivery and
//! publishes a copy to `<topic>.retry.<n>`, and its `DeadLetterLayer`
//! publishes the last failure to `dlq.<topic>`. Without `DelayedPublish`
//! or `NackWithDelay` the retry topic's consumer waits for the copy's due
//! time in its lane before handling it. `tests/router.rs` runs the shared
//! `wharf_router::testing::retry_dlq_and_dedup_scenario` (two retry levels,
//! the DLQ headers, a request sent twice handled once through a dedup
//! store) on the test broker, with the capabilities declared below.
//!
//! # Test broker
//! The tests run against `nisshi` 0.8.1 (a Kafka-protocol broker from
//! crates.io, started in memory by `scripts/ensure-kafka.sh` on port 19092;
//! `WHARF_TEST_KAFKA_URL` overrides). No transactions there.
//!
//! **nisshi 0.8.1 drops commit metadata.** OffsetCommit stores it, but
//! OffsetFetch answers with the offset only (its storage's `offset_fetch`
//! returns `BTreeMap<Topition, i64>`), so the metadata always reads back
//! empty. Minimal reproduction (rdkafka, any topic `t` with a partition 0):
//!
//! ```text
//! let c: BaseConsumer = ClientConfig::new()
//!     .set("bootstrap.servers", "127.0.0.1:19092").set("group.id", "probe").create()?;
//! let mut tpl = TopicPartitionList::new();
//! tpl.add_partition_offset("t", 0, Offset::Offset(0))?;
//! tpl.find_partition("t", 0).unwrap().set_metadata("w1:1");
//! c.commit(&tpl, CommitMode::Sync)?;
//! let mut q = TopicPartitionList::new();
//! q.add_partition("t", 0);
//! let got = c.committed_offsets(q, Duration::from_secs(10))?;
//! assert_eq!(got.find_partition("t", 0).unwrap().metadata(), "w1:1"); // "" on nisshi
//! ```
//!
//! On such a broker nothing is lost: a restart resumes at the committed
//! prefix and the acked offsets past it are delivered again (duplicates
//! within the at-least-once contract). `tests/kafka.rs` probes the broker
//! this way and asserts the exact redelivery set for either behaviour.
//!
//! Not a broker bug, but worth knowing: librdkafka's producer asks for
//! metadata with `allow.auto.create.topics` on by default, which brings a
//! deleted topic straight back; every client here turns it off.

#![warn(missing_docs)]

mod backend;
mod config;
mod error;
mod murmur2;
mod subscription;
mod wire;

pub use backend::KafkaBackend;
pub use config::{KafkaConfig, MAX_MESSAGE_BYTES};
pub use error::KafkaAdapterError;
pub use murmur2::{murmur2, partition_for_key};
pub use wire::ID_HEADER;
