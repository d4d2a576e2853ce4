//! The router's middleware stack on the PostgreSQL backend: leveled retry topics
//! then the dead-letter topic for a poison message, and the idempotent
//! consumer ([`PgDedupStore`], a unique key) for a re-sent request — the shared
//! [`wharf_router::testing::retry_dlq_and_dedup_scenario`].

mod service;

use std::sync::Arc;

use wharf_postgres::PgDedupStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_through_retry_topics_to_the_dlq_and_a_resent_request_is_handled_once() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let store = PgDedupStore::new(ns.backend.pool().clone(), ns.config.schema_name())
        .await
        .expect("dedup store");
    // The adapter's store implements `wharf_core::DedupStore` itself.
    let store = Arc::new(store);
    wharf_router::testing::retry_dlq_and_dedup_scenario(Arc::new(ns.backend.clone()), store).await;
}
