//! Graceful shutdown across a real restart of the embedded broker: every
//! message is either acked before shutdown or delivered again after the
//! broker is reopened from its directory.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{payload_num, publish_n};
use tokio_util::sync::CancellationToken;
use wharf_broker::Broker;
use wharf_core::{Backend, StartPosition, SubscribeOptions};
use wharf_router::{handler_fn, Outcome, Request, Route, Router};

fn opts() -> SubscribeOptions {
    SubscribeOptions::new("jobs")
        .group("workers")
        .start(StartPosition::Earliest)
}

fn recording(
    seen: Arc<Mutex<Vec<usize>>>,
) -> impl tower::Service<
    Request,
    Response = Outcome,
    Error = wharf_router::HandlerError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    handler_fn(move |req: Request| {
        let seen = seen.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            seen.lock().unwrap().push(payload_num(req.message()));
            Ok(Outcome::Ack)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn shutdown_at_the_deadline_then_broker_restart_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b: Arc<dyn Backend> = Arc::new(Broker::open(dir.path()).await.unwrap());
    publish_n(&b, "jobs", 60, |i| Some(format!("k{}", i % 6))).await;

    let first: Arc<Mutex<Vec<usize>>> = Arc::default();
    let stop = support::cancelled_after(Duration::from_millis(250));
    let report = Router::new(b.clone())
        .shutdown_timeout(Duration::from_millis(120))
        .add_route(Route::new(opts(), recording(first.clone())).lanes(3))
        .run(stop)
        .await
        .unwrap();
    assert!(report.deadline_exceeded);
    assert!(report.released() > 0);
    assert_eq!(report.acked() + report.released(), report.fetched());
    b.close().await.unwrap();
    drop(b);

    // Reopen from the same directory and finish the work.
    let b: Arc<dyn Backend> = Arc::new(Broker::open(dir.path()).await.unwrap());
    let second: Arc<Mutex<Vec<usize>>> = Arc::default();
    let stop = CancellationToken::new();
    let (s, watch) = (stop.clone(), second.clone());
    let before: HashSet<usize> = first.lock().unwrap().iter().copied().collect();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now: HashSet<usize> = watch.lock().unwrap().iter().copied().collect();
            if before.union(&now).count() == 60 {
                // Let any redelivery of an already-acked message show up.
                tokio::time::sleep(Duration::from_secs(5)).await;
                s.cancel();
                break;
            }
        }
    });
    Router::new(b.clone())
        .add_route(Route::new(opts(), recording(second.clone())).lanes(3))
        .run(stop)
        .await
        .unwrap();
    b.close().await.unwrap();

    let first: Vec<usize> = first.lock().unwrap().clone();
    let second: Vec<usize> = second.lock().unwrap().clone();
    let all: HashSet<usize> = first.iter().chain(&second).copied().collect();
    assert_eq!(all, (0..60).collect::<HashSet<_>>(), "a message was lost");
    // What was acked before the shutdown is not handled again.
    let acked_first: HashSet<usize> = first.iter().copied().collect();
    assert_eq!(acked_first.len() as u64, report.acked());
    assert!(
        second.iter().all(|n| !acked_first.contains(n)),
        "acked before shutdown but delivered again: {second:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_aborted_shutdown_gives_back_what_no_handler_saw_without_an_attempt() {
    // With max deliveries 1, a message the router fetched but never handed
    // to a handler must not be dead-lettered when the shutdown deadline
    // drops it; the ones whose handler was cut off used their attempt.
    let dir = tempfile::tempdir().unwrap();
    let b: Arc<dyn Backend> = Arc::new(Broker::open(dir.path()).await.unwrap());
    publish_n(&b, "jobs", 60, |i| Some(format!("k{}", i % 6))).await;
    let started: Arc<Mutex<Vec<usize>>> = Arc::default();
    let s2 = started.clone();
    let stuck = handler_fn(move |req: Request| {
        s2.lock().unwrap().push(payload_num(req.message()));
        async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Outcome::Ack)
        }
    });
    let stop = support::cancelled_after(Duration::from_millis(250));
    let report = Router::new(b.clone())
        .shutdown_timeout(Duration::from_millis(120))
        .add_route(Route::new(opts().max_deliveries(1), stuck).lanes(3))
        .run(stop)
        .await
        .unwrap();
    assert!(report.deadline_exceeded);
    assert!(report.fetched() > 3, "{report:?}");
    let started: HashSet<usize> = started.lock().unwrap().iter().copied().collect();
    assert_eq!(started.len(), 3, "one stuck handler per lane: {started:?}");

    // Everything no handler saw comes back, on its first attempt.
    let mut sub = b.subscribe(opts().max_deliveries(1)).await.unwrap();
    let mut back = HashSet::new();
    for _ in 0..57 {
        let d = support::next(&mut sub).await;
        assert_eq!(d.attempt(), 1, "{:?} was never handed out", d.info());
        back.insert(payload_num(d.message()));
        d.ack().await.unwrap();
    }
    assert!(support::quiet(&mut sub, Duration::from_secs(5)).await);
    assert!(back.is_disjoint(&started));
    // The three cut off mid-handling used their one delivery.
    let mut dlq = b
        .subscribe(SubscribeOptions::new("dlq.jobs").start(StartPosition::Earliest))
        .await
        .unwrap();
    let mut dead = HashSet::new();
    for _ in 0..3 {
        let d = support::next(&mut dlq).await;
        dead.insert(payload_num(d.message()));
        d.ack().await.unwrap();
    }
    assert_eq!(dead, started);
    b.close().await.unwrap();
}
