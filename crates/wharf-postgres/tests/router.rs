//! The router's middleware stack on the PostgreSQL backend: leveled retry topics
//! then the dead-letter topic for a poison message, and the idempotent
//! consumer ([`PgDedupStore`], a unique key) for a re-sent request — the shared
//! [`wharf_router::testing::retry_dlq_and_dedup_scenario`].

mod service;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use wharf_core::BoxError;
use wharf_postgres::PgDedupStore;
use wharf_router::dedup::DedupStore;

/// The router's dedup seam on the PostgreSQL store.
struct PgStore(PgDedupStore);

#[async_trait]
impl DedupStore for PgStore {
    async fn claim(&self, key: &str, ttl: Duration) -> Result<bool, BoxError> {
        Ok(self.0.check_and_set(key, ttl).await?)
    }
    async fn release(&self, key: &str) -> Result<(), BoxError> {
        Ok(self.0.release(key).await?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_through_retry_topics_to_the_dlq_and_a_resent_request_is_handled_once() {
    let Some(ns) = service::Namespace::new().await else {
        return;
    };
    let store = PgDedupStore::new(ns.backend.pool().clone(), ns.config.schema_name())
        .await
        .expect("dedup store");
    let store = Arc::new(PgStore(store));
    wharf_router::testing::retry_dlq_and_dedup_scenario(Arc::new(ns.backend.clone()), store).await;
}
