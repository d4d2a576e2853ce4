//! Cancel safety of the publish path at the await points a test cannot
//! reach through the public API: the wait for a publish permit and the wait
//! for another publish of the same id. A cancelled publish must release its
//! dedup reservations so that a retry of its ids proceeds.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use wharf_core::{Message, Publisher};

use crate::{Broker, Durability, TopicConfig};

const WITHIN: Duration = Duration::from_secs(20);

async fn broker() -> Broker {
    Broker::builder()
        .default_topic(TopicConfig::default().durability(Durability::Never))
        .temporary()
        .await
        .unwrap()
}

/// Polls `fut` once: it must be pending (parked at an await point).
async fn poll_once<F: Future>(fut: &mut Pin<Box<F>>) {
    let pending = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_pending())).await;
    assert!(pending, "the publish should be parked at an await point");
}

fn stored(broker: &Broker, topic: &str) -> u64 {
    broker
        .topics()
        .into_iter()
        .filter(|t| t.name == topic)
        .flat_map(|t| t.partitions)
        .map(|(s, e)| e - s)
        .sum()
}

/// Cancelled while waiting for a publish permit (the broker is at
/// `max_pending_publishes`): its ids are free again at once, and a retry
/// completes as soon as a permit is.
#[tokio::test]
async fn a_publish_cancelled_waiting_for_a_permit_releases_its_ids() {
    let broker = broker().await;
    let topic = "permit.wait";
    broker
        .publish(topic, Message::new("warm-up"))
        .await
        .unwrap();
    let all = u32::try_from(broker.inner.config.max_pending_publishes).unwrap();
    let permits = broker
        .inner
        .publish_permits
        .acquire_many(all)
        .await
        .unwrap();
    let msg = Message::new("m");
    let mut first = Box::pin(broker.publish(topic, msg.clone()));
    poll_once(&mut first).await;
    drop(first);
    let b = broker.clone();
    let retry = tokio::spawn(async move { b.publish(topic, msg).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(permits);
    let r = tokio::time::timeout(WITHIN, retry)
        .await
        .expect("the retry completes")
        .unwrap()
        .unwrap();
    assert!(!r.duplicate);
    assert_eq!(stored(&broker, topic), 2);
}

/// Cancelled while waiting for another publish of one of its ids: the ids
/// of its batch that were new are not left reserved, and the publish it
/// waited for is unaffected.
#[tokio::test]
async fn a_publish_cancelled_waiting_for_the_same_id_holds_nothing() {
    let broker = broker().await;
    let topic = "dedup.wait";
    broker
        .publish(topic, Message::new("warm-up"))
        .await
        .unwrap();
    let all = u32::try_from(broker.inner.config.max_pending_publishes).unwrap();
    let permits = broker
        .inner
        .publish_permits
        .acquire_many(all)
        .await
        .unwrap();
    let (x, y) = (Message::new("x"), Message::new("y"));
    // Holds x's reservation, parked at the permit.
    let mut holder = Box::pin(broker.publish(topic, x.clone()));
    poll_once(&mut holder).await;
    // [y, x] waits for the holder's x; cancelled there.
    let mut waiter = Box::pin(broker.publish_batch(topic, vec![y.clone(), x.clone()]));
    poll_once(&mut waiter).await;
    drop(waiter);
    // y alone must not wait for anything but a permit.
    let b = broker.clone();
    let y_alone = tokio::spawn(async move { b.publish(topic, y).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(permits);
    let rx = tokio::time::timeout(WITHIN, holder)
        .await
        .expect("the holder completes")
        .unwrap();
    let ry = tokio::time::timeout(WITHIN, y_alone)
        .await
        .expect("y completes")
        .unwrap()
        .unwrap();
    assert!(!rx.duplicate && !ry.duplicate);
    assert_eq!(stored(&broker, topic), 3);
    // A waiter that is not cancelled is woken by the holder's end, not by a
    // poll: with the holder parked, it stays parked; once the holder
    // finishes, it completes with the holder's receipt.
    let permits = broker
        .inner
        .publish_permits
        .acquire_many(all)
        .await
        .unwrap();
    let z = Message::new("z");
    let mut holder = Box::pin(broker.publish(topic, z.clone()));
    poll_once(&mut holder).await;
    let b = broker.clone();
    let zz = z.clone();
    let waiter = tokio::spawn(async move { b.publish(topic, zz).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished());
    drop(permits);
    let rz = holder.await.unwrap();
    let rw = tokio::time::timeout(WITHIN, waiter)
        .await
        .expect("the waiter completes")
        .unwrap()
        .unwrap();
    assert!(rw.duplicate);
    assert_eq!((rz.partition, rz.offset), (rw.partition, rw.offset));
    assert_eq!(stored(&broker, topic), 4);
}
