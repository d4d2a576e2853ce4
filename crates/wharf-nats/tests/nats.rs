//! NATS-specific behaviour beyond the conformance suite: dead-lettering on
//! the last attempt (the shared [`wharf_testkit::dead_letter`] scenarios,
//! and two groups rejecting one message), header rules, limits, errors, and
//! messages surviving a reconnect.

mod service;

use std::time::Duration;

use wharf_core::{
    header, name::dead_letter_topic, Backend, Error, Message, NameKind, Publisher,
    SubscribeOptions, Subscriber,
};
use wharf_nats::{NatsBackend, NatsConfig, HEADER_ROOM};
use wharf_testkit::expect_delivery;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_unavailable() {
    let cfg = NatsConfig::new("nats://127.0.0.1:1").connect_timeout(Duration::from_millis(500));
    let r = NatsBackend::connect(cfg).await;
    assert!(
        matches!(
            r,
            Err(Error::Unavailable {
                backend: "nats",
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
    lease: Duration::from_millis(500)
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_rejecting_one_message_both_reach_the_dead_letter_topic() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let mut dead = b
        .subscribe(SubscribeOptions::new(dead_letter_topic("pay")).group("ops"))
        .await
        .expect("subscribe dlq");
    let mut a = b
        .subscribe(SubscribeOptions::new("pay").group("a"))
        .await
        .expect("a");
    let mut c = b
        .subscribe(SubscribeOptions::new("pay").group("c"))
        .await
        .expect("c");
    b.publish("pay", Message::new("poison"))
        .await
        .expect("publish");
    for sub in [&mut a, &mut c] {
        let d = expect_delivery(sub, "delivery").await;
        d.reject("bad").await.expect("reject");
    }
    let mut groups = Vec::new();
    for _ in 0..2 {
        let dl = expect_delivery(&mut dead, "dead letter").await;
        groups.push(
            dl.message()
                .headers()
                .get(header::DLQ_GROUP)
                .unwrap_or("")
                .to_owned(),
        );
        dl.ack().await.expect("ack");
    }
    groups.sort();
    assert_eq!(groups, ["a", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_nats_cannot_carry_are_rejected_before_sending() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let m = Message::builder()
        .header("has space", "v")
        .payload("x")
        .build();
    let r = ns.backend.publish("hdr", m).await;
    assert!(
        matches!(
            r,
            Err(Error::InvalidName {
                kind: NameKind::Header,
                ..
            })
        ),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_is_server_max_payload_minus_header_room() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let max_payload = ns.backend.client().server_info().max_payload;
    assert_eq!(
        ns.backend.limits().max_message_bytes,
        max_payload - HEADER_ROOM
    );
    let exact = Message::new(vec![b'x'; ns.backend.limits().max_message_bytes]);
    let r = ns
        .backend
        .publish("big", exact)
        .await
        .expect("a message at the limit is stored");
    assert!(r.offset.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_survive_closing_and_reconnecting() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    for i in 0..3 {
        ns.backend
            .publish("durable", Message::new(format!("m{i}")))
            .await
            .expect("publish");
    }
    ns.backend.close().await.expect("close");
    let again = NatsBackend::connect(ns.config.clone())
        .await
        .expect("reconnect");
    let mut sub = again
        .subscribe(SubscribeOptions::new("durable").group("g"))
        .await
        .expect("subscribe");
    for i in 0..3 {
        let d = expect_delivery(&mut sub, "delivery").await;
        assert_eq!(&d.message().payload()[..], format!("m{i}").as_bytes());
        d.ack().await.expect("ack");
    }
}

/// A stored message carries `wharf-timestamp-ms` only when its timestamp
/// is not the time in its UUIDv7 id; both kinds read back with their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timestamp_header_is_sent_only_when_the_id_does_not_hold_it() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let plain = Message::new("plain");
    let dated = Message::builder()
        .payload("dated")
        .timestamp(wharf_core::Timestamp::from_millis(1_000))
        .build();
    let receipts = b
        .publish_batch("t", vec![plain.clone(), dated.clone()])
        .await
        .expect("publish");
    let stream = async_nats::jetstream::new(b.client().clone())
        .get_stream(b.stream_name())
        .await
        .expect("stream");
    let mut stored = Vec::new();
    for r in &receipts {
        let m = stream
            .get_raw_message(r.offset.expect("offset"))
            .await
            .expect("stored");
        stored.push(
            m.headers
                .get("wharf-timestamp-ms")
                .map(|v| v.as_str().to_owned()),
        );
    }
    assert_eq!(stored, [None, Some("1000".to_owned())]);
    let mut sub = b
        .subscribe(
            SubscribeOptions::new("t")
                .group("g")
                .start(wharf_core::StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    for m in [&plain, &dated] {
        let d = expect_delivery(&mut sub, "each message").await;
        assert_eq!(d.message().id(), m.id());
        assert_eq!(d.message().timestamp(), m.timestamp());
        d.ack().await.expect("ack");
    }
}
