//! The Kafka adapter against the test broker: Java-compatible key
//! partitioning, topic admin, and at-least-once settlement on offsets.

mod service;

use std::collections::BTreeSet;

use wharf_core::{Backend, Error, Message, Publisher, StartPosition, SubscribeOptions, Subscriber};
use wharf_kafka::partition_for_key;
use wharf_testkit::{expect_delivery, expect_quiet, unique_name, QUIET};

/// The keys of Kafka's own `UtilsTest.testMurmur2`.
const KAFKA_TEST_KEYS: [&[u8]; 6] = [
    b"21",
    b"foobar",
    b"a-little-bit-long-string",
    b"a-little-bit-longer-string",
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
    b"abc",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_land_in_the_partition_of_the_java_default_partitioner() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = unique_name("keys");
    let n = 7;
    b.create_topic(&t, n).await.expect("create topic");
    assert_eq!(b.partition_count(&t).await.expect("partitions"), n);
    let mut sub = b
        .subscribe(SubscribeOptions::new(&t).start(StartPosition::Earliest))
        .await
        .expect("subscribe");
    let mut want = Vec::new();
    for key in KAFKA_TEST_KEYS {
        let m = Message::builder().key(key).payload(key.to_vec()).build();
        let r = b.publish(&t, m).await.expect("publish");
        let java = partition_for_key(key, n);
        assert_eq!(
            r.partition,
            java,
            "key {:?}: partition {} (Java: {java})",
            String::from_utf8_lossy(key),
            r.partition
        );
        want.push((key.to_vec(), java));
    }
    // Not all in one partition, or the test could not tell partitioners apart.
    let distinct: BTreeSet<u32> = want.iter().map(|(_, p)| *p).collect();
    assert!(distinct.len() > 1, "{want:?}");
    let mut got = Vec::new();
    for _ in 0..want.len() {
        let d = expect_delivery(&mut sub, "keyed").await;
        got.push((d.message().payload().to_vec(), d.info().partition));
        d.ack().await.expect("ack");
    }
    got.sort();
    want.sort();
    assert_eq!(got, want, "consumed partitions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_topic_is_gone_and_a_publish_creates_it_again() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = unique_name("admin");
    b.create_topic(&t, 3).await.expect("create");
    // Creating again is not an error and keeps the partitions.
    b.create_topic(&t, 5).await.expect("create again");
    assert_eq!(b.partition_count(&t).await.expect("partitions"), 3);
    b.delete_topic(&t).await.expect("delete");
    let mut gone = false;
    for _ in 0..50 {
        if matches!(b.partition_count(&t).await, Err(Error::UnknownTopic { .. })) {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "topic still listed after delete");
    b.delete_topic(&t).await.expect("deleting an unknown topic");
    b.publish(&t, Message::new("again")).await.expect("publish");
    assert_eq!(b.partition_count(&t).await.expect("recreated"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_topic_names_are_refused_before_anything_is_sent() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let long = "x".repeat(249);
    let r = b.publish(&long, Message::new("x")).await;
    assert!(matches!(r, Err(Error::InvalidName { .. })), "{r:?}");
    let r = b.create_topic("a..b", 1).await;
    assert!(matches!(r, Err(Error::InvalidName { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_acks_commit_only_the_settled_prefix_across_a_restart() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = unique_name("ooo");
    b.ensure_topic(&t).await.expect("topic");
    let opts = || {
        SubscribeOptions::new(&t)
            .group("g")
            .start(StartPosition::Earliest)
            .max_in_flight(16)
    };
    let mut sub = b.subscribe(opts()).await.expect("subscribe");
    let msgs: Vec<Message> = (0..10).map(|i| Message::new(format!("m{i}"))).collect();
    b.publish_batch(&t, msgs).await.expect("publish");
    let mut held = Vec::new();
    for i in 0..10 {
        let d = expect_delivery(&mut sub, "first session").await;
        assert_eq!(d.message().payload().as_ref(), format!("m{i}").as_bytes());
        held.push(Some(d));
    }
    // Acked out of order, with gaps: 9, 3, 0, 5, 1, 6. Left unsettled:
    // 2 (nacked), 4 and 8 (dropped), 7 (never settled before the restart).
    for i in [9, 3, 0, 5, 1, 6] {
        held[i].take().expect("held").ack().await.expect("ack");
    }
    held[2].take().expect("held").nack().await.expect("nack");
    drop(held[4].take());
    drop(held[8].take());
    let seven = held[7].take().expect("held");
    expect_quiet(&mut sub, QUIET, "a nack is not redelivered in-session").await;
    sub.close().await.expect("close");
    drop(sub);
    drop(seven);

    let mut sub = b.subscribe(opts()).await.expect("resubscribe");
    let mut again = Vec::new();
    for _ in 0..4 {
        let d = expect_delivery(&mut sub, "after restart").await;
        again.push(String::from_utf8_lossy(d.message().payload()).into_owned());
        d.ack().await.expect("ack");
    }
    if broker_keeps_commit_metadata().await {
        // The acks past the prefix travelled in the commit's metadata.
        assert_eq!(again, ["m2", "m4", "m7", "m8"]);
    } else {
        // nisshi 0.8.1 drops commit metadata (see the crate docs): the
        // restart resumes at the prefix, so everything from m2 comes back.
        println!("broker drops commit metadata: resuming from the prefix");
        for _ in 4..8 {
            let d = expect_delivery(&mut sub, "after restart").await;
            again.push(String::from_utf8_lossy(d.message().payload()).into_owned());
            d.ack().await.expect("ack");
        }
        assert_eq!(again, ["m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9"]);
    }
    expect_quiet(&mut sub, QUIET, "an acked message came back").await;
    sub.close().await.expect("close");
    drop(sub);

    // Everything is settled now: a third session gets nothing old.
    let mut sub = b.subscribe(opts()).await.expect("third session");
    b.publish(&t, Message::new("marker")).await.expect("marker");
    let d = expect_delivery(&mut sub, "marker").await;
    assert_eq!(d.message().payload().as_ref(), b"marker");
    d.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlements_kafka_cannot_do_are_refused_with_the_capability() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = unique_name("refuse");
    let mut sub = b
        .subscribe(
            SubscribeOptions::new(&t)
                .group("g")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    b.publish(&t, Message::new("x")).await.expect("publish");
    let d = expect_delivery(&mut sub, "x").await;
    let r = d.extend(std::time::Duration::from_secs(1)).await;
    assert!(matches!(r, Err(Error::Unsupported { .. })), "{r:?}");
    let r = d.nack_with_delay(std::time::Duration::from_secs(1)).await;
    assert!(
        matches!(
            r,
            Err(Error::Unsupported {
                capability: wharf_core::Capability::NackWithDelay,
                ..
            })
        ),
        "{r:?}"
    );
    for opts in [SubscribeOptions::new(&t)
        .group("g2")
        .mode(wharf_core::GroupMode::Stream)]
    {
        let r = b.subscribe(opts).await;
        assert!(matches!(r, Err(Error::Unsupported { .. })), "{r:?}");
    }
    assert!(!b
        .capabilities()
        .contains(wharf_core::Capability::Redelivery));
}

/// Whether the broker returns the metadata of a commit (OffsetFetch), as
/// Kafka does: committed with a plain rdkafka consumer and read back.
async fn broker_keeps_commit_metadata() -> bool {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let Some(ns) = service::namespace().await else {
        return false;
    };
    let t = unique_name("meta");
    ns.backend.create_topic(&t, 1).await.expect("topic");
    let kt = ns.backend.kafka_topic(&t);
    tokio::task::spawn_blocking(move || {
        let url = service::url();
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", url.trim_start_matches("kafka://"))
            .set("group.id", format!("{kt}.probe"))
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&kt, 0, Offset::Offset(0))
            .expect("offset");
        tpl.find_partition(&kt, 0)
            .expect("partition")
            .set_metadata("w1:1");
        c.commit(&tpl, CommitMode::Sync).expect("commit");
        let mut q = TopicPartitionList::new();
        q.add_partition(&kt, 0);
        let got = c
            .committed_offsets(q, std::time::Duration::from_secs(10))
            .expect("committed");
        let meta = got.find_partition(&kt, 0).map(|e| e.metadata().to_owned());
        meta.as_deref() == Some("w1:1")
    })
    .await
    .expect("probe")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_starts_at_the_offset_and_an_existing_one_resumes_its_commit() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = unique_name("gstart");
    b.ensure_topic(&t).await.expect("topic");
    let msgs: Vec<Message> = (0..6).map(|i| Message::new(format!("m{i}"))).collect();
    let receipts = b.publish_batch(&t, msgs).await.expect("publish");
    let from = receipts[3].offset.expect("offset");
    let opts = || {
        SubscribeOptions::new(&t)
            .group("g")
            .start(StartPosition::Offset(from))
    };
    let mut sub = b.subscribe(opts()).await.expect("subscribe");
    let d = expect_delivery(&mut sub, "m3").await;
    assert_eq!(d.message().payload().as_ref(), b"m3");
    d.ack().await.expect("ack");
    sub.close().await.expect("close");
    drop(sub);
    // The group has committed past m3: a start offset no longer applies.
    let mut sub = b
        .subscribe(
            SubscribeOptions::new(&t)
                .group("g")
                .start(StartPosition::Offset(0)),
        )
        .await
        .expect("resubscribe");
    let d = expect_delivery(&mut sub, "m4").await;
    assert_eq!(d.message().payload().as_ref(), b"m4");
    d.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_returns_once_the_broker_holds_the_record_with_its_timestamp() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = unique_name("acked");
    let ts = wharf_core::Timestamp::from_millis(1_700_000_000_123);
    let m = Message::builder()
        .key("k")
        .header("h", "v")
        .timestamp(ts)
        .payload("p")
        .build();
    let r = b.publish(&t, m.clone()).await.expect("publish");
    let offset = i64::try_from(r.offset.expect("offset")).expect("fits");
    // Another client sees the record at once: the receipt came after the
    // broker's acknowledgement, not when it was queued.
    let kt = b.kafka_topic(&t);
    let partition = i32::try_from(r.partition).expect("fits");
    let (_, high) = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set(
                "bootstrap.servers",
                service::url().trim_start_matches("kafka://"),
            )
            .create()
            .expect("consumer");
        c.fetch_watermarks(&kt, partition, std::time::Duration::from_secs(10))
    })
    .await
    .expect("join")
    .expect("watermarks");
    assert!(high > offset, "high watermark {high} <= offset {offset}");
    let mut sub = b
        .subscribe(SubscribeOptions::new(&t).start(StartPosition::Earliest))
        .await
        .expect("subscribe");
    let d = expect_delivery(&mut sub, "the record").await;
    assert_eq!(d.message().timestamp(), ts);
    assert_eq!(d.message().id(), m.id());
    assert_eq!(d.message().headers().get("h"), Some("v"));
    assert!(
        !d.message().headers().contains(wharf_kafka::ID_HEADER),
        "the id header is not a message header"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_where_no_broker_answers_is_unavailable() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let config = wharf_kafka::KafkaConfig::new(format!("kafka://127.0.0.1:{port}"))
        .timeout(std::time::Duration::from_secs(2));
    let r = wharf_kafka::KafkaBackend::connect(config).await;
    assert!(
        matches!(r, Err(Error::Unavailable { .. })),
        "{:?}",
        r.map(|_| ())
    );
}

/// `next` is cancelled at every point it can wait — reserving slots,
/// waiting for a record, looking a new partition's committed offset up —
/// and `try_next` runs between: every message is still handed out exactly
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_cancelled_anywhere_loses_and_repeats_nothing() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = unique_name("cancel");
    b.create_topic(&t, 4).await.expect("topic");
    let mut sub = b
        .subscribe(
            SubscribeOptions::new(&t)
                .group("g")
                .start(StartPosition::Earliest)
                .max_in_flight(8),
        )
        .await
        .expect("subscribe");
    let n = 300;
    let msgs: Vec<Message> = (0..n)
        .map(|i| {
            Message::builder()
                .key(format!("k{i}"))
                .payload(format!("m{i}"))
                .build()
        })
        .collect();
    b.publish_batch(&t, msgs).await.expect("publish");
    // From 20 µs (cancelled before anything completes) to 20 ms (a lookup
    // of the committed offset completes).
    let patience = [20, 200, 2_000, 20_000].map(std::time::Duration::from_micros);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = BTreeSet::new();
    let (mut cancelled, mut i) = (0, 0);
    while seen.len() < n && tokio::time::Instant::now() < deadline {
        i += 1;
        let wait = patience[i % patience.len()];
        // `next` alone, then `next_batch` (`next`, then `try_next`s).
        let got = if i % 8 < 4 {
            tokio::time::timeout(wait, sub.next())
                .await
                .map(|d| vec![d.expect("open").expect("delivery")])
        } else {
            let mut batch = Vec::new();
            tokio::time::timeout(wait, sub.next_batch(8, &mut batch))
                .await
                .map(|n| {
                    assert!(n.expect("delivery") > 0, "ended");
                    batch
                })
        };
        let Ok(batch) = got else {
            cancelled += 1;
            continue;
        };
        for d in batch {
            let text = String::from_utf8_lossy(d.message().payload()).into_owned();
            assert!(seen.insert(text.clone()), "{text} handed out twice");
            d.ack().await.expect("ack");
        }
    }
    assert_eq!(
        seen.len(),
        n,
        "every message, after {cancelled} cancellations"
    );
    assert!(cancelled > 0, "the test cancelled nothing");
    expect_quiet(&mut sub, QUIET, "a message came back").await;
}
