//! Router behaviour on the in-memory backend: per-key ordering under
//! concurrency, capability checks at start-up, graceful shutdown that loses
//! nothing, panic recovery, settlement of every outcome, request-reply.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{next, payload_num, publish_n, quiet, Restricted};
use tokio_util::sync::CancellationToken;
use wharf_core::{header, Backend, Capability, Error, Message, StartPosition, SubscribeOptions};
use wharf_router::{handler_fn, HandlerError, Outcome, Request, Route, Router};

fn opts(topic: &str) -> SubscribeOptions {
    SubscribeOptions::new(topic)
        .group("g")
        .start(StartPosition::Earliest)
}

async fn messages_with_one_key_are_handled_in_order_while_keys_run_in_parallel(
    b: Arc<dyn Backend>,
) {
    publish_n(&b, "orders", 400, |i| Some(format!("k{}", i % 8))).await;
    let seen: Arc<Mutex<HashMap<String, Vec<usize>>>> = Arc::default();
    let running = Arc::new(AtomicUsize::new(0));
    let max_running = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (s, r, m, st) = (
        seen.clone(),
        running.clone(),
        max_running.clone(),
        stop.clone(),
    );
    let handler = handler_fn(move |req: Request| {
        let (s, r, m, st) = (s.clone(), r.clone(), m.clone(), st.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            let n = payload_num(req.message());
            // Later messages finish sooner: completion order differs from
            // delivery order across keys.
            tokio::time::sleep(Duration::from_millis(50 - (n % 50) as u64)).await;
            let key = String::from_utf8(req.message().key().unwrap().to_vec()).unwrap();
            let mut map = s.lock().unwrap();
            map.entry(key).or_default().push(n);
            if map.values().map(Vec::len).sum::<usize>() == 400 {
                st.cancel();
            }
            r.fetch_sub(1, Ordering::SeqCst);
            Ok(Outcome::Ack)
        }
    });
    let report = Router::new(b.clone())
        .add_route(Route::new(opts("orders"), handler).lanes(8))
        .run(stop)
        .await
        .unwrap();
    assert_eq!(report.acked(), 400);
    assert_eq!(report.released(), 0);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 8);
    for (k, v) in seen.iter() {
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(v, &sorted, "key {k} out of order");
        assert_eq!(v.len(), 50);
    }
    assert!(max_running.load(Ordering::SeqCst) > 1, "no parallelism");
    // Every ack reached the backend: nothing is redelivered.
    let mut sub = b.subscribe(opts("orders")).await.unwrap();
    assert!(quiet(&mut sub, Duration::from_secs(5)).await);
}

async fn route_needing_a_missing_capability_fails_before_consuming_anything(b: Arc<dyn Backend>) {
    publish_n(&b, "jobs", 1, |_| None).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let handler = handler_fn(move |_req: Request| {
        c.fetch_add(1, Ordering::SeqCst);
        async { Ok(Outcome::Ack) }
    });
    let restricted = Restricted::wrap(b.clone(), &[Capability::NackWithDelay]);
    let err = Router::new(restricted)
        .route(opts("other"), handler.clone())
        .add_route(Route::new(opts("jobs"), handler).requires(Capability::NackWithDelay))
        .run(CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::Unsupported {
            backend: "restricted",
            capability: Capability::NackWithDelay
        }
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // The message is still there for the group, on its first attempt.
    let mut sub = b.subscribe(opts("jobs")).await.unwrap();
    assert_eq!(next(&mut sub).await.attempt(), 1);
}

async fn options_needing_consumer_groups_are_refused_without_them(b: Arc<dyn Backend>) {
    let b = Restricted::wrap(b, &[Capability::ConsumerGroups]);
    let err = Router::new(b)
        .route(
            opts("jobs"),
            handler_fn(|_r: Request| async { Ok(Outcome::Ack) }),
        )
        .run(CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::Unsupported {
            capability: Capability::ConsumerGroups,
            ..
        }
    ));
}

async fn graceful_shutdown_drains_or_releases_and_a_restart_handles_the_rest(b: Arc<dyn Backend>) {
    publish_n(&b, "work", 100, |i| Some(format!("k{}", i % 4))).await;
    let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let make_handler = |acked: Arc<Mutex<Vec<usize>>>| {
        handler_fn(move |req: Request| {
            let acked = acked.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                acked.lock().unwrap().push(payload_num(req.message()));
                Ok(Outcome::Ack)
            }
        })
    };
    let stop = support::cancelled_after(Duration::from_millis(350));
    let report = Router::new(b.clone())
        .shutdown_timeout(Duration::from_millis(120))
        .add_route(
            Route::new(opts("work"), make_handler(acked.clone()))
                .lanes(4)
                .fetch_batch(8),
        )
        .run(stop)
        .await
        .unwrap();
    // Shutdown at 350 ms with a 120 ms deadline: lanes finish the message
    // in hand (done at 400 ms) and one more started at 400 ms is cut at 470 ms.
    assert!(report.deadline_exceeded);
    assert!(report.released() > 0, "{report:?}");
    assert_eq!(report.acked() + report.released(), report.fetched());
    let first_run = acked.lock().unwrap().len() as u64;
    assert_eq!(first_run, report.acked());
    assert!(first_run >= 12, "{first_run}");

    // Restart: everything not acked before is delivered again and handled.
    let stop = CancellationToken::new();
    let s = stop.clone();
    let a2 = acked.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if a2.lock().unwrap().len() >= 100 {
                s.cancel();
                break;
            }
        }
    });
    let report2 = Router::new(b.clone())
        .route(opts("work"), make_handler(acked.clone()))
        .run(stop)
        .await
        .unwrap();
    assert_eq!(report2.released(), 0);
    let all: HashSet<usize> = acked.lock().unwrap().iter().copied().collect();
    assert_eq!(all, (0..100).collect::<HashSet<_>>());
    assert_eq!(acked.lock().unwrap().len(), 100, "handled twice");
}

async fn shutdown_within_the_deadline_drains_everything_fetched(b: Arc<dyn Backend>) {
    publish_n(&b, "drain", 40, |_| None).await;
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    let handler = handler_fn(move |_req: Request| {
        trigger.cancel();
        async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(Outcome::Ack)
        }
    });
    let report = Router::new(b.clone())
        .add_route(Route::new(opts("drain"), handler).lanes(2).fetch_batch(10))
        .run(stop)
        .await
        .unwrap();
    assert!(!report.deadline_exceeded);
    assert!(report.fetched() > 0);
    assert_eq!(report.acked(), report.fetched());
    assert_eq!(report.released(), 0);
}

async fn a_panicking_handler_is_rejected_and_the_lane_keeps_going(b: Arc<dyn Backend>) {
    publish_n(&b, "p", 10, |_| Some("same-key".into())).await;
    let mut dlq = b.subscribe(opts("dlq.p")).await.unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (d, st) = (done.clone(), stop.clone());
    let handler = handler_fn(move |req: Request| {
        let (d, st) = (d.clone(), st.clone());
        async move {
            if d.fetch_add(1, Ordering::SeqCst) + 1 == 10 {
                st.cancel();
            }
            if payload_num(req.message()) == 3 {
                panic!("bug on message 3");
            }
            Ok(Outcome::Ack)
        }
    });
    let report = Router::new(b.clone())
        .route(opts("p"), handler)
        .run(stop)
        .await
        .unwrap();
    assert_eq!(report.routes[0].panics, 1);
    assert_eq!(report.acked(), 9);
    assert_eq!(report.rejected(), 1);
    let dead = next(&mut dlq).await;
    assert_eq!(payload_num(dead.message()), 3);
    assert!(dead
        .message()
        .headers()
        .get(header::DLQ_REASON)
        .unwrap()
        .contains("bug on message 3"));
}

async fn outcomes_and_errors_map_to_settlements(b: Arc<dyn Backend>) {
    // 0: ack, 1: retry after 5s then ack, 2: reject, 3: permanent error,
    // 4: retryable error then ack.
    publish_n(&b, "s", 5, |_| None).await;
    let mut dlq = b.subscribe(opts("dlq.s")).await.unwrap();
    let attempts: Arc<Mutex<Vec<(usize, u32, Duration)>>> = Arc::default();
    let start = tokio::time::Instant::now();
    let stop = CancellationToken::new();
    let (a, st) = (attempts.clone(), stop.clone());
    let handler = handler_fn(move |req: Request| {
        let (a, st) = (a.clone(), st.clone());
        async move {
            let n = payload_num(req.message());
            let mut a = a.lock().unwrap();
            a.push((n, req.attempt(), start.elapsed()));
            if a.len() == 7 {
                st.cancel();
            }
            match (n, req.attempt()) {
                (1, 1) => Ok(Outcome::retry_after(Duration::from_secs(5))),
                (2, _) => Ok(Outcome::reject("no such customer")),
                (3, _) => Err(HandlerError::permanent("malformed")),
                (4, 1) => Err(HandlerError::retryable("db down")),
                _ => Ok(Outcome::Ack),
            }
        }
    });
    let report = Router::new(b.clone())
        .route(opts("s"), handler)
        .run(stop)
        .await
        .unwrap();
    assert_eq!(report.acked(), 3);
    assert_eq!(report.nacked(), 2);
    assert_eq!(report.rejected(), 2);
    let a = attempts.lock().unwrap().clone();
    let retry1 = a.iter().find(|(n, at, _)| *n == 1 && *at == 2).unwrap();
    assert!(retry1.2 >= Duration::from_secs(5), "{a:?}");
    assert!(a.iter().any(|(n, at, _)| *n == 4 && *at == 2));
    let reasons: HashSet<String> = [next(&mut dlq).await, next(&mut dlq).await]
        .iter()
        .map(|d| {
            d.message()
                .headers()
                .get(header::DLQ_REASON)
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(reasons.contains("no such customer"));
    assert!(reasons.contains("permanent failure: malformed"));
}

async fn without_backend_dead_letters_the_router_publishes_rejects_itself(b: Arc<dyn Backend>) {
    let mem = b.clone();
    let b = Restricted::wrap(b, &[Capability::DeadLetter]);
    publish_n(&b, "nodlq", 1, |_| None).await;
    let mut dlq = mem.subscribe(opts("dlq.nodlq")).await.unwrap();
    let stop = CancellationToken::new();
    let st = stop.clone();
    let handler = handler_fn(move |_req: Request| {
        st.cancel();
        async { Ok(Outcome::reject("bad")) }
    });
    let report = Router::new(b)
        .route(opts("nodlq"), handler)
        .run(stop)
        .await
        .unwrap();
    assert_eq!(report.routes[0].dead_lettered, 1);
    assert_eq!(report.acked(), 1);
    let d = next(&mut dlq).await;
    assert_eq!(d.message().headers().get(header::DLQ_REASON), Some("bad"));
    assert_eq!(
        d.message().headers().get(header::ORIGINAL_TOPIC),
        Some("nodlq")
    );
}

async fn request_reply_round_trip_carries_the_correlation_id(b: Arc<dyn Backend>) {
    let mut replies = b
        .subscribe(SubscribeOptions::new("replies.client-1"))
        .await
        .unwrap();
    let handler = handler_fn(|req: Request| async move {
        let name = String::from_utf8_lossy(req.message().payload()).into_owned();
        req.reply(Message::new(format!("hello {name}"))).await?;
        Ok(Outcome::Ack)
    });
    let stop = CancellationToken::new();
    let router = tokio::spawn(
        Router::new(b.clone())
            .route(opts("greet"), handler)
            .run(stop.clone()),
    );
    let request = Message::builder()
        .payload("ada")
        .header(header::REPLY_TO, "replies.client-1")
        .header(header::CORRELATION_ID, "req-42")
        .build();
    b.publish("greet", request).await.unwrap();
    let reply = next(&mut replies).await;
    assert_eq!(&reply.message().payload()[..], b"hello ada");
    assert_eq!(
        reply.message().headers().get(header::CORRELATION_ID),
        Some("req-42")
    );
    stop.cancel();
    let report = router.await.unwrap().unwrap();
    assert_eq!(report.acked(), 1);
}

async fn run_returns_when_the_backend_closes(b: Arc<dyn Backend>) {
    publish_n(&b, "c", 3, |_| None).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let (h, b2) = (handled.clone(), b.clone());
    let handler = handler_fn(move |_req: Request| {
        let (h, b2) = (h.clone(), b2.clone());
        async move {
            if h.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
                b2.close().await?;
            }
            Ok(Outcome::Ack)
        }
    });
    let report = Router::new(b)
        .route(opts("c"), handler)
        .run(CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(report.handled(), 3);
    assert!(!report.deadline_exceeded);
}

async fn slow_handler_keeps_its_lease_and_is_not_raced_by_a_redelivery(b: Arc<dyn Backend>) {
    publish_n(&b, "slow", 1, |_| None).await;
    for keep in [true, false] {
        let group = if keep { "keeping" } else { "not-keeping" };
        let attempts: Arc<Mutex<Vec<u32>>> = Arc::default();
        let a = attempts.clone();
        let handler = handler_fn(move |req: Request| {
            a.lock().unwrap().push(req.attempt());
            async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(Outcome::Ack)
            }
        });
        let o = SubscribeOptions::new("slow")
            .group(group)
            .start(StartPosition::Earliest)
            .visibility_timeout(Duration::from_secs(2));
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            s.cancel();
        });
        Router::new(b.clone())
            .add_route(Route::new(o, handler).keep_leases(keep))
            .run(stop)
            .await
            .unwrap();
        let attempts = attempts.lock().unwrap().clone();
        if keep {
            assert_eq!(attempts, vec![1], "handled once, lease kept");
        } else {
            assert!(
                attempts.len() > 1,
                "lease expired and redelivered: {attempts:?}"
            );
        }
    }
}

async fn keyless_slow_handlers_use_every_lane_even_with_a_small_window(b: Arc<dyn Backend>) {
    publish_n(&b, "io", 64, |_| None).await;
    let done = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (d, st) = (done.clone(), stop.clone());
    let handler = handler_fn(move |_req: Request| {
        let (d, st) = (d.clone(), st.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if d.fetch_add(1, Ordering::SeqCst) + 1 == 64 {
                st.cancel();
            }
            Ok(Outcome::Ack)
        }
    });
    let start = tokio::time::Instant::now();
    let report = Router::new(b)
        .add_route(Route::new(opts("io").max_in_flight(16), handler).lanes(8))
        .run(stop)
        .await
        .unwrap();
    assert_eq!(report.acked(), 64);
    // 8 lanes busy all the time: 64 × 100 ms / 8 = 800 ms (+ a fetch round).
    assert!(
        start.elapsed() <= Duration::from_millis(1000),
        "{:?}",
        start.elapsed()
    );
}

async fn an_ack_is_not_held_back_by_a_slow_handler_behind_it(b: Arc<dyn Backend>) {
    // One lane: "fast" and then "slow" arrive in one batch. Acks are batched
    // per lane batch, but flushed before waiting on the slow handler, so
    // "fast" is acknowledged while "slow" still runs: its lease (2 s, not
    // kept) expiring during the 10 s handler must not redeliver it.
    b.publish_batch("ackflush", vec![Message::new("fast"), Message::new("slow")])
        .await
        .unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let handler = handler_fn(move |req: Request| {
        let text = String::from_utf8_lossy(req.message().payload()).into_owned();
        s.lock().unwrap().push(format!("{text}#{}", req.attempt()));
        async move {
            if text == "slow" {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Ok(Outcome::Ack)
        }
    });
    let o = opts("ackflush").visibility_timeout(Duration::from_secs(2));
    let stop = CancellationToken::new();
    let st = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        st.cancel();
    });
    Router::new(b)
        .add_route(Route::new(o, handler).lanes(1).keep_leases(false))
        .run(stop)
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().filter(|s| s.starts_with("fast")).count(),
        1,
        "fast handled once: {seen:?}"
    );
}

on_every_backend!(
    messages_with_one_key_are_handled_in_order_while_keys_run_in_parallel,
    route_needing_a_missing_capability_fails_before_consuming_anything,
    options_needing_consumer_groups_are_refused_without_them,
    graceful_shutdown_drains_or_releases_and_a_restart_handles_the_rest,
    shutdown_within_the_deadline_drains_everything_fetched,
    a_panicking_handler_is_rejected_and_the_lane_keeps_going,
    outcomes_and_errors_map_to_settlements,
    without_backend_dead_letters_the_router_publishes_rejects_itself,
    request_reply_round_trip_carries_the_correlation_id,
    run_returns_when_the_backend_closes,
    slow_handler_keeps_its_lease_and_is_not_raced_by_a_redelivery,
    keyless_slow_handlers_use_every_lane_even_with_a_small_window,
    an_ack_is_not_held_back_by_a_slow_handler_behind_it,
);
