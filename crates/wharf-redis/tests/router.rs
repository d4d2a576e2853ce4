//! The router's middleware stack on the Redis Streams backend: leveled retry
//! topics then the dead-letter topic for a poison message, and the
//! idempotent consumer backed by [`RedisDedupStore`] (`SET NX EX`) for a
//! re-sent request.

mod service;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use wharf_core::{header, Backend, BoxError, Message, StartPosition, SubscribeOptions};
use wharf_redis::RedisDedupStore;
use wharf_router::dead_letter::DeadLetterLayer;
use wharf_router::dedup::{DedupLayer, DedupStore};
use wharf_router::retry_topics::RetryTopicsLayer;
use wharf_router::{handler_fn, HandlerError, Outcome, Request, Route, Router};

/// The router's dedup seam on the Redis store.
struct RedisStore(RedisDedupStore);

#[async_trait]
impl DedupStore for RedisStore {
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
    let b: Arc<dyn Backend> = Arc::new(ns.backend.clone());
    let request = || {
        Message::builder()
            .payload("charge card")
            .header("idempotency-key", "payment-77")
            .build()
    };
    b.publish("orders", request()).await.expect("publish");
    b.publish("orders", request()).await.expect("publish");
    b.publish("orders", Message::new("poison"))
        .await
        .expect("publish");
    b.publish("orders", Message::new("fine"))
        .await
        .expect("publish");
    let mut dlq = b
        .subscribe(
            SubscribeOptions::new("dlq.orders")
                .group("inspect")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe dlq");

    let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let c = calls.clone();
    let handler = handler_fn(move |req: Request| {
        let text = String::from_utf8_lossy(req.message().payload()).into_owned();
        *c.lock().expect("calls").entry(text.clone()).or_default() += 1;
        async move {
            if text == "poison" {
                Err(HandlerError::retryable("payment service down"))
            } else {
                Ok(Outcome::Ack)
            }
        }
    });
    let retry = RetryTopicsLayer::new([Duration::from_millis(300), Duration::from_millis(300)]);
    let store = RedisStore(RedisDedupStore::new(
        ns.backend.connection(),
        ns.config.key_prefix_value(),
    ));
    let dedup =
        DedupLayer::new(Arc::new(store), Duration::from_secs(3600)).key_fn(|r: &Request| {
            r.message()
                .headers()
                .get("idempotency-key")
                .map(str::to_owned)
        });
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new())
        .layer(retry.clone())
        .layer(dedup)
        .service(handler);
    let main = SubscribeOptions::new("orders")
        .group("billing")
        .start(StartPosition::Earliest);
    let mut router = Router::new(b.clone()).add_route(Route::new(main.clone(), svc.clone()));
    for o in retry.subscribe_options(&main) {
        router = router.add_route(Route::new(o, svc.clone()));
    }
    let stop = CancellationToken::new();
    let running = tokio::spawn(router.run(stop.clone()));

    let dead = tokio::time::timeout(Duration::from_secs(20), dlq.next())
        .await
        .expect("dead letter in time")
        .expect("dlq subscription open")
        .expect("dead letter");
    stop.cancel();
    let report = running.await.expect("join").expect("router");
    let h = dead.message().headers();
    assert_eq!(&dead.message().payload()[..], b"poison");
    assert_eq!(h.get(header::ORIGINAL_TOPIC), Some("orders"));
    assert_eq!(h.get(header::ATTEMPTS), Some("3"));
    assert!(h
        .get(header::DLQ_REASON)
        .expect("reason")
        .contains("payment service down"));
    dead.ack().await.expect("ack dead letter");
    let calls = calls.lock().expect("calls").clone();
    assert_eq!(calls.get("charge card"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("fine"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("poison"), Some(&3), "{calls:?}");
    assert!(report.acked() >= 4, "{report:?}");
    b.close().await.expect("close");
}
