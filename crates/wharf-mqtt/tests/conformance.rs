//! The wharf-testkit conformance suite against the shared Mosquitto
//! server, each case under a topic prefix and client id of its own.

mod service;

wharf_testkit::conformance_tests!(
    match service::factory().await {
        Some(factory) => factory,
        None => return,
    },
    capabilities: [
        ConsumerGroups,
        NackWithDelay,
        Ttl,
        Wildcards,
        DeadLetter,
        MaxDeliveries,
        Redelivery,
    ],
    // A topic has no settings in MQTT, and a consumer that dies keeps its
    // messages in its session until it comes back (see the crate docs).
    setups: [],
);
