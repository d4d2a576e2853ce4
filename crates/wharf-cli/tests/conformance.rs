//! The wharf-testkit conformance suite run through `wharf-client` against a
//! real `wharf serve` process; the restart cases restart that process on the
//! same data dir (SIGTERM, then start again). Topics with retention or a
//! dedup window are created over the API (gRPC `CreateTopic`, with small
//! segments); a consumer "process" is a second client connected through a
//! proxy whose connections are cut when it dies.

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use wharf_client::proto as v1;
use wharf_core::Backend;
use wharf_testkit::proxy::Proxy;
use wharf_testkit::{ConsumerProcess, TopicSettings, Unsupported};

struct Factory {
    dir: tempfile::TempDir,
    server: Mutex<Option<common::Server>>,
}

impl Factory {
    fn new() -> Factory {
        Factory {
            dir: tempfile::tempdir().expect("temp dir"),
            server: Mutex::new(None),
        }
    }

    /// The server's URL, starting it if it is not running yet.
    fn url(&self) -> String {
        let mut guard = self.server.lock().expect("lock");
        guard
            .get_or_insert_with(|| common::Server::start(self.dir.path(), None))
            .url()
    }
}

#[async_trait]
impl wharf_testkit::BackendFactory for Factory {
    async fn open(&self) -> Arc<dyn Backend> {
        let url = {
            let mut guard = self.server.lock().expect("lock");
            match guard.as_mut() {
                Some(s) => s.restart(),
                None => *guard = Some(common::Server::start(self.dir.path(), None)),
            }
            guard.as_ref().expect("started").url()
        };
        let client = wharf_client::Client::connect(&url, None)
            .await
            .expect("connect to wharf serve");
        Arc::new(client)
    }

    async fn open_topic_with(
        &self,
        topic: &str,
        settings: &TopicSettings,
    ) -> Result<Arc<dyn Backend>, Unsupported> {
        let client = wharf_client::Client::connect(&self.url(), None)
            .await
            .expect("connect to wharf serve");
        client
            .raw()
            .create_topic(v1::CreateTopicRequest {
                name: topic.into(),
                retention_bytes: settings.retention_bytes,
                retention_ms: settings
                    .retention_age
                    .map(|a| u64::try_from(a.as_millis()).expect("ms")),
                dedup_window_ms: settings
                    .dedup_window
                    .map(|w| u64::try_from(w.as_millis()).expect("ms")),
                // Retention deletes whole sealed segments: small ones make
                // it act within a few times the limit.
                segment_bytes: Some(16 * 1024),
                ..Default::default()
            })
            .await
            .expect("CreateTopic");
        Ok(Arc::new(client))
    }

    async fn open_consumer_process(
        &self,
        _backend: &Arc<dyn Backend>,
    ) -> Result<ConsumerProcess, Unsupported> {
        let (proxy, url) = Proxy::for_url(&self.url()).await.expect("proxy");
        let client = wharf_client::Client::connect(&url, None)
            .await
            .expect("connect through the proxy");
        Ok(ConsumerProcess::through(Arc::new(client), proxy))
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
