//! A channel error (here: publishing after the exchange was deleted) fails
//! that publish but not the backend: the next publish opens a new channel.

mod service;

use std::time::Duration;

use wharf_amqp::AmqpBackend;
use wharf_core::{Backend, Message, Publisher, StartPosition, SubscribeOptions, Subscriber};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_after_a_channel_error_uses_a_fresh_channel() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let a = &ns.backend;
    let admin = AmqpBackend::connect(ns.config.clone())
        .await
        .expect("admin");
    admin.delete_declared().await.expect("delete the exchange");
    let r = a.publish("orders", Message::new("lost")).await;
    assert!(r.is_err(), "publishing to a deleted exchange: {r:?}");
    // Declares the exchange and backlog again.
    let again = AmqpBackend::connect(ns.config.clone())
        .await
        .expect("redeclare");
    let opts = SubscribeOptions::new("orders")
        .group("g")
        .start(StartPosition::Earliest);
    let mut sub = a.subscribe(opts).await.expect("subscribe");
    a.publish("orders", Message::new("delivered"))
        .await
        .expect("publish on a fresh channel");
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("delivery");
    assert_eq!(&d.message().payload()[..], b"delivered");
    d.ack().await.expect("ack");
    again.close().await.expect("close");
    admin.close().await.expect("close");
}
