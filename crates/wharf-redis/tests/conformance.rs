//! The wharf-testkit conformance suite against the shared Redis server, each
//! case under a key prefix of its own (deleted afterwards).

mod service;

wharf_testkit::conformance_tests!(
    match service::factory().await {
        Some(factory) => factory,
        None => return,
    },
    capabilities: [
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
    setups: [DedupWindow, ConsumerDeath],
);
