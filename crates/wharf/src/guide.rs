//! The guide: concepts, one page per pattern and one per backend, each page
//! a module whose docs come from `crates/wharf/guide/*.md` (the backends'
//! under `guide/backends/`), so every code block there is a doc test
//! (`cargo test -p wharf --features router`; the adapter pages' need their
//! features and services, see `scripts/test.sh`).
#![doc = include_str!("../guide/README.md")]

macro_rules! page {
    ($(#[$meta:meta])* $name:ident, $file:literal) => {
        $(#[$meta])*
        #[doc = include_str!(concat!("../guide/", $file))]
        pub mod $name {}
    };
}

page!(concepts, "concepts.md");
page!(retry, "retry.md");
page!(retry_topics, "retry_topics.md");
page!(dead_letters, "dead_letters.md");
page!(idempotent_consumer, "idempotent_consumer.md");
page!(outbox, "outbox.md");
page!(ordering, "ordering.md");
page!(batching, "batching.md");
page!(backpressure, "backpressure.md");
page!(rate_limiting, "rate_limiting.md");
page!(circuit_breaker, "circuit_breaker.md");
page!(graceful_shutdown, "graceful_shutdown.md");
page!(request_reply, "request_reply.md");
/// What each backend supports, side by side; a page per backend below.
#[doc = include_str!("../guide/backends.md")]
pub mod backends {
    page!(memory, "backends/memory.md");
    page!(broker, "backends/broker.md");
    page!(client, "backends/client.md");
    page!(nats, "backends/nats.md");
    page!(redis, "backends/redis.md");
    page!(amqp, "backends/amqp.md");
    page!(postgres, "backends/postgres.md");
}
