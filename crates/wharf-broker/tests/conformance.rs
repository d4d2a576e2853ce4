//! The wharf-testkit conformance suite against `Broker::open` on a temp dir,
//! including the restart cases (the factory reopens the same directory).
//! Topics with retention or a dedup window are made with `TopicConfig` on a
//! second broker in a directory of their own, with small segments; a
//! consumer "process" shares the broker and its death forgets what it
//! holds (`tests/kill9.rs` `kill -9`s a real process consuming from a
//! broker, broker and all).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wharf_broker::{Broker, TopicConfig};
use wharf_core::Backend;
use wharf_testkit::{ConsumerProcess, TopicSettings, Unsupported};

struct Factory {
    dir: tempfile::TempDir,
    /// Directories of the brokers opened for topics with settings.
    others: Mutex<Vec<tempfile::TempDir>>,
}

impl Factory {
    fn new() -> Self {
        Factory {
            dir: tempfile::tempdir().expect("temp dir"),
            others: Mutex::default(),
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

    async fn open_topic_with(
        &self,
        topic: &str,
        settings: &TopicSettings,
    ) -> Result<Arc<dyn Backend>, Unsupported> {
        // Retention drops whole sealed segments: small ones make it act
        // within a few times the limit.
        let mut config = TopicConfig::default().segment_bytes(16 * 1024);
        if settings.retention_bytes.is_some() || settings.retention_age.is_some() {
            config = config.retention(settings.retention_bytes, settings.retention_age);
        }
        if let Some(w) = settings.dedup_window {
            config = config.dedup_window(Some(w));
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Broker::open(dir.path())
            .await
            .expect("open a broker for the topic");
        self.others.lock().expect("lock").push(dir);
        broker
            .create_topic(topic, config)
            .await
            .expect("create the topic");
        Ok(Arc::new(broker))
    }

    async fn open_consumer_process(
        &self,
        backend: &Arc<dyn Backend>,
    ) -> Result<ConsumerProcess, Unsupported> {
        Ok(ConsumerProcess::in_process(backend.clone()))
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
    ],
    setups: [RetentionBySize, RetentionByAge, DedupWindow, ConsumerDeath],
);
