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

/// A retry level longer than one SQS send can delay (15 minutes; 1 s hops
/// here stand in for it): the copy on `<topic>.retry.1` waits in hops and
/// is handled once, when due, on the second attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_level_longer_than_one_send_can_delay_waits_in_hops() {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use tokio_util::sync::CancellationToken;
    use tower::ServiceBuilder;
    use wharf_core::{Backend, Message, StartPosition, SubscribeOptions};
    use wharf_router::retry_topics::RetryTopicsLayer;
    use wharf_router::{handler_fn, HandlerError, Outcome, Request, Route, Router};

    let Some(ns) =
        service::namespace_with(service::unique_config().delay_hop(Duration::from_secs(1))).await
    else {
        return;
    };
    let b: Arc<dyn Backend> = Arc::new(ns.backend.clone());
    let topic = wharf_testkit::unique_name("payments");
    let calls: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let c = calls.clone();
    let handler = handler_fn(move |req: Request| {
        let mut calls = c.lock().expect("calls");
        calls.push((Instant::now(), req.topic().to_owned()));
        let first = calls.len() == 1;
        async move {
            if first {
                Err(HandlerError::retryable("gateway down"))
            } else {
                Ok(Outcome::Ack)
            }
        }
    });
    let level = Duration::from_secs(4);
    let retry = RetryTopicsLayer::new([level]);
    let svc = ServiceBuilder::new().layer(retry.clone()).service(handler);
    let main = SubscribeOptions::new(&topic).start(StartPosition::Earliest);
    let mut router = Router::new(b.clone()).add_route(Route::new(main.clone(), svc.clone()));
    for o in retry.subscribe_options(&main) {
        router = router.add_route(Route::new(o, svc.clone()));
    }
    let stop = CancellationToken::new();
    let running = tokio::spawn(router.run(stop.clone()));
    b.publish(&topic, Message::new("charge"))
        .await
        .expect("publish");
    let deadline = Instant::now() + Duration::from_secs(30);
    while calls.lock().expect("calls").len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing more arrives: the retry copy was handled once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    running.await.expect("join").expect("router");
    let calls = calls.lock().expect("calls").clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].1, topic);
    assert_eq!(calls[1].1, format!("{topic}.retry.1"));
    let waited = calls[1].0 - calls[0].0;
    assert!(
        waited >= level,
        "retried after {waited:?}, before the level's {level:?}"
    );
}
