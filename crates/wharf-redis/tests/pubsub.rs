//! The Pub/Sub mode ([`wharf_redis::RedisPubSubBackend`]) beyond the conformance suite:
//! the shared non-durable scenarios ([`wharf_testkit::nondurable`]:
//! at-most-once settlements, refused options (groups among them), nothing
//! kept for a later subscriber), what it declares, `*` kept to one segment
//! although a Redis glob spans dots, plain `PUBLISH`es from other clients,
//! and closing the backend.

mod service;

use std::time::Duration;

use wharf_core::{Backend, Capability, Message, Publisher, SubscribeOptions, Subscriber};
use wharf_testkit::{expect_delivery, expect_quiet, QUIET};

const WAIT: Duration = Duration::from_secs(10);

wharf_testkit::nondurable_tests!(match service::pubsub_factory().await {
    Some(factory) => factory,
    None => return,
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declares_wildcards_and_key_order_only() {
    let Some(ns) = service::pubsub_namespace().await else {
        return;
    };
    let b = &ns.backend;
    let declared: Vec<Capability> = b.capabilities().iter().collect();
    assert_eq!(
        declared,
        [Capability::OrderingPerKey, Capability::Wildcards]
    );
    assert_eq!(b.name(), "redis-pubsub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_matches_one_segment_though_the_redis_glob_spans_dots() {
    let Some(ns) = service::pubsub_namespace().await else {
        return;
    };
    let b = &ns.backend;
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
    let d = expect_delivery(&mut star, "orders.a.eu").await;
    assert_eq!(d.topic(), "orders.a.eu");
    expect_quiet(
        &mut star,
        QUIET,
        "a topic the glob matches but the pattern does not",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_publish_from_another_client_arrives_as_the_payload() {
    let Some(ns) = service::pubsub_namespace().await else {
        return;
    };
    let b = &ns.backend;
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
    let d = expect_delivery(&mut sub, "the plain publish").await;
    assert_eq!(d.message().payload().as_ref(), b"hello from redis-cli");
    assert_eq!(d.message().key(), None);
    assert!(d.message().headers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_backend_ends_subscriptions_without_an_error() {
    let Some(ns) = service::pubsub_namespace().await else {
        return;
    };
    let b = &ns.backend;
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
