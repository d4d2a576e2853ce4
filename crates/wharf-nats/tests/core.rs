//! The core NATS mode ([`NatsCoreBackend`]) beyond the conformance suite:
//! what at-most-once means for settlements, which options it refuses, that
//! nothing is kept for a later subscriber, and what it declares.

mod service;

use std::time::Duration;

use wharf_core::{
    Backend, Capability, Delivery, Error, GroupMode, Message, Publisher, StartPosition,
    SubscribeOptions, Subscriber, Subscription,
};
use wharf_nats::NatsCoreBackend;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

async fn connect() -> Option<NatsCoreBackend> {
    wharf_testkit::service::connect_or_skip(
        "nats",
        &service::url(),
        NatsCoreBackend::connect(service::unique_config()),
    )
    .await
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a delivery in time")
        .expect("subscription open")
        .expect("no error")
}

async fn assert_quiet(sub: &mut Subscription, what: &str) {
    if let Ok(Some(d)) = tokio::time::timeout(QUIET, sub.next()).await {
        panic!("{what}: unexpected {:?}", d.map(|d| d.message().clone()));
    }
}

fn assert_unsupported<T: std::fmt::Debug>(r: Result<T, Error>, cap: Capability) {
    match r {
        Err(Error::Unsupported {
            backend: "nats-core",
            capability,
        }) => assert_eq!(capability, cap),
        other => panic!("expected Unsupported({cap}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declares_groups_wildcards_and_key_order_but_no_storage_or_redelivery() {
    let Some(b) = connect().await else { return };
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
async fn a_message_published_before_subscribing_is_not_kept() {
    let Some(b) = connect().await else { return };
    b.publish("news", Message::new("early"))
        .await
        .expect("publish with nobody listening");
    let mut sub = b
        .subscribe(SubscribeOptions::new("news").start(StartPosition::Earliest))
        .await
        .expect("subscribe");
    b.publish("news", Message::new("late"))
        .await
        .expect("publish");
    assert_eq!(next(&mut sub).await.message().payload().as_ref(), b"late");
    assert_quiet(&mut sub, "after the only live message").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_and_drop_settle_locally_without_redelivery() {
    let Some(b) = connect().await else { return };
    let mut sub = b
        .subscribe(SubscribeOptions::new("jobs").max_in_flight(1))
        .await
        .expect("subscribe");
    for p in ["a", "b", "c"] {
        b.publish("jobs", Message::new(p)).await.expect("publish");
    }
    let a = next(&mut sub).await;
    assert_eq!(a.attempt(), 1);
    a.nack().await.expect("nack is accepted");
    let d = next(&mut sub).await;
    assert_eq!(
        d.message().payload().as_ref(),
        b"b",
        "a was not redelivered"
    );
    drop(d);
    // The dropped delivery freed its slot (max_in_flight 1) and did not come back.
    let c = next(&mut sub).await;
    assert_eq!(c.message().payload().as_ref(), b"c");
    c.ack().await.expect("ack");
    assert_quiet(&mut sub, "after a nack and a drop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_nack_reject_and_extend_are_unsupported() {
    let Some(b) = connect().await else { return };
    let mut sub = b
        .subscribe(SubscribeOptions::new("jobs").max_in_flight(1))
        .await
        .expect("subscribe");
    for p in ["a", "b", "c"] {
        b.publish("jobs", Message::new(p)).await.expect("publish");
    }
    let d = next(&mut sub).await;
    assert_unsupported(
        d.extend(Duration::from_secs(1)).await,
        Capability::ExtendLease,
    );
    assert_unsupported(
        d.nack_with_delay(Duration::from_secs(1)).await,
        Capability::NackWithDelay,
    );
    let d = next(&mut sub).await;
    assert_unsupported(d.reject("bad").await, Capability::DeadLetter);
    // Both refused settlements still freed the single in-flight slot.
    assert_eq!(next(&mut sub).await.message().payload().as_ref(), b"c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_that_need_storage_or_leases_are_unsupported() {
    let Some(b) = connect().await else { return };
    let o = || SubscribeOptions::new("t");
    assert_unsupported(
        b.subscribe(o().start(StartPosition::Offset(3))).await,
        Capability::ReplayFromOffset,
    );
    assert_unsupported(
        b.subscribe(o().visibility_timeout(Duration::from_secs(5)))
            .await,
        Capability::VisibilityTimeout,
    );
    assert_unsupported(
        b.subscribe(o().max_deliveries(3)).await,
        Capability::MaxDeliveries,
    );
    assert_unsupported(
        b.subscribe(o().group("g").mode(GroupMode::Stream)).await,
        Capability::PartitionAssignment,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_and_a_private_subscription_each_get_the_message() {
    let Some(b) = connect().await else { return };
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
        let d = next(sub).await;
        assert_eq!(d.message().id(), r.id);
        assert_eq!(d.topic(), "events");
        d.ack().await.expect("ack");
        assert_quiet(sub, "a second copy").await;
    }
}
