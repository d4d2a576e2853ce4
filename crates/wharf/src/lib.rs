//! Wharf: durable messaging for Rust — the one dependency a service adds.
//!
//! One API for publishing, consuming and handling messages ([`Backend`],
//! [`Message`], [`Delivery`], at the root of this crate), over an embedded
//! durable broker that needs no setup, an in-process backend, a remote
//! `wharf serve`, or NATS, Redis, RabbitMQ and PostgreSQL; and a router that
//! runs handlers with the reliability patterns as tower middleware.
//!
//! # Cargo features
//!
//! | feature | module | what it adds |
//! |---|---|---|
//! | `memory` (default) | [`memory`] | in-process, bounded, non-durable backend |
//! | `broker` (default) | [`broker`] | embedded durable broker on Wharf's own log |
//! | `router` | `router` | handlers, per-key ordering, tower middleware (retry, retry topics, DLQ, dedup, timeout, rate limit, circuit breaker, …) |
//! | `client` | `client` | remote client of `wharf serve` (gRPC); with `eventstore` also `client::RemoteEventStore` (the server's event store) |
//! | `tls` | `client` | `https://` for the client (`Client::connect_with` and a CA certificate) |
//! | `nats` | `nats` | NATS JetStream adapter (and core NATS, at-most-once) |
//! | `redis` | `redis` | Redis Streams adapter (and Pub/Sub, at-most-once), Redis dedup store |
//! | `amqp` | `amqp` | RabbitMQ adapter |
//! | `sqs` | `sqs` | Amazon SQS adapter (a topic is a queue: no fan-out to groups; FIFO queues ordered per key) |
//! | `mqtt` | `mqtt` | MQTT 5 adapter (rumqttc): shared subscriptions as groups, redelivery by republishing |
//! | `pubsub` | `pubsub` | Google Cloud Pub/Sub adapter (gRPC, against the emulator) |
//! | `postgres` | `postgres` | PostgreSQL adapter, transactional outbox, dedup store (and `sqlx`, re-exported); with `eventstore` also `eventstore::postgres` (the PostgreSQL event store) |
//!
//! ```toml
//! [dependencies]
//! wharf = { version = "0.1", features = ["router"] }
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//! ```
//!
//! # The embedded broker
//!
//! Messages are stored in a directory and `fdatasync`'d before a publish is
//! acknowledged; a consumer group gets each message once and settles it.
//!
//! ```
//! # #[cfg(feature = "broker")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), wharf::Error> {
//! use std::sync::Arc;
//! use wharf::broker::Broker;
//! use wharf::{Backend, Message, SubscribeOptions};
//!
//! let dir = std::env::temp_dir().join(format!("wharf-doc-{}", std::process::id()));
//! let backend: Arc<dyn Backend> = Arc::new(Broker::open(&dir).await?);
//! let mut sub = backend
//!     .subscribe(SubscribeOptions::new("orders.*").group("billing"))
//!     .await?;
//! backend
//!     .publish("orders.created", Message::builder().key("customer-7").payload("{}").build())
//!     .await?;
//! let delivery = sub.next().await.expect("subscribed")?;
//! assert_eq!(delivery.topic(), "orders.created");
//! delivery.ack().await?; // or nack(), nack_with_delay(d), reject(reason)
//! backend.close().await?;
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! # #[cfg(not(feature = "broker"))]
//! # fn main() {}
//! ```
//!
//! Swap `Broker::open` for [`memory::MemoryBackend::new`], `client::Client`
//! (a remote `wharf serve`) or an adapter and nothing else changes.
//!
//! # A router with retry, a dead-letter queue and dedup
//!
//! ```
//! # #[cfg(all(feature = "router", feature = "memory"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use wharf::memory::MemoryBackend;
//! use wharf::router::dead_letter::DeadLetterLayer;
//! use wharf::router::dedup::{DedupLayer, MemoryDedupStore};
//! use wharf::router::retry::{ExponentialBackoff, RetryLayer};
//! use wharf::router::{
//!     handler_fn, CancellationToken, DefaultLayer, HandlerError, Outcome, Request, Router,
//!     ServiceBuilder,
//! };
//! use wharf::{Backend, Message, StartPosition, SubscribeOptions};
//!
//! let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
//! let stop = CancellationToken::new();
//! let done = stop.clone();
//! let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
//! let handler = handler_fn(move |req: Request| {
//!     let (done, seen) = (done.clone(), seen.clone());
//!     async move {
//!         if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
//!             done.cancel(); // both jobs seen: stop the router (this example only)
//!         }
//!         if req.message().payload().is_empty() {
//!             // Fails for good: the DeadLetterLayer moves it to dlq.jobs.
//!             return Err(HandlerError::permanent("empty job"));
//!         }
//!         Ok(Outcome::Ack)
//!     }
//! });
//! let service = ServiceBuilder::new()
//!     .layer(DefaultLayer::new()) // a span, metrics and panic recovery per message
//!     .layer(DeadLetterLayer::new()) // permanent failures to the DLQ
//!     .layer(RetryLayer::new().max_attempts(4).backoff(ExponentialBackoff::new(
//!         Duration::from_millis(10),
//!         Duration::from_secs(1),
//!     ))) // retryable failures, with jittered backoff
//!     .layer(DedupLayer::new(
//!         Arc::new(MemoryDedupStore::new()),
//!         Duration::from_secs(3600),
//!     )) // a message id seen before is skipped
//!     .service(handler);
//!
//! backend.publish("jobs", Message::new("")).await?;
//! backend.publish("jobs", Message::new("resize image 7")).await?;
//! let mut dead = backend
//!     .subscribe(SubscribeOptions::new("dlq.jobs").start(StartPosition::Earliest))
//!     .await?;
//! let report = Router::new(backend.clone())
//!     .route(
//!         SubscribeOptions::new("jobs").group("workers").start(StartPosition::Earliest),
//!         service,
//!     )
//!     .run(stop)
//!     .await?;
//! assert_eq!(report.handled(), 2);
//! let letter = dead.next().await.expect("subscribed")?;
//! let reason = letter.message().headers().get(wharf::header::DLQ_REASON);
//! assert_eq!(reason, Some("permanent failure: empty job"));
//! # Ok(()) }
//! # #[cfg(not(all(feature = "router", feature = "memory")))]
//! # fn main() {}
//! ```
//!
//! `examples/order_service.rs` is the same router in a complete service
//! (`cargo run -p wharf --features router --example order_service`).

#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(
    all(feature = "router", feature = "memory", feature = "broker"),
    doc = "\n# Guide\n\nThe [`guide`] explains the concepts and shows each pattern \
           (retry, retry topics, dead letters, idempotent consumer, outbox, ordering, \
           batching, backpressure, rate limiting, circuit breaker, graceful shutdown, \
           request-reply) with a complete, tested example, and a page per backend: how to \
           connect, which capabilities it declares and why the others are missing."
)]

pub use wharf_core::*;

// Used by backends and the server, not by applications: kept off the front
// page (still reachable for the crates that need them).
#[doc(hidden)]
pub use wharf_core::{HeaderIndex, PublishSource};

/// The in-process backend: bounded per-topic windows, consumer groups,
/// leases, dead-lettering and backpressure, without durability.
///
/// The full documentation is [`wharf_memory`]'s.
#[cfg(all(feature = "router", feature = "memory", feature = "broker"))]
#[cfg_attr(docsrs, doc(cfg(feature = "router")))]
pub mod guide;

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub mod memory {
    #[doc(inline)]
    pub use wharf_memory::*;
}

/// The embedded durable broker on Wharf's own crash-safe log:
/// [`Broker::open`](wharf_broker::Broker::open) a directory, or
/// [`Broker::temporary`](wharf_broker::Broker::temporary) for tests.
///
/// The full documentation (topic settings, durability, retention, groups,
/// dead-letter redrive) is [`wharf_broker`]'s.
#[cfg(feature = "broker")]
#[cfg_attr(docsrs, doc(cfg(feature = "broker")))]
pub mod broker {
    #[doc(inline)]
    pub use wharf_broker::*;
}

/// Event sourcing: an event store with streams, expected versions,
/// conditional appends across streams, a global log with catch-up-then-live
/// subscriptions and stream metadata, and aggregates with snapshots and
/// upcasting ([`aggregate`](wharf_eventstore::aggregate)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), wharf::eventstore::EventStoreError> {
/// use wharf::eventstore::{
///     EmbeddedStore, EventData, EventStore, ExpectedVersion, GlobalFilter, ReadStream,
///     StreamId, SubscribeFrom,
/// };
///
/// let store = EmbeddedStore::temporary().await?; // or EmbeddedStore::open(dir)
/// let order = StreamId::new("order-42")?;
/// store
///     .append(&order, ExpectedVersion::NoStream, vec![
///         EventData::new("OrderPlaced", r#"{"total":42}"#).with_tag("customer:7"),
///     ])
///     .await?; // atomic, durable when it returns
/// let events = store.read_stream(&order, ReadStream::forwards()).await?;
/// assert_eq!(events[0].event_type, "OrderPlaced");
/// let mut live = store.subscribe(SubscribeFrom::Start, GlobalFilter::all()).await?;
/// assert_eq!(live.next().await.expect("an event")?.event_type, "OrderPlaced");
/// # Ok(()) }
/// ```
///
/// The full documentation is [`wharf_eventstore`]'s.
#[cfg(feature = "eventstore")]
#[cfg_attr(docsrs, doc(cfg(feature = "eventstore")))]
pub mod eventstore {
    #[doc(inline)]
    pub use wharf_eventstore::*;
}

/// Handlers bound to subscriptions, run with per-key ordering, graceful
/// shutdown and tower middleware: `retry`, `retry_topics`, `dead_letter`,
/// `dedup`, `timeout`, `rate_limit`, `concurrency`, `breaker`, `recover`,
/// `trace`, `metrics`, and `batch` handlers.
///
/// Also re-exported here so a router needs no other dependency: tower's
/// [`ServiceBuilder`](tower::ServiceBuilder), [`Layer`](tower::Layer) and
/// [`Service`](tower::Service), and tokio-util's
/// [`CancellationToken`](tokio_util::sync::CancellationToken) (what [`Router::run`](wharf_router::Router::run)
/// stops on).
///
/// The full documentation, with an example per middleware, is
/// [`wharf_router`]'s; the crate root has a router with retry, a DLQ and
/// dedup.
#[cfg(feature = "router")]
#[cfg_attr(docsrs, doc(cfg(feature = "router")))]
pub mod router {
    #[doc(inline)]
    pub use wharf_router::*;

    pub use tokio_util::sync::CancellationToken;
    pub use tower::{Layer, Service, ServiceBuilder};
}

/// The remote client of a `wharf serve` (gRPC, one HTTP/2 connection,
/// reconnect and resubscribe): `Client::connect("http://127.0.0.1:7420")`.
///
/// The full documentation is [`wharf_client`]'s.
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client {
    #[doc(inline)]
    pub use wharf_client::*;
}

/// NATS JetStream adapter, and core NATS as a non-durable at-most-once mode.
///
/// What maps to what and what is not supported: [`wharf_nats`].
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats {
    #[doc(inline)]
    pub use wharf_nats::*;
}

/// Redis Streams adapter, Redis Pub/Sub as a non-durable at-most-once mode,
/// and a Redis dedup store.
///
/// What maps to what and what is not supported: [`wharf_redis`].
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis {
    #[doc(inline)]
    pub use wharf_redis::*;
}

/// RabbitMQ adapter.
///
/// What maps to what and what is not supported: [`wharf_amqp`].
#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
pub mod amqp {
    #[doc(inline)]
    pub use wharf_amqp::*;
}

/// Kafka adapter (rdkafka): idempotent `acks=all` publishing with Java
/// compatible key partitioning, consumer groups with at-least-once
/// settlement on committed offsets.
///
/// What maps to what and what is not supported: [`wharf_kafka`].
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub mod kafka {
    #[doc(inline)]
    pub use wharf_kafka::*;
}

/// Amazon SQS adapter (aws-sdk-sqs): a topic is a queue whose
/// subscriptions compete, the visibility timeout is the lease, a redrive
/// policy backs the dead-letter queue, FIFO queues keep order per key.
///
/// What maps to what and what is not supported: [`wharf_sqs`].
#[cfg(feature = "sqs")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqs")))]
pub mod sqs {
    #[doc(inline)]
    pub use wharf_sqs::*;
}

/// MQTT 5 adapter (rumqttc): QoS 1 with the PUBACK sent after the
/// handler's ack, shared subscriptions as consumer groups, persistent
/// sessions, retained publishes.
///
/// What maps to what and what is not supported: [`wharf_mqtt`].
#[cfg(feature = "mqtt")]
#[cfg_attr(docsrs, doc(cfg(feature = "mqtt")))]
pub mod mqtt {
    #[doc(inline)]
    pub use wharf_mqtt::*;
}

/// Google Cloud Pub/Sub adapter (gcloud-pubsub, against the emulator):
/// StreamingPull with flow control, ack deadlines as leases, ordering keys
/// as Wharf keys, dead letters on top of a dead-letter policy.
///
/// What maps to what and what is not supported: [`wharf_pubsub`].
#[cfg(feature = "pubsub")]
#[cfg_attr(docsrs, doc(cfg(feature = "pubsub")))]
pub mod pubsub {
    #[doc(inline)]
    pub use wharf_pubsub::*;
}

/// PostgreSQL adapter, the transactional outbox and a dedup store.
///
/// What maps to what and what is not supported: [`wharf_postgres`].
/// [`sqlx`] is re-exported here (the version these types are built on), so
/// the pool and transactions that
/// [`Outbox::enqueue`](crate::postgres::outbox::Outbox::enqueue) and
/// [`PostgresBackend::publish_in`](crate::postgres::PostgresBackend::publish_in)
/// take need no `sqlx` line of your own.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres {
    #[doc(inline)]
    pub use wharf_postgres::*;

    #[doc(no_inline)]
    pub use sqlx;
}
