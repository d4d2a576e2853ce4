//! The wharf-testkit conformance suite against `Broker::open` on a temp dir,
//! including the restart cases (the factory reopens the same directory).

use std::sync::Arc;
use std::time::Duration;

use wharf_broker::Broker;
use wharf_core::Backend;

struct Factory {
    dir: tempfile::TempDir,
}

impl Factory {
    fn new() -> Self {
        Factory {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
}

#[async_trait::async_trait]
impl wharf_testkit::BackendFactory for Factory {
    async fn open(&self) -> Arc<dyn Backend> {
        // A previous broker on the same directory may still be shutting
        // down (its last tasks hold the metadata file for a moment).
        let mut last = None;
        for _ in 0..100 {
            match Broker::open(self.dir.path()).await {
                Ok(b) => return Arc::new(b),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cannot open broker: {last:?}");
    }
}

wharf_testkit::conformance_tests!(
    Factory::new(),
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
        PartitionAssignment,
        Retention,
        Redelivery,
    ]
);
