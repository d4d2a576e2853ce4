//! The event store conformance suite (`wharf_testkit::eventstore`) on the
//! embedded store: on disk (each case in its own directory, reopened by
//! the restart case) and in memory (SimStorage; not persistent, so the
//! restart case skips).

use std::sync::Arc;

use async_trait::async_trait;
use wharf_eventstore::{EmbeddedStore, EventStore};
use wharf_testkit::eventstore::EventStoreFactory;

struct OnDisk(tempfile::TempDir);

#[async_trait]
impl EventStoreFactory for OnDisk {
    async fn open(&self) -> Arc<dyn EventStore> {
        Arc::new(
            EmbeddedStore::open(self.0.path())
                .await
                .expect("open the store"),
        )
    }
}

struct InMemory;

#[async_trait]
impl EventStoreFactory for InMemory {
    async fn open(&self) -> Arc<dyn EventStore> {
        Arc::new(EmbeddedStore::in_memory().await.expect("open the store"))
    }

    fn persistent(&self) -> bool {
        false
    }
}

mod on_disk {
    use super::*;
    wharf_testkit::eventstore_tests!(OnDisk(tempfile::tempdir().expect("temp dir")));
}

mod in_memory {
    use super::*;
    wharf_testkit::eventstore_tests!(InMemory);
}
