//! Middleware composed on a router over the in-memory backend: the circuit
//! breaker pauses consumption, batch routes settle per message, dedup skips
//! redelivered duplicates.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{payload_num, publish_n};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use wharf_core::{Backend, Message, StartPosition, SubscribeOptions};
use wharf_router::breaker::{BreakerConfig, CircuitBreaker};
use wharf_router::dedup::{DedupLayer, MemoryDedupStore};
use wharf_router::{
    batch_fn, handler_fn, BatchRoute, HandlerError, Outcome, Request, Route, Router,
};

fn opts(topic: &str) -> SubscribeOptions {
    SubscribeOptions::new(topic)
        .group("g")
        .start(StartPosition::Earliest)
}

async fn open_breaker_pauses_fetching_and_spends_no_retries(b: Arc<dyn Backend>) {
    publish_n(&b, "calls", 200, |_| None).await;
    let healthy = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (h, c, a, st) = (healthy.clone(), calls.clone(), acked.clone(), stop.clone());
    let handler = handler_fn(move |_req: Request| {
        c.fetch_add(1, Ordering::SeqCst);
        let ok = h.load(Ordering::SeqCst);
        let (a, st) = (a.clone(), st.clone());
        async move {
            if !ok {
                return Err(HandlerError::retryable("downstream unavailable"));
            }
            if a.fetch_add(1, Ordering::SeqCst) + 1 == 200 {
                st.cancel();
            }
            Ok(Outcome::Ack)
        }
    });
    let breaker = CircuitBreaker::new(BreakerConfig::new(3, Duration::from_secs(60)));
    let svc = ServiceBuilder::new()
        .layer(breaker.layer())
        .service(handler);
    let route = Route::new(opts("calls").max_in_flight(16), svc)
        .lanes(1)
        .paused_by(breaker.gate());
    let run = tokio::spawn(Router::new(b.clone()).add_route(route).run(stop));

    // While the dependency is down for 10 minutes the breaker is mostly
    // open: only the first failures and one probe per minute reach it.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let during_outage = calls.load(Ordering::SeqCst);
    assert!(
        (3..=3 + 10).contains(&during_outage),
        "{during_outage} calls during the outage"
    );
    healthy.store(true, Ordering::SeqCst);
    let report = run.await.unwrap().unwrap();
    assert_eq!(acked.load(Ordering::SeqCst), 200);
    // The failures were nacked and redelivered; nothing was lost.
    assert_eq!(report.acked(), 200);
    assert_eq!(report.nacked() as usize, during_outage);
}

async fn batch_handler_gets_up_to_max_messages_and_settles_each_by_its_outcome(
    b: Arc<dyn Backend>,
) {
    publish_n(&b, "events", 25, |_| None).await;
    let sizes: Arc<Mutex<Vec<usize>>> = Arc::default();
    let seen = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (s, n, st) = (sizes.clone(), seen.clone(), stop.clone());
    let handler = batch_fn(move |batch: wharf_router::Batch| {
        let (s, n, st) = (s.clone(), n.clone(), st.clone());
        async move {
            s.lock().unwrap().push(batch.requests.len());
            let outcomes = batch
                .requests
                .iter()
                .map(|r| {
                    let v = payload_num(r.message());
                    if v % 10 == 7 && r.attempt() == 1 {
                        Outcome::retry()
                    } else if v == 13 {
                        Outcome::reject("unlucky")
                    } else {
                        Outcome::Ack
                    }
                })
                .collect::<Vec<_>>();
            if n.fetch_add(batch.requests.len(), Ordering::SeqCst) + batch.requests.len() >= 27 {
                st.cancel();
            }
            Ok(outcomes)
        }
    });
    let report = Router::new(b.clone())
        .batch_route(BatchRoute::new(
            opts("events"),
            handler,
            10,
            Duration::from_millis(50),
        ))
        .run(stop)
        .await
        .unwrap();
    let sizes = sizes.lock().unwrap().clone();
    assert!(sizes.iter().all(|s| *s <= 10), "{sizes:?}");
    assert_eq!(sizes[0], 10);
    assert_eq!(sizes.iter().sum::<usize>(), 27, "{sizes:?}");
    assert_eq!(report.acked(), 24);
    assert_eq!(report.nacked(), 2);
    assert_eq!(report.rejected(), 1);
}

async fn batch_route_lingers_for_stragglers_then_handles_a_partial_batch(b: Arc<dyn Backend>) {
    let sizes: Arc<Mutex<Vec<(usize, Duration)>>> = Arc::default();
    let stop = CancellationToken::new();
    let start = Instant::now();
    let (s, st) = (sizes.clone(), stop.clone());
    let handler = batch_fn(move |batch: wharf_router::Batch| {
        let (s, st) = (s.clone(), st.clone());
        async move {
            s.lock()
                .unwrap()
                .push((batch.requests.len(), start.elapsed()));
            st.cancel();
            Ok(vec![Outcome::Ack; batch.requests.len()])
        }
    });
    let run = tokio::spawn(
        Router::new(b.clone())
            .batch_route(BatchRoute::new(
                opts("slow"),
                handler,
                100,
                Duration::from_millis(500),
            ))
            .run(stop),
    );
    b.publish("slow", Message::new("0")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.publish("slow", Message::new("1")).await.unwrap();
    let report = run.await.unwrap().unwrap();
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes.len(), 1);
    assert_eq!(sizes[0].0, 2);
    assert!(sizes[0].1 >= Duration::from_millis(500), "{sizes:?}");
    assert_eq!(report.acked(), 2);
}

async fn dedup_skips_a_resent_request_on_the_router(b: Arc<dyn Backend>) {
    // The client re-sends the same request as a new message (new id, so a
    // backend's own dedup window does not catch it) with the same
    // idempotency key.
    let request = || {
        Message::builder()
            .payload("charge card")
            .header("idempotency-key", "payment-77")
            .build()
    };
    b.publish("pay", request()).await.unwrap();
    b.publish("pay", request()).await.unwrap();
    b.publish("pay", Message::new("other")).await.unwrap();
    let charged = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let c = charged.clone();
    let handler = handler_fn(move |_req: Request| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Ok(Outcome::Ack) }
    });
    let svc = ServiceBuilder::new()
        .layer(
            DedupLayer::new(Arc::new(MemoryDedupStore::new()), Duration::from_secs(3600)).key_fn(
                |r: &Request| {
                    r.message()
                        .headers()
                        .get("idempotency-key")
                        .map(str::to_owned)
                },
            ),
        )
        .service(handler);
    let st = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        st.cancel();
    });
    let report = Router::new(b)
        .add_route(Route::new(opts("pay"), svc).lanes(1))
        .run(stop)
        .await
        .unwrap();
    assert_eq!(charged.load(Ordering::SeqCst), 2);
    assert_eq!(report.acked(), 3);
}

on_every_backend!(
    open_breaker_pauses_fetching_and_spends_no_retries,
    batch_handler_gets_up_to_max_messages_and_settles_each_by_its_outcome,
    batch_route_lingers_for_stragglers_then_handles_a_partial_batch,
    dedup_skips_a_resent_request_on_the_router,
);
