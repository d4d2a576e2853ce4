//! Draining a backlog published before any group existed, the way `wharf
//! bench --workload consume` does (#22: the drain of a 100,000-message
//! backlog never finished): a new group with `StartPosition::Earliest` gets a
//! copy of every backlog message, in publish order, and a second new group
//! gets them all again (the backlog is left as it was).

mod service;

use std::time::Duration;
use wharf_amqp::AmqpBackend;

use wharf_core::{
    AckBatch, Message, Publisher, StartPosition, SubscribeOptions, Subscriber, Subscription,
};

const TOTAL: usize = 20_000;
const BATCH: usize = 1_000;

/// Takes batches of up to `BATCH`, acknowledging each with one `AckBatch`,
/// until `TOTAL` arrived; returns the payload numbers in arrival order.
async fn drain(sub: &mut Subscription) -> Vec<usize> {
    let mut seen = Vec::with_capacity(TOTAL);
    let mut buf = Vec::with_capacity(BATCH);
    let mut acks = AckBatch::new();
    while seen.len() < TOTAL {
        buf.clear();
        let got = tokio::time::timeout(Duration::from_secs(30), sub.next_batch(BATCH, &mut buf))
            .await
            .unwrap_or_else(|_| panic!("no delivery for 30 s after {} messages", seen.len()))
            .expect("next_batch");
        assert!(got > 0, "the subscription ended after {}", seen.len());
        for d in buf.drain(..) {
            let n = std::str::from_utf8(d.message().payload())
                .expect("utf-8")
                .parse()
                .expect("number");
            seen.push(n);
            acks.push(d);
        }
        let failed = acks.flush().await;
        assert!(failed.is_empty(), "{} acks failed", failed.len());
    }
    seen
}

/// Publishes `0`, `1`, … `TOTAL - 1` to `topic` in batches of `BATCH`.
async fn publish_numbered(b: &AmqpBackend, topic: &str) {
    for chunk in 0..TOTAL / BATCH {
        let batch = (0..BATCH)
            .map(|i| Message::new((chunk * BATCH + i).to_string()))
            .collect();
        b.publish_batch(topic, batch).await.expect("publish");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_groups_drain_a_large_backlog_in_order_and_leave_it_in_place() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    publish_numbered(b, "backlog").await;
    let want: Vec<usize> = (0..TOTAL).collect();
    for group in ["first", "second"] {
        let opts = SubscribeOptions::new("backlog")
            .group(group)
            .start(StartPosition::Earliest)
            .max_in_flight(BATCH * 4);
        // A hang guard, not a speed check: copying the backlog one
        // confirmed message at a time took minutes here.
        let mut sub = tokio::time::timeout(Duration::from_secs(120), b.subscribe(opts))
            .await
            .unwrap_or_else(|_| panic!("{group}: subscribing did not finish in 120 s"))
            .expect("subscribe");
        let seen = drain(&mut sub).await;
        assert!(seen == want, "{group}: not every message once, in order");
        sub.close().await.expect("close");
    }
}

/// A batch ack is one `basic.ack multiple` only when that covers exactly the
/// batch: with an older delivery still held, that one stays unacked (here:
/// nacked afterwards, it comes back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_ack_leaves_an_older_held_delivery_unacked() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let mut sub = b
        .subscribe(SubscribeOptions::new("held").group("g"))
        .await
        .expect("subscribe");
    for i in 0..3 {
        b.publish("held", Message::new(i.to_string()))
            .await
            .expect("publish");
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("delivery");
        got.push(d);
    }
    let oldest = got.remove(0);
    assert_eq!(&oldest.message().payload()[..], b"0");
    let mut acks = AckBatch::new();
    for d in got {
        acks.push(d);
    }
    assert!(acks.flush().await.is_empty());
    oldest.nack().await.expect("the oldest is still held");
    let again = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("redelivery");
    assert_eq!(&again.message().payload()[..], b"0");
    assert_eq!(again.info().attempt, 2);
    again.ack().await.expect("ack");
}

/// A subscribe dropped while its new group copies the backlog leaves the
/// backlog whole: the copying channel, holding backlog messages unacked,
/// is closed with its last handle (lapin's), not left open until the
/// connection closes, so the next new group gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_cancelled_while_copying_the_backlog_leaves_it_whole() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    publish_numbered(b, "cut").await;
    let opts = |group: &str| {
        SubscribeOptions::new("cut")
            .group(group)
            .start(StartPosition::Earliest)
            .max_in_flight(BATCH * 4)
    };
    // Cancelled partway through the copy (20,000 confirmed copies take
    // seconds here).
    let cut = tokio::time::timeout(Duration::from_millis(150), b.subscribe(opts("cut"))).await;
    assert!(cut.is_err(), "the copy finished within 150 ms; cut earlier");
    let mut sub = tokio::time::timeout(Duration::from_secs(120), b.subscribe(opts("whole")))
        .await
        .expect("subscribing did not finish in 120 s")
        .expect("subscribe");
    let want: Vec<usize> = (0..TOTAL).collect();
    let seen = drain(&mut sub).await;
    assert!(seen == want, "not every backlog message once, in order");
}
