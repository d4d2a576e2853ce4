//! Cancel safety of the broker's publish path: a publish whose future is
//! dropped at any await point (as an HTTP disconnect or a gRPC deadline
//! drops it) must leave its message ids free for a retry, which then
//! completes and stores each message once.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use wharf_broker::{Broker, Durability, TopicConfig};
use wharf_core::{Message, MessageId, Publisher, Receipt};

/// How long a retry may take before the test calls it wedged (generous: the
/// machine may be loaded; a wedged id never completes).
const RETRY_WITHIN: Duration = Duration::from_secs(20);

/// Messages stored in `topic` (every partition's end minus start).
fn stored(broker: &Broker, topic: &str) -> u64 {
    broker
        .topics()
        .into_iter()
        .filter(|t| t.name == topic)
        .flat_map(|t| t.partitions)
        .map(|(start, end)| end - start)
        .sum()
}

/// Polls `fut` up to `polls` times (yielding to the runtime in between);
/// whether it was still pending when given up on, i.e. dropped mid-flight.
async fn poll_then_drop<F: Future>(fut: F, polls: usize) -> bool {
    let mut fut: Pin<Box<F>> = Box::pin(fut);
    for _ in 0..polls {
        let pending =
            std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_pending())).await;
        if !pending {
            return false;
        }
        tokio::task::yield_now().await;
    }
    true
}

async fn retry(broker: &Broker, topic: &str, msgs: Vec<Message>) -> Vec<Receipt> {
    tokio::time::timeout(RETRY_WITHIN, broker.publish_batch(topic, msgs))
        .await
        .expect("the retry completes: a cancelled publish must not wedge its ids")
        .expect("retry publishes")
}

/// A publish cancelled after 1, 2, 3… polls — during its fsync'd append on
/// a blocking thread, or after — and then retried: the retry returns, and
/// every message is stored exactly once (the retry of a message the
/// cancelled publish did store gets the original receipt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_cancelled_at_any_point_can_be_retried_and_stores_once() {
    let broker = Broker::builder()
        .default_topic(
            TopicConfig::default()
                .partitions(3)
                .durability(Durability::Always),
        )
        .temporary()
        .await
        .unwrap();
    let topic = "cancel.publish";
    broker
        .publish(topic, Message::new("warm-up"))
        .await
        .unwrap();
    let mut expected = 1;
    let mut cancelled_mid_flight = 0;
    for polls in 1..=6 {
        for round in 0..4 {
            // Keyed across partitions, so the append spans several logs.
            let msgs: Vec<Message> = (0..5)
                .map(|k| {
                    Message::builder()
                        .key(format!("k{k}"))
                        .payload(format!("{polls}/{round}/{k}"))
                        .build()
                })
                .collect();
            if poll_then_drop(broker.publish_batch(topic, msgs.clone()), polls).await {
                cancelled_mid_flight += 1;
            }
            let receipts = retry(&broker, topic, msgs.clone()).await;
            expected += 5;
            assert_eq!(
                stored(&broker, topic),
                expected,
                "polls {polls}, round {round}"
            );
            // A second retry sees the same receipts, all duplicates now.
            let again = retry(&broker, topic, msgs).await;
            for (a, b) in receipts.iter().zip(&again) {
                assert!(b.duplicate);
                assert_eq!((a.partition, a.offset), (b.partition, b.offset));
            }
        }
    }
    assert_eq!(stored(&broker, topic), expected);
    assert!(
        cancelled_mid_flight >= 4,
        "only {cancelled_mid_flight} publishes were still in flight when dropped"
    );
}

/// One id published from two tasks at once, many times over: both
/// publishes return, one of them stored it and the other got the same
/// receipt as a duplicate; nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_id_published_concurrently_from_two_tasks_is_stored_once() {
    let broker = Broker::temporary().await.unwrap();
    let topic = "cancel.concurrent";
    for round in 0..50 {
        let msg = Message::new(format!("m{round}"));
        let (a, b) = (broker.clone(), broker.clone());
        let (ma, mb) = (msg.clone(), msg.clone());
        let ta = tokio::spawn(async move { a.publish(topic, ma).await });
        let tb = tokio::spawn(async move { b.publish(topic, mb).await });
        let (ra, rb) = tokio::time::timeout(RETRY_WITHIN, async {
            (ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap())
        })
        .await
        .expect("both publishes complete");
        assert_eq!((ra.partition, ra.offset), (rb.partition, rb.offset));
        assert!(ra.duplicate != rb.duplicate, "exactly one stored it");
    }
    assert_eq!(stored(&broker, topic), 50);
}

/// Two batches holding the same two ids in opposite orders, published at
/// once: neither may wait for the other while holding what the other waits
/// for (a deadlock that wedged both ids for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_sharing_ids_in_opposite_orders_do_not_deadlock() {
    let broker = Broker::temporary().await.unwrap();
    let topic = "cancel.crossed";
    for round in 0..100 {
        let x = Message::new(format!("x{round}"));
        let y = Message::new(format!("y{round}"));
        let (a, b) = (broker.clone(), broker.clone());
        let (xy, yx) = (vec![x.clone(), y.clone()], vec![y, x]);
        let ta = tokio::spawn(async move { a.publish_batch(topic, xy).await });
        let tb = tokio::spawn(async move { b.publish_batch(topic, yx).await });
        tokio::time::timeout(RETRY_WITHIN, async {
            ta.await.unwrap().unwrap();
            tb.await.unwrap().unwrap();
        })
        .await
        .expect("both batches complete");
    }
    assert_eq!(stored(&broker, topic), 200);
}

/// Ids repeated within one batch are stored once and share a receipt.
#[tokio::test]
async fn an_id_repeated_within_a_batch_is_stored_once() {
    let broker = Broker::temporary().await.unwrap();
    let topic = "cancel.repeated";
    let id = MessageId::new();
    let m = Message::builder().id(id).payload("one").build();
    let other = Message::new("two");
    let r = broker
        .publish_batch(topic, vec![m.clone(), other, m])
        .await
        .unwrap();
    assert!(!r[0].duplicate && r[2].duplicate);
    assert_eq!(r[0].offset, r[2].offset);
    assert_eq!(stored(&broker, topic), 2);
}
