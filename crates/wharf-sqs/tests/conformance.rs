//! The wharf-testkit conformance suite against the SQS test server (moto,
//! `scripts/ensure-moto.sh`): once on standard queues, once on FIFO queues
//! (module `fifo`), each case under a queue prefix of its own (every queue
//! deleted afterwards).

mod service;

/// The default lease of the suite's subscriptions (cases about leases set
/// their own). Longer than SQS's 30 s because the test server is slow
/// where the suite is not: while a subscription waits on a FIFO message
/// group that has a message in flight, moto takes ~0.4 s per `SendMessage`
/// (30 sends with one long-polling receiver: 11–13 s, against 0.4 s
/// without; measured with boto3 against moto 5.2.6), so
/// `ordering_per_key_is_kept`'s 90 publishes outlast a 30 s lease on the
/// deliveries its subscription received first, and their acks fail.
fn suite_config(config: wharf_sqs::SqsConfig) -> wharf_sqs::SqsConfig {
    config.visibility_timeout(std::time::Duration::from_secs(180))
}

wharf_testkit::conformance_tests!(
    match service::factory_with(suite_config(service::unique_config())).await {
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
        match service::factory_with(super::suite_config(service::unique_fifo_config())).await {
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
