//! Runs the `wharf-testkit` conformance suite against the memory backend,
//! held to exactly the capabilities it declares.

use std::sync::Arc;

struct Factory;

#[async_trait::async_trait]
impl wharf_testkit::BackendFactory for Factory {
    async fn open(&self) -> Arc<dyn wharf_core::Backend> {
        Arc::new(wharf_memory::MemoryBackend::new())
    }
}

wharf_testkit::conformance_tests!(
    Factory,
    capabilities: [
        OrderingPerKey,
        ConsumerGroups,
        NackWithDelay,
        VisibilityTimeout,
        ExtendLease,
        DelayedPublish,
        Ttl,
        ReplayFromOffset,
        ReplayFromTime,
        Wildcards,
        DeadLetter,
        MaxDeliveries,
        Backpressure,
        PartitionAssignment,
        Retention,
        Redelivery,
    ]
);
