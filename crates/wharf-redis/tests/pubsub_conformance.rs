//! The wharf-testkit conformance suite against
//! [`wharf_redis::RedisPubSubBackend`] (Pub/Sub, non-durable) on the shared
//! server, each case on channels under a prefix of its own. Cases needing a
//! capability it does not declare (consumer groups, retention, redelivery,
//! …) skip.

mod service;

wharf_testkit::conformance_tests!(
    match service::pubsub_factory().await {
        Some(factory) => factory,
        None => return,
    },
    capabilities: [
        OrderingPerKey,
        Wildcards,
    ],
    // Nothing is stored and nothing redelivered: no set-up applies.
    setups: [],
);
