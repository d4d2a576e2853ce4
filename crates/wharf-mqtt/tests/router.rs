//! The router's middleware stack on the MQTT backend: leveled retry topics
//! then the dead-letter topic for a poison message, and the idempotent
//! consumer (in-memory dedup store) for a re-sent request — the shared
//! [`wharf_router::testing::retry_dlq_and_dedup_scenario`].
//!
//! The scenario publishes its requests before the router subscribes, and
//! MQTT keeps nothing for a group that does not exist yet. So the router's
//! group exists first as a durable session: a consumer with the router's
//! client id joins group `billing` on `orders` and loses its connection
//! (no unsubscribe), the scenario's publishes queue in that session, and
//! the router's subscription — the same client id — resumes it.

mod service;

use std::sync::Arc;

use wharf_core::{StartPosition, SubscribeOptions, Subscriber};
use wharf_router::dedup::MemoryDedupStore;
use wharf_testkit::proxy::Proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_through_retry_topics_to_the_dlq_and_a_resent_request_is_handled_once() {
    let ns = wharf_testkit::unique_name("wm");
    let (proxy, url) = Proxy::for_url(&service::url()).await.expect("proxy");
    let Some(earlier) = service::backend_with(service::config_at(&url, &ns)).await else {
        return;
    };
    let member = earlier
        .subscribe(
            SubscribeOptions::new("orders")
                .group("billing")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("the group's first member");
    proxy.cut().await;
    let b = service::backend_with(service::config_at(&service::url(), &ns))
        .await
        .expect("the router's backend");
    let store = Arc::new(MemoryDedupStore::new());
    wharf_router::testing::retry_dlq_and_dedup_scenario(Arc::new(b), store).await;
    drop(member);
}
