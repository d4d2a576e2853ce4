//! Leveled retry topics on the in-memory backend: a poison message climbs
//! the retry levels to the DLQ while the messages behind it are handled.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{next_within, payload_num, publish_n};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use wharf_core::{header, Backend, StartPosition, SubscribeOptions};
use wharf_router::dead_letter::DeadLetterLayer;
use wharf_router::retry_topics::{RetryTopicsLayer, RETRY_LEVEL};
use wharf_router::{handler_fn, HandlerError, Outcome, Request, Route, Router};

async fn poison_message_goes_through_retry_levels_to_the_dlq_without_blocking_others(
    b: Arc<dyn Backend>,
) {
    // One lane and one key: without retry topics message 0 would block the rest.
    publish_n(&b, "orders", 20, |_| Some("same".into())).await;
    let mut dlq = b
        .subscribe(
            SubscribeOptions::new("dlq.orders")
                .group("inspect")
                .start(StartPosition::Earliest),
        )
        .await
        .unwrap();
    let start = Instant::now();
    let log: Arc<Mutex<Vec<(String, usize, Duration)>>> = Arc::default();
    let l = log.clone();
    let handler = handler_fn(move |req: Request| {
        let l = l.clone();
        async move {
            let n = payload_num(req.message());
            l.lock()
                .unwrap()
                .push((req.topic().to_owned(), n, start.elapsed()));
            if n == 0 {
                Err(HandlerError::retryable("payment service down"))
            } else {
                Ok(Outcome::Ack)
            }
        }
    });
    let retry = RetryTopicsLayer::new([
        Duration::from_secs(60),
        Duration::from_secs(300),
        Duration::from_secs(1800),
    ]);
    let svc = ServiceBuilder::new()
        .layer(DeadLetterLayer::new())
        .layer(retry.clone())
        .service(handler);
    let main = SubscribeOptions::new("orders")
        .group("billing")
        .start(StartPosition::Earliest);
    let mut router =
        Router::new(b.clone()).add_route(Route::new(main.clone(), svc.clone()).lanes(1));
    for o in retry.subscribe_options(&main) {
        router = router.add_route(Route::new(o, svc.clone()).lanes(1));
    }
    let stop = CancellationToken::new();
    let running = tokio::spawn(router.run(stop.clone()));

    let dead = next_within(&mut dlq, Duration::from_secs(3 * 3600)).await;
    let arrived = start.elapsed();
    stop.cancel();
    let report = running.await.unwrap().unwrap();

    assert_eq!(payload_num(dead.message()), 0);
    let h = dead.message().headers();
    assert_eq!(h.get(header::ORIGINAL_TOPIC), Some("orders"));
    assert_eq!(h.get(header::ATTEMPTS), Some("4"));
    assert_eq!(h.get(RETRY_LEVEL), None);
    assert!(h
        .get(header::DLQ_REASON)
        .unwrap()
        .contains("payment service down"));
    // Delays are wall-clock (`deliver_after`). Under the paused clock a
    // backend deriving wall time from tokio's clock (the broker) sees the
    // real wall clock lag behind, so only lower bounds common to both hold:
    // the last level alone is 30 min, and every retry waits at least 1 min.
    assert!(arrived >= Duration::from_secs(1800), "{arrived:?}");

    let log = log.lock().unwrap().clone();
    let poison: Vec<(String, Duration)> = log
        .iter()
        .filter(|(_, n, _)| *n == 0)
        .map(|(t, _, at)| (t.clone(), *at))
        .collect();
    let topics: Vec<&str> = poison.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        vec![
            "orders",
            "orders.retry.1",
            "orders.retry.2",
            "orders.retry.3"
        ]
    );
    // Due times are wall-clock milliseconds. Waiting for one on the
    // consuming side (no DelayedPublish) subtracts the real time that passed
    // while tokio's clock was paused, so allow a second of slack.
    for w in poison.windows(2) {
        assert!(w[1].1 - w[0].1 >= Duration::from_secs(59), "{poison:?}");
    }
    // Every other message was handled once, before the first retry was even due.
    let others: Vec<&(String, usize, Duration)> = log.iter().filter(|(_, n, _)| *n != 0).collect();
    assert_eq!(others.len(), 19);
    assert!(others
        .iter()
        .all(|(t, _, at)| t == "orders" && *at < Duration::from_secs(60)));
    assert_eq!(report.acked(), 20 + 3);
    assert_eq!(report.released(), 0);
}

on_every_backend!(poison_message_goes_through_retry_levels_to_the_dlq_without_blocking_others,);

/// The memory backend without `DelayedPublish`, like NATS and Redis: the
/// retry levels must then wait for the due time on the consuming side.
struct NoDelayedPublish(Arc<dyn Backend>);

#[async_trait::async_trait]
impl wharf_core::Publisher for NoDelayedPublish {
    async fn publish(
        &self,
        topic: &str,
        m: wharf_core::Message,
    ) -> wharf_core::Result<wharf_core::Receipt> {
        self.0.publish(topic, m).await
    }
}

#[async_trait::async_trait]
impl wharf_core::Subscriber for NoDelayedPublish {
    async fn subscribe(&self, o: SubscribeOptions) -> wharf_core::Result<wharf_core::Subscription> {
        self.0.subscribe(o).await
    }
}

#[async_trait::async_trait]
impl Backend for NoDelayedPublish {
    fn name(&self) -> &'static str {
        "memory-without-delayed-publish"
    }
    fn capabilities(&self) -> wharf_core::Capabilities {
        self.0
            .capabilities()
            .without(wharf_core::Capability::DelayedPublish)
    }
    fn limits(&self) -> wharf_core::Limits {
        self.0.limits()
    }
    async fn close(&self) -> wharf_core::Result<()> {
        self.0.close().await
    }
}

#[tokio::test(start_paused = true)]
async fn retry_levels_work_without_delayed_publish() {
    let inner: Arc<dyn Backend> = Arc::new(wharf_memory::MemoryBackend::new());
    poison_message_goes_through_retry_levels_to_the_dlq_without_blocking_others(Arc::new(
        NoDelayedPublish(inner),
    ))
    .await;
}
