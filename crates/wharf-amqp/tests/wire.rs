//! What a message looks like on the broker, read with lapin alone: a plain
//! message (no key, no headers, its timestamp the time in its UUIDv7 id)
//! carries no AMQP header table; a back-dated one carries `wharf-ts`; and
//! a message in the form every earlier version sent (an empty `wharf-h`
//! and `wharf-ts`) still reads back the same. A backlog copy sent straight
//! to a new group's queue carries its topic in `type`.

mod service;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use wharf_core::{Message, Publisher, StartPosition, SubscribeOptions, Subscriber, Timestamp};
use wharf_testkit::expect_delivery;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_message_travels_without_a_header_table() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    // The group exists before the messages are published, so they are
    // routed to its queue by the topic, as a running service's are.
    let mut sub = b
        .subscribe(
            SubscribeOptions::new("t")
                .group("g")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    // A queue of our own bound beside the group's, to look at the wire form.
    let conn = Connection::connect(&service::url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let raw = format!("{}.raw", ns.config.exchange_name());
    ch.queue_declare(
        ShortString::from(raw.as_str()),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let exchange = ns.config.exchange_name();
    ch.queue_bind(
        ShortString::from(raw.as_str()),
        ShortString::from(exchange.as_str()),
        ShortString::from("t"),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");

    let plain = Message::new("plain");
    let dated = Message::builder()
        .payload("dated")
        .timestamp(Timestamp::from_millis(1_000))
        .build();
    b.publish("t", plain.clone()).await.expect("publish");
    b.publish("t", dated.clone()).await.expect("publish");
    // Sent as every version before 2026-12-07 did.
    let old = Message::new("old");
    let mut table = FieldTable::default();
    table.insert(
        "wharf-h".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![])),
    );
    table.insert(
        "wharf-ts".into(),
        AMQPValue::LongLongInt(i64::try_from(old.timestamp().as_millis()).expect("ms")),
    );
    ch.basic_publish(
        ShortString::from(exchange.as_str()),
        ShortString::from("t"),
        BasicPublishOptions::default(),
        b"old",
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(old.id().to_string()))
            .with_timestamp(old.timestamp().as_millis() / 1000)
            .with_headers(table),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");

    let mut names = Vec::new();
    for _ in 0..3 {
        let got = ch
            .basic_get(
                ShortString::from(raw.as_str()),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("get")
            .expect("a message");
        names.push(got.properties.headers().as_ref().map(|t| {
            t.inner()
                .keys()
                .map(|k| k.as_str().to_owned())
                .collect::<Vec<_>>()
        }));
    }
    assert_eq!(
        names,
        [
            None,
            Some(vec!["wharf-ts".to_owned()]),
            Some(vec!["wharf-h".to_owned(), "wharf-ts".to_owned()]),
        ]
    );
    for m in [&plain, &dated, &old] {
        let d = expect_delivery(&mut sub, "each message").await;
        assert_eq!(d.message().id(), m.id());
        assert_eq!(d.message().payload(), m.payload());
        assert_eq!(d.message().timestamp(), m.timestamp());
        assert!(d.message().headers().is_empty(), "{:?}", d.message());
        assert_eq!(d.info().topic.as_ref(), "t");
        d.ack().await.expect("ack");
    }
    ch.queue_delete(
        ShortString::from(raw.as_str()),
        QueueDeleteOptions::default(),
    )
    .await
    .expect("delete");
    let _ = conn.close(0, "done".into()).await;
}

/// A group made after its backlog gets copies of the backlog sent straight
/// to its queue; a copy carries its topic in the `type` property, not in a
/// header table (a header table made RabbitMQ drain such a queue at 0.62
/// of a bare client instead of 0.89-1.08), and reads back with its topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_copy_carries_its_topic_in_type_and_no_header_table() {
    let Some(ns) = service::namespace().await else {
        return;
    };
    let b = &ns.backend;
    let first = Message::new("first");
    let second = Message::new("second");
    b.publish("orders.created", first.clone())
        .await
        .expect("publish");
    b.publish("orders.created", second.clone())
        .await
        .expect("publish");
    let mut sub = b
        .subscribe(
            SubscribeOptions::new("orders.*")
                .group("g")
                .start(StartPosition::Earliest)
                .max_in_flight(1),
        )
        .await
        .expect("subscribe");
    let d = expect_delivery(&mut sub, "the first copy").await;
    assert_eq!(d.message().id(), first.id());
    assert_eq!(d.info().topic.as_ref(), "orders.created");
    d.ack().await.expect("ack");
    sub.close().await.expect("close");

    let conn = Connection::connect(&service::url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let queue = format!("{}.g.g.orders.*", ns.config.exchange_name());
    let got = ch
        .basic_get(
            ShortString::from(queue.as_str()),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("get")
        .expect("the second copy");
    assert_eq!(got.routing_key.as_str(), queue);
    assert_eq!(got.data, b"second");
    assert!(
        got.properties.headers().is_none(),
        "{:?}",
        got.properties.headers()
    );
    assert_eq!(
        got.properties.kind().as_ref().map(ShortString::as_str),
        Some("orders.created")
    );
    let _ = conn.close(0, "done".into()).await;
}
