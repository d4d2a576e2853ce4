//! Delayed publish on RabbitMQ: a TTL queue per delay bucket dead-letters
//! into the topic exchange, so every group gets the message once it is due;
//! a message that expires before it is due, or while it waits in a group's
//! queue after being due, is never delivered.

mod service;

use std::time::{Duration, Instant};

use wharf_core::{Message, Publisher, StartPosition, SubscribeOptions, Subscriber};

async fn next_text(sub: &mut wharf_core::Subscription) -> String {
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a message in time")
        .expect("open")
        .expect("delivery");
    let t = String::from_utf8_lossy(d.message().payload()).into_owned();
    d.ack().await.expect("ack");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_reach_every_group_when_due_and_expired_ones_never_do() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let opts = |g: &str| {
        SubscribeOptions::new("reminders")
            .group(g)
            .start(StartPosition::Earliest)
    };
    // Group "late" exists (its queue is bound) but nobody consumes yet.
    let mut late = b.subscribe(opts("late")).await.expect("subscribe late");
    late.close().await.expect("close late");
    drop(late);
    let mut live = b.subscribe(opts("live")).await.expect("subscribe live");
    let sent = Instant::now();
    let never = Message::builder()
        .payload("never")
        .ttl(Duration::from_millis(300))
        .deliver_after(Duration::from_millis(600))
        .build();
    b.publish("reminders", never).await.expect("publish");
    let lapses = Message::builder()
        .payload("lapses")
        .deliver_after(Duration::from_millis(300))
        .ttl(Duration::from_millis(700))
        .build();
    b.publish("reminders", lapses).await.expect("publish");
    let due = Message::builder()
        .payload("due")
        .deliver_after(Duration::from_millis(800))
        .build();
    b.publish("reminders", due).await.expect("publish");

    assert_eq!(next_text(&mut live).await, "lapses");
    assert!(
        sent.elapsed() >= Duration::from_millis(250),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(next_text(&mut live).await, "due");
    assert!(
        sent.elapsed() >= Duration::from_millis(750),
        "{:?}",
        sent.elapsed()
    );

    // By now "lapses" has expired in the idle group's queue.
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(sent.elapsed())).await;
    let mut late = b.subscribe(opts("late")).await.expect("resubscribe late");
    assert_eq!(next_text(&mut late).await, "due");
    for sub in [&mut live, &mut late] {
        let more = tokio::time::timeout(Duration::from_millis(400), sub.next()).await;
        assert!(more.is_err(), "an expired delayed message was delivered");
    }
}
