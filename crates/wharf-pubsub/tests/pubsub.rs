//! Pub/Sub-specific behaviour beyond the conformance suite: flow control
//! by bytes (the count is the suite's `max_in_flight` case), nack with a
//! delay in whole seconds, per-key order for binary keys, dead-lettering on
//! the last attempt (the shared [`wharf_testkit::dead_letter`] scenarios),
//! the subscription the adapter creates for a group (ordering, the
//! server-side dead-letter policy), retention switched off, topic admin
//! and cleanup, and errors.
//!
//! What the emulator holds is inspected with a second, plain gcloud-pubsub
//! client.

mod service;

use std::time::{Duration, Instant};

use bytes::Bytes;
use gcloud_gax::conn::Environment;
use gcloud_pubsub::client::{Client, ClientConfig};
use wharf_core::{
    Backend, Capability, Error, Message, Publisher, StartPosition, SubscribeOptions, Subscriber,
};
use wharf_pubsub::{PubSubBackend, PubSubConfig};
use wharf_testkit::{expect_delivery, expect_quiet};

/// A plain gcloud-pubsub client on the emulator of `config`.
async fn inspector(config: &PubSubConfig) -> Client {
    Client::new(ClientConfig {
        project_id: Some(config.project().to_owned()),
        environment: Environment::Emulator(config.host().to_owned()),
        ..Default::default()
    })
    .await
    .expect("a gcloud-pubsub client on the emulator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_emulator_is_unavailable() {
    let cfg = PubSubConfig::new("pubsub://127.0.0.1:1/p")
        .expect("url")
        .connect_timeout(Duration::from_millis(500));
    let r = PubSubBackend::connect(cfg).await;
    assert!(
        matches!(
            r,
            Err(Error::Unavailable {
                backend: "pubsub",
                ..
            })
        ),
        "{r:?}"
    );
}

wharf_testkit::dead_letter_tests!(
    match service::factory().await {
        Some(factory) => factory,
        None => return,
    },
    lease: Duration::from_millis(1000)
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_outstanding_bytes_bounds_what_a_subscription_holds() {
    // 10 bytes: one 6-byte message at a time; a 30-byte one alone.
    let Some(ns) =
        service::namespace_with(service::unique_config().max_outstanding_bytes(10)).await
    else {
        return;
    };
    let b = &ns.backend;
    let t = "bytes";
    let mut sub = b
        .subscribe(SubscribeOptions::new(t).group("g").max_in_flight(100))
        .await
        .expect("subscribe");
    for p in ["first!", "second", "x".repeat(30).as_str(), "fourth"] {
        b.publish(t, Message::new(p.to_owned()))
            .await
            .expect("publish");
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        let d = expect_delivery(&mut sub, "the next within the budget").await;
        expect_quiet(&mut sub, Duration::from_millis(300), "past the byte budget").await;
        got.push(d.message().payload().len());
        d.ack().await.expect("ack");
    }
    assert_eq!(got, [6, 6, 30, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_with_delay_rounds_up_to_whole_seconds() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = "later";
    let mut sub = b
        .subscribe(SubscribeOptions::new(t).group("g"))
        .await
        .expect("subscribe");
    b.publish(t, Message::new("x")).await.expect("publish");
    let d = expect_delivery(&mut sub, "first").await;
    let nacked = Instant::now();
    // 1.2 s is a deadline of 2 s: nothing before that.
    d.nack_with_delay(Duration::from_millis(1200))
        .await
        .expect("nack_with_delay");
    let d = expect_delivery(&mut sub, "after the delay").await;
    assert!(
        nacked.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        nacked.elapsed()
    );
    assert_eq!(d.attempt(), 2);
    d.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_keys_keep_publish_order_and_round_trip() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = "binary";
    let mut sub = b
        .subscribe(SubscribeOptions::new(t).group("g"))
        .await
        .expect("subscribe");
    let keys = [
        Bytes::from_static(b"\x00\xff"),
        Bytes::from_static(b"\xfe\x01"),
    ];
    for seq in 0..15 {
        for (k, key) in keys.iter().enumerate() {
            let m = Message::builder()
                .key(key.clone())
                .payload(format!("{k}:{seq}"))
                .build();
            b.publish(t, m).await.expect("publish");
        }
    }
    let mut last = [-1i64; 2];
    for _ in 0..30 {
        let d = expect_delivery(&mut sub, "ordered").await;
        let text = String::from_utf8_lossy(d.message().payload()).into_owned();
        let (k, seq) = text.split_once(':').expect("k:seq");
        let (k, seq): (usize, i64) = (k.parse().expect("k"), seq.parse().expect("seq"));
        assert_eq!(d.message().key(), Some(&keys[k]));
        assert_eq!(seq, last[k] + 1, "key {k} out of order");
        last[k] = seq;
        d.ack().await.expect("ack");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_an_ordered_subscription_with_a_dead_letter_policy_one_past_max_deliveries() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = "policy";
    let _sub = b
        .subscribe(SubscribeOptions::new(t).group("billing").max_deliveries(7))
        .await
        .expect("subscribe");
    let client = inspector(ns.backend.config()).await;
    let (topic, config) = client
        .subscription(&b.subscription_id(t, "billing"))
        .config(None)
        .await
        .expect("the group's subscription");
    assert!(
        topic.ends_with(&format!("/topics/{}", b.topic_id(t))),
        "{topic}"
    );
    assert!(config.enable_message_ordering);
    let policy = config.dead_letter_policy.expect("a dead-letter policy");
    assert_eq!(policy.max_delivery_attempts, 8);
    assert!(
        policy
            .dead_letter_topic
            .ends_with(&format!("/topics/{}", b.topic_id("dlq.policy"))),
        "{}",
        policy.dead_letter_topic
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retention_a_new_group_misses_earlier_messages_and_retention_is_not_declared() {
    let Some(ns) = service::namespace_with(service::unique_config().retention(None)).await else {
        return;
    };
    let b = &ns.backend;
    assert!(!b.capabilities().contains(Capability::Retention));
    let t = "fleeting";
    b.ensure_topic(t).await.expect("ensure_topic");
    b.publish(t, Message::new("before")).await.expect("publish");
    let opts = SubscribeOptions::new(t)
        .group("late")
        .start(StartPosition::Earliest);
    let mut sub = b.subscribe(opts).await.expect("subscribe");
    b.publish(t, Message::new("after")).await.expect("publish");
    let d = expect_delivery(&mut sub, "after").await;
    assert_eq!(d.message().payload().as_ref(), b"after");
    d.ack().await.expect("ack");
    expect_quiet(
        &mut sub,
        Duration::from_millis(300),
        "the message from before",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_all_removes_the_prefixs_topics_and_subscriptions_only() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let Some(other) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    b.ensure_topic("admin.one").await.expect("ensure_topic");
    let sub = b
        .subscribe(SubscribeOptions::new("admin.one").group("g"))
        .await
        .expect("subscribe");
    drop(sub);
    other
        .backend
        .ensure_topic("admin.one")
        .await
        .expect("ensure_topic");
    let client = inspector(b.config()).await;
    let topic = |be: &PubSubBackend| client.topic(&be.topic_id("admin.one"));
    assert!(topic(b).exists(None).await.expect("exists"));
    b.delete_all().await.expect("delete_all");
    assert!(!topic(b).exists(None).await.expect("exists"));
    assert!(!client
        .subscription(&b.subscription_id("admin.one", "g"))
        .exists(None)
        .await
        .expect("exists"));
    assert!(
        topic(&other.backend).exists(None).await.expect("exists"),
        "another prefix's topic was deleted"
    );
    // Topics come back on first use.
    b.publish("admin.one", Message::new("again"))
        .await
        .expect("publish after delete_all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_replay_and_stream_mode_are_refused_as_unsupported() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    for (opts, cap) in [
        (SubscribeOptions::new("a.*"), Capability::Wildcards),
        (
            SubscribeOptions::new("a").start(StartPosition::Offset(3)),
            Capability::ReplayFromOffset,
        ),
        (
            SubscribeOptions::new("a")
                .group("g")
                .mode(wharf_core::GroupMode::Stream),
            Capability::PartitionAssignment,
        ),
    ] {
        let r = b.subscribe(opts).await;
        assert!(
            matches!(r, Err(Error::Unsupported { capability, .. }) if capability == cap),
            "{cap}: {r:?}"
        );
    }
    let r = b
        .subscribe(SubscribeOptions::new("a").visibility_timeout(Duration::from_secs(601)))
        .await;
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_subscription_is_deleted_once_closed_and_settled() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = "private";
    b.ensure_topic(t).await.expect("ensure_topic");
    let mut sub = b
        .subscribe(SubscribeOptions::new(t))
        .await
        .expect("subscribe");
    b.publish(t, Message::new("x")).await.expect("publish");
    let d = expect_delivery(&mut sub, "private").await;
    sub.close().await.expect("close");
    d.ack().await.expect("ack after close");
    drop(sub);
    let client = inspector(b.config()).await;
    let prefix = format!("{}~", b.topic_id(t));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = client
            .get_subscriptions(None)
            .await
            .expect("list")
            .into_iter()
            .map(|s| s.id())
            .filter(|id| id.starts_with(&prefix))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still there: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A delivery dropped well after its subscription was closed (past the
/// drain's quiet period) goes back to the group at once: the closed
/// subscription's stream stays open until the emulator has had time to
/// redeliver the nacked message to it (and had it nacked again), since a
/// message it sends a stream that then closes comes back only after the
/// stream's ack deadline (30 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_dropped_long_after_close_comes_back_to_the_group_at_once() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = "late-drop";
    b.ensure_topic(t).await.expect("ensure_topic");
    let opts = SubscribeOptions::new(t)
        .group("g")
        .visibility_timeout(Duration::from_secs(30));
    let mut first = b.subscribe(opts.clone()).await.expect("subscribe");
    b.publish(t, Message::new("held")).await.expect("publish");
    let held = expect_delivery(&mut first, "the first subscription").await;
    let id = held.message().id();
    first.close().await.expect("close");
    drop(first);
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(held);
    let mut second = b.subscribe(opts).await.expect("subscribe");
    let d = tokio::time::timeout(Duration::from_secs(8), second.next())
        .await
        .expect("back within 8 s, not after the 30 s ack deadline")
        .expect("a delivery")
        .expect("no error");
    assert_eq!(d.message().id(), id);
    // The emulator counts the drain's receipts as attempts too.
    assert!(d.attempt() >= 2, "attempt {}", d.attempt());
    d.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumers_unsettled_messages_come_back_to_its_group() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = "dying";
    b.ensure_topic(t).await.expect("ensure_topic");
    // The dying consumer reaches the emulator through a proxy that its
    // death cuts: no nack, no close reaches the server.
    let (proxy, url) = wharf_testkit::proxy::Proxy::for_url(&service::url())
        .await
        .expect("a proxy");
    let dying = PubSubBackend::connect(service::config_at(&url, b.config().prefix_value()))
        .await
        .expect("connect through the proxy");
    let opts = SubscribeOptions::new(t)
        .group("g")
        .visibility_timeout(Duration::from_secs(1));
    let mut sub = dying.subscribe(opts.clone()).await.expect("subscribe");
    b.publish(t, Message::new("m0")).await.expect("publish");
    let held = expect_delivery(&mut sub, "the dying consumer").await;
    let id = held.message().id();
    proxy.cut().await;
    drop((held, sub, dying));
    let mut survivor = b.subscribe(opts).await.expect("subscribe");
    // The emulator keeps the dead stream: after the 1 s lease it redelivers
    // to it or to the survivor, and each time it picks the dead one the
    // message waits out a 10 s stream deadline (11 to 51 s in five runs),
    // hence the long wait.
    let d = tokio::time::timeout(Duration::from_secs(120), survivor.next())
        .await
        .expect("back within 120 s")
        .expect("a delivery")
        .expect("no error");
    assert_eq!(d.message().id(), id);
    assert!(d.attempt() >= 2, "attempt {}", d.attempt());
    d.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ordering_off_a_new_group_seeks_to_its_start() {
    let config = service::unique_config().message_ordering(false);
    let Some(ns) = service::namespace_with(config).await else {
        return;
    };
    let b = &ns.backend;
    assert!(!b.capabilities().contains(Capability::OrderingPerKey));
    let t = "seek";
    b.ensure_topic(t).await.expect("ensure_topic");
    b.publish(t, Message::new("old")).await.expect("publish");
    let group = |g: &str, start| SubscribeOptions::new(t).group(g).start(start);
    let mut earliest = b
        .subscribe(group("early", StartPosition::Earliest))
        .await
        .expect("subscribe");
    let mut latest = b
        .subscribe(group("late", StartPosition::Latest))
        .await
        .expect("subscribe");
    b.publish(t, Message::new("new")).await.expect("publish");
    for (sub, want) in [
        (&mut earliest, &["old", "new"][..]),
        (&mut latest, &["new"][..]),
    ] {
        for w in want {
            let d = expect_delivery(sub, w).await;
            assert_eq!(d.message().payload().as_ref(), w.as_bytes());
            d.ack().await.expect("ack");
        }
        expect_quiet(sub, Duration::from_millis(300), "past the start").await;
    }
}
