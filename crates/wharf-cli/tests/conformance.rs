//! The wharf-testkit conformance suite run through `wharf-client` against a
//! real `wharf serve` process; the restart cases restart that process on the
//! same data dir (SIGTERM, then start again).

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use wharf_core::Backend;

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
