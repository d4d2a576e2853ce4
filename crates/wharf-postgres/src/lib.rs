//! Wharf on PostgreSQL (sqlx): durable queues and pub/sub on plain tables,
//! a dedup store for the router, and the transactional outbox.
//!
//! # Mapping
//! | Wharf | PostgreSQL |
//! |---|---|
//! | backend | one schema ([`PostgresConfig::schema`]) holding the tables below |
//! | topic | rows of `messages` with that `topic`; a `topics` row hands out offsets |
//! | offset | per-topic counter, assigned under the topic row lock (held to commit), so offsets become visible in order |
//! | publish | one `INSERT … SELECT FROM UNNEST(…)` per batch, acknowledged after commit (`synchronous_commit` as the server is configured; on by default); concurrent publishes to a topic are coalesced into one statement and one commit, since they would serialise on the topic row lock anyway; a batch whose ids are all new is one plain `INSERT` (no `ON CONFLICT` pre-check per row, no per-row result), and one holding a stored id (unique violation, nothing stored) is retried with `ON CONFLICT (topic, id) DO NOTHING` |
//! | message id dedup | `UNIQUE (topic, id)`: a second publish of an id returns the original's offset with `duplicate = true`, for as long as the row exists |
//! | consumer group | a `groups` row per (group, pattern) with a cursor per matching topic; new messages are copied into `deliveries` rows (attempts, lease, failures) under the group row lock |
//! | private subscription | a group of its own, deleted when the subscription and its deliveries are gone |
//! | claim | `UPDATE … FROM (SELECT … ORDER BY priority DESC, seq FOR UPDATE SKIP LOCKED)`, at most `max_in_flight` unsettled per subscription |
//! | wake-up | a statement trigger does `pg_notify`; one LISTEN connection per backend wakes its fetchers; a poll interval covers delays and lease expiry |
//! | visibility timeout / extend | `leased_until` on the delivery row; a claim hands out a fresh token, so a stale holder's settlement fails with `UnknownDelivery` |
//! | ack / nack / nack with delay | delete the row (a subscription's concurrent acks share one `DELETE … = ANY` and one commit) / clear the lease and set `available_at` |
//! | lease expiry on the last allowed attempt | the fetcher dead-letters the message instead of handing it out again |
//! | reject, max deliveries | delete the row and insert the message (same id, plus the `wharf-dlq-*` / `wharf-original-*` headers) into `dlq.<topic>` in one transaction |
//! | delayed publish, TTL, priority | `deliver_at`, `expires_at`, `priority` columns (from the reserved headers) |
//! | wildcards | the pattern becomes an anchored regex matched against `topics` (`*` = `[^.]+`, `>` = `.+`) |
//! | start position | a new group's cursors start at -1 (earliest), the current end (latest), an offset, or the first message with `timestamp >= t` |
//!
//! # Not supported
//! - **Partition assignment** (`GroupMode::Stream`): every topic is one
//!   partition and consumers of a group compete for rows; per-key order holds
//!   for one consumer per group, so stream mode returns `Unsupported`.
//! - **Backpressure**: a table grows; publishers never wait for consumers.
//! - Retention: messages stay until the schema is dropped
//!   ([`PostgresBackend::drop_schema`]) or deleted by the operator; delivery
//!   rows go away when settled.
//! - Ordering across priorities, delays and redeliveries is by design not
//!   publish order; a message dead-lettered by two groups is stored once in
//!   the dead-letter topic (same id).
//!
//! Messages are limited to [`MAX_MESSAGE_BYTES`] (4 MiB).
//!
//! # Outbox and dedup
//! [`outbox::Outbox`] and [`outbox::OutboxForwarder`] implement the
//! transactional outbox (to any Wharf backend); when the consumers run on this
//! backend anyway, [`PostgresBackend::publish_in`] publishes inside the
//! caller's transaction directly. [`PgDedupStore`] backs the router's
//! idempotent consumer: it implements [`wharf_core::DedupStore`], so
//! `DedupLayer::new(Arc::new(store))` takes it as is.

#![warn(missing_docs)]

mod backend;
mod dedup;
pub mod outbox;
mod rows;
mod schema;
mod subscription;

pub use backend::{PostgresBackend, PostgresConfig, MAX_MESSAGE_BYTES};
pub use dedup::PgDedupStore;
