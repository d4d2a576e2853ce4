//! Scenarios for a non-durable mode (at-most-once pub/sub: core NATS,
//! Redis Pub/Sub) beyond the conformance suite, which only skips what such
//! a mode lacks: that settling frees the slot and never redelivers, which
//! settlements and options it refuses, and that nothing is kept for a later
//! subscriber.
//!
//! Each scenario takes a [`BackendFactory`] and panics on failure;
//! [`nondurable_tests!`](crate::nondurable_tests) expands them into tests.

use std::time::Duration;

use wharf_core::{
    Backend, Capability, Error, GroupMode, Message, StartPosition, SubscribeOptions, Subscription,
};

use crate::{expect_delivery, expect_quiet, unique_name, BackendFactory, QUIET};

fn assert_unsupported<T: std::fmt::Debug>(b: &dyn Backend, r: Result<T, Error>, cap: Capability) {
    match r {
        Err(Error::Unsupported {
            backend,
            capability,
        }) if backend == b.name() => assert_eq!(capability, cap),
        other => panic!(
            "expected Unsupported({cap}) from {}, got {other:?}",
            b.name()
        ),
    }
}

/// Publishes `payloads` to `topic` one by one.
async fn publish_all(b: &dyn Backend, topic: &str, payloads: &[&'static str]) {
    for p in payloads {
        b.publish(topic, Message::new(*p)).await.expect("publish");
    }
}

/// Subscribes to `topic` with one in-flight slot and publishes `a`, `b`, `c`.
async fn three_jobs_one_slot(b: &dyn Backend) -> Subscription {
    let topic = unique_name("jobs");
    let sub = b
        .subscribe(SubscribeOptions::new(&topic).max_in_flight(1))
        .await
        .expect("subscribe");
    publish_all(b, &topic, &["a", "b", "c"]).await;
    sub
}

/// A message published while nobody subscribes is gone, even for a
/// subscription that starts from `Earliest`.
pub async fn a_message_published_before_subscribing_is_not_kept(factory: &dyn BackendFactory) {
    let b = factory.open().await;
    let topic = unique_name("news");
    publish_all(&*b, &topic, &["early"]).await;
    let mut sub = b
        .subscribe(SubscribeOptions::new(&topic).start(StartPosition::Earliest))
        .await
        .expect("subscribe");
    publish_all(&*b, &topic, &["late"]).await;
    let d = expect_delivery(&mut sub, "the live message").await;
    assert_eq!(d.message().payload().as_ref(), b"late");
    expect_quiet(&mut sub, QUIET, "after the only live message").await;
}

/// A nack and a dropped delivery each free their slot and nothing comes back.
pub async fn nack_and_drop_settle_locally_without_redelivery(factory: &dyn BackendFactory) {
    let b = factory.open().await;
    let mut sub = three_jobs_one_slot(&*b).await;
    let a = expect_delivery(&mut sub, "a").await;
    assert_eq!(a.attempt(), 1);
    a.nack().await.expect("nack is accepted");
    let d = expect_delivery(&mut sub, "b").await;
    assert_eq!(
        d.message().payload().as_ref(),
        b"b",
        "a was not redelivered"
    );
    drop(d);
    // The dropped delivery freed its slot (max_in_flight 1) and did not come back.
    let c = expect_delivery(&mut sub, "c").await;
    assert_eq!(c.message().payload().as_ref(), b"c");
    c.ack().await.expect("ack");
    expect_quiet(&mut sub, QUIET, "after a nack and a drop").await;
}

/// `extend`, `nack_with_delay` and `reject` fail as unsupported, and the
/// refused settlements still free the slot.
pub async fn delayed_nack_reject_and_extend_are_unsupported(factory: &dyn BackendFactory) {
    let b = factory.open().await;
    let mut sub = three_jobs_one_slot(&*b).await;
    let d = expect_delivery(&mut sub, "a").await;
    let second = Duration::from_secs(1);
    assert_unsupported(&*b, d.extend(second).await, Capability::ExtendLease);
    assert_unsupported(
        &*b,
        d.nack_with_delay(second).await,
        Capability::NackWithDelay,
    );
    let d = expect_delivery(&mut sub, "b").await;
    assert_unsupported(&*b, d.reject("bad").await, Capability::DeadLetter);
    // Both refused settlements still freed the single in-flight slot.
    let c = expect_delivery(&mut sub, "c").await;
    assert_eq!(c.message().payload().as_ref(), b"c");
}

/// Subscribing with a replay start, a lease or a delivery limit fails as
/// unsupported; so does a group where the mode has no groups, and a
/// stream-mode group where it has queue groups only.
pub async fn options_needing_storage_leases_or_groups_are_unsupported(
    factory: &dyn BackendFactory,
) {
    let b = factory.open().await;
    let o = || SubscribeOptions::new("t");
    if b.capabilities().contains(Capability::ConsumerGroups) {
        assert_unsupported(
            &*b,
            b.subscribe(o().group("g").mode(GroupMode::Stream)).await,
            Capability::PartitionAssignment,
        );
    } else {
        assert_unsupported(
            &*b,
            b.subscribe(o().group("g")).await,
            Capability::ConsumerGroups,
        );
    }
    assert_unsupported(
        &*b,
        b.subscribe(o().start(StartPosition::Offset(3))).await,
        Capability::ReplayFromOffset,
    );
    assert_unsupported(
        &*b,
        b.subscribe(o().visibility_timeout(Duration::from_secs(5)))
            .await,
        Capability::VisibilityTimeout,
    );
    assert_unsupported(
        &*b,
        b.subscribe(o().max_deliveries(3)).await,
        Capability::MaxDeliveries,
    );
}

/// Expands to one `#[tokio::test]` per scenario in
/// [`nondurable`](crate::nondurable), each with a fresh `$factory` value (an
/// expression whose type implements [`BackendFactory`], as for
/// [`conformance_tests!`](crate::conformance_tests)).
#[macro_export]
macro_rules! nondurable_tests {
    ($factory:expr) => {
        $crate::nondurable_tests!(@scenarios $factory;
            a_message_published_before_subscribing_is_not_kept,
            nack_and_drop_settle_locally_without_redelivery,
            delayed_nack_reject_and_extend_are_unsupported,
            options_needing_storage_leases_or_groups_are_unsupported,
        );
    };
    (@scenarios $factory:expr; $($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let factory = $factory;
                $crate::nondurable::$scenario(&factory).await;
            }
        )+
    };
}
