//! The router's middleware stack on SQS: leveled retry topics (copies
//! delayed by `DelaySeconds`) then the dead-letter topic for a poison
//! message, and the idempotent consumer (in-memory dedup store) for a
//! re-sent request — the shared
//! [`wharf_router::testing::retry_dlq_and_dedup_scenario`]. SQS declares
//! no consumer groups, so its routes run without one (the router refuses a
//! named group on such a backend; every route of a topic shares its queue).

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
