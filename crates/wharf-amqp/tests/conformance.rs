//! The wharf-testkit conformance suite against the shared RabbitMQ broker,
//! each case in a namespace (exchange and queues) of its own, deleted
//! afterwards. On the default config (plain queues); the priority case runs
//! with `AmqpConfig::priorities` in `tests/priorities.rs`.

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
        DelayedPublish,
        Ttl,
        Wildcards,
        DeadLetter,
        MaxDeliveries,
        Retention,
        Redelivery,
    ],
    setups: [ConsumerDeath],
);
