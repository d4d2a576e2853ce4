//! Redis-specific behaviour beyond the conformance suite: the dedup store,
//! private wildcard subscriptions, stale settlements, private-subscription nacks,
//! dead-lettering on the last attempt (the shared
//! [`wharf_testkit::dead_letter`] scenarios), and errors.

mod service;

use std::time::Duration;

use wharf_core::{Backend, Error, Message, Publisher, StartPosition, SubscribeOptions, Subscriber};
use wharf_redis::{RedisBackend, RedisConfig, RedisDedupStore};
use wharf_testkit::expect_delivery;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_unavailable() {
    let cfg = RedisConfig::new("redis://127.0.0.1:1").connect_timeout(Duration::from_millis(500));
    let r = RedisBackend::connect(cfg).await;
    assert!(
        matches!(
            r,
            Err(Error::Unavailable {
                backend: "redis",
                ..
            })
        ),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_store_admits_a_key_once_per_ttl() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let store = RedisDedupStore::new(ns.backend.connection(), ns.config.key_prefix_value());
    let ttl = Duration::from_secs(1);
    assert!(store.check_and_set("k1", ttl).await.expect("first"));
    assert!(!store.check_and_set("k1", ttl).await.expect("second"));
    assert!(store.check_and_set("k2", ttl).await.expect("other key"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(store.check_and_set("k1", ttl).await.expect("after ttl"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_store_release_admits_the_key_again() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let store = RedisDedupStore::new(ns.backend.connection(), ns.config.key_prefix_value());
    let ttl = Duration::from_secs(60);
    assert!(store.check_and_set("k", ttl).await.expect("first"));
    assert!(!store.check_and_set("k", ttl).await.expect("duplicate"));
    store.release("k").await.expect("release");
    assert!(store.check_and_set("k", ttl).await.expect("after release"));
    store
        .release("never-set")
        .await
        .expect("releasing an unknown key is fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_wildcard_subscription_reads_every_matching_topic() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    b.publish("orders.old", Message::new("before"))
        .await
        .expect("publish");
    let mut sub = b
        .subscribe(SubscribeOptions::new("orders.*").start(StartPosition::Earliest))
        .await
        .expect("subscribe");
    b.publish("orders.new", Message::new("later"))
        .await
        .expect("publish");
    b.publish("billing.new", Message::new("other"))
        .await
        .expect("publish");
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = expect_delivery(&mut sub, "a matching topic").await;
        got.push((d.topic().to_owned(), d.message().payload().clone()));
        d.ack().await.expect("ack");
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("orders.new".to_owned(), bytes::Bytes::from("later")),
            ("orders.old".to_owned(), bytes::Bytes::from("before")),
        ]
    );
    let extra = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
    assert!(extra.is_err(), "non-matching topic delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_of_a_delivery_whose_lease_expired_is_unknown() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let opts = SubscribeOptions::new("lease")
        .group("g")
        .visibility_timeout(Duration::from_millis(300));
    let mut sub = b.subscribe(opts).await.expect("subscribe");
    b.publish("lease", Message::new("x"))
        .await
        .expect("publish");
    let stale = expect_delivery(&mut sub, "the first attempt").await;
    let fresh = expect_delivery(&mut sub, "the redelivery after the lease").await;
    assert_eq!(fresh.attempt(), 2);
    let r = stale.nack().await;
    assert!(matches!(r, Err(Error::UnknownDelivery { .. })), "{r:?}");
    fresh.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_subscription_nack_redelivers_with_next_attempt() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let mut sub = b
        .subscribe(SubscribeOptions::new("solo").start(StartPosition::Earliest))
        .await
        .expect("subscribe");
    b.publish("solo", Message::new("again"))
        .await
        .expect("publish");
    let d = expect_delivery(&mut sub, "the first attempt").await;
    assert_eq!(d.attempt(), 1);
    d.nack().await.expect("nack");
    let d = expect_delivery(&mut sub, "the redelivery").await;
    assert_eq!(&d.message().payload()[..], b"again");
    assert_eq!(d.attempt(), 2);
    d.ack().await.expect("ack");
}

wharf_testkit::dead_letter_tests!(
    match service::factory().await {
        Some(factory) => factory,
        None => return,
    },
    lease: Duration::from_millis(300)
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_rejected_at_one_mebibyte() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    assert_eq!(ns.backend.limits().max_message_bytes, 1024 * 1024);
    let r = ns
        .backend
        .publish("big", Message::new(vec![0u8; 1024 * 1024 + 1]))
        .await;
    assert!(matches!(r, Err(Error::MessageTooLarge { .. })), "{r:?}");
}
