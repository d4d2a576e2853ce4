//! Batch acknowledgement (`wharf_core::AckBatch`) on the memory backend:
//! one lock per batch, the same rules as acking one by one.

use std::time::Duration;

use tokio::time::timeout;
use wharf_core::{
    AckBatch, Error, Message, Publisher, StartPosition, SubscribeOptions, Subscriber,
};
use wharf_memory::MemoryBackend;

async fn filled(n: usize) -> MemoryBackend {
    let b = MemoryBackend::new();
    let msgs = (0..n).map(|i| Message::new(format!("m{i}"))).collect();
    b.publish_batch("t", msgs).await.expect("publish");
    b
}

fn opts(max_in_flight: usize) -> SubscribeOptions {
    SubscribeOptions::new("t")
        .group("g")
        .start(StartPosition::Earliest)
        .max_in_flight(max_in_flight)
        .visibility_timeout(Duration::from_secs(30))
}

#[tokio::test(start_paused = true)]
async fn a_flushed_batch_frees_in_flight_slots_and_is_never_redelivered() {
    let b = filled(8).await;
    let mut sub = b.subscribe(opts(4)).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(sub.next_batch(8, &mut buf).await.unwrap(), 4);
    // The window is full: nothing more until the batch is acknowledged.
    assert!(timeout(Duration::from_millis(50), sub.next())
        .await
        .is_err());
    let mut acks = AckBatch::new();
    for d in buf.drain(..) {
        acks.push(d);
    }
    assert!(acks.flush().await.is_empty());
    assert_eq!(sub.next_batch(8, &mut buf).await.unwrap(), 4);
    let texts: Vec<_> = buf
        .iter()
        .map(|d| String::from_utf8_lossy(d.message().payload()).into_owned())
        .collect();
    assert_eq!(texts, ["m4", "m5", "m6", "m7"]);
    for d in buf.drain(..) {
        acks.push(d);
    }
    assert!(acks.flush().await.is_empty());
    // Past every lease: nothing comes back.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(timeout(Duration::from_millis(50), sub.next())
        .await
        .is_err());
    drop(sub);
    let mut again = b.subscribe(opts(4)).await.unwrap();
    assert!(timeout(Duration::from_millis(50), again.next())
        .await
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_in_a_batch_is_reported_and_the_rest_acked() {
    let b = filled(2).await;
    let mut sub = b
        .subscribe(opts(8).visibility_timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    let first = sub.next().await.unwrap().unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    // `first`'s lease expired: the message comes again, with a new token.
    let mut buf = Vec::new();
    sub.next_batch(8, &mut buf).await.unwrap();
    assert_eq!(buf.len(), 2, "m0 redelivered and m1");
    let mut acks = AckBatch::new();
    acks.push(first);
    for d in buf.drain(..) {
        acks.push(d);
    }
    let failed = acks.flush().await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(matches!(failed[0].1, Error::UnknownDelivery { .. }));
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(timeout(Duration::from_millis(50), sub.next())
        .await
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn dropping_an_unflushed_batch_releases_for_redelivery() {
    let b = filled(1).await;
    let mut sub = b.subscribe(opts(8)).await.unwrap();
    let d = sub.next().await.unwrap().unwrap();
    assert_eq!(d.attempt(), 1);
    let mut acks = AckBatch::new();
    acks.push(d);
    drop(acks);
    let again = sub.next().await.unwrap().unwrap();
    assert_eq!(again.attempt(), 2);
    assert_eq!(again.message().payload().as_ref(), b"m0");
}
