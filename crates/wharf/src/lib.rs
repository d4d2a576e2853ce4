//! Wharf: durable messaging for Rust — the one dependency a service adds.
//!
//! This facade re-exports the transport-agnostic model ([`wharf_core`]) at its
//! root and each backend behind a cargo feature:
//!
//! | feature | module | backend |
//! |---|---|---|
//! | `memory` (default) | [`memory`] | in-process, bounded, non-durable |
//! | `broker` (default) | [`broker`] | embedded durable broker on Wharf's own log |
//! | `router` | `router` | handlers, per-key ordering, tower middleware |
//! | `client` | `client` | remote client of `wharf serve` (gRPC) |
//! | `nats` / `redis` / `amqp` / `postgres` | `nats`, `redis`, `amqp`, `postgres` | adapters (and the PostgreSQL outbox) |
//!
//! See `examples/quickstart.rs` for a publish/consume round trip.

pub use wharf_core::*;

/// The in-process backend ([`wharf_memory`]).
#[cfg(feature = "memory")]
pub mod memory {
    pub use wharf_memory::*;
}

/// The embedded durable broker ([`wharf_broker`]).
#[cfg(feature = "broker")]
pub mod broker {
    pub use wharf_broker::*;
}

/// Handlers and middleware ([`wharf_router`]).
#[cfg(feature = "router")]
pub mod router {
    pub use wharf_router::*;
}

/// The remote client of `wharf serve` ([`wharf_client`]).
#[cfg(feature = "client")]
pub mod client {
    pub use wharf_client::*;
}

/// NATS JetStream adapter ([`wharf_nats`]).
#[cfg(feature = "nats")]
pub mod nats {
    pub use wharf_nats::*;
}

/// Redis Streams adapter ([`wharf_redis`]).
#[cfg(feature = "redis")]
pub mod redis {
    pub use wharf_redis::*;
}

/// RabbitMQ adapter ([`wharf_amqp`]).
#[cfg(feature = "amqp")]
pub mod amqp {
    pub use wharf_amqp::*;
}

/// PostgreSQL adapter and transactional outbox ([`wharf_postgres`]).
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use wharf_postgres::*;
}
