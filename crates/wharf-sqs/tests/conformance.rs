//! The wharf-testkit conformance suite against the SQS test server (moto,
//! `scripts/ensure-moto.sh`): once on standard queues, once on FIFO queues
//! (module `fifo`), each case under a queue prefix of its own (every queue
//! deleted afterwards).

mod service;

wharf_testkit::conformance_tests!(
    match service::factory_with(service::unique_config()).await {
        Some(factory) => factory,
        None => return,
    },
    capabilities: [
        Persistence,
        NackWithDelay,
        VisibilityTimeout,
        ExtendLease,
        DelayedPublish,
        Ttl,
        DeadLetter,
        MaxDeliveries,
        Retention,
        Redelivery,
    ],
    setups: [],
);

/// FIFO queues: ordered per key (the message group), no per-message delay.
mod fifo {
    use super::service;

    wharf_testkit::conformance_tests!(
        match service::factory_with(service::unique_fifo_config()).await {
            Some(factory) => factory,
            None => return,
        },
        capabilities: [
            Persistence,
            OrderingPerKey,
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
}
