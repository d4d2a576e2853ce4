//! Rebalances while deliveries are in flight, against the test broker: a
//! member joining takes partitions whose deliveries the first member still
//! holds, and a member leaving with unsettled deliveries hands them over.
//! Nothing is lost; the only duplicates are the deliveries that were
//! unsettled when their partition moved (the at-least-once window the crate
//! docs describe), and a stale settlement commits nothing.

mod service;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use wharf_core::{
    Delivery, Error, Message, Publisher, StartPosition, SubscribeOptions, Subscriber, Subscription,
};
use wharf_testkit::{expect_delivery, expect_quiet, unique_name, QUIET};

const PARTITIONS: u32 = 4;
const MESSAGES: usize = 40;

fn text(d: &Delivery) -> String {
    String::from_utf8_lossy(d.message().payload()).into_owned()
}

/// Publishes `MESSAGES` keyed messages `m<i>` to `t`; returns each one's
/// partition.
async fn publish(b: &wharf_kafka::KafkaBackend, t: &str) -> BTreeMap<String, u32> {
    let mut at = BTreeMap::new();
    for i in 0..MESSAGES {
        let m = Message::builder()
            .key(format!("key-{i}"))
            .payload(format!("m{i}"))
            .build();
        let r = b.publish(t, m).await.expect("publish");
        at.insert(format!("m{i}"), r.partition);
    }
    let used: BTreeSet<u32> = at.values().copied().collect();
    assert_eq!(
        used.len(),
        PARTITIONS as usize,
        "every partition has records"
    );
    at
}

/// The group's committed offset per partition of `kt` (`None`: no commit).
async fn committed(kt: String, group: String) -> BTreeMap<u32, Option<i64>> {
    tokio::task::spawn_blocking(move || {
        let url = service::url();
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", url.trim_start_matches("kafka://"))
            .set("group.id", &group)
            .create()
            .expect("consumer");
        let mut q = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            q.add_partition(&kt, p as i32);
        }
        let got = c
            .committed_offsets(q, Duration::from_secs(10))
            .expect("committed offsets");
        (0..PARTITIONS)
            .map(|p| {
                let e = got.find_partition(&kt, p as i32).expect("partition");
                let at = match e.offset() {
                    Offset::Offset(n) => Some(n),
                    _ => None,
                };
                (p, at)
            })
            .collect()
    })
    .await
    .expect("probe")
}

/// Everything `sub` delivers until it stays quiet for three `QUIET`s
/// (waiting up to `wharf_testkit::WAIT` for the first).
async fn drain(sub: &mut Subscription) -> Vec<Delivery> {
    let mut got = vec![expect_delivery(sub, "a delivery").await];
    while let Ok(Some(d)) = tokio::time::timeout(QUIET * 3, sub.next()).await {
        got.push(d.expect("delivery"));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_takes_partitions_with_deliveries_in_flight_and_loses_nothing() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = unique_name("join");
    b.create_topic(&t, PARTITIONS).await.expect("topic");
    let opts = || {
        SubscribeOptions::new(&t)
            .group("g")
            .start(StartPosition::Earliest)
            .max_in_flight(1000)
    };
    let mut a = b.subscribe(opts()).await.expect("subscribe a");
    let at = publish(b, &t).await;
    // The only member holds every message, none settled.
    let mut held = Vec::new();
    for _ in 0..MESSAGES {
        held.push(expect_delivery(&mut a, "first member").await);
    }
    // The first member's application is not reading now: its keeper task
    // serves the revocation, or the second member would wait for it.
    let mut second = b.subscribe(opts()).await.expect("subscribe b");
    // The join moves some partitions to the second member, which gets their
    // records again: nothing of them was committed.
    let moved_deliveries = drain(&mut second).await;
    let moved: BTreeSet<u32> = moved_deliveries
        .iter()
        .map(|d| d.info().partition)
        .collect();
    assert!(
        !moved.is_empty() && moved.len() < PARTITIONS as usize,
        "{moved:?}"
    );
    let redelivered: BTreeSet<String> = moved_deliveries.iter().map(text).collect();
    let of_moved: BTreeSet<String> = at
        .iter()
        .filter(|(_, p)| moved.contains(p))
        .map(|(m, _)| m.clone())
        .collect();
    assert_eq!(
        redelivered, of_moved,
        "the moved partitions' records, each once"
    );
    assert_eq!(redelivered.len(), moved_deliveries.len(), "no duplicate");

    // The first member settles what it held: the deliveries of partitions
    // it kept commit; those of moved partitions fail and commit nothing.
    let mut kept_acked = BTreeSet::new();
    let mut stale = BTreeSet::new();
    for d in held {
        let (m, p) = (text(&d), d.info().partition);
        match d.ack().await {
            Ok(()) => {
                assert!(!moved.contains(&p), "{m} of moved partition {p} acked");
                kept_acked.insert(m);
            }
            Err(Error::UnknownDelivery { .. }) => {
                assert!(moved.contains(&p), "{m} of kept partition {p} refused");
                stale.insert(m);
            }
            Err(e) => panic!("ack {m}: {e}"),
        }
    }
    assert_eq!(
        stale, of_moved,
        "the duplicates are exactly the unsettled ones moved"
    );
    let kt = b.kafka_topic(&t);
    let group = b.kafka_topic("g");
    let after_stale = committed(kt.clone(), group.clone()).await;
    for p in &moved {
        assert_eq!(after_stale[p], None, "a stale ack committed partition {p}");
    }
    for (p, n) in &after_stale {
        if !moved.contains(p) {
            let count = at.values().filter(|q| *q == p).count() as i64;
            assert_eq!(*n, Some(count), "kept partition {p}");
        }
    }

    // The new owner settles part of what it has: the commit is its own
    // prefix, not past it.
    let mut by_partition: BTreeMap<u32, Vec<Delivery>> = BTreeMap::new();
    for d in moved_deliveries {
        by_partition.entry(d.info().partition).or_default().push(d);
    }
    let mut rest = Vec::new();
    for ds in by_partition.values_mut() {
        ds.sort_by_key(|d| d.info().offset);
        let tail = ds.split_off(1);
        ds.pop()
            .expect("first")
            .ack()
            .await
            .expect("new owner acks");
        rest.extend(tail);
    }
    let now = committed(kt.clone(), group.clone()).await;
    for p in &moved {
        assert_eq!(now[p], Some(1), "partition {p}: the new owner's prefix");
    }
    for d in rest {
        d.ack().await.expect("new owner acks");
    }
    let all: BTreeSet<String> = kept_acked.union(&redelivered).cloned().collect();
    assert_eq!(all.len(), MESSAGES, "nothing lost");
    expect_quiet(&mut a, QUIET, "first member after the rebalance").await;
    expect_quiet(&mut second, QUIET, "second member after all").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaving_with_unsettled_deliveries_hands_exactly_those_over() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = unique_name("leave");
    b.create_topic(&t, PARTITIONS).await.expect("topic");
    let opts = || {
        SubscribeOptions::new(&t)
            .group("g")
            .start(StartPosition::Earliest)
            .max_in_flight(1000)
    };
    let mut a = b.subscribe(opts()).await.expect("subscribe a");
    let at = publish(b, &t).await;
    let mut held = Vec::new();
    for _ in 0..MESSAGES {
        held.push(expect_delivery(&mut a, "first member").await);
    }
    // In each partition the first member acks the first half in order and
    // leaves the rest unsettled (a prefix: nothing depends on commit
    // metadata, which the test broker drops).
    held.sort_by_key(|d| (d.info().partition, d.info().offset));
    let mut acked = BTreeSet::new();
    let mut unsettled = Vec::new();
    let mut per_partition: BTreeMap<u32, usize> = BTreeMap::new();
    for d in held {
        let p = d.info().partition;
        let half = at.values().filter(|q| **q == p).count() / 2;
        let i = per_partition.entry(p).or_default();
        if *i < half {
            acked.insert(text(&d));
            d.ack().await.expect("ack");
        } else {
            unsettled.push(d);
        }
        *i += 1;
    }
    let want: BTreeSet<String> = unsettled.iter().map(text).collect();
    let mut second = b.subscribe(opts()).await.expect("subscribe b");
    // The first member leaves with its deliveries unsettled.
    a.close().await.expect("close");
    drop(unsettled);
    drop(a);
    // Its partitions reach the second member in up to two rebalances (the
    // join's, then the leave's): wait for as many as were unsettled, then
    // for silence.
    let mut got = Vec::new();
    for _ in 0..want.len() {
        got.push(expect_delivery(&mut second, "handed over").await);
    }
    expect_quiet(&mut second, QUIET * 3, "more than the unsettled came back").await;
    let texts: Vec<String> = got.iter().map(text).collect();
    let set: BTreeSet<String> = texts.iter().cloned().collect();
    assert_eq!(set.len(), texts.len(), "no duplicate: {texts:?}");
    assert_eq!(set, want, "exactly the unsettled deliveries come back");
    assert!(acked.is_disjoint(&set));
    for d in got {
        d.ack().await.expect("ack");
    }
    assert_eq!(acked.len() + set.len(), MESSAGES, "nothing lost");
    expect_quiet(&mut second, QUIET, "after all").await;
}
