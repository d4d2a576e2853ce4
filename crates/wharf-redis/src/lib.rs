//! Wharf on Redis, through the `redis` crate (async, tokio): durable on
//! Redis Streams, or non-durable on Redis Pub/Sub.
//!
//! [`RedisBackend`] implements [`wharf_core::Backend`] on streams;
//! [`RedisPubSubBackend`] is the non-durable mode on Pub/Sub (see
//! [below](#pubsub-non-durable-mode)); [`RedisDedupStore`] is a `SET NX EX`
//! dedup store for the router's dedup middleware (it implements
//! [`wharf_core::DedupStore`]).
//!
//! # Mapping
//!
//! | Wharf | Redis |
//! |---|---|
//! | backend namespace | key prefix: every key is `<prefix>:…` ([`RedisBackend::delete_all`] removes them) |
//! | topic `orders.created` | stream `<prefix>:s:orders.created`, created by the first XADD (or XGROUP CREATE … MKSTREAM); every published (or `ensure_topic`ed) topic is added to the set `<prefix>:topics` |
//! | pattern `orders.*`, `orders.>` | every stream whose topic (from `<prefix>:topics`) matches, read in one `XREADGROUP`/`XREAD`; the set is re-read every 200 ms, and streams found later are read from their beginning |
//! | publish | one Lua script call per batch of up to 1,000 messages (atomic): `SADD` the topic to the registry once, then per message `GET` the dedup key, else `XADD … MAXLEN ~ n *` and `SET <prefix>:d:<topic>:<id> <stream id> EX <window>`; with [`RedisConfig::dedup`]`(false)` no script: one `MULTI` / `SADD` / an `XADD` per message / `EXEC` (as atomic, half the script's server time per message; no key per message, and `Dedup` is not declared) |
//! | offset | stream id `<ms>-<seq>` as `ms << 22 \| seq` (exact and ordered for ids made by `XADD *`; see `wire`) |
//! | consumer group | `XGROUP CREATE` + `XREADGROUP`; each subscription is one consumer `c-<uuid>` of the group |
//! | reads | each subscription reads (`XREADGROUP`/`XREAD`, blocking up to 100 ms) on a connection of its own, over TCP or a Unix socket, authenticated and on the database the URL names, named `<prefix>:read:<consumer>` (`CLIENT LIST` shows it; `private` without a group); it speaks RESP2 whatever protocol the URL asks for, and is reconnected at the next read after it fails; every other command goes over the backend's shared connection |
//! | private subscription | `XREAD` from a position (`$` resolved to the newest id at subscribe) |
//! | `StartPosition::{Earliest, Latest, Offset}` | group/read start `0-0`, `$`, the id just before the offset |
//! | `ack` | `XACK`; an [`AckBatch`](wharf_core::AckBatch) is one `XACK` with every id per topic |
//! | `nack(delay)` / dropping a delivery | the entry id goes into the sorted set `<prefix>:r:<topic>:<group>`, scored by when it is due; a reader claims due ids with `XCLAIM` (which counts the delivery) |
//! | visibility timeout | entries idle longer than the lease are claimed with `XPENDING … IDLE` + `XCLAIM` (not `XAUTOCLAIM`, which cannot skip entries parked for a delayed nack); default 30 s; settling a delivery after its lease ran out (or once the entry came back to this subscription) fails with `UnknownDelivery`, since `XACK` would settle the redelivery |
//! | `extend(by)` | `XCLAIM … JUSTID` (resets idle time), repeated every lease/2 until `by` is covered |
//! | attempt | the entry's delivery count in the pending entries list |
//! | `max_deliveries` / `reject` | a nack (or drop, or lease expiry) on the last attempt, or a reject, `XADD`s a copy to `dlq.<topic>` with the `wharf-dlq-*` headers and `XACK`s the original |
//! | `max_in_flight` | client side: a subscription never reads more entries than it has free slots |
//! | message | entry fields `id`, `ts` (only when the timestamp is not the time inside the id, a UUIDv7, as for a message made with an explicit timestamp; a reader takes a missing one from the id; versions before 2026-12-07 always wrote it and took the read time for a missing one: upgrade their consumers first), `k` (key), `h:<name>` per header (order kept), `p` (payload); all binary safe |
//! | TTL | checked when read: an expired entry is acked and never handed out |
//! | limit | [`MAX_MESSAGE_BYTES`] (1 MiB) of payload + key + headers |
//!
//! The scripts are loaded at connect and reloaded (same SHA1) when Redis
//! answers `NOSCRIPT` after a restart or `SCRIPT FLUSH`.
//!
//! A settlement of a stale delivery (its lease expired and the entry was
//! claimed again, or it was acked) is detected by the entry's owner and
//! delivery count and ignored, so it cannot cause a third delivery.
//!
//! # Not supported (not declared)
//! - `Persistence`: the Redis on this machine runs without RDB/AOF; with
//!   `appendonly yes` Redis streams and groups survive restarts, but this
//!   crate cannot tell how the server is configured.
//! - `ReplayFromTime`: stream ids carry the server's time, not the
//!   publisher's timestamp.
//! - `OrderingPerKey`: members of a group read concurrently and a nack
//!   reorders, so per-key order is not guaranteed for a group.
//! - `DelayedPublish`, `Priorities`, `Backpressure` (a stream accepts
//!   regardless of consumers; `MAXLEN ~` trims the oldest entries instead).
//!
//! # Durability
//! A publish returns once Redis has applied the XADD in memory; what
//! survives a crash depends on the server's `appendonly`/`appendfsync`.
//!
//! # Pub/Sub (non-durable mode)
//!
//! [`RedisPubSubBackend::connect`] takes the same [`RedisConfig`] (only the
//! URL, the prefix and the connect timeout apply) and maps Wharf onto
//! Redis Pub/Sub:
//!
//! | Wharf | Redis Pub/Sub |
//! |---|---|
//! | topic `orders.created` | channel `<prefix>:c:orders.created` ([`RedisPubSubBackend::channel`]); [`Backend::ensure_topic`](wharf_core::Backend::ensure_topic) only validates |
//! | publish | `PUBLISH`, a batch as one pipeline; it returns once Redis has passed the message to the subscribers connected at that moment; the receipt has no offset and is never a duplicate |
//! | message | one binary frame of the stream-entry fields above (`id`, `ts`, `k`, `h:<name>` in order, `p`), so id, key, headers and timestamp round-trip; a payload that is not such a frame (a plain `PUBLISH` from another client) arrives as the payload of a message with a fresh id |
//! | subscription | a connection of its own: `SUBSCRIBE <channel>` for a topic, `PSUBSCRIBE` for a pattern, returning once Redis has confirmed it |
//! | pattern `orders.*`, `orders.>` | glob `<prefix>:c:orders.*` for both (prefix escaped); a glob `*` also matches dots, so every received channel is matched against the Wharf pattern again and the others are dropped — `*` stays one segment |
//! | `StartPosition::{Earliest, Latest}` | both mean "from now": nothing is stored |
//! | `max_in_flight` | client side: the subscription hands out no more unsettled deliveries; the rest wait in the client's unbounded buffer (Redis closes a subscriber whose output buffer passes `client-output-buffer-limit pubsub`, 32 MB by default; the subscription then yields one [`Error::Unavailable`](wharf_core::Error::Unavailable) and ends) |
//! | `ack`, `nack`, dropping a delivery | settle locally: frees the in-flight slot, sends nothing; the message is gone |
//! | attempt | always 1 |
//! | TTL header | a delivery already past its expiry is dropped instead of handed out |
//!
//! It declares [`Wildcards`](wharf_core::Capability::Wildcards) and
//! [`OrderingPerKey`](wharf_core::Capability::OrderingPerKey) (Redis passes
//! one connection's publishes to a subscriber in order). What it cannot do:
//! - **No [`ConsumerGroups`](wharf_core::Capability::ConsumerGroups)**:
//!   every subscriber of a channel gets every message; Redis has nothing
//!   that hands a message to one of several subscribers, so subscribing with
//!   a group fails with [`Error::Unsupported`](wharf_core::Error::Unsupported)
//!   rather than pretending.
//! - **At-most-once, no [`Redelivery`](wharf_core::Capability::Redelivery)**:
//!   a nack, a dropped delivery or a subscriber that goes away loses the
//!   message.
//! - **No [`Retention`](wharf_core::Capability::Retention)**: a message
//!   reaches only the subscriptions live when it is published.
//! - No `Persistence`, `NackWithDelay`, `VisibilityTimeout`, `ExtendLease`,
//!   `DeadLetter`, `MaxDeliveries`, `Dedup`, `Ttl`, `DelayedPublish`,
//!   `Priorities`, replay, `PartitionAssignment` or `Backpressure`:
//!   subscribing with a group, a lease, a delivery limit, a replay start or
//!   stream mode, and `nack_with_delay`, `reject` or `extend`, fail with
//!   `Unsupported` (the refused settlement still frees the slot).

#![warn(missing_docs)]

mod acker;
mod backend;
mod config;
mod dedup;
mod error;
mod pubsub;
mod resp;
mod scripts;
mod subscription;
mod wire;

pub use backend::RedisBackend;
pub use config::{RedisConfig, MAX_MESSAGE_BYTES};
pub use dedup::RedisDedupStore;
pub use error::RedisError;
pub use pubsub::RedisPubSubBackend;
