//! Wharf on RabbitMQ (lapin, AMQP 0-9-1).
//!
//! # Mapping
//! | Wharf | RabbitMQ |
//! |---|---|
//! | backend namespace | durable topic exchange `wharf.<ns>` ([`AmqpConfig::namespace`]) |
//! | topic | routing key on that exchange |
//! | pattern `*` / `>` | binding key `*` / `*.#` (AMQP's `#` alone would also match zero segments) |
//! | consumer group | durable queue `wharf.<ns>.g.<group>.<pattern>` bound to the exchange (one queue per group *and* pattern) |
//! | private subscription | exclusive, auto-delete, server-named queue |
//! | publish | persistent (`delivery_mode` 2) + publisher confirms: `publish` returns after the broker's confirm |
//! | max in flight | `basic.qos` prefetch on the subscription's own channel |
//! | ack | `basic.ack` |
//! | nack / dropped delivery | a copy with `wharf-attempts` + 1 is published (confirmed) to the queue, then the original is acked |
//! | nack with delay | the copy goes to `<queue>.delay.<ms>`, a TTL queue dead-lettering into the queue; delays are rounded *up* to 100 ms / 1 s / 1 min buckets |
//! | attempt number | our `wharf-attempts` header (absent on a first attempt: 0) + 1, plus 1 when the broker flags a redelivery (consumer or connection lost) |
//! | reject, max deliveries | a copy with the `wharf-dlq-*` / `wharf-original-*` headers is published to `dlq.<topic>` on the exchange, then the original is acked |
//! | delayed publish | routed by a `wharf-delay` header through the headers exchange `wharf.<ns>.delayed` into `wharf.<ns>.delay.<ms>`, a TTL queue dead-lettering into the topic exchange with the topic as routing key (delays rounded up to buckets, so never early) |
//! | TTL | per-message `expiration` (remaining time); delayed messages carry none (RabbitMQ drops it when dead-lettering) and consumers skip (ack) a message past its `wharf-expires-at-ms` |
//! | priority (`Priorities`) | only with [`AmqpConfig::priorities`]: the queues of groups and subscriptions are priority queues (`x-max-priority = 9`), message `priority`. By default they are plain queues (about twice the drain rate): a message's priority travels as its `priority` property and does not order delivery |
//! | messages nobody is bound for | the exchange's alternate exchange stores them in the durable backlog queue `wharf.<ns>.backlog` (bounded, oldest dropped); a group queue created with `StartPosition::Earliest` gets copies of the backlog messages matching its pattern |
//! | key, headers (in order), ms timestamp, topic | `wharf-key`, `wharf-h` (name/value array), `wharf-ts` AMQP headers; the id is `message_id`; the topic is the routing key; a copy sent straight to a queue (a redelivery, a new group's backlog copy) has the queue's name as routing key and carries the topic in its `type` property (the `wharf-topic` header when longer than 255 bytes, and in versions before session 23, which readers still take). Readers of those versions take such a copy's topic to be the queue's name: upgrade consumers first |
//! | what a plain message leaves out | each header costs the broker and every consumer's frame parser on every message, so: `wharf-ts` when the timestamp is the time inside the id (a UUIDv7, as for every message made without an explicit timestamp; the reader takes it from there), an empty `wharf-h` when nothing else in the table is a string, and then the empty table. Readers of versions before 2026-12-07 read such a message with the same id, key, headers and topic, and the timestamp to the second (the `timestamp` property). Such a message reads like a foreign one, whose string AMQP headers become its headers, except those RabbitMQ adds when it dead-letters (`x-death`, `x-first-death-*`, `x-last-death-*`) |
//!
//! A channel error (say, a deleted exchange) fails that call only: the
//! publishing channel is reopened on the next publish.
//!
//! Closing the backend closes the connection: unacked deliveries go back to
//! their queues (RabbitMQ requeues them in order). A dropped subscription
//! cancels its consumer and requeues what it had prefetched.
//!
//! # Not supported (capabilities not declared)
//! - **Visibility timeout / extend lease**: RabbitMQ holds an unacked message
//!   until the channel closes (or `consumer_timeout`, 30 min by default);
//!   there is no per-message lease to expire or extend.
//! - **Dedup**: RabbitMQ keeps no id index.
//! - **Replay from offset / time**, **partition assignment**: queues are not
//!   logs (RabbitMQ streams are, but lack per-message ack, TTL and priority).
//! - **Backpressure**: publishers are not held back by slow consumers
//!   (RabbitMQ's memory alarms block the connection, not per topic).
//! - Earliest for a *new* group only sees the backlog (messages that matched
//!   no queue when published), not messages already routed to other groups;
//!   nack / release move the message to the back of its queue, so per-key
//!   order holds only until a redelivery.
//! - Subscribing a new `Earliest` group copies the backlog into its queue
//!   before it returns: each message is published again (persistent, with
//!   a confirm), so the broker does about three times a publish's work per
//!   message (about 9 s for a backlog of 100,000 on a 2-core machine, and
//!   the copies drain more slowly while the broker stores them; see
//!   BENCHMARKS.md, session 24). Create groups before their messages where
//!   that matters.
//!
//! Messages are limited to [`MAX_MESSAGE_BYTES`] (4 MiB).

#![warn(missing_docs)]

mod backend;
mod subscription;
mod wire;

pub use backend::{AmqpBackend, AmqpConfig, MAX_MESSAGE_BYTES};
