//! The event store conformance suite (`wharf_testkit::eventstore_tests!`)
//! run through `wharf-client`'s `RemoteEventStore` against a real
//! `wharf serve` process: every case opens the store over gRPC; a second
//! open (the restart case) restarts the server process on the same data
//! dir first (SIGTERM, start again), so what it reads back was kept by the
//! server's store on disk.

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use wharf_eventstore::EventStore;

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
impl wharf_testkit::eventstore::EventStoreFactory for Factory {
    async fn open(&self) -> Arc<dyn EventStore> {
        let url = {
            let mut guard = self.server.lock().expect("lock");
            match guard.as_mut() {
                Some(s) => s.restart(),
                None => *guard = Some(common::Server::start(self.dir.path(), None)),
            }
            guard.as_ref().expect("started").url()
        };
        let store = wharf_client::RemoteEventStore::connect(&url, None)
            .await
            .expect("connect to wharf serve's event store");
        Arc::new(store)
    }
}

wharf_testkit::eventstore_tests!(Factory::new());
