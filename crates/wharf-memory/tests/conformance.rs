//! Runs the `wharf-testkit` conformance suite against the memory backend,
//! held to exactly the capabilities it declares. A consumer "process" is a
//! second consumer of the same backend whose death forgets what it holds;
//! topics have no size or age retention and no dedup, so those set-ups are
//! not provided.

use std::sync::Arc;

use wharf_core::Backend;
use wharf_testkit::{ConsumerProcess, TopicSettings, Unsupported};

struct Factory;

#[async_trait::async_trait]
impl wharf_testkit::BackendFactory for Factory {
    async fn open(&self) -> Arc<dyn Backend> {
        Arc::new(wharf_memory::MemoryBackend::new())
    }

    async fn open_topic_with(
        &self,
        _topic: &str,
        _settings: &TopicSettings,
    ) -> Result<Arc<dyn Backend>, Unsupported> {
        Err(Unsupported::new(
            "memory topics keep a window of `topic_capacity` messages (a count, not bytes \
             or age) and have no dedup",
        ))
    }

    async fn open_consumer_process(
        &self,
        backend: &Arc<dyn Backend>,
    ) -> Result<ConsumerProcess, Unsupported> {
        Ok(ConsumerProcess::in_process(backend.clone()))
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
    ],
    setups: [ConsumerDeath],
);
