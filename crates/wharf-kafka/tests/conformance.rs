//! The wharf-testkit conformance suite against the test Kafka broker
//! (`scripts/ensure-kafka.sh`), each case under a topic prefix of its own
//! (deleted afterwards).

mod service;

wharf_testkit::conformance_tests!(
    match service::factory().await {
        Some(factory) => factory,
        None => return,
    },
    capabilities: [
        ConsumerGroups,
        OrderingPerKey,
        Retention,
        ReplayFromOffset,
        ReplayFromTime,
        Wildcards,
    ],
    setups: [],
);
