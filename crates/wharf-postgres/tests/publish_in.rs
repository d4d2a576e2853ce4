//! Publishing inside the application's own transaction: the message is
//! delivered if and only if the transaction commits.

mod service;

use std::time::Duration;

use wharf_core::{Message, StartPosition, SubscribeOptions, Subscriber};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_published_in_a_transaction_is_delivered_only_after_commit() {
    let Some(ns) = service::Namespace::new().await else {
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
