//! The router's middleware stack on Pub/Sub: leveled retry topics then the
//! dead-letter topic for a poison message, and the idempotent consumer
//! (in-memory dedup store) for a re-sent request — the shared
//! [`wharf_router::testing::retry_dlq_and_dedup_scenario`].

mod service;

use std::sync::Arc;

use wharf_router::dedup::MemoryDedupStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_through_retry_topics_to_the_dlq_and_a_resent_request_is_handled_once() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let store = Arc::new(MemoryDedupStore::new());
    wharf_router::testing::retry_dlq_and_dedup_scenario(Arc::new(ns.backend.clone()), store).await;
}
