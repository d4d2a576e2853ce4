//! The wharf-testkit conformance suite against the Pub/Sub emulator, each
//! case under a prefix of its own (its topics and subscriptions deleted
//! afterwards). No topic settings: Pub/Sub keeps messages by age only, at
//! least 10 minutes, and has no dedup window. No consumer processes: the
//! emulator gives a dead consumer's messages back only after one or more
//! stream deadlines (at least 10 s each), past the suite's wait; `tests/pubsub.rs`
//! checks that death with a longer wait.

mod service;

wharf_testkit::conformance_tests!(
    match service::factory().await {
        Some(factory) => factory,
        None => return,
    },
    capabilities: [
        Persistence,
        OrderingPerKey,
        ConsumerGroups,
        NackWithDelay,
        VisibilityTimeout,
        ExtendLease,
        Ttl,
        DeadLetter,
        MaxDeliveries,
        Retention,
        Redelivery,
    ],
    setups: [],
);
