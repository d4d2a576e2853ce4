//! The Pub/Sub mode ([`RedisPubSubBackend`]) beyond the conformance suite:
//! at-most-once settlements, refused options (groups among them), nothing
//! kept for a later subscriber, `*` kept to one segment although a Redis
//! glob spans dots, and plain `PUBLISH`es from other clients.

mod service;

use std::time::Duration;

use wharf_core::{
    Backend, Capability, Delivery, Error, Message, Publisher, StartPosition, SubscribeOptions,
    Subscriber, Subscription,
};
use wharf_redis::RedisPubSubBackend;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

async fn connect() -> Option<RedisPubSubBackend> {
    wharf_testkit::service::connect_or_skip(
        "redis",
        &service::url(),
        RedisPubSubBackend::connect(service::unique_config()),
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
            backend: "redis-pubsub",
            capability,
        }) => assert_eq!(capability, cap),
        other => panic!("expected Unsupported({cap}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declares_wildcards_and_key_order_only() {
    let Some(b) = connect().await else { return };
    let declared: Vec<Capability> = b.capabilities().iter().collect();
    assert_eq!(
        declared,
        [Capability::OrderingPerKey, Capability::Wildcards]
    );
    assert_eq!(b.name(), "redis-pubsub");
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
async fn groups_and_options_that_need_storage_or_leases_are_unsupported() {
    let Some(b) = connect().await else { return };
    let o = || SubscribeOptions::new("t");
    assert_unsupported(
        b.subscribe(o().group("g")).await,
        Capability::ConsumerGroups,
    );
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_matches_one_segment_though_the_redis_glob_spans_dots() {
    let Some(b) = connect().await else { return };
    let mut star = b
        .subscribe(SubscribeOptions::new("orders.*.eu"))
        .await
        .expect("subscribe");
    for t in [
        "orders.a.b.eu",
        "orders.x.eu.more",
        "orders.eu",
        "orders.a.eu",
    ] {
        b.publish(t, Message::new(t)).await.expect("publish");
    }
    let d = next(&mut star).await;
    assert_eq!(d.topic(), "orders.a.eu");
    assert_quiet(
        &mut star,
        "a topic the glob matches but the pattern does not",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_publish_from_another_client_arrives_as_the_payload() {
    let Some(b) = connect().await else { return };
    let mut sub = b
        .subscribe(SubscribeOptions::new("raw"))
        .await
        .expect("subscribe");
    let client = redis::Client::open(service::url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(b.channel("raw"))
        .arg("hello from redis-cli")
        .query_async(&mut conn)
        .await
        .expect("PUBLISH");
    assert_eq!(receivers, 1);
    let d = next(&mut sub).await;
    assert_eq!(d.message().payload().as_ref(), b"hello from redis-cli");
    assert_eq!(d.message().key(), None);
    assert!(d.message().headers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_backend_ends_subscriptions_without_an_error() {
    let Some(b) = connect().await else { return };
    let mut sub = b
        .subscribe(SubscribeOptions::new("t"))
        .await
        .expect("subscribe");
    b.close().await.expect("close");
    let end = tokio::time::timeout(WAIT, sub.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "{:?}",
        end.map(|o| o.map(|r| r.is_ok()))
    );
}
