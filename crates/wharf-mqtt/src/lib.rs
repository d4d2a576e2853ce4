//! Wharf on MQTT 5, through the `rumqttc` client (its `v5` module).
//!
//! [`MqttBackend`] implements [`wharf_core::Backend`]: one connection
//! publishes (each publish returns on its PUBACK), and every subscription
//! has a connection and persistent session of its own, whose QoS 1
//! deliveries are acknowledged (PUBACK) only when the handler settles them.
//! Tested against Mosquitto 2.0.11.
//!
//! # Mapping
//!
//! | Wharf | MQTT 5 |
//! |---|---|
//! | topic `orders.created` | topic name `<prefix>/orders/created` (`MqttConfig::topic_prefix`; none by default); a Wharf name never holds `/`, `+`, `#` or a leading `$`, so every valid one maps, and an invalid one is refused with [`Error::InvalidName`](wharf_core::Error::InvalidName) before anything is sent |
//! | pattern `orders.*` / `orders.>` | filter `orders/+` / `orders/+/#` (`>` is `+/#` because MQTT's `#` also matches the parent level: `orders/#` matches `orders`) |
//! | a received topic that has no Wharf name (outside the prefix, a level with `.` or empty, from a client that is not Wharf) | acknowledged and dropped with a warning ([`MqttError::UnmappableTopic`]) |
//! | publish | QoS 1; returns on the PUBACK (reason Success or No matching subscribers); another reason is an [`Error::Backend`](wharf_core::Error::Backend) carrying [`MqttError::PublishRefused`]; a lost connection fails the publishes awaiting their PUBACK with `Unavailable` (they may or may not have arrived) |
//! | [`MqttBackend::publish_retained`] / [`MqttBackend::clear_retained`] | the retain flag: the server keeps the topic's last such message for later subscriptions |
//! | message id, key, timestamp | user properties `wharf-id`, `wharf-key` (or `wharf-key-b64` when not printable UTF-8), `wharf-timestamp-ms` |
//! | headers | user properties, in order (MQTT 5 keeps their order); a header named like one of the adapter's own is refused |
//! | TTL ([`header::EXPIRES_AT_MS`](wharf_core::header::EXPIRES_AT_MS)) | also the Message Expiry Interval (seconds, rounded up), so the server drops it unsent; the subscription drops what arrives expired |
//! | consumer group | shared subscription `$share/<group>/<filter>`: the server gives each message to one member, and every group gets its own copy |
//! | private subscription (no group) | a plain subscription |
//! | subscription | a connection of its own, client id `<client id>-<group>-<hash of the pattern>-<n>` (`n` counts the backend's subscriptions of that group and pattern), `clean_start = false` and a Session Expiry Interval (`MqttConfig::session_expiry`, 1 h), so a lost connection resumes its session: its subscriptions, unacknowledged deliveries and queued messages; rumqttc reconnects and the adapter resubscribes if the server lost the session |
//! | `StartPosition::Earliest` / `Latest` | retained messages sent on subscribing / not sent (nothing else is stored for a subscription that does not exist yet) |
//! | `ack` | PUBACK of that delivery's packet id (rumqttc sends acks in the order they are given; MQTT 5 §4.6 asks for the order of receipt, which Mosquitto does not enforce) |
//! | `nack`, `nack_with_delay`, dropping a delivery | the message is republished (after the delay, in this process) to the subscription's redelivery topic `wharf~redeliver/<hash>` — one per group and pattern, which every member of the group subscribes to as a shared subscription — with `wharf-attempt` = next attempt, and only then is the original PUBACKed; the original holds its in-flight slot at the server during the delay |
//! | `reject(reason)`, a failed last attempt of `max_deliveries(n)` | the message is copied to `dlq.<topic>` (or the subscription's dead-letter topic) with the `wharf-dlq-*` headers, then PUBACKed |
//! | attempt | 1, or `wharf-attempt` of a redelivered copy; +1 for a PUBLISH the server resends (DUP) when a session resumes |
//! | `max_in_flight` | the connection's Receive Maximum, and a client-side slot per unsettled delivery (Mosquitto 2.0.11 exceeded a Receive Maximum of 2 by one after an ack; the slots keep the limit) |
//! | closing (or dropping) a subscription | it unsubscribes at once and disconnects once every delivery it handed out is settled, the messages the server had already queued for it are given back to the group uncounted, and nothing has arrived for 300 ms; the session, without subscriptions, expires on the server |
//!
//! # Why MQTT redelivers only by republishing
//! MQTT 5 resends an unacknowledged QoS 1 PUBLISH only when a session is
//! resumed after a reconnect (§4.4); there is no negative PUBACK that asks
//! for redelivery (a PUBACK with an error reason still ends the exchange).
//! So a nack republishes the message and then acks it: at least once, as
//! the original stays unacknowledged in the session if the process dies
//! in between. A consumer process that dies holding deliveries leaves them
//! in its session: they come back when a subscription with the same client
//! id (same `MqttConfig::client_id`, group and pattern) connects again
//! before the session expires — not to the group's other members, which is
//! why this backend provides no consumer-death set-up to the conformance
//! suite. Redelivered copies reorder a key's messages.
//!
//! # The router on MQTT
//! The router's retry topics and `dlq.<topic>` are publishes to other
//! topics, which work here as long as someone subscribes to them before
//! they are published (a router subscribes to its retry topics when it
//! starts). What does not work is publishing to a group before it ever
//! subscribed: `tests/router.rs` runs the shared retry/DLQ/dedup scenario,
//! which publishes first, after making the router's group a durable session
//! (a member with the router's client id joined and lost its connection).
//!
//! # Not supported (not declared)
//! - `Persistence` and `Retention`: MQTT keeps messages only for sessions
//!   that exist when they are published (besides one retained message per
//!   topic). A new group gets nothing from before it subscribed.
//! - `OrderingPerKey`: one subscriber gets one publisher's messages in
//!   order, but members of a group take turns and a nack redelivers behind
//!   later messages.
//! - `VisibilityTimeout`, `ExtendLease`: a delivery is held until it is
//!   settled or its connection is lost; there is no lease to expire or extend.
//! - `DelayedPublish`, `Priorities`, `Dedup`, `ReplayFromOffset`,
//!   `ReplayFromTime`, `PartitionAssignment`: MQTT has no such notions
//!   (a `wharf-id` publishes twice as two messages).
//! - `Backpressure`: the server acknowledges a publish whether or not
//!   subscribers keep up — and drops what exceeds its per-session queue.
//!
//! # Mosquitto's limits (what the tests found)
//! - `max_queued_messages` (default 1000) bounds what a session queues
//!   beyond its in-flight window, for online and offline sessions alike;
//!   further messages are **dropped silently**: the publisher's PUBACK is
//!   Success all the same (`tests/mqtt.rs`:
//!   `past_the_servers_queue_limit_messages_are_dropped_while_publishes_succeed`
//!   publishes 3000 to a group holding one delivery and receives 1001).
//!   Raise it (or set it to 0) on a server that must absorb bursts.
//! - Shared subscriptions do not match `$` topics in Mosquitto 2.0.11
//!   (`mosquitto_sub -t '$share/g/$x/y'` receives nothing published to
//!   `$x/y`), hence a redelivery root without `$`; only a root-level `>`
//!   subscription without a prefix would see it (and drops it quietly).
//! - A group whose members are all offline keeps getting messages queued
//!   in their sessions (up to that limit), delivered when one comes back.
//!
//! # Durability
//! A publish returns once Mosquitto has accepted it into memory (QoS 1
//! PUBACK); with `persistence true` it writes its state to disk every
//! `autosave_interval` (default 1800 s) and on a clean shutdown, so a
//! crash of the server loses what arrived since.
//!
//! # Limits
//! [`Limits::max_message_bytes`](wharf_core::Limits) is
//! `MqttConfig::max_message_bytes` (1 MiB by default; MQTT allows packets
//! up to 256 MiB, Mosquitto's `message_size_limit` is unlimited by default).

#![warn(missing_docs)]

mod backend;
mod config;
mod error;
mod subscription;
mod topics;
mod wire;

pub use backend::MqttBackend;
pub use config::MqttConfig;
pub use error::MqttError;
