//! Behaviour of the memory backend: groups, backpressure, leases, delays,
//! dead letters, TTL, closing and cancel safety. Time-based tests run on
//! tokio's paused clock, so nothing here really sleeps.

use std::time::Duration;

use tokio::time::{timeout, Instant};
use wharf_core::{
    header, Backend, Capability, Delivery, Error, Message, Publisher, StartPosition,
    SubscribeOptions, Subscriber, Subscription, Timestamp,
};
use wharf_memory::MemoryBackend;

const WAIT: Duration = Duration::from_secs(5);

async fn next(sub: &mut Subscription) -> Delivery {
    timeout(WAIT, sub.next())
        .await
        .expect("a delivery in time")
        .expect("stream open")
        .expect("no error")
}

async fn nothing_within(sub: &mut Subscription, d: Duration) -> bool {
    timeout(d, sub.next()).await.is_err()
}

fn text(d: &Delivery) -> String {
    String::from_utf8_lossy(d.message().payload()).into_owned()
}

async fn publish_n(b: &MemoryBackend, topic: &str, n: usize) {
    for i in 0..n {
        b.publish(topic, Message::new(format!("m{i}")))
            .await
            .expect("publish");
    }
}

#[tokio::test]
async fn group_starting_earliest_receives_everything_in_order_with_dense_offsets() {
    let b = MemoryBackend::new();
    let receipts = b
        .publish_batch(
            "orders",
            (0..3).map(|i| Message::new(format!("m{i}"))).collect(),
        )
        .await
        .unwrap();
    assert_eq!(
        receipts
            .iter()
            .map(|r| (r.partition, r.offset))
            .collect::<Vec<_>>(),
        vec![(0, Some(0)), (0, Some(1)), (0, Some(2))]
    );
    let mut sub = b
        .subscribe(SubscribeOptions::new("orders").group("g"))
        .await
        .unwrap();
    for i in 0..3u64 {
        let d = next(&mut sub).await;
        assert_eq!(text(&d), format!("m{i}"));
        assert_eq!(d.info().offset, Some(i));
        assert_eq!(d.attempt(), 1);
        assert_eq!(d.topic(), "orders");
        d.ack().await.unwrap();
    }
}

#[tokio::test]
async fn bad_names_and_oversized_messages_are_rejected_and_nothing_is_stored() {
    let b = MemoryBackend::builder().max_message_bytes(10).build();
    let err = b.publish("bad..name", Message::new("x")).await.unwrap_err();
    assert!(matches!(err, Error::InvalidName { .. }), "{err}");
    let err = b
        .publish_batch(
            "t",
            vec![Message::new("ok"), Message::new("far too large!")],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::MessageTooLarge { size: 14, max: 10 }),
        "{err}"
    );
    let r = b.publish("t", Message::new("first")).await.unwrap();
    assert_eq!(r.offset, Some(0), "the rejected batch stored nothing");
    assert_eq!(b.limits().max_message_bytes, 10);
}

#[tokio::test]
async fn capabilities_exclude_persistence_priorities_and_dedup() {
    let caps = MemoryBackend::new().capabilities();
    assert_eq!(MemoryBackend::new().name(), "memory");
    for c in [
        Capability::Persistence,
        Capability::Priorities,
        Capability::Dedup,
    ] {
        assert!(!caps.contains(c), "{c}");
    }
    for c in [
        Capability::ConsumerGroups,
        Capability::NackWithDelay,
        Capability::VisibilityTimeout,
        Capability::DeadLetter,
        Capability::Backpressure,
        Capability::Wildcards,
        Capability::ReplayFromTime,
        Capability::Retention,
        Capability::Redelivery,
    ] {
        assert!(caps.contains(c), "{c}");
    }
}

#[tokio::test]
async fn a_named_group_delivers_each_message_to_exactly_one_consumer() {
    let b = MemoryBackend::new();
    let mut a = b
        .subscribe(SubscribeOptions::new("jobs").group("w"))
        .await
        .unwrap();
    let mut c = b
        .subscribe(SubscribeOptions::new("jobs").group("w"))
        .await
        .unwrap();
    publish_n(&b, "jobs", 10).await;
    let mut seen = Vec::new();
    let (mut held_a, mut held_c) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let d = next(&mut a).await;
        seen.push(d.info().offset.unwrap());
        held_a.push(d);
        let d = next(&mut c).await;
        seen.push(d.info().offset.unwrap());
        held_c.push(d);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    assert!(nothing_within(&mut a, Duration::from_millis(20)).await);
    for d in held_a.into_iter().chain(held_c) {
        d.ack().await.unwrap();
    }
}

#[tokio::test]
async fn private_subscriptions_each_get_every_message_published_after_subscribing() {
    let b = MemoryBackend::new();
    b.publish("news", Message::new("before")).await.unwrap();
    let mut s1 = b.subscribe(SubscribeOptions::new("news")).await.unwrap();
    let mut s2 = b.subscribe(SubscribeOptions::new("news")).await.unwrap();
    b.publish("news", Message::new("after")).await.unwrap();
    for s in [&mut s1, &mut s2] {
        let d = next(s).await;
        assert_eq!(text(&d), "after");
        d.ack().await.unwrap();
    }
}

#[tokio::test]
async fn pattern_subscription_covers_existing_and_later_topics() {
    let b = MemoryBackend::new();
    b.publish("orders.created", Message::new("a"))
        .await
        .unwrap();
    b.publish("billing.paid", Message::new("x")).await.unwrap();
    let mut sub = b
        .subscribe(SubscribeOptions::new("orders.>").group("g"))
        .await
        .unwrap();
    let d = next(&mut sub).await;
    assert_eq!((d.topic(), text(&d).as_str()), ("orders.created", "a"));
    d.ack().await.unwrap();
    b.publish("orders.eu.shipped", Message::new("b"))
        .await
        .unwrap();
    let d = next(&mut sub).await;
    assert_eq!((d.topic(), text(&d).as_str()), ("orders.eu.shipped", "b"));
    d.ack().await.unwrap();
    b.publish("billing.paid", Message::new("y")).await.unwrap();
    assert!(nothing_within(&mut sub, Duration::from_millis(20)).await);
}

#[tokio::test]
async fn start_offset_replays_from_it_and_beyond_the_end_is_invalid() {
    let b = MemoryBackend::new();
    publish_n(&b, "t", 5).await;
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").start(StartPosition::Offset(3)))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await.info().offset, Some(3));
    let err = b
        .subscribe(SubscribeOptions::new("t").start(StartPosition::Offset(6)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidOffset {
                offset: 6,
                start: 0,
                end: 5,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn start_time_begins_at_the_first_message_at_or_after_it() {
    let b = MemoryBackend::new();
    for ms in [1_000u64, 2_000, 3_000] {
        let m = Message::builder()
            .payload(ms.to_string())
            .timestamp(Timestamp::from_millis(ms))
            .build();
        b.publish("t", m).await.unwrap();
    }
    let opts = SubscribeOptions::new("t").start(StartPosition::Time(Timestamp::from_millis(1_500)));
    let mut sub = b.subscribe(opts).await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "2000");
}

#[tokio::test]
async fn a_group_resumes_where_it_left_off_after_its_consumers_leave() {
    let b = MemoryBackend::new();
    publish_n(&b, "t", 3).await;
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").group("g"))
        .await
        .unwrap();
    next(&mut sub).await.ack().await.unwrap();
    drop(sub);
    let mut sub = b
        .subscribe(
            SubscribeOptions::new("t")
                .group("g")
                .start(StartPosition::Latest),
        )
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await.info().offset, Some(1));
}

#[tokio::test(start_paused = true)]
async fn publisher_waits_while_a_group_lags_and_resumes_after_acks() {
    let b = MemoryBackend::builder().topic_capacity(4).build();
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").group("slow"))
        .await
        .unwrap();
    publish_n(&b, "t", 4).await;
    let blocked = timeout(Duration::from_secs(1), b.publish("t", Message::new("m4"))).await;
    assert!(
        blocked.is_err(),
        "publish must wait while the group needs offset 0"
    );
    let b2 = b.clone();
    let publisher = tokio::spawn(async move { b2.publish("t", Message::new("m4")).await });
    tokio::task::yield_now().await;
    assert!(!publisher.is_finished());
    next(&mut sub).await.ack().await.unwrap();
    let receipt = timeout(WAIT, publisher).await.unwrap().unwrap().unwrap();
    assert_eq!(receipt.offset, Some(4));
    for i in 1..=4u64 {
        let d = next(&mut sub).await;
        assert_eq!(d.info().offset, Some(i), "nothing of the group was dropped");
        d.ack().await.unwrap();
    }
}

#[tokio::test]
async fn a_topic_without_groups_keeps_a_ring_of_the_latest_messages() {
    let b = MemoryBackend::builder().topic_capacity(3).build();
    publish_n(&b, "t", 10).await;
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").group("late"))
        .await
        .unwrap();
    for i in 7..10u64 {
        let d = next(&mut sub).await;
        assert_eq!(d.info().offset, Some(i));
        d.ack().await.unwrap();
    }
    assert!(nothing_within(&mut sub, Duration::from_millis(20)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_window_is_stored_chunk_by_chunk() {
    let b = MemoryBackend::builder().topic_capacity(8).build();
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").group("g"))
        .await
        .unwrap();
    let b2 = b.clone();
    let publisher = tokio::spawn(async move {
        let batch = (0..100).map(|i| Message::new(format!("m{i}"))).collect();
        b2.publish_batch("t", batch).await
    });
    for i in 0..100u64 {
        let d = next(&mut sub).await;
        assert_eq!(d.info().offset, Some(i));
        d.ack().await.unwrap();
    }
    let receipts = timeout(WAIT, publisher).await.unwrap().unwrap().unwrap();
    assert_eq!(receipts.len(), 100);
    assert_eq!(receipts[99].offset, Some(99));
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_redelivers_and_the_stale_token_is_unknown() {
    let b = MemoryBackend::new();
    let opts = SubscribeOptions::new("t")
        .group("g")
        .visibility_timeout(Duration::from_secs(10));
    let mut sub = b.subscribe(opts).await.unwrap();
    b.publish("t", Message::new("x")).await.unwrap();
    let first = next(&mut sub).await;
    let start = Instant::now();
    let again = timeout(Duration::from_secs(60), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(start.elapsed() >= Duration::from_secs(10));
    assert_eq!(again.attempt(), 2);
    assert_eq!(again.info().offset, first.info().offset);
    let err = first.ack().await.unwrap_err();
    assert!(matches!(err, Error::UnknownDelivery { .. }), "{err}");
    again.ack().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn extend_keeps_the_lease_beyond_the_visibility_timeout() {
    let b = MemoryBackend::builder()
        .default_visibility_timeout(Some(Duration::from_secs(10)))
        .build();
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").group("g"))
        .await
        .unwrap();
    b.publish("t", Message::new("x")).await.unwrap();
    let d = next(&mut sub).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    d.extend(Duration::from_secs(30)).await.unwrap();
    assert!(nothing_within(&mut sub, Duration::from_secs(25)).await);
    d.ack().await.unwrap();
    assert!(nothing_within(&mut sub, Duration::from_secs(60)).await);
}

#[tokio::test(start_paused = true)]
async fn nack_with_delay_redelivers_after_the_delay_only() {
    let b = MemoryBackend::new();
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").group("g"))
        .await
        .unwrap();
    b.publish("t", Message::new("x")).await.unwrap();
    let d = next(&mut sub).await;
    let start = Instant::now();
    d.nack_with_delay(Duration::from_secs(30)).await.unwrap();
    assert!(nothing_within(&mut sub, Duration::from_secs(29)).await);
    let d = next(&mut sub).await;
    assert!(start.elapsed() >= Duration::from_secs(30));
    assert_eq!(d.attempt(), 2);
    d.ack().await.unwrap();
}

#[tokio::test]
async fn nack_and_drop_redeliver_before_newer_messages() {
    let b = MemoryBackend::new();
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").group("g"))
        .await
        .unwrap();
    publish_n(&b, "t", 3).await;
    let d0 = next(&mut sub).await;
    let d1 = next(&mut sub).await;
    drop(d1);
    d0.nack().await.unwrap();
    let a = next(&mut sub).await;
    let c = next(&mut sub).await;
    assert_eq!((a.info().offset, a.attempt()), (Some(0), 2));
    assert_eq!((c.info().offset, c.attempt()), (Some(1), 2));
    assert_eq!(next(&mut sub).await.info().offset, Some(2));
}

#[tokio::test]
async fn exceeding_max_deliveries_dead_letters_with_every_header() {
    let b = MemoryBackend::new();
    let mut dlq = b
        .subscribe(SubscribeOptions::new("dlq.t").group("ops"))
        .await
        .unwrap();
    let opts = SubscribeOptions::new("t").group("g").max_deliveries(2);
    let mut sub = b.subscribe(opts).await.unwrap();
    let original = Message::builder()
        .key("k")
        .header("h", "v")
        .payload("p")
        .build();
    b.publish("t", original.clone()).await.unwrap();
    next(&mut sub).await.nack().await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(d.attempt(), 2);
    d.nack().await.unwrap();
    assert!(nothing_within(&mut sub, Duration::from_millis(20)).await);

    let dead = next(&mut dlq).await;
    let m = dead.message();
    assert_eq!(
        (m.id(), m.key(), m.payload()),
        (original.id(), original.key(), original.payload())
    );
    let h = m.headers();
    assert_eq!(h.get("h"), Some("v"));
    assert_eq!(h.get(header::DLQ_REASON), Some("max deliveries exceeded"));
    assert_eq!(h.get(header::ORIGINAL_TOPIC), Some("t"));
    assert_eq!(h.get(header::ORIGINAL_PARTITION), Some("0"));
    assert_eq!(h.get(header::ORIGINAL_OFFSET), Some("0"));
    assert_eq!(h.get(header::DLQ_GROUP), Some("g"));
    assert_eq!(h.get(header::ATTEMPTS), Some("2"));
    let first: u64 = h.get(header::FIRST_FAILURE_MS).unwrap().parse().unwrap();
    let last: u64 = h.get(header::LAST_FAILURE_MS).unwrap().parse().unwrap();
    assert!(first > 0 && first <= last, "{first} {last}");
}

#[tokio::test]
async fn reject_dead_letters_to_the_chosen_topic_with_the_reason() {
    let b = MemoryBackend::new();
    let opts = SubscribeOptions::new("t").dead_letter_topic("parking");
    let mut sub = b.subscribe(opts).await.unwrap();
    let mut dlq = b.subscribe(SubscribeOptions::new("parking")).await.unwrap();
    b.publish("t", Message::new("bad")).await.unwrap();
    next(&mut sub).await.reject("unparsable").await.unwrap();
    let dead = next(&mut dlq).await;
    assert_eq!(
        dead.message().headers().get(header::DLQ_REASON),
        Some("unparsable")
    );
    assert_eq!(
        dead.message().headers().get(header::DLQ_GROUP),
        None,
        "private subscription"
    );
    assert_eq!(dead.message().headers().get(header::ATTEMPTS), Some("1"));
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_at_max_deliveries_dead_letters() {
    let b = MemoryBackend::new();
    let opts = SubscribeOptions::new("t")
        .group("g")
        .max_deliveries(1)
        .visibility_timeout(Duration::from_secs(5));
    let mut sub = b.subscribe(opts).await.unwrap();
    let mut dlq = b
        .subscribe(SubscribeOptions::new("dlq.t").group("ops"))
        .await
        .unwrap();
    b.publish("t", Message::new("x")).await.unwrap();
    let held = next(&mut sub).await;
    assert!(nothing_within(&mut sub, Duration::from_secs(10)).await);
    let dead = next(&mut dlq).await;
    assert_eq!(dead.message().headers().get(header::ATTEMPTS), Some("1"));
    assert!(matches!(
        held.ack().await,
        Err(Error::UnknownDelivery { .. })
    ));
}

#[tokio::test]
async fn expired_messages_are_skipped() {
    let b = MemoryBackend::new();
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").group("g"))
        .await
        .unwrap();
    let stale = Message::builder()
        .payload("stale")
        .timestamp(Timestamp::from_millis(1_000))
        .ttl(Duration::from_secs(1))
        .build();
    b.publish("t", stale).await.unwrap();
    let fresh = Message::builder()
        .payload("fresh")
        .ttl(Duration::from_secs(3600))
        .build();
    b.publish("t", fresh).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!((text(&d).as_str(), d.info().offset), ("fresh", Some(1)));
}

#[tokio::test(start_paused = true)]
async fn a_message_expiring_while_waiting_for_redelivery_is_not_redelivered() {
    let b = MemoryBackend::new();
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").group("g"))
        .await
        .unwrap();
    let m = Message::builder()
        .payload("x")
        .ttl(Duration::from_secs(5))
        .build();
    b.publish("t", m).await.unwrap();
    next(&mut sub)
        .await
        .nack_with_delay(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(nothing_within(&mut sub, Duration::from_secs(30)).await);
}

#[tokio::test(start_paused = true)]
async fn delayed_publish_is_delivered_at_its_time_and_does_not_block_later_messages() {
    let b = MemoryBackend::new();
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").group("g"))
        .await
        .unwrap();
    let start = Instant::now();
    let later = Message::builder()
        .payload("later")
        .deliver_after(Duration::from_secs(60))
        .build();
    b.publish("t", later).await.unwrap();
    b.publish("t", Message::new("now")).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(text(&d), "now");
    d.ack().await.unwrap();
    let d = timeout(Duration::from_secs(120), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((text(&d).as_str(), d.attempt()), ("later", 1));
    assert!(start.elapsed() >= Duration::from_secs(59));
}

#[tokio::test]
async fn max_in_flight_holds_back_deliveries_until_one_is_settled() {
    let b = MemoryBackend::new();
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").group("g").max_in_flight(2))
        .await
        .unwrap();
    publish_n(&b, "t", 3).await;
    let d0 = next(&mut sub).await;
    let _d1 = next(&mut sub).await;
    assert!(nothing_within(&mut sub, Duration::from_millis(20)).await);
    d0.ack().await.unwrap();
    assert_eq!(next(&mut sub).await.info().offset, Some(2));
}

#[tokio::test]
async fn a_dropped_subscription_leaves_its_share_to_the_other_consumers() {
    let b = MemoryBackend::new();
    let mut a = b
        .subscribe(SubscribeOptions::new("t").group("g"))
        .await
        .unwrap();
    let mut c = b
        .subscribe(SubscribeOptions::new("t").group("g"))
        .await
        .unwrap();
    publish_n(&b, "t", 1).await;
    let held = next(&mut a).await;
    drop(a);
    publish_n(&b, "t", 1).await;
    let taken_over = next(&mut c).await;
    assert_eq!(taken_over.info().offset, Some(1));
    held.ack().await.unwrap();
    taken_over.ack().await.unwrap();
    assert!(nothing_within(&mut c, Duration::from_millis(20)).await);
}

#[tokio::test]
async fn closing_a_subscription_ends_it_but_outstanding_deliveries_can_be_acked() {
    let b = MemoryBackend::new();
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").group("g"))
        .await
        .unwrap();
    publish_n(&b, "t", 2).await;
    let d = next(&mut sub).await;
    sub.close().await.unwrap();
    assert!(sub.next().await.is_none());
    d.ack().await.unwrap();
    let mut again = b
        .subscribe(SubscribeOptions::new("t").group("g"))
        .await
        .unwrap();
    assert_eq!(next(&mut again).await.info().offset, Some(1));
}

#[tokio::test(start_paused = true)]
async fn closing_the_backend_fails_publishes_and_ends_waiting_streams() {
    let b = MemoryBackend::builder().topic_capacity(1).build();
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").group("g"))
        .await
        .unwrap();
    let mut idle = b.subscribe(SubscribeOptions::new("other")).await.unwrap();
    b.publish("t", Message::new("a")).await.unwrap();
    let b2 = b.clone();
    let waiting_publisher = tokio::spawn(async move { b2.publish("t", Message::new("b")).await });
    let waiting_consumer = tokio::spawn(async move { idle.next().await.is_none() });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let held = next(&mut sub).await;
    b.close().await.unwrap();
    assert!(matches!(
        waiting_publisher.await.unwrap(),
        Err(Error::Closed { .. })
    ));
    assert!(waiting_consumer.await.unwrap(), "a waiting stream ends");
    assert!(sub.next().await.is_none());
    assert!(matches!(
        b.publish("t", Message::new("c")).await,
        Err(Error::Closed { .. })
    ));
    held.ack().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_next_loses_no_message() {
    let b = MemoryBackend::new();
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").group("g"))
        .await
        .unwrap();
    assert!(timeout(Duration::from_millis(50), sub.next())
        .await
        .is_err());
    b.publish("t", Message::new("x")).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!((text(&d).as_str(), d.attempt()), ("x", 1));
}

#[tokio::test]
async fn next_batch_takes_everything_ready_up_to_max() {
    let b = MemoryBackend::new();
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").group("g"))
        .await
        .unwrap();
    publish_n(&b, "t", 10).await;
    let mut out = Vec::new();
    assert_eq!(sub.next_batch(7, &mut out).await.unwrap(), 7);
    assert_eq!(sub.next_batch(7, &mut out).await.unwrap(), 3);
    let offsets: Vec<_> = out.iter().map(|d| d.info().offset.unwrap()).collect();
    assert_eq!(offsets, (0..10).collect::<Vec<_>>());
}

#[tokio::test]
async fn dropping_a_delivery_counts_toward_max_deliveries() {
    let b = MemoryBackend::new();
    let mut dlq = b
        .subscribe(SubscribeOptions::new("dlq.t").group("ops"))
        .await
        .unwrap();
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").group("g").max_deliveries(2))
        .await
        .unwrap();
    b.publish("t", Message::new("crashes the handler"))
        .await
        .unwrap();
    drop(next(&mut sub).await);
    let d = next(&mut sub).await;
    assert_eq!(d.attempt(), 2);
    drop(d);
    let dead = next(&mut dlq).await;
    assert_eq!(
        dead.message().headers().get(header::DLQ_REASON),
        Some("max deliveries exceeded")
    );
    assert!(nothing_within(&mut sub, Duration::from_millis(20)).await);
}

#[tokio::test]
async fn star_matches_one_segment_only() {
    let b = MemoryBackend::new();
    let mut sub = b.subscribe(SubscribeOptions::new("a.*")).await.unwrap();
    b.publish("a.b.c", Message::new("deep")).await.unwrap();
    b.publish("a", Message::new("short")).await.unwrap();
    b.publish("a.b", Message::new("match")).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!((d.topic(), text(&d).as_str()), ("a.b", "match"));
    assert!(nothing_within(&mut sub, Duration::from_millis(20)).await);
}

#[tokio::test]
async fn ensure_topic_validates_and_a_closed_backend_refuses_everything() {
    let b = MemoryBackend::new();
    assert!(b.ensure_topic("ok.topic").await.is_ok());
    assert!(matches!(
        b.ensure_topic("not ok").await,
        Err(Error::InvalidName { .. })
    ));
    b.close().await.unwrap();
    assert!(matches!(
        b.subscribe(SubscribeOptions::new("ok.topic")).await,
        Err(Error::Closed { .. })
    ));
    assert!(matches!(
        b.publish_batch("ok.topic", vec![Message::new("x")]).await,
        Err(Error::Closed { .. })
    ));
}

#[tokio::test]
async fn next_batch_returns_what_is_ready_without_waiting_for_max() {
    let b = MemoryBackend::new();
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").group("g"))
        .await
        .unwrap();
    let mut out = Vec::new();
    publish_n(&b, "t", 1).await;
    // next_batch waits for the first, then uses try_next for the rest.
    assert_eq!(sub.next_batch(10, &mut out).await.unwrap(), 1);
    assert!(nothing_within(&mut sub, Duration::from_millis(20)).await);
}

#[tokio::test]
async fn stream_mode_gives_the_partition_to_one_consumer_until_it_leaves() {
    let b = MemoryBackend::new();
    let opts = || {
        SubscribeOptions::new("t")
            .group("g")
            .mode(wharf_core::GroupMode::Stream)
    };
    let mut owner = b.subscribe(opts()).await.unwrap();
    let mut other = b.subscribe(opts()).await.unwrap();
    publish_n(&b, "t", 2).await;
    let d = next(&mut owner).await;
    assert!(nothing_within(&mut other, Duration::from_millis(20)).await);
    d.ack().await.unwrap();
    drop(owner);
    let d = next(&mut other).await;
    assert_eq!(d.info().offset, Some(1));
}

/// The largest delay or lease extension a caller can pass does not overflow
/// the clock (which panicked under the topic's lock) and the group goes on.
#[tokio::test(start_paused = true)]
async fn the_largest_delay_and_extension_do_not_panic_or_wedge_the_group() {
    let b = MemoryBackend::new();
    b.publish("huge.t", Message::new("a"))
        .await
        .expect("publish a");
    b.publish("huge.t", Message::new("b"))
        .await
        .expect("publish b");
    let mut sub = b
        .subscribe(
            SubscribeOptions::new("huge.t")
                .group("g")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    let a = next(&mut sub).await;
    assert_eq!(text(&a), "a");
    a.extend(Duration::MAX)
        .await
        .expect("extend by Duration::MAX");
    a.nack_with_delay(Duration::MAX)
        .await
        .expect("nack with Duration::MAX");
    let second = next(&mut sub).await;
    assert_eq!(text(&second), "b");
    second.ack().await.expect("the group still serves");
    assert!(nothing_within(&mut sub, Duration::from_secs(3600)).await);
}
