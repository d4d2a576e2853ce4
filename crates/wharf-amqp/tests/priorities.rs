//! Priority queues are opt-in (`AmqpConfig::priorities`): by default the
//! queues are plain and a message's priority does not reorder delivery;
//! with it, the conformance suite's priority case passes; and a group queue
//! keeps the kind it was created with when a backend of the other setting
//! subscribes to it (a redeclare with other arguments would fail).

mod service;

use std::time::Duration;

use wharf_amqp::{AmqpBackend, AmqpConfig};
use wharf_core::{
    Backend, Capability, Message, Publisher, StartPosition, SubscribeOptions, Subscriber,
    Subscription,
};
use wharf_testkit::{expect_delivery, Outcome};

/// Publishes `low1`, `low2`, `high` (9) and `mid` (5) to `topic`.
async fn publish_mixed(b: &AmqpBackend, topic: &str) {
    for (p, name) in [(0, "low1"), (0, "low2"), (9, "high"), (5, "mid")] {
        let m = Message::builder().payload(name).priority(p).build();
        b.publish(topic, m).await.expect("publish");
    }
}

/// The four payloads in the order group `g` gets them, one at a time.
async fn take_four(sub: &mut Subscription) -> Vec<String> {
    let mut order = Vec::new();
    for i in 0..4 {
        let d = expect_delivery(sub, &format!("message {i}")).await;
        order.push(String::from_utf8_lossy(d.message().payload()).into_owned());
        d.ack().await.expect("ack");
    }
    order
}

fn group(topic: &str) -> SubscribeOptions {
    SubscribeOptions::new(topic)
        .group("g")
        .start(StartPosition::Earliest)
        .max_in_flight(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_queues_are_plain_and_deliver_in_publish_order() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    assert!(!b.capabilities().contains(Capability::Priorities));
    publish_mixed(b, "plain").await;
    let mut sub = b.subscribe(group("plain")).await.expect("subscribe");
    assert_eq!(take_four(&mut sub).await, ["low1", "low2", "high", "mid"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_priorities_a_group_gets_the_higher_priority_first() {
    let Some(factory) = service::factory_with_priorities().await else {
        return;
    };
    let outcome = wharf_testkit::cases::higher_priority_is_delivered_first(&factory).await;
    assert_eq!(outcome, Outcome::Passed);
}

/// Deletes what was declared through its config when dropped.
struct Cleanup(AmqpConfig);

impl Drop for Cleanup {
    fn drop(&mut self) {
        service::delete_declared_blocking(self.0.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_queue_keeps_its_kind_under_a_backend_of_the_other_setting() {
    let url = service::url();
    // Both configs share one record of what they declared (clones do).
    let config = service::config_at(&url, &wharf_testkit::unique_name("wa"));
    let _cleanup = Cleanup(config.clone());
    let connect = AmqpBackend::connect(config.clone());
    let Some(plain) = wharf_testkit::service::connect_or_skip("rabbitmq", &url, connect).await
    else {
        return;
    };
    let prio = AmqpBackend::connect(config.clone().priorities(true))
        .await
        .expect("connect");
    // Created as a priority queue, then used by a plain backend: it still
    // orders by priority. And the other way round.
    for (creator, user, topic, want) in [
        (&prio, &plain, "made-prio", ["high", "mid", "low1", "low2"]),
        (&plain, &prio, "made-plain", ["low1", "low2", "high", "mid"]),
    ] {
        drop(
            creator
                .subscribe(group(topic))
                .await
                .expect("create the queue"),
        );
        publish_mixed(user, topic).await;
        // Let all four reach the queue before one is taken.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut sub = user.subscribe(group(topic)).await.expect("subscribe again");
        assert_eq!(take_four(&mut sub).await, want, "{topic}");
    }
    let _ = plain.close().await;
    let _ = prio.close().await;
}
