//! The wharf-testkit conformance suite against the shared NATS server, each
//! case in a JetStream stream of its own (deleted afterwards).

mod service;

wharf_testkit::conformance_tests!(
    match service::factory().await {
        Some(factory) => factory,
        None => return,
    },
    capabilities: [
        Persistence,
        ConsumerGroups,
        NackWithDelay,
        VisibilityTimeout,
        ExtendLease,
        Ttl,
        Dedup,
        ReplayFromOffset,
        Wildcards,
        DeadLetter,
        MaxDeliveries,
        Retention,
        Redelivery,
    ],
    setups: [RetentionBySize, RetentionByAge, DedupWindow, ConsumerDeath],
);
