//! Broker behaviour beyond the conformance suite: time-based semantics under
//! tokio's paused clock (no real sleeping), bad input, restarts with
//! out-of-order acks and pending delays, partitions, stream-mode
//! rebalancing, DLQ redrive and topic admin.

use std::time::Duration;

use tokio::time::Instant;
use wharf_broker::{Broker, Durability, Redrive, TopicConfig};
use wharf_core::{
    header, Backend, Delivery, Error, GroupMode, Message, Publisher, StartPosition,
    SubscribeOptions, Subscriber, Subscription, Timestamp,
};

/// Topics in these tests write without fsync, so publishing never leaves the
/// runtime thread (a paused clock auto-advances while a runtime is idle).
fn fast() -> TopicConfig {
    TopicConfig::default().durability(Durability::Never)
}

async fn broker(dir: &std::path::Path) -> Broker {
    Broker::builder()
        .default_topic(fast())
        .open(dir)
        .await
        .expect("open broker")
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(3600), sub.next())
        .await
        .expect("a delivery within an hour of paused time")
        .expect("subscription open")
        .expect("delivery")
}

/// Whether anything is delivered within `d` of (paused) time.
async fn quiet_for(sub: &mut Subscription, d: Duration) -> bool {
    tokio::time::timeout(d, sub.next()).await.is_err()
}

fn text(d: &Delivery) -> String {
    String::from_utf8_lossy(d.message().payload()).into_owned()
}

/// Receives, acks and returns the payload (a dropped delivery would be redelivered).
async fn take(sub: &mut Subscription) -> String {
    let d = next(sub).await;
    let t = text(&d);
    d.ack().await.expect("ack");
    t
}

fn group(topic: &str) -> SubscribeOptions {
    SubscribeOptions::new(topic)
        .group("g")
        .start(StartPosition::Earliest)
}

#[tokio::test(start_paused = true)]
async fn visibility_timeout_redelivers_at_the_deadline_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.publish("jobs", Message::new("j")).await.unwrap();
    let mut sub = b
        .subscribe(group("jobs").visibility_timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    let first = next(&mut sub).await;
    let t0 = Instant::now();
    assert!(quiet_for(&mut sub, Duration::from_secs(29)).await);
    let again = next(&mut sub).await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
        "{waited:?}"
    );
    assert_eq!(again.attempt(), 2);
    assert!(matches!(
        first.ack().await,
        Err(Error::UnknownDelivery { .. })
    ));
    again.ack().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn extend_moves_the_lease_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.publish("jobs", Message::new("j")).await.unwrap();
    let mut sub = b
        .subscribe(group("jobs").visibility_timeout(Duration::from_secs(10)))
        .await
        .unwrap();
    let d = next(&mut sub).await;
    tokio::time::advance(Duration::from_secs(8)).await;
    d.extend(Duration::from_secs(60)).await.unwrap();
    assert!(quiet_for(&mut sub, Duration::from_secs(59)).await);
    d.ack().await.unwrap();
    assert!(quiet_for(&mut sub, Duration::from_secs(120)).await);
}

#[tokio::test(start_paused = true)]
async fn nack_with_delay_redelivers_after_exactly_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.publish("jobs", Message::new("j")).await.unwrap();
    let mut sub = b.subscribe(group("jobs")).await.unwrap();
    let d = next(&mut sub).await;
    let t0 = Instant::now();
    d.nack_with_delay(Duration::from_secs(300)).await.unwrap();
    let d = next(&mut sub).await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(300) && waited < Duration::from_secs(301),
        "{waited:?}"
    );
    assert_eq!(d.attempt(), 2);
}

#[tokio::test(start_paused = true)]
async fn delayed_publish_is_delivered_at_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let mut sub = b.subscribe(group("later")).await.unwrap();
    let t0 = Instant::now();
    let m = Message::builder()
        .payload("later")
        .deliver_after(Duration::from_secs(1800))
        .build();
    b.publish("later", m).await.unwrap();
    b.publish("later", Message::new("now")).await.unwrap();
    assert_eq!(take(&mut sub).await, "now");
    let d = next(&mut sub).await;
    assert_eq!(text(&d), "later");
    assert!(
        t0.elapsed() >= Duration::from_secs(1799),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn topic_ttl_skips_messages_older_than_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.create_topic("short", fast().ttl(Duration::from_secs(10)))
        .await
        .unwrap();
    b.publish("short", Message::new("old")).await.unwrap();
    tokio::time::advance(Duration::from_secs(11)).await;
    // The message's timestamp is wall-clock; TTL is judged on the broker's
    // clock, which the paused tokio clock drives.
    let fresh = Message::builder()
        .payload("fresh")
        .timestamp(Timestamp::from_millis(
            Timestamp::now().as_millis() + 11_000,
        ))
        .build();
    b.publish("short", fresh).await.unwrap();
    let mut sub = b.subscribe(group("short")).await.unwrap();
    assert_eq!(take(&mut sub).await, "fresh");
}

#[tokio::test(start_paused = true)]
async fn dedup_window_forgets_ids_once_it_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.create_topic("d", fast().dedup_window(Some(Duration::from_secs(120))))
        .await
        .unwrap();
    let m = Message::new("x");
    let r1 = b.publish("d", m.clone()).await.unwrap();
    tokio::time::advance(Duration::from_secs(60)).await;
    let r2 = b.publish("d", m.clone()).await.unwrap();
    assert!(r2.duplicate);
    assert_eq!(r2.offset, r1.offset);
    tokio::time::advance(Duration::from_secs(121)).await;
    let r3 = b.publish("d", m.clone()).await.unwrap();
    assert!(!r3.duplicate);
    assert_ne!(r3.offset, r1.offset);
}

#[tokio::test]
async fn dedup_window_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let m = Message::new("x");
    let first = {
        let b = broker(dir.path()).await;
        let r = b.publish("d", m.clone()).await.unwrap();
        b.close().await.unwrap();
        r
    };
    let b = broker(dir.path()).await;
    let again = b.publish("d", m).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.offset, first.offset);
}

#[tokio::test]
async fn unknown_topic_is_an_error_when_auto_create_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::builder()
        .auto_create_topics(false)
        .open(dir.path())
        .await
        .unwrap();
    let r = b.publish("nope", Message::new("x")).await;
    assert!(
        matches!(r, Err(Error::UnknownTopic { ref topic }) if topic == "nope"),
        "{r:?}"
    );
    let r = b.subscribe(group("nope")).await;
    assert!(matches!(r, Err(Error::UnknownTopic { .. })));
    assert!(b.topics().is_empty(), "nothing was created");
    b.create_topic("yes", TopicConfig::default()).await.unwrap();
    b.publish("yes", Message::new("x")).await.unwrap();
}

#[tokio::test]
async fn start_offset_outside_the_log_is_invalid_offset() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    for i in 0..5 {
        b.publish("t", Message::new(format!("{i}"))).await.unwrap();
    }
    let r = b
        .subscribe(SubscribeOptions::new("t").start(StartPosition::Offset(6)))
        .await;
    assert!(
        matches!(
            r,
            Err(Error::InvalidOffset {
                offset: 6,
                start: 0,
                end: 5,
                ..
            })
        ),
        "{r:?}"
    );
    let mut sub = b
        .subscribe(SubscribeOptions::new("t").start(StartPosition::Offset(5)))
        .await
        .unwrap();
    b.publish("t", Message::new("5")).await.unwrap();
    assert_eq!(take(&mut sub).await, "5");
}

#[tokio::test]
async fn bad_topic_config_is_rejected_and_nothing_created() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    for cfg in [
        fast().partitions(0),
        fast().max_message_bytes(0),
        fast().dead_letter_topic("bad topic"),
    ] {
        let r = b.create_topic("t", cfg).await;
        assert!(r.is_err(), "{r:?}");
    }
    assert!(b.topics().is_empty());
}

#[tokio::test]
async fn out_of_order_acks_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = broker(dir.path()).await;
        for i in 0..5 {
            b.publish("t", Message::new(format!("m{i}"))).await.unwrap();
        }
        let mut sub = b.subscribe(group("t")).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(next(&mut sub).await);
        }
        let mut odd = Vec::new();
        for (i, d) in held.into_iter().enumerate() {
            if i.is_multiple_of(2) {
                d.ack().await.unwrap();
            } else {
                odd.push(d);
            }
        }
        b.close().await.unwrap();
        drop(odd);
    }
    let b = broker(dir.path()).await;
    let mut sub = b.subscribe(group("t")).await.unwrap();
    let got = [take(&mut sub).await, take(&mut sub).await];
    assert_eq!(got, ["m1", "m3"]);
    assert!(tokio::time::timeout(Duration::from_millis(300), sub.next())
        .await
        .is_err());
}

#[tokio::test]
async fn pending_nack_delay_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = broker(dir.path()).await;
        b.publish("t", Message::new("later")).await.unwrap();
        let mut sub = b.subscribe(group("t")).await.unwrap();
        let d = next(&mut sub).await;
        d.nack_with_delay(Duration::from_secs(3600)).await.unwrap();
        b.close().await.unwrap();
    }
    let b = broker(dir.path()).await;
    let mut sub = b.subscribe(group("t")).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next())
            .await
            .is_err(),
        "a message nacked for an hour came back after a restart"
    );
}

#[tokio::test]
async fn partitions_grow_and_never_shrink() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.create_topic("p", fast().partitions(2)).await.unwrap();
    b.set_partitions("p", 4).await.unwrap();
    let r = b.set_partitions("p", 3).await;
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
    let mut seen = std::collections::HashSet::new();
    for i in 0..64 {
        let m = Message::builder().key(format!("k{i}")).payload("x").build();
        seen.insert(b.publish("p", m).await.unwrap().partition);
    }
    assert_eq!(seen.len(), 4, "keys spread over all partitions: {seen:?}");
    b.close().await.unwrap();
    drop(b);
    let b = broker(dir.path()).await;
    assert_eq!(b.topics()[0].config.partitions, 4);
    assert_eq!(b.topics()[0].partitions.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn closing_returns_deliveries_never_handed_out_without_counting_an_attempt() {
    // The stream takes ready messages into a local buffer; with max
    // deliveries 1, counting those never handed out as failed attempts
    // would dead-letter messages no handler ever saw.
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.create_topic("unseen", fast()).await.unwrap();
    let batch: Vec<Message> = (0..10).map(|i| Message::new(format!("m{i}"))).collect();
    b.publish_batch("unseen", batch).await.unwrap();
    let opts = || group("unseen").max_deliveries(1);
    let mut sub = b.subscribe(opts()).await.unwrap();
    assert_eq!(take(&mut sub).await, "m0");
    // Handed out, then dropped unsettled: that one is a failed attempt.
    let d = next(&mut sub).await;
    assert_eq!(text(&d), "m1");
    drop(d);
    sub.close().await.unwrap();
    drop(sub);
    let mut sub = b.subscribe(opts()).await.unwrap();
    for i in 2..10 {
        let d = next(&mut sub).await;
        assert_eq!(text(&d), format!("m{i}"));
        assert_eq!(d.attempt(), 1, "m{i} was never handed out before");
        d.ack().await.unwrap();
    }
    assert!(quiet_for(&mut sub, Duration::from_millis(200)).await);
    // m1 used its one delivery: it is in the dead-letter topic, alone.
    let mut dlq = b
        .subscribe(SubscribeOptions::new("dlq.unseen").start(StartPosition::Earliest))
        .await
        .unwrap();
    assert_eq!(take(&mut dlq).await, "m1");
    assert!(quiet_for(&mut dlq, Duration::from_millis(200)).await);
}

#[tokio::test]
async fn a_keyless_batch_goes_to_one_partition_and_batches_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.create_topic("sticky", fast().partitions(4))
        .await
        .unwrap();
    let mut batch_parts = Vec::new();
    for n in 0..4 {
        let batch: Vec<Message> = (0..10).map(|i| Message::new(format!("{n}.{i}"))).collect();
        let receipts = b.publish_batch("sticky", batch).await.unwrap();
        let parts: std::collections::HashSet<u32> = receipts.iter().map(|r| r.partition).collect();
        assert_eq!(
            parts.len(),
            1,
            "one keyless batch, one partition: {receipts:?}"
        );
        // Offsets within the partition follow the batch order.
        let offsets: Vec<u64> = receipts.iter().map(|r| r.offset.unwrap()).collect();
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
        batch_parts.push(*parts.iter().next().unwrap());
    }
    batch_parts.sort_unstable();
    assert_eq!(
        batch_parts,
        [0, 1, 2, 3],
        "batches rotate over every partition"
    );
    // Keyed messages in a batch still go by their key, keyless ones to one
    // partition between them.
    let mixed: Vec<Message> = (0..20)
        .map(|i| match i % 2 {
            0 => Message::builder().key(format!("k{i}")).payload("x").build(),
            _ => Message::new("y"),
        })
        .collect();
    let receipts = b.publish_batch("sticky", mixed.clone()).await.unwrap();
    let keyless: std::collections::HashSet<u32> = receipts
        .iter()
        .skip(1)
        .step_by(2)
        .map(|r| r.partition)
        .collect();
    assert_eq!(keyless.len(), 1, "{receipts:?}");
    for (m, r) in mixed.iter().zip(&receipts).step_by(2) {
        let again = b
            .publish(
                "sticky",
                Message::builder()
                    .key(m.key().unwrap().clone())
                    .payload("z")
                    .build(),
            )
            .await
            .unwrap();
        assert_eq!(r.partition, again.partition, "a key keeps its partition");
    }
}

#[tokio::test]
async fn stream_mode_splits_partitions_between_members_and_reports_them() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.create_topic("s", fast().partitions(4)).await.unwrap();
    let opts = || group("s").mode(GroupMode::Stream).max_in_flight(1000);
    let mut a = b.subscribe(opts()).await.unwrap();
    let mut c = b.subscribe(opts()).await.unwrap();
    let info = b.groups();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].members, 2);
    let owners: std::collections::HashSet<_> =
        info[0].assignment.iter().map(|(_, o)| o.unwrap()).collect();
    assert_eq!(owners.len(), 2, "{:?}", info[0].assignment);
    for i in 0..40 {
        let m = Message::builder().key(format!("k{i}")).payload("x").build();
        b.publish("s", m).await.unwrap();
    }
    let mut parts_a = std::collections::HashSet::new();
    let mut parts_c = std::collections::HashSet::new();
    for _ in 0..40 {
        tokio::select! {
            Some(Ok(d)) = a.next() => { parts_a.insert(d.info().partition); d.ack().await.unwrap(); }
            Some(Ok(d)) = c.next() => { parts_c.insert(d.info().partition); d.ack().await.unwrap(); }
        }
    }
    assert!(parts_a.is_disjoint(&parts_c), "{parts_a:?} {parts_c:?}");
    assert_eq!(parts_a.len() + parts_c.len(), 4);
    let r = b.subscribe(group("s")).await;
    assert!(
        matches!(r, Err(Error::InvalidArgument { name: "mode", .. })),
        "{r:?}"
    );
}

#[tokio::test]
async fn redrive_moves_dead_letters_back_without_dlq_headers() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let mut sub = b.subscribe(group("orders")).await.unwrap();
    for i in 0..3 {
        let m = Message::builder()
            .header("app", "kept")
            .payload(format!("o{i}"))
            .build();
        b.publish("orders", m).await.unwrap();
    }
    let mut ids = Vec::new();
    for _ in 0..3 {
        let d = next(&mut sub).await;
        ids.push(d.message().id());
        d.reject("bad").await.unwrap();
    }
    // One by id, then the rest.
    assert_eq!(
        b.redrive("dlq.orders", Redrive::Id(ids[1])).await.unwrap(),
        1
    );
    let d = next(&mut sub).await;
    assert_eq!(d.message().id(), ids[1]);
    assert_eq!(d.message().headers().get("app"), Some("kept"));
    assert!(!d.message().headers().contains(header::DLQ_REASON));
    assert!(!d.message().headers().contains(header::ORIGINAL_TOPIC));
    d.ack().await.unwrap();
    assert_eq!(b.redrive("dlq.orders", Redrive::All).await.unwrap(), 2);
    let mut back = [next(&mut sub).await, next(&mut sub).await];
    back.sort_by_key(|d| d.message().id());
    assert_eq!(back[0].message().id(), ids[0]);
    assert_eq!(back[1].message().id(), ids[2]);
    assert_eq!(b.redrive("dlq.orders", Redrive::All).await.unwrap(), 0);
    let r = b.redrive("dlq.none", Redrive::All).await;
    assert!(matches!(r, Err(Error::UnknownTopic { .. })));
}

#[tokio::test]
async fn redrive_where_leaves_letters_whose_original_topic_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    // Two letters in one dead-letter topic, bound for different topics.
    let letter = |to: &str| {
        Message::builder()
            .header(header::ORIGINAL_TOPIC, to)
            .payload(format!("for {to}"))
            .build()
    };
    let open = letter("open.t");
    let secret = letter("secret.t");
    b.publish("dlq.mixed", open.clone()).await.unwrap();
    b.publish("dlq.mixed", secret.clone()).await.unwrap();
    b.ensure_topic("secret.t").await.unwrap();
    b.ensure_topic("open.t").await.unwrap();
    let allow = |t: &str| t != "secret.t";
    assert_eq!(
        b.redrive_where("dlq.mixed", Redrive::Id(secret.id()), &allow)
            .await
            .unwrap(),
        0,
        "refused by id"
    );
    assert_eq!(
        b.redrive_where("dlq.mixed", Redrive::All, &allow)
            .await
            .unwrap(),
        1,
        "only the allowed one"
    );
    let end = |t: &str| {
        b.topics()
            .into_iter()
            .find(|i| i.name == t)
            .map(|i| i.partitions[0].1)
    };
    assert_eq!(end("open.t"), Some(1));
    assert_eq!(end("secret.t"), Some(0), "nothing written where refused");
    // The refused letter is still there for a caller that may.
    assert_eq!(
        b.redrive("dlq.mixed", Redrive::Id(secret.id()))
            .await
            .unwrap(),
        1
    );
    assert_eq!(end("secret.t"), Some(1));
}

/// More refused letters than a group's read-ahead window (1,024) ahead of
/// allowed ones: the allowed ones are still reached and moved, in order,
/// and every refused one stays (a leasing redrive held the refused letters
/// and stopped at the window, moving none).
#[tokio::test]
async fn redrive_where_reaches_allowed_letters_behind_many_refused_ones() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let letter = |to: &str, i: usize| {
        Message::builder()
            .header(header::ORIGINAL_TOPIC, to)
            .payload(format!("{to} {i}"))
            .build()
    };
    let refused: Vec<Message> = (0..1500).map(|i| letter("secret.t", i)).collect();
    b.publish_batch("dlq.many", refused).await.unwrap();
    let allowed: Vec<Message> = (0..5).map(|i| letter("open.t", i)).collect();
    b.publish_batch("dlq.many", allowed).await.unwrap();
    b.ensure_topic("open.t").await.unwrap();
    b.ensure_topic("secret.t").await.unwrap();
    let allow = |t: &str| t == "open.t";
    assert_eq!(
        b.redrive_where("dlq.many", Redrive::All, &allow)
            .await
            .unwrap(),
        5
    );
    let page = b
        .peek("open.t", wharf_broker::PeekPosition::START, 10)
        .unwrap();
    let got: Vec<String> = page
        .messages
        .iter()
        .map(|p| String::from_utf8_lossy(p.message.payload()).into_owned())
        .collect();
    assert_eq!(
        got,
        (0..5).map(|i| format!("open.t {i}")).collect::<Vec<_>>()
    );
    assert!(
        page.messages
            .iter()
            .all(|p| !p.message.headers().contains(header::ORIGINAL_TOPIC)),
        "moved back without the dead-letter headers"
    );
    // Every refused letter is still there, and a redrive that may moves
    // them all.
    assert_eq!(b.redrive("dlq.many", Redrive::All).await.unwrap(), 1500);
    assert_eq!(b.redrive("dlq.many", Redrive::All).await.unwrap(), 0);
}

#[tokio::test]
async fn delete_topic_removes_its_data_and_groups() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.publish("gone", Message::new("x")).await.unwrap();
    let mut sub = b.subscribe(group("gone")).await.unwrap();
    next(&mut sub).await.ack().await.unwrap();
    drop(sub);
    b.delete_topic("gone").await.unwrap();
    assert!(b.topics().is_empty());
    assert!(b.groups().is_empty());
    assert!(!dir.path().join("topics").join("gone").exists());
    let r = b.delete_topic("gone").await;
    assert!(matches!(r, Err(Error::UnknownTopic { .. })));
    // Recreated, it starts empty.
    b.publish("gone", Message::new("new")).await.unwrap();
    let mut sub = b.subscribe(group("gone")).await.unwrap();
    assert_eq!(take(&mut sub).await, "new");
}

#[tokio::test]
async fn a_second_broker_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _b = broker(dir.path()).await;
    let r = Broker::open(dir.path()).await;
    assert!(matches!(r, Err(Error::Backend { .. })), "{:?}", r.err());
}

#[tokio::test]
async fn corrupt_segment_is_reported_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = broker(dir.path()).await;
        b.publish("c", Message::new("a".repeat(100))).await.unwrap();
        b.close().await.unwrap();
    }
    // Flip a byte inside the payload of the only batch.
    let pdir = dir.path().join("topics").join("c").join("0");
    let seg = std::fs::read_dir(&pdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a segment file");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let b = Broker::open(dir.path()).await;
    // Recovery may truncate the damaged tail (then nothing is delivered) or
    // keep it and report it on read; it must never deliver the wrong bytes.
    if let Ok(b) = b {
        let mut sub = b.subscribe(group("c")).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
            Err(_) => {}
            Ok(Some(Err(e))) => assert!(matches!(e, Error::Backend { .. }), "{e}"),
            Ok(other) => panic!("corrupt data delivered: {other:?}"),
        }
    }
}

#[tokio::test]
async fn publish_after_close_is_closed_and_reopen_sees_everything() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let batch: Vec<Message> = (0..100).map(|i| Message::new(format!("{i}"))).collect();
    let receipts = b.publish_batch("t", batch).await.unwrap();
    assert_eq!(receipts.last().unwrap().offset, Some(99));
    b.close().await.unwrap();
    assert!(matches!(
        b.publish("t", Message::new("x")).await,
        Err(Error::Closed { .. })
    ));
    drop(b);
    let b = broker(dir.path()).await;
    assert_eq!(b.topics()[0].partitions, vec![(0, 100)]);
}

#[tokio::test]
async fn batch_acks_out_of_order_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = broker(dir.path()).await;
        let msgs = (0..6).map(|i| Message::new(format!("m{i}"))).collect();
        b.publish_batch("t", msgs).await.unwrap();
        let mut sub = b.subscribe(group("t")).await.unwrap();
        let mut buf = Vec::new();
        while buf.len() < 6 {
            sub.next_batch(6 - buf.len(), &mut buf).await.unwrap();
        }
        // Ack m5, m4, m2, m0 in one batch (out of order); hold m1 and m3.
        let mut acks = wharf_core::AckBatch::new();
        let mut held = Vec::new();
        for (i, d) in buf.drain(..).enumerate().rev() {
            if i == 1 || i == 3 {
                held.push(d);
            } else {
                acks.push(d);
            }
        }
        assert_eq!(acks.len(), 4);
        assert!(acks.flush().await.is_empty());
        b.close().await.unwrap();
        drop(held);
    }
    let b = broker(dir.path()).await;
    let mut sub = b.subscribe(group("t")).await.unwrap();
    let got = [take(&mut sub).await, take(&mut sub).await];
    assert_eq!(got, ["m1", "m3"]);
    assert!(quiet_for(&mut sub, Duration::from_millis(300)).await);
}

#[tokio::test(start_paused = true)]
async fn a_batch_ack_reports_an_expired_lease_and_acks_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.publish("t", Message::new("m0")).await.unwrap();
    let mut sub = b
        .subscribe(group("t").visibility_timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    let first = next(&mut sub).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    let again = next(&mut sub).await;
    assert_eq!((text(&again), again.attempt()), ("m0".to_owned(), 2));
    let mut acks = wharf_core::AckBatch::new();
    acks.push(first);
    acks.push(again);
    let failed = acks.flush().await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(matches!(failed[0].1, Error::UnknownDelivery { .. }));
    assert!(quiet_for(&mut sub, Duration::from_secs(10)).await);
    b.close().await.unwrap();
}

/// A delivered message leaves the read-ahead; a redelivery and a dead letter
/// read it back from the log, so they must carry the same id, key, headers
/// and payload as the first delivery (many messages, so batches are involved).
#[tokio::test(start_paused = true)]
async fn redeliveries_and_dead_letters_carry_the_whole_message_read_back_from_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker(dir.path()).await;
    let msgs: Vec<Message> = (0..500)
        .map(|i| {
            Message::builder()
                .key(format!("k{i}"))
                .header("n", i.to_string())
                .payload(format!("m{i}"))
                .build()
        })
        .collect();
    b.publish_batch("rb", msgs.clone()).await.expect("publish");
    let mut sub = b
        .subscribe(group("rb").max_deliveries(2))
        .await
        .expect("subscribe");
    // First attempt: nack the even ones, ack the odd ones. Last attempt of
    // the even ones: reject half, nack the others (which dead-letters them).
    let mut done = 0;
    while done < 500 {
        let d = next(&mut sub).await;
        let i: usize = d
            .message()
            .headers()
            .get("n")
            .expect("n")
            .parse()
            .expect("n");
        assert_eq!(d.message(), &msgs[i], "attempt {} of {i}", d.attempt());
        match (d.attempt(), i % 2, i % 4) {
            (1, 1, _) => {
                d.ack().await.expect("ack");
                done += 1;
            }
            (1, _, _) => d.nack().await.expect("nack"),
            (2, 0, 0) => {
                d.reject("bad").await.expect("reject");
                done += 1;
            }
            (2, 0, _) => {
                d.nack().await.expect("nack (last attempt: dead-letters)");
                done += 1;
            }
            (a, _, _) => panic!("unexpected attempt {a} of {i}"),
        }
    }
    assert!(quiet_for(&mut sub, Duration::from_secs(5)).await);
    let mut dlq = b.subscribe(group("dlq.rb")).await.expect("subscribe dlq");
    let mut dead = Vec::new();
    for _ in 0..250 {
        let d = next(&mut dlq).await;
        let i: usize = d
            .message()
            .headers()
            .get("n")
            .expect("n")
            .parse()
            .expect("n");
        assert_eq!(d.message().id(), msgs[i].id());
        assert_eq!(d.message().key(), msgs[i].key());
        assert_eq!(d.message().payload(), msgs[i].payload());
        dead.push(i);
        d.ack().await.expect("ack");
    }
    dead.sort_unstable();
    assert_eq!(dead, (0..500).step_by(2).collect::<Vec<_>>());
    b.close().await.expect("close");
}

#[tokio::test(start_paused = true)]
async fn settle_offset_settles_one_message_beyond_the_read_ahead_and_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker(dir.path()).await;
    let msgs: Vec<Message> = (0..1_500).map(|i| Message::new(format!("m{i}"))).collect();
    b.publish_batch("so", msgs).await.expect("publish");
    // Far beyond the group's read-ahead window, then the floor itself.
    assert!(b.settle_offset("so", "g", 0, 1_400).expect("settle"));
    assert!(!b.settle_offset("so", "g", 0, 1_400).expect("again"));
    assert!(b.settle_offset("so", "g", 0, 0).expect("settle floor"));
    assert!(matches!(
        b.settle_offset("so", "g", 1, 0),
        Err(Error::InvalidArgument {
            name: "partition",
            ..
        })
    ));
    assert!(matches!(
        b.settle_offset("so", "g", 0, 1_500),
        Err(Error::InvalidArgument { name: "offset", .. })
    ));
    assert!(matches!(
        b.settle_offset("none", "g", 0, 0),
        Err(Error::UnknownTopic { .. })
    ));
    let unsettled = |b: &Broker| -> Vec<u64> {
        let page = b
            .peek_unsettled("so", "g", wharf_broker::PeekPosition::START, 2_000)
            .expect("peek");
        page.messages.iter().map(|p| p.offset).collect()
    };
    let want: Vec<u64> = (1..1_500).filter(|&o| o != 1_400).collect();
    assert_eq!(unsettled(&b), want);
    b.close().await.expect("close");
    drop(b);

    let b = broker(dir.path()).await;
    assert_eq!(unsettled(&b), want, "persisted like an ack");
    let mut sub = b.subscribe(group("so")).await.expect("subscribe");
    for &o in &want {
        let d = next(&mut sub).await;
        assert_eq!(d.info().offset, Some(o));
        d.ack().await.expect("ack");
    }
    assert!(quiet_for(&mut sub, Duration::from_secs(5)).await);
    b.close().await.expect("close");
}

/// Redrive by id reads the dead-letter topic instead of leasing letters, so
/// it reaches a letter past the redrive group's read-ahead window.
#[tokio::test(start_paused = true)]
async fn redrive_by_id_reaches_a_letter_past_the_read_ahead_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker(dir.path()).await;
    let letters: Vec<Message> = (0..1_100)
        .map(|i| {
            let mut m = Message::new(format!("j{i}"));
            wharf_core::DeadLetter {
                reason: "bad",
                topic: "jobs",
                partition: 0,
                offset: Some(i),
                group: Some("workers"),
                attempts: 1,
                first_failure_ms: 0,
                last_failure_ms: 0,
            }
            .stamp(&mut m);
            m
        })
        .collect();
    let last = letters[1_099].id();
    b.publish_batch("dlq.jobs", letters).await.expect("publish");
    let mut jobs = b.subscribe(group("jobs")).await.expect("subscribe");
    assert_eq!(
        b.redrive("dlq.jobs", Redrive::Id(last))
            .await
            .expect("redrive"),
        1
    );
    let d = next(&mut jobs).await;
    assert_eq!(d.message().id(), last);
    assert!(!d.message().headers().contains(header::DLQ_REASON));
    d.ack().await.expect("ack");
    assert_eq!(
        b.redrive("dlq.jobs", Redrive::Id(last))
            .await
            .expect("again"),
        0
    );
    assert!(quiet_for(&mut jobs, Duration::from_secs(5)).await);
    let left = b
        .peek_unsettled(
            "dlq.jobs",
            wharf_broker::REDRIVE_GROUP,
            wharf_broker::PeekPosition::START,
            2_000,
        )
        .expect("peek");
    assert_eq!(left.messages.len(), 1_099);
    assert!(left.messages.iter().all(|p| p.message.id() != last));
    b.close().await.expect("close");
}

/// Messages held as plain parts, the way a server holds a decoded request.
struct Parts(
    Vec<(
        wharf_core::MessageId,
        Option<&'static str>,
        &'static str,
        u64,
    )>,
);

impl wharf_broker::PublishSource for Parts {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn id(&self, i: usize) -> wharf_core::MessageId {
        self.0[i].0
    }
    fn key(&self, i: usize) -> Option<&[u8]> {
        self.0[i].1.map(str::as_bytes)
    }
    fn payload(&self, i: usize) -> &[u8] {
        self.0[i].2.as_bytes()
    }
    fn timestamp(&self, i: usize) -> Timestamp {
        Timestamp::from_millis(self.0[i].3)
    }
    fn headers<'a>(&'a self, i: usize, out: &mut Vec<(&'a [u8], &'a [u8])>) {
        out.push((b"n", self.0[i].2.as_bytes()));
    }
    fn header_count(&self, _: usize) -> usize {
        1
    }
    fn size(&self, i: usize) -> usize {
        self.0[i].1.map_or(0, str::len) + 2 * self.0[i].2.len() + 1
    }
}

#[tokio::test(start_paused = true)]
async fn publish_from_parts_stores_the_same_messages_with_the_same_checks() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.create_topic(
        "parts",
        fast()
            .partitions(2)
            .dedup_window(Some(Duration::from_secs(60)))
            .max_message_bytes(64),
    )
    .await
    .unwrap();
    let ids: Vec<_> = (0..4).map(|_| wharf_core::MessageId::new()).collect();
    let src = Parts(vec![
        (ids[0], Some("a"), "one", 1_000),
        (ids[1], None, "two", 2_000),
        (ids[2], Some("b"), "three", 3_000),
        (ids[0], Some("a"), "one", 1_000), // the first again: a duplicate
    ]);
    let receipts = b.publish_from("parts", &src).await.unwrap();
    assert_eq!(receipts.len(), 4);
    for (r, id) in receipts.iter().zip([ids[0], ids[1], ids[2], ids[0]]) {
        assert_eq!(r.id, id);
    }
    assert!(!receipts[0].duplicate && receipts[3].duplicate);
    assert_eq!(
        (receipts[3].partition, receipts[3].offset),
        (receipts[0].partition, receipts[0].offset)
    );
    // Across calls too, through the dedup window.
    let again = b
        .publish_from("parts", &Parts(vec![(ids[1], None, "two", 2_000)]))
        .await
        .unwrap();
    assert!(again[0].duplicate);

    let mut sub = b.subscribe(group("parts")).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next(&mut sub).await;
        let m = d.message().clone();
        d.ack().await.unwrap();
        got.push(m);
    }
    got.sort_by_key(|m| m.timestamp());
    let want: Vec<Message> = src.0[..3]
        .iter()
        .map(|&(id, key, payload, ts)| {
            let mut m = Message::builder()
                .id(id)
                .payload(payload)
                .header("n", payload)
                .timestamp(Timestamp::from_millis(ts));
            if let Some(k) = key {
                m = m.key(k);
            }
            m.build()
        })
        .collect();
    assert_eq!(got, want);
    assert!(quiet_for(&mut sub, Duration::from_secs(5)).await);

    // The size limit reads `size`, and refuses the whole batch.
    let big = "x".repeat(40);
    let big: &'static str = Box::leak(big.into_boxed_str());
    let err = b
        .publish_from(
            "parts",
            &Parts(vec![(wharf_core::MessageId::new(), None, big, 1)]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::MessageTooLarge { size: 81, max: 64 }),
        "{err:?}"
    );
    let info = b.topics().into_iter().find(|t| t.name == "parts").unwrap();
    let stored: u64 = info.partitions.iter().map(|(s, e)| e - s).sum();
    assert_eq!(stored, 3);
}

#[tokio::test(start_paused = true)]
async fn header_limits_refuse_a_publish_with_typed_errors_but_not_its_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::builder()
        .default_topic(fast())
        .header_limits(3, 16)
        .open(dir.path())
        .await
        .expect("open broker");
    assert_eq!(b.limits().max_headers, 3);
    assert_eq!(b.limits().max_header_bytes, 16);
    let with = |n: usize| {
        (0..n)
            .fold(Message::builder().payload("p"), |m, i| {
                m.header(format!("h{i}"), "v")
            })
            .build()
    };
    let err = b.publish("hl", with(4)).await.unwrap_err();
    assert!(
        matches!(err, Error::TooManyHeaders { count: 4, max: 3 }),
        "{err:?}"
    );
    assert!(err.is_bad_input());
    let long = Message::builder()
        .payload("p")
        .header("name", "a value longer than 16")
        .build();
    let err = b.publish("hl", long).await.unwrap_err();
    assert!(
        matches!(err, Error::HeadersTooLarge { size: 26, max: 16 }),
        "{err:?}"
    );
    // A batch with one bad message stores nothing.
    let err = b
        .publish_batch("hl", vec![with(1), with(4)])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooManyHeaders { .. }), "{err:?}");
    assert!(b
        .topics()
        .iter()
        .filter(|t| t.name == "hl")
        .all(|t| t.partitions.iter().all(|(s, e)| s == e)));

    // At the limit it is stored, and rejecting it dead-letters it with the
    // broker's own `wharf-dlq-*` headers on top.
    b.publish("hl", with(3)).await.expect("at the limit");
    let mut sub = b.subscribe(group("hl")).await.unwrap();
    next(&mut sub).await.reject("bad").await.expect("reject");
    let mut dlq = b.subscribe(group("dlq.hl")).await.unwrap();
    let dead = next(&mut dlq).await;
    assert!(dead.message().headers().len() > 3);
    assert_eq!(dead.message().headers().get("h2"), Some("v"));
}

/// A client can ask for any delay, lease or delivery time (gRPC and HTTP
/// carry them as u64 milliseconds): the largest ones must not overflow the
/// broker's clock and panic — which, inside a group's lock, would wedge the
/// group for every other consumer — but simply mean "not in this process's
/// lifetime", while the group goes on serving.
#[tokio::test(start_paused = true)]
async fn the_largest_delays_leases_and_delivery_times_do_not_panic_or_wedge_the_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    let b = broker(dir.path()).await;
    let huge = Duration::MAX;
    let far = Message::builder()
        .payload("far")
        .deliver_at(Timestamp::from_millis(u64::MAX))
        .build();
    b.publish("huge.t", far).await.expect("publish far");
    b.publish("huge.t", Message::new("a"))
        .await
        .expect("publish a");
    b.publish("huge.t", Message::new("b"))
        .await
        .expect("publish b");
    let opts = SubscribeOptions::new("huge.t")
        .group("g")
        .start(StartPosition::Earliest)
        .visibility_timeout(huge);
    let mut sub = b
        .subscribe(opts)
        .await
        .expect("subscribe with a huge lease");
    let a = next(&mut sub).await;
    assert_eq!(a.message().payload().as_ref(), b"a");
    a.extend(huge)
        .await
        .expect("extend by the largest duration");
    a.nack_with_delay(huge)
        .await
        .expect("nack with the largest delay");
    let b2 = next(&mut sub).await;
    assert_eq!(b2.message().payload().as_ref(), b"b");
    b2.ack().await.expect("the group still serves");
    assert!(quiet_for(&mut sub, Duration::from_secs(3600)).await);
    b.close().await.expect("close");
}

/// A group whose first read starts with an expired message settles it and
/// moves on: its position must not fall back behind that message, or every
/// message acked after it would be delivered again after a restart.
#[tokio::test(start_paused = true)]
async fn an_expired_first_message_does_not_pull_the_group_back_and_redeliver_after_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let b = broker(dir.path()).await;
    let stale = Message::builder()
        .payload("stale")
        .ttl(Duration::from_millis(100))
        .build();
    b.publish_batch(
        "expiry.t",
        vec![stale, Message::new("one"), Message::new("two")],
    )
    .await
    .expect("publish");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let opts = || {
        SubscribeOptions::new("expiry.t")
            .group("g")
            .start(StartPosition::Earliest)
    };
    {
        let mut sub = b.subscribe(opts()).await.expect("subscribe");
        for want in ["one", "two"] {
            let d = next(&mut sub).await;
            assert_eq!(d.message().payload().as_ref(), want.as_bytes());
            d.ack().await.expect("ack");
        }
        b.close().await.expect("close");
    }
    drop(b);

    let b = broker(dir.path()).await;
    let mut sub = b.subscribe(opts()).await.expect("subscribe again");
    assert!(
        quiet_for(&mut sub, Duration::from_secs(60)).await,
        "messages acked before the restart were delivered again"
    );
    b.close().await.expect("close");
}

/// Retention by age also runs when nothing is written: sealed segments
/// past their age are deleted by the broker's periodic check, not only when
/// a later publish rolls a segment (the active segment stays, as in Kafka).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_deletes_old_segments_of_a_topic_no_one_writes_to() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.create_topic(
        "aging",
        TopicConfig::default()
            .durability(Durability::Never)
            .segment_bytes(4096)
            .retention(None, Some(Duration::from_millis(300))),
    )
    .await
    .unwrap();
    for i in 0..100 {
        b.publish("aging", Message::new(vec![i as u8; 200]))
            .await
            .unwrap();
    }
    let bounds = || {
        b.topics()
            .into_iter()
            .find(|t| t.name == "aging")
            .map(|t| t.partitions[0])
            .unwrap()
    };
    let bytes = || {
        b.topics()
            .into_iter()
            .find(|t| t.name == "aging")
            .map(|t| t.bytes())
            .unwrap()
    };
    let (first, end) = bounds();
    assert_eq!((first, end), (0, 100), "nothing old enough yet");
    let before = bytes();
    assert!(before > 100 * 200, "100 messages of 200 bytes: {before}");
    // No more writes: the periodic check must drop the sealed segments.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while bounds().0 == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "sealed segments past their age were never deleted without a write"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (first, end) = bounds();
    assert!(
        first > 0 && first < end,
        "only sealed segments go: {first}..{end}"
    );
    assert_eq!(end, 100);
    let after = bytes();
    assert!(
        after > 0 && after < before,
        "deleted segments no longer count: {before} -> {after}"
    );
}

/// A topic's bytes are its partitions' segment bytes: zero when empty,
/// growing with each publish, counted in the partition that stored it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_bytes_grow_with_publishes_in_the_partition_that_stores_them() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    b.create_topic("sized", fast().partitions(2)).await.unwrap();
    let info = || b.topics().into_iter().find(|t| t.name == "sized").unwrap();
    assert_eq!(info().partition_bytes, vec![0, 0], "nothing stored yet");
    assert_eq!(info().bytes(), 0);

    let msg = || Message::builder().payload(vec![7u8; 1000]).key("k").build();
    let p = b.publish("sized", msg()).await.unwrap().partition as usize;
    let one = info();
    assert_eq!(
        one.partition_bytes[1 - p],
        0,
        "the other partition stored nothing"
    );
    assert!(
        one.partition_bytes[p] > 1000,
        "a 1000-byte payload is on disk: {:?}",
        one.partition_bytes
    );
    assert_eq!(one.bytes(), one.partition_bytes[p]);

    let again = b.publish("sized", msg()).await.unwrap().partition as usize;
    assert_eq!(again, p, "same key, same partition");
    let two = info();
    assert!(
        two.bytes() > one.bytes() + 1000,
        "a second message adds its bytes: {} -> {}",
        one.bytes(),
        two.bytes()
    );
    b.close().await.expect("close");
}
