//! What the conformance suite does not cover: SQS's limits as typed errors,
//! FIFO queues (order per key, a slow key not blocking others, dedup by
//! message id), the redrive policy moving a message SQS itself received too
//! often, batches split by SQS's per-call limits, and other producers'
//! plain messages.

mod service;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use wharf_core::name::dead_letter_topic;
use wharf_core::{
    Backend, Capability, Error, Message, Publisher, StartPosition, SubscribeOptions, Subscriber,
};
use wharf_sqs::{SqsBackend, MAX_HEADERS, MAX_MESSAGE_BYTES};
use wharf_testkit::{expect_delivery, expect_quiet, unique_name, QUIET};

fn earliest(topic: &str) -> SubscribeOptions {
    SubscribeOptions::new(topic).start(StartPosition::Earliest)
}

fn text(d: &wharf_core::Delivery) -> String {
    String::from_utf8_lossy(d.message().payload()).into_owned()
}

/// Every message `topic`'s queue holds, read raw (visibility 0, not deleted):
/// SQS's view, without a Wharf subscription in the way.
async fn raw_receive(b: &SqsBackend, topic: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let url = b.queue_url(topic).await.expect("queue url");
    b.client()
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .wait_time_seconds(1)
        .send()
        .await
        .expect("receive")
        .messages
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_a_typed_error_and_the_worst_case_maximum_and_its_dead_letter_fit_sqs()
{
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = format!("{}.big", unique_name("t"));
    // The worst case for SQS's 256 KiB: the most headers, and a payload that
    // is not text (sent base64, 4/3 of its size), filling the limit exactly.
    let headers: Vec<(String, String)> = (0..MAX_HEADERS)
        .map(|i| (format!("h{i:03}"), String::new()))
        .collect();
    let build = |payload_len: usize| {
        let mut m = Message::builder().key(&b"k"[..]);
        for (n, v) in &headers {
            m = m.header(n.clone(), v.clone());
        }
        m.payload(Bytes::from(vec![0xffu8; payload_len])).build()
    };
    let overhead = build(0).size();
    let exact = build(MAX_MESSAGE_BYTES - overhead);
    assert_eq!(exact.size(), MAX_MESSAGE_BYTES);
    let over = build(MAX_MESSAGE_BYTES - overhead + 1);
    match b.publish(&t, over.clone()).await {
        Err(Error::MessageTooLarge { size, max }) => {
            assert_eq!((size, max), (MAX_MESSAGE_BYTES + 1, MAX_MESSAGE_BYTES));
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    let r = b.publish_batch(&t, vec![Message::new("small"), over]).await;
    assert!(matches!(r, Err(Error::MessageTooLarge { .. })), "{r:?}");
    let many = Message::builder()
        .headers({
            let mut h = wharf_core::Headers::new();
            for i in 0..=MAX_HEADERS {
                h.insert(format!("x{i}"), "");
            }
            h
        })
        .build();
    assert!(matches!(
        b.publish(&t, many).await,
        Err(Error::TooManyHeaders { .. })
    ));
    assert!(
        raw_receive(b, &t).await.is_empty(),
        "a refused message reached SQS"
    );
    b.publish(&t, exact.clone())
        .await
        .expect("SQS takes the largest message Wharf allows, base64 and all");
    let mut sub = b.subscribe(earliest(&t)).await.expect("subscribe");
    let d = expect_delivery(&mut sub, "the maximum message").await;
    assert_eq!(d.message().id(), exact.id());
    assert!(d.message().payload() == exact.payload());
    assert_eq!(d.message().headers().len(), MAX_HEADERS);
    // Its dead letter has 8 headers more and still fits SQS.
    d.reject("too big to handle").await.expect("reject");
    let mut dead = b
        .subscribe(earliest(&dead_letter_topic(&t)))
        .await
        .expect("subscribe dlq");
    let dl = expect_delivery(&mut dead, "the maximum message's dead letter").await;
    assert_eq!(dl.message().id(), exact.id());
    assert!(dl.message().payload() == exact.payload());
    assert_eq!(
        dl.message().headers().len(),
        MAX_HEADERS + 6,
        "the stamp: no offset, no group"
    );
    assert_eq!(
        dl.message().headers().get(wharf_core::header::DLQ_REASON),
        Some("too big to handle")
    );
    dl.ack().await.expect("ack");
}

/// SQS's own view of `topic`'s queue: (visible, delayed) message counts.
async fn queue_counts(b: &SqsBackend, topic: &str) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let url = b.queue_url(topic).await.expect("url");
    let attrs = b
        .client()
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::All)
        .send()
        .await
        .expect("attributes");
    let get = |n: A| {
        attrs
            .attributes()
            .and_then(|a| a.get(&n))
            .cloned()
            .unwrap_or_default()
    };
    (
        get(A::ApproximateNumberOfMessages),
        get(A::ApproximateNumberOfMessagesDelayed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_beyond_fifteen_minutes_is_accepted_and_waits_in_sqs() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = format!("{}.later", unique_name("t"));
    for (text, minutes) in [
        ("in 14 min", 14),
        ("in 3 hours", 180),
        ("in 2 days", 2 * 24 * 60),
    ] {
        let m = Message::builder()
            .payload(text)
            .deliver_after(Duration::from_secs(minutes * 60))
            .build();
        b.publish(&t, m).await.expect(text);
    }
    assert_eq!(
        queue_counts(b, &t).await,
        ("0".to_owned(), "3".to_owned()),
        "(visible, delayed)"
    );
    // A subscription sees none of them (each is either still delayed by
    // SQS or, were one received early, sent on again, never handed out).
    let mut sub = b.subscribe(earliest(&t)).await.expect("subscribe");
    expect_quiet(&mut sub, QUIET, "messages due in 14 min, 3 h and 2 days").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_due_after_several_hops_arrives_once_when_due_with_its_identity() {
    // Hops of 1 s stand in for SQS's 15 minutes: a 4-second wait is four
    // sends, as a 1-hour one is on Amazon's.
    let Some(ns) =
        service::namespace_with(service::unique_config().delay_hop(Duration::from_secs(1))).await
    else {
        return;
    };
    let b = &ns.backend;
    let t = format!("{}.hops", unique_name("t"));
    let mut sub = b.subscribe(earliest(&t)).await.expect("subscribe");
    let m = Message::builder()
        .key(&b"order-9"[..])
        .header("h", "v")
        .payload("due in 4 s")
        .deliver_after(Duration::from_secs(4))
        .build();
    let (id, due) = (m.id(), m.deliver_at().expect("due"));
    b.publish(&t, m).await.expect("publish");
    let d = expect_delivery(&mut sub, "the message, when due").await;
    let now = wharf_core::Timestamp::now();
    assert!(
        now >= due,
        "handed out {} ms early",
        due.as_millis() - now.as_millis()
    );
    assert!(
        now.as_millis() - due.as_millis() < 5_000,
        "handed out {} ms late",
        now.as_millis() - due.as_millis()
    );
    assert_eq!(d.message().id(), id);
    assert_eq!(d.message().key().map(|k| &k[..]), Some(&b"order-9"[..]));
    assert_eq!(d.message().headers().get("h"), Some("v"));
    assert_eq!(text(&d), "due in 4 s");
    assert_eq!(d.info().attempt, 1, "a hop is not an attempt");
    d.ack().await.expect("ack");
    expect_quiet(&mut sub, QUIET, "a second copy").await;
    drop(sub);
    assert!(
        raw_receive(b, &t).await.is_empty(),
        "no copy is left behind"
    );
    assert_eq!(queue_counts(b, &t).await, ("0".to_owned(), "0".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_split_by_sqs_entry_and_byte_limits_and_arrives_whole_in_order() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = format!("{}.batch", unique_name("t"));
    // 25 messages of 60 KiB: 4 fit one 256 KiB call, so 7 calls, not 3.
    let msgs: Vec<Message> = (0..25)
        .map(|i| Message::new(format!("{i:02}{}", "x".repeat(60 * 1024))))
        .collect();
    let ids: Vec<_> = msgs.iter().map(Message::id).collect();
    let receipts = b.publish_batch(&t, msgs).await.expect("publish_batch");
    assert_eq!(receipts.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    let mut sub = b.subscribe(earliest(&t)).await.expect("subscribe");
    let mut got = Vec::new();
    while got.len() < 25 {
        let d = expect_delivery(&mut sub, "batch").await;
        got.push(d.message().id());
        d.ack().await.expect("ack");
    }
    assert_eq!(got, ids, "moto keeps a standard queue's order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_keeps_order_per_key_and_a_held_key_does_not_block_the_others() {
    let Some(ns) = service::namespace_with(service::unique_fifo_config()).await else {
        return;
    };
    let b = &ns.backend;
    assert!(b.capabilities().contains(Capability::OrderingPerKey));
    assert!(!b.capabilities().contains(Capability::DelayedPublish));
    let t = format!("{}.ordered", unique_name("t"));
    for seq in 0..5 {
        for k in ["slow", "fast"] {
            let m = Message::builder()
                .key(k)
                .payload(format!("{k}:{seq}"))
                .build();
            b.publish(&t, m).await.expect("publish");
        }
    }
    let mut sub = b
        .subscribe(earliest(&t).max_in_flight(8))
        .await
        .expect("subscribe");
    // Hold every "slow" delivery unsettled while taking all of "fast":
    // SQS holds back the rest of a group only behind what is in flight, so
    // "fast" is never blocked by "slow".
    let mut held = Vec::new();
    let mut fast = Vec::new();
    while fast.len() < 5 {
        let d = expect_delivery(&mut sub, "fifo").await;
        let s = text(&d);
        if s.starts_with("slow") {
            held.push(d);
        } else {
            fast.push(s);
            d.ack().await.expect("ack");
        }
    }
    assert_eq!(fast, ["fast:0", "fast:1", "fast:2", "fast:3", "fast:4"]);
    let mut slow: Vec<String> = held.iter().map(text).collect();
    for d in held {
        d.ack().await.expect("ack");
    }
    while slow.len() < 5 {
        let d = expect_delivery(&mut sub, "slow").await;
        slow.push(text(&d));
        d.ack().await.expect("ack");
    }
    assert_eq!(slow, ["slow:0", "slow:1", "slow:2", "slow:3", "slow:4"]);
    expect_quiet(&mut sub, QUIET, "after both keys").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_drops_a_republished_message_id_and_refuses_a_per_message_delay() {
    let Some(ns) = service::namespace_with(service::unique_fifo_config()).await else {
        return;
    };
    let b = &ns.backend;
    let t = format!("{}.dedup", unique_name("t"));
    let m = Message::builder().key("k").payload("once").build();
    b.publish(&t, m.clone()).await.expect("publish");
    b.publish(&t, m.clone()).await.expect("publish again");
    b.publish(&t, Message::builder().key("k").payload("marker").build())
        .await
        .expect("marker");
    let r = b
        .publish(
            &t,
            Message::builder()
                .payload("x")
                .deliver_after(Duration::from_secs(5))
                .build(),
        )
        .await;
    assert!(
        matches!(
            r,
            Err(Error::Unsupported {
                capability: Capability::DelayedPublish,
                ..
            })
        ),
        "{r:?}"
    );
    let mut sub = b.subscribe(earliest(&t)).await.expect("subscribe");
    let d = expect_delivery(&mut sub, "first").await;
    assert_eq!(d.message().id(), m.id());
    d.ack().await.expect("ack");
    let d = expect_delivery(&mut sub, "marker").await;
    assert_eq!(text(&d), "marker", "the republished id was delivered again");
    d.ack().await.expect("ack");
    expect_quiet(&mut sub, QUIET, "after the marker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redrive_policy_moves_a_message_sqs_received_too_often_to_the_dlq() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = format!("{}.redrive", unique_name("t"));
    let dlq = dead_letter_topic(&t);
    // A subscription with max_deliveries(2) sets the policy (maxReceiveCount
    // 3: one past its own dead-lettering); then it goes away.
    let mut sub = b
        .subscribe(earliest(&t).max_deliveries(2))
        .await
        .expect("subscribe");
    sub.close().await.expect("close");
    drop(sub);
    // Its last long poll (wait=1) ends before anything is published.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let url = b.queue_url(&t).await.expect("url");
    let attrs = b
        .client()
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .expect("attributes");
    let policy: HashMap<String, serde_json::Value> = serde_json::from_str(
        attrs
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy))
            .expect("a redrive policy"),
    )
    .expect("json");
    let max = &policy["maxReceiveCount"];
    assert!(max == "3" || max == 3, "{policy:?}");
    assert!(policy["deadLetterTargetArn"]
        .as_str()
        .is_some_and(|a| a.ends_with(&b.queue_name(&dlq))));
    // Another client receives it three times and never deletes it.
    let m = Message::new("never deleted");
    b.publish(&t, m.clone()).await.expect("publish");
    for n in 1..=3 {
        let got = raw_receive(b, &t).await;
        assert_eq!(got.len(), 1, "receive {n}");
    }
    // The fourth receive finds it gone to the DLQ, as it was (no Wharf stamp).
    assert!(raw_receive(b, &t).await.is_empty(), "not redriven");
    let mut dead = b.subscribe(earliest(&dlq)).await.expect("subscribe dlq");
    let d = expect_delivery(&mut dead, "redriven").await;
    assert_eq!(d.message().id(), m.id());
    assert!(!d
        .message()
        .headers()
        .contains(wharf_core::header::DLQ_REASON));
    d.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_message_from_another_producer_reads_as_its_body() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = format!("{}.foreign", unique_name("t"));
    let url = b.queue_url(&t).await.expect("url");
    b.client()
        .send_message()
        .queue_url(url)
        .message_body("{\"plain\":true}")
        .send()
        .await
        .expect("raw send");
    let mut sub = b.subscribe(earliest(&t)).await.expect("subscribe");
    let d = expect_delivery(&mut sub, "foreign").await;
    assert_eq!(text(&d), "{\"plain\":true}");
    assert!(d.message().key().is_none());
    assert!(d.message().headers().is_empty());
    d.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_ack_deletes_every_delivery_in_calls_of_ten() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let t = format!("{}.batchack", unique_name("t"));
    let msgs: Vec<Message> = (0..25).map(|i| Message::new(format!("m{i}"))).collect();
    b.publish_batch(&t, msgs).await.expect("publish");
    let mut sub = b.subscribe(earliest(&t)).await.expect("subscribe");
    let mut acks = wharf_core::AckBatch::new();
    let mut buf = Vec::new();
    while acks.len() < 25 {
        let got = tokio::time::timeout(wharf_testkit::WAIT, sub.next_batch(25, &mut buf))
            .await
            .expect("deliveries in time")
            .expect("next_batch");
        assert!(got > 0, "subscription ended");
        for d in buf.drain(..) {
            acks.push(d);
        }
    }
    let failed = acks.flush().await;
    assert!(failed.is_empty(), "{failed:?}");
    sub.close().await.expect("close");
    drop(sub);
    assert!(
        raw_receive(b, &t).await.is_empty(),
        "a batch-acked message is still in the queue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_of_one_topic_compete_whatever_group_they_name() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    assert!(!b.capabilities().contains(Capability::ConsumerGroups));
    let t = format!("{}.shared", unique_name("t"));
    let mut a = b
        .subscribe(earliest(&t).group("billing").max_in_flight(4))
        .await
        .expect("subscribe a");
    let mut c = b
        .subscribe(earliest(&t).group("shipping").max_in_flight(4))
        .await
        .expect("subscribe c");
    let msgs: Vec<Message> = (0..30).map(|i| Message::new(format!("j{i}"))).collect();
    b.publish_batch(&t, msgs).await.expect("publish");
    let mut seen = std::collections::HashSet::new();
    let (mut from_a, mut from_c) = (0, 0);
    while seen.len() < 30 {
        let d = tokio::select! {
            Some(d) = a.next() => { from_a += 1; d }
            Some(d) = c.next() => { from_c += 1; d }
            () = tokio::time::sleep(wharf_testkit::WAIT) => panic!("stalled at {}", seen.len()),
        }
        .expect("delivery");
        assert!(seen.insert(text(&d)), "delivered twice: {}", text(&d));
        d.ack().await.expect("ack");
    }
    assert_eq!(from_a + from_c, 30, "one queue: no copy per group");
    expect_quiet(&mut a, QUIET, "a").await;
    expect_quiet(&mut c, QUIET, "c").await;
}
