//! Stream-mode rebalancing under churn: a key-ordered stream consumed by a
//! group while members join and leave mid-flight. Every key's messages must
//! be handled in publish order, each exactly once — a partition may move
//! only once its previous owner's in-flight deliveries there are settled or
//! given back (the hand-off), never while they are still being handled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use wharf_broker::{Broker, Durability, TopicConfig};
use wharf_core::{
    Backend, GroupMode, Message, Publisher, StartPosition, SubscribeOptions, Subscriber,
};

const TOPIC: &str = "orders.stream";
const KEYS: usize = 30;
const PER_KEY: usize = 100;
const TOTAL: usize = KEYS * PER_KEY;

type Log = Arc<Mutex<Vec<(usize, usize, usize)>>>;

/// Handles messages one at a time (logging `(key, seq, consumer)` at
/// handling time, then acking) until `leave_after` are handled or all are.
async fn consumer(
    b: Broker,
    id: usize,
    leave_after: Option<usize>,
    log: Log,
    done: Arc<AtomicUsize>,
) {
    let opts = SubscribeOptions::new(TOPIC)
        .group("billing")
        .mode(GroupMode::Stream)
        .start(StartPosition::Earliest)
        .max_in_flight(16);
    let mut sub = b.subscribe(opts).await.expect("subscribe");
    let mut handled = 0;
    while done.load(Ordering::Acquire) < TOTAL && Some(handled) != leave_after {
        let Ok(next) = tokio::time::timeout(Duration::from_millis(20), sub.next()).await else {
            continue;
        };
        let d = next.expect("open").expect("delivery");
        let text = String::from_utf8_lossy(d.message().payload()).into_owned();
        let (k, s) = text.split_once('/').expect("key/seq");
        let (k, s): (usize, usize) = (k.parse().unwrap(), s.parse().unwrap());
        log.lock().unwrap().push((k, s, id));
        // Work that takes a moment, so deliveries sit in flight and in the
        // stream's buffer while members come and go.
        let pause = rand::thread_rng().gen_range(0..1500);
        tokio::time::sleep(Duration::from_micros(pause)).await;
        d.ack().await.expect("ack");
        handled += 1;
        done.fetch_add(1, Ordering::AcqRel);
    }
    drop(sub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stay_in_order_while_members_join_and_leave_mid_flight() {
    let b = Broker::builder()
        .default_topic(TopicConfig::default().durability(Durability::Never))
        .temporary()
        .await
        .unwrap();
    b.create_topic(
        TOPIC,
        TopicConfig::default()
            .durability(Durability::Never)
            .partitions(6),
    )
    .await
    .unwrap();
    let publisher = {
        let b = b.clone();
        tokio::spawn(async move {
            for seq in 0..PER_KEY {
                let batch = (0..KEYS)
                    .map(|k| {
                        Message::builder()
                            .key(format!("key-{k}"))
                            .payload(format!("{k}/{seq}"))
                            .build()
                    })
                    .collect();
                b.publish_batch(TOPIC, batch).await.expect("publish");
                if seq % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let log: Log = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    // One member stays throughout; others join and leave after a few dozen
    // messages each, up to four at a time.
    let mut members = vec![tokio::spawn(consumer(
        b.clone(),
        0,
        None,
        log.clone(),
        done.clone(),
    ))];
    let mut joined = 1;
    let churn = async {
        while done.load(Ordering::Acquire) < TOTAL {
            members.retain(|m| !m.is_finished());
            if members.len() < 5 && joined < 60 {
                let leave_after = rand::thread_rng().gen_range(5..60);
                members.push(tokio::spawn(consumer(
                    b.clone(),
                    joined,
                    Some(leave_after),
                    log.clone(),
                    done.clone(),
                )));
                joined += 1;
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), churn)
        .await
        .unwrap_or_else(|_| panic!("stuck at {} of {TOTAL}", done.load(Ordering::Acquire)));
    publisher.await.unwrap();
    for m in members {
        m.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    let mut per_key: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
    for &(k, s, c) in log.iter() {
        per_key.entry(k).or_default().push((s, c));
    }
    assert!(joined > 10, "only {joined} members joined");
    for k in 0..KEYS {
        let got: Vec<usize> = per_key[&k].iter().map(|&(s, _)| s).collect();
        let want: Vec<usize> = (0..PER_KEY).collect();
        assert_eq!(
            got, want,
            "key {k}: handled out of order, twice or not at all (seq, consumer): {:?}",
            per_key[&k]
        );
    }
    let consumers: std::collections::HashSet<usize> = log.iter().map(|&(_, _, c)| c).collect();
    assert!(
        consumers.len() > 5,
        "the load moved between members: {consumers:?}"
    );
    b.close().await.unwrap();
}

/// A member that loses a partition gives back what it buffered from it as
/// soon as it asks for its next message, so the new owner starts after the
/// deliveries the old one actually handed out — not after its whole buffer.
async fn next(s: &mut wharf_core::Subscription) -> wharf_core::Delivery {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("a delivery")
        .expect("open")
        .expect("delivery")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_member_gives_back_its_buffered_deliveries_of_the_moved_partition() {
    let b = Broker::builder()
        .default_topic(TopicConfig::default().durability(Durability::Never))
        .temporary()
        .await
        .unwrap();
    let topic = "orders.handoff";
    b.create_topic(
        topic,
        TopicConfig::default()
            .durability(Durability::Never)
            .partitions(2),
    )
    .await
    .unwrap();
    // 20 keyed messages per partition, in publish order per partition.
    let mut per_part: [Vec<String>; 2] = Default::default();
    let mut i = 0;
    while per_part.iter().any(|v| v.len() < 20) {
        let payload = format!("m{i}");
        let r = b
            .publish(
                topic,
                Message::builder()
                    .key(format!("key-{i}"))
                    .payload(payload.clone())
                    .build(),
            )
            .await
            .unwrap();
        per_part[r.partition as usize].push(payload);
        i += 1;
    }
    let opts = || {
        SubscribeOptions::new(topic)
            .group("billing")
            .mode(GroupMode::Stream)
            .start(StartPosition::Earliest)
            .max_in_flight(100)
    };
    let mut a = b.subscribe(opts()).await.unwrap();
    let first = next(&mut a).await; // A now buffers everything else
    let mut handled: [Vec<String>; 2] = Default::default();
    let text =
        |d: &wharf_core::Delivery| String::from_utf8_lossy(d.message().payload()).into_owned();
    handled[first.info().partition as usize].push(text(&first));
    let mut c = b.subscribe(opts()).await.unwrap();
    let moved = b.groups()[0]
        .assignment
        .iter()
        .position(|&(_, o)| o != b.groups()[0].assignment[first.info().partition as usize].1)
        .map(|p| p as u32);
    first.ack().await.unwrap();
    // A asks for more: what it buffered from the moved partition goes back.
    let d = next(&mut a).await;
    assert_ne!(
        Some(d.info().partition),
        moved,
        "A got a message of a partition it lost"
    );
    handled[d.info().partition as usize].push(text(&d));
    d.ack().await.unwrap();
    let moved = moved.expect("a partition moved to the new member") as usize;
    // The new owner starts at once, at the first message A never handled.
    let d = tokio::time::timeout(Duration::from_secs(2), c.next())
        .await
        .expect("the new owner starts without waiting for A's buffer")
        .expect("open")
        .expect("delivery");
    assert_eq!(d.info().partition as usize, moved);
    handled[moved].push(text(&d));
    d.ack().await.unwrap();
    while handled.iter().map(Vec::len).sum::<usize>() < 40 {
        tokio::select! {
            d = next(&mut a) => {
                assert_ne!(d.info().partition as usize, moved);
                handled[d.info().partition as usize].push(text(&d));
                d.ack().await.unwrap();
            }
            d = next(&mut c) => {
                assert_eq!(d.info().partition as usize, moved);
                handled[moved].push(text(&d));
                d.ack().await.unwrap();
            }
        }
    }
    assert_eq!(
        handled, per_part,
        "every message once, in order per partition"
    );
    b.close().await.unwrap();
}
