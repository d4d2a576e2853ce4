//! Publishing inside the application's own transaction: the message is
//! delivered if and only if the transaction commits.

mod service;

use std::time::Duration;

use wharf_core::{Message, StartPosition, SubscribeOptions, Subscriber};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_published_in_a_transaction_is_delivered_only_after_commit() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let opts = SubscribeOptions::new("orders.created")
        .group("g")
        .start(StartPosition::Earliest);
    let mut sub = b.subscribe(opts).await.expect("subscribe");

    let mut tx = b.pool().begin().await.expect("begin");
    b.publish_in(&mut tx, "orders.created", &[Message::new("rolled back")])
        .await
        .expect("publish in tx");
    tx.rollback().await.expect("rollback");

    let mut tx = b.pool().begin().await.expect("begin");
    let receipts = b
        .publish_in(&mut tx, "orders.created", &[Message::new("committed")])
        .await
        .expect("publish in tx");
    assert_eq!(receipts.len(), 1);
    let early = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(early.is_err(), "delivered before commit");
    tx.commit().await.expect("commit");

    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("delivered after commit")
        .expect("open")
        .expect("delivery");
    assert_eq!(&d.message().payload()[..], b"committed");
    d.ack().await.expect("ack");
    let more = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(more.is_err(), "the rolled-back message was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_to_one_topic_get_distinct_offsets_and_each_is_delivered() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = ns.backend.clone();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move {
                wharf_core::Publisher::publish(&b, "jobs", Message::new(format!("j{i}"))).await
            })
        })
        .collect();
    let mut offsets = Vec::new();
    for t in tasks {
        let r = t.await.expect("join").expect("publish");
        assert!(!r.duplicate);
        offsets.push(r.offset.expect("offset"));
    }
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), 200, "offsets are distinct");
    let opts = SubscribeOptions::new("jobs")
        .group("g")
        .start(StartPosition::Earliest);
    let mut sub = b.subscribe(opts).await.expect("subscribe");
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 200 {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("delivery in time")
            .expect("open")
            .expect("delivery");
        assert!(seen.insert(d.info().offset.expect("offset")));
        d.ack().await.expect("ack");
    }
}
