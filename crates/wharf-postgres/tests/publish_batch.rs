//! A publish batch is first tried as one plain `INSERT` (all ids new) and,
//! when an id is already stored, retried with `ON CONFLICT DO NOTHING`: both
//! paths give the same receipts and store each id once, in batch order.

mod service;

use std::time::Duration;

use wharf_core::{Message, Publisher, StartPosition, SubscribeOptions, Subscriber};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_with_a_stored_id_stores_the_new_ones_in_order_and_points_the_old_one_at_its_offset()
{
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let a = Message::new("a");
    let first = b
        .publish_batch("orders", vec![a.clone(), Message::new("b")])
        .await
        .expect("first batch");
    assert_eq!(
        first
            .iter()
            .map(|r| (r.offset, r.duplicate))
            .collect::<Vec<_>>(),
        vec![(Some(0), false), (Some(1), false)],
        "all-new batch: consecutive offsets from 0"
    );

    let c = Message::new("c");
    let d = Message::new("d");
    let second = b
        .publish_batch("orders", vec![c.clone(), a.clone(), d.clone(), c.clone()])
        .await
        .expect("batch with a stored id");
    assert_eq!(second[0].id, c.id());
    assert!(!second[0].duplicate);
    assert!(second[1].duplicate, "a was stored by the first batch");
    assert_eq!(
        second[1].offset,
        Some(0),
        "the duplicate points at the stored a"
    );
    assert!(!second[2].duplicate);
    assert!(second[3].duplicate, "c twice in one batch is stored once");
    assert_eq!(second[3].offset, second[0].offset);
    let (oc, od) = (second[0].offset.unwrap(), second[2].offset.unwrap());
    assert!(
        1 < oc && oc < od,
        "new ones after the first batch, in order: {oc} {od}"
    );

    let third = b
        .publish_batch("orders", vec![Message::new("e")])
        .await
        .expect("all-new batch after the retry");
    assert!(!third[0].duplicate);
    assert!(third[0].offset.unwrap() > od);

    let opts = SubscribeOptions::new("orders")
        .group("g")
        .start(StartPosition::Earliest);
    let mut sub = b.subscribe(opts).await.expect("subscribe");
    let mut got = Vec::new();
    while got.len() < 5 {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("delivered")
            .expect("open")
            .expect("delivery");
        got.push(String::from_utf8(d.message().payload().to_vec()).unwrap());
        d.ack().await.expect("ack");
    }
    assert_eq!(got, ["a", "b", "c", "d", "e"]);
    let more = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(more.is_err(), "a duplicate was stored twice");
}
