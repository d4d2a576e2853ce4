//! Helpers for unit-testing handlers and middleware without a backend: a
//! [`RecordingPublisher`] that keeps what was published, and [`call`] to
//! drive one request through a service.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tower::Service;
use wharf_core::{Message, Publisher, Receipt, Result};

use crate::outcome::{HandlerError, HandlerResult, Outcome};
use crate::request::{Context, Request};

/// A publisher that stores every published `(topic, message)` in memory.
#[derive(Default, Debug)]
pub struct RecordingPublisher {
    published: Mutex<Vec<(String, Message)>>,
    fail: Mutex<Option<u32>>,
}

impl RecordingPublisher {
    /// Everything published so far, in order.
    pub fn published(&self) -> Vec<(String, Message)> {
        self.published
            .lock()
            .expect("recording publisher lock poisoned")
            .clone()
    }

    /// Makes the next `n` publishes fail with [`wharf_core::Error::Unavailable`].
    pub fn fail_next(&self, n: u32) {
        *self.fail.lock().expect("recording publisher lock poisoned") = Some(n);
    }
}

#[async_trait]
impl Publisher for RecordingPublisher {
    async fn publish(&self, topic: &str, message: Message) -> Result<Receipt> {
        {
            let mut fail = self.fail.lock().expect("recording publisher lock poisoned");
            if let Some(n) = fail.as_mut() {
                if *n > 0 {
                    *n -= 1;
                    return Err(wharf_core::Error::Unavailable {
                        backend: "recording",
                        source: "injected failure".into(),
                    });
                }
            }
        }
        let id = message.id();
        let mut p = self
            .published
            .lock()
            .expect("recording publisher lock poisoned");
        p.push((topic.to_owned(), message));
        Ok(Receipt::new(id, 0, Some(p.len() as u64 - 1)))
    }
}

/// A [`Context`] over a fresh [`RecordingPublisher`], which is returned too.
pub fn ctx() -> (Context, Arc<RecordingPublisher>) {
    let p = Arc::new(RecordingPublisher::default());
    (Context::new(p.clone()), p)
}

/// Waits for `svc` to be ready and calls it with `req`.
///
/// # Errors
/// Whatever the service returns.
pub async fn call<S>(mut svc: S, req: Request) -> HandlerResult
where
    S: Service<Request, Response = Outcome, Error = HandlerError>,
{
    futures_util::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
}

/// The router's stack on a real backend, for adapter tests: a poison message
/// climbs two retry topics (300 ms each) to `dlq.orders` with the DLQ
/// headers, and a request sent twice with one `idempotency-key` is handled
/// once through `store`. Panics on any deviation; closes `b` at the end.
/// The routes consume as group `billing`, or — on a backend without
/// [`ConsumerGroups`](wharf_core::Capability::ConsumerGroups), whose
/// subscriptions of a topic all share one queue (SQS) — without a group.
pub async fn retry_dlq_and_dedup_scenario(
    b: std::sync::Arc<dyn wharf_core::Backend>,
    store: std::sync::Arc<dyn crate::dedup::DedupStore>,
) {
    use std::collections::HashMap;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use tower::ServiceBuilder;
    use wharf_core::{header, StartPosition, SubscribeOptions};

    use crate::dead_letter::DeadLetterLayer;
    use crate::dedup::DedupLayer;
    use crate::retry_topics::RetryTopicsLayer;
    use crate::{handler_fn, Route, Router};

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
    let dedup = DedupLayer::new(store, Duration::from_secs(3600)).key_fn(|r: &Request| {
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
    let mut main = SubscribeOptions::new("orders").start(StartPosition::Earliest);
    if b.capabilities()
        .contains(wharf_core::Capability::ConsumerGroups)
    {
        main = main.group("billing");
    }
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
