//! The wharf-testkit conformance suite against the shared PostgreSQL server,
//! each case in a schema of its own (dropped afterwards).

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
        DelayedPublish,
        Priorities,
        Ttl,
        Dedup,
        ReplayFromOffset,
        ReplayFromTime,
        Wildcards,
        DeadLetter,
        MaxDeliveries,
        Retention,
        Redelivery,
    ],
    setups: [ConsumerDeath],
);
