//! The core NATS mode ([`wharf_nats::NatsCoreBackend`]) beyond the conformance suite:
//! the shared non-durable scenarios ([`wharf_testkit::nondurable`]: what
//! at-most-once means for settlements, which options it refuses, that
//! nothing is kept for a later subscriber), what it declares, and queue
//! groups.

mod service;

use wharf_core::{Backend, Capability, Message, Publisher, SubscribeOptions, Subscriber};
use wharf_testkit::{expect_delivery, expect_quiet, QUIET};

wharf_testkit::nondurable_tests!(match service::core_factory().await {
    Some(factory) => factory,
    None => return,
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declares_groups_wildcards_and_key_order_but_no_storage_or_redelivery() {
    let Some(ns) = service::core_namespace().await else {
        return;
    };
    let b = &ns.backend;
    let caps = b.capabilities();
    let declared: Vec<Capability> = caps.iter().collect();
    assert_eq!(
        declared,
        [
            Capability::OrderingPerKey,
            Capability::ConsumerGroups,
            Capability::Wildcards
        ]
    );
    assert_eq!(b.name(), "nats-core");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_and_a_private_subscription_each_get_the_message() {
    let Some(ns) = service::core_namespace().await else {
        return;
    };
    let b = &ns.backend;
    let mut private = b
        .subscribe(SubscribeOptions::new("events"))
        .await
        .expect("subscribe");
    let mut group = b
        .subscribe(SubscribeOptions::new("events").group("workers"))
        .await
        .expect("subscribe in a group");
    let r = b
        .publish("events", Message::new("once"))
        .await
        .expect("publish");
    assert_eq!(r.offset, None, "core NATS has no offsets");
    for sub in [&mut private, &mut group] {
        let d = expect_delivery(sub, "the message").await;
        assert_eq!(d.message().id(), r.id);
        assert_eq!(d.topic(), "events");
        d.ack().await.expect("ack");
        expect_quiet(sub, QUIET, "a second copy").await;
    }
}
