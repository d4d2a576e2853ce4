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

/// With `dedup(false)` a publish keeps no id: the same id published twice is
/// stored twice, neither receipt says duplicate, and the backend does not
/// declare `Dedup` (so code that needs it refuses the backend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_off_stores_a_republished_id_twice_and_does_not_declare_dedup() {
    let cfg = service::unique_config().dedup(false);
    let Some(ns) = service::Namespace::new("redis", &service::url(), cfg, RedisBackend::connect)
        .await
        .map(|ns| ns.cleanup_on_drop(service::delete_all_blocking))
    else {
        return;
    };
    let b = &ns.backend;
    assert!(!b.capabilities().contains(wharf_core::Capability::Dedup));
    let m = Message::new("twice");
    let r1 = b.publish("t", m.clone()).await.expect("publish");
    let r2 = b.publish_batch("t", vec![m.clone()]).await.expect("again");
    assert!(!r1.duplicate && !r2[0].duplicate, "{r1:?} {r2:?}");
    assert!(r2[0].offset > r1.offset, "stored again: {r1:?} {r2:?}");
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").start(StartPosition::Earliest))
        .await
        .expect("subscribe");
    for copy in ["first", "second"] {
        let d = expect_delivery(&mut sub, copy).await;
        assert_eq!(d.message().id(), m.id(), "{copy}");
        d.ack().await.expect("ack");
    }
}

/// A batch larger than one publish script call (1,000 messages) is stored
/// in order, with one receipt per message, and an id repeated in a later
/// call of the same batch is still a duplicate of the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_several_script_calls_keeps_order_and_dedup_across_calls() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let mut batch: Vec<Message> = (0..2500).map(|i| Message::new(format!("m{i}"))).collect();
    let repeated = batch[10].clone();
    batch[2100] = repeated.clone();
    let receipts = b.publish_batch("big", batch).await.expect("publish_batch");
    assert_eq!(receipts.len(), 2500);
    assert!(receipts[2100].duplicate, "{:?}", receipts[2100]);
    assert_eq!(receipts[2100].id, repeated.id());
    assert_eq!(receipts[2100].offset, receipts[10].offset);
    let fresh: Vec<u64> = receipts
        .iter()
        .filter(|r| !r.duplicate)
        .map(|r| r.offset.expect("an offset"))
        .collect();
    assert_eq!(fresh.len(), 2499);
    assert!(fresh.windows(2).all(|w| w[0] < w[1]), "offsets in order");
    let mut sub = b
        .subscribe(SubscribeOptions::new("big").start(StartPosition::Earliest))
        .await
        .expect("subscribe");
    let mut buf = Vec::new();
    let mut got = Vec::new();
    while got.len() < 2499 {
        let n = tokio::time::timeout(Duration::from_secs(10), sub.next_batch(500, &mut buf))
            .await
            .expect("deliveries in time")
            .expect("next_batch");
        assert!(n > 0, "ended after {}", got.len());
        for d in buf.drain(..) {
            got.push(String::from_utf8_lossy(d.message().payload()).into_owned());
            d.ack().await.expect("ack");
        }
    }
    let expected: Vec<String> = (0..2500)
        .filter(|i| *i != 2100)
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(got, expected);
}

/// With `dedup(false)` a batch is `MULTI`/`EXEC` of plain `XADD`s instead of
/// the script: over several chunks it is still stored in order with every
/// field (key, headers, timestamp), receipts in increasing offsets, and its
/// topic registered for wildcard subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_off_batch_over_several_chunks_keeps_order_fields_and_wildcards() {
    let cfg = service::unique_config().dedup(false);
    let Some(ns) = service::Namespace::new("redis", &service::url(), cfg, RedisBackend::connect)
        .await
        .map(|ns| ns.cleanup_on_drop(service::delete_all_blocking))
    else {
        return;
    };
    let b = &ns.backend;
    let mut sub = b
        .subscribe(SubscribeOptions::new("orders.*").start(StartPosition::Earliest))
        .await
        .expect("subscribe");
    let msgs: Vec<Message> = (0..2500)
        .map(|i| {
            Message::builder()
                .key(format!("k{}", i % 7))
                .header("n", i.to_string())
                .payload(format!("m{i}"))
                .build()
        })
        .collect();
    let receipts = b
        .publish_batch("orders.new", msgs.clone())
        .await
        .expect("publish");
    assert_eq!(receipts.len(), msgs.len());
    for (r, m) in receipts.iter().zip(&msgs) {
        assert_eq!(r.id, m.id());
        assert!(!r.duplicate);
    }
    assert!(
        receipts.windows(2).all(|w| w[0].offset < w[1].offset),
        "receipts in stream order"
    );
    for m in &msgs {
        let d = expect_delivery(&mut sub, "in order").await;
        assert_eq!(d.message().id(), m.id());
        assert_eq!(d.message().payload(), m.payload());
        assert_eq!(d.message().key(), m.key());
        assert_eq!(d.message().headers().get("n"), m.headers().get("n"));
        assert_eq!(d.message().timestamp(), m.timestamp());
        assert_eq!(d.info().topic.as_ref(), "orders.new");
        d.ack().await.expect("ack");
    }
}

/// The stream entry holds `ts` only when the timestamp is not the time in
/// the message's UUIDv7 id; an entry as written before (with `ts`) and a
/// back-dated message both read back with their own timestamps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_carry_ts_only_when_the_id_does_not_hold_it() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let plain = Message::new("plain");
    let dated = Message::builder()
        .payload("dated")
        .timestamp(wharf_core::Timestamp::from_millis(1_000))
        .build();
    b.publish_batch("t", vec![plain.clone(), dated.clone()])
        .await
        .expect("publish");
    let key = b.stream_key("t");
    let client = redis::Client::open(service::url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    // Each entry: its stream id and its field/value pairs.
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let entries: Vec<Entry> = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    let names = |i: usize| -> Vec<String> { entries[i].1.iter().map(|(n, _)| n.clone()).collect() };
    assert_eq!(names(0), ["id", "p"]);
    assert_eq!(names(1), ["id", "ts", "p"]);
    // Written the way every earlier version wrote it.
    let old = Message::new("old");
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg("id")
        .arg(old.id().to_string())
        .arg("ts")
        .arg(old.timestamp().as_millis())
        .arg("p")
        .arg("old")
        .query_async(&mut conn)
        .await
        .expect("XADD");
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").start(StartPosition::Earliest))
        .await
        .expect("subscribe");
    for m in [&plain, &dated, &old] {
        let d = expect_delivery(&mut sub, "each entry").await;
        assert_eq!(d.message().id(), m.id());
        assert_eq!(d.message().payload(), m.payload());
        assert_eq!(d.message().timestamp(), m.timestamp());
        d.ack().await.expect("ack");
    }
}

/// Entries read but not handed out (expired) give their in-flight slots
/// back: with room for two, five expired entries ahead of three fresh ones
/// do not stall the group (the decoder frees what it does not hand out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_give_their_in_flight_slots_back() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    for i in 0..5 {
        let m = Message::builder()
            .payload(format!("stale{i}"))
            .ttl(Duration::from_millis(1))
            .build();
        b.publish("t", m).await.expect("publish");
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 0..3 {
        b.publish("t", Message::new(format!("fresh{i}")))
            .await
            .expect("publish");
    }
    let mut sub = b
        .subscribe(
            SubscribeOptions::new("t")
                .group("g")
                .start(StartPosition::Earliest)
                .max_in_flight(2),
        )
        .await
        .expect("subscribe");
    for i in 0..3 {
        let d = expect_delivery(&mut sub, "fresh").await;
        assert_eq!(
            d.message().payload().as_ref(),
            format!("fresh{i}").as_bytes()
        );
        d.ack().await.expect("ack");
    }
}
