//! The wharf-testkit conformance suite against [`wharf_nats::NatsCoreBackend`]
//! (core NATS pub/sub, non-durable) on the shared server, each case under a
//! subject prefix of its own. Cases needing a capability it does not declare
//! (retention, redelivery, leases, …) skip.

mod service;

wharf_testkit::conformance_tests!(
    match service::core_factory().await {
        Some(factory) => factory,
        None => return,
    },
    capabilities: [
        ConsumerGroups,
        OrderingPerKey,
        Wildcards,
    ],
    // Nothing is stored and nothing redelivered: no set-up applies.
    setups: [],
);
