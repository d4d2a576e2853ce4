//! MQTT behaviour beyond the conformance suite, against the shared
//! Mosquitto: the PUBACK waits for the handler's ack (an unacked delivery
//! comes back when the session is resumed), a group's session keeps its
//! queue across a reconnect, shared subscriptions split the load, names
//! that cannot map are refused, retained publishes, and what Mosquitto
//! does past `max_queued_messages`.

mod service;

use std::collections::HashSet;
use std::time::Duration;

use wharf_core::{
    Backend, Error, Message, NameKind, Publisher, StartPosition, SubscribeOptions, Subscriber,
};
use wharf_mqtt::MqttBackend;
use wharf_testkit::proxy::Proxy;
use wharf_testkit::{expect_delivery, expect_quiet, QUIET};

fn group(topic: &str, g: &str) -> SubscribeOptions {
    SubscribeOptions::new(topic).group(g)
}

fn text(d: &wharf_core::Delivery) -> String {
    String::from_utf8_lossy(d.message().payload()).into_owned()
}

/// The backend of `ns` reaching Mosquitto through a proxy that the test can cut.
async fn through_proxy(ns: &str) -> Option<(MqttBackend, Proxy)> {
    let (proxy, url) = Proxy::for_url(&service::url()).await.expect("proxy");
    let b = service::backend_with(service::config_at(&url, ns)).await?;
    Some((b, proxy))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_delivery_comes_back_when_the_session_resumes_and_an_acked_one_does_not() {
    let ns = wharf_testkit::unique_name("wm");
    let Some((first, proxy)) = through_proxy(&ns).await else {
        return;
    };
    let mut sub = first
        .subscribe(group("jobs", "w"))
        .await
        .expect("subscribe");
    for m in ["done", "held"] {
        first
            .publish("jobs", Message::new(m))
            .await
            .expect("publish");
    }
    let done = expect_delivery(&mut sub, "done").await;
    assert_eq!(text(&done), "done");
    done.ack().await.expect("ack");
    let held = expect_delivery(&mut sub, "held").await;
    assert_eq!(text(&held), "held");
    // Let the PUBACK of "done" reach the server (`ack` returns once it is
    // queued for the connection), then lose the connection with "held"
    // unacknowledged (no DISCONNECT: the session stays).
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.cut().await;
    std::mem::forget(held);
    // The same client ids, straight to the server: the session resumes.
    let second = service::backend_with(service::config_at(&service::url(), &ns))
        .await
        .expect("reconnect");
    let mut again = second.subscribe(group("jobs", "w")).await.expect("resume");
    let d = expect_delivery(&mut again, "the unacked delivery").await;
    assert_eq!(text(&d), "held");
    assert_eq!(d.attempt(), 2, "resent with DUP: the second attempt");
    d.ack().await.expect("ack");
    expect_quiet(&mut again, QUIET, "the acked message came back").await;
    drop(sub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_session_keeps_what_was_published_while_its_only_member_was_gone() {
    let ns = wharf_testkit::unique_name("wm");
    let Some((first, proxy)) = through_proxy(&ns).await else {
        return;
    };
    let sub = first
        .subscribe(group("events", "store"))
        .await
        .expect("subscribe");
    proxy.cut().await;
    let publisher = service::backend_with(
        service::config_at(&service::url(), &ns).client_id(wharf_testkit::unique_name("wm-pub")),
    )
    .await
    .expect("publisher");
    for i in 0..3 {
        publisher
            .publish("events", Message::new(format!("m{i}")))
            .await
            .expect("publish while the member is away");
    }
    let second = service::backend_with(service::config_at(&service::url(), &ns))
        .await
        .expect("reconnect");
    let mut back = second
        .subscribe(group("events", "store"))
        .await
        .expect("resume");
    for i in 0..3 {
        let d = expect_delivery(&mut back, "queued in the session").await;
        assert_eq!(text(&d), format!("m{i}"));
        d.ack().await.expect("ack");
    }
    expect_quiet(&mut back, QUIET, "more than was queued").await;
    drop(sub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_splits_the_messages_between_members() {
    let Some(b) = service::backend().await else {
        return;
    };
    let mut a = b.subscribe(group("work", "pool")).await.expect("member a");
    let mut c = b.subscribe(group("work", "pool")).await.expect("member c");
    let n = 40;
    let msgs = (0..n).map(|i| Message::new(format!("j{i}"))).collect();
    b.publish_batch("work", msgs).await.expect("publish");
    let mut seen = HashSet::new();
    let (mut got_a, mut got_c) = (0, 0);
    while seen.len() < n {
        let d = tokio::select! {
            Some(d) = a.next() => { got_a += 1; d }
            Some(d) = c.next() => { got_c += 1; d }
            _ = tokio::time::sleep(wharf_testkit::WAIT) => panic!("stalled at {}", seen.len()),
        }
        .expect("delivery");
        assert!(seen.insert(text(&d)), "delivered twice: {}", text(&d));
        d.ack().await.expect("ack");
    }
    assert!(got_a > 0 && got_c > 0, "a got {got_a}, c got {got_c}");
    expect_quiet(&mut a, QUIET, "extra on a").await;
    expect_quiet(&mut c, QUIET, "extra on c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_map_to_mqtt_and_names_that_cannot_are_refused_with_a_typed_error() {
    let Some(b) = service::backend().await else {
        return;
    };
    let prefix = b
        .mqtt_topic("x")
        .expect("valid")
        .trim_end_matches("/x")
        .to_owned();
    assert_eq!(
        b.mqtt_topic("orders.eu").expect("valid"),
        format!("{prefix}/orders/eu")
    );
    assert_eq!(
        b.mqtt_filter("orders.*").expect("valid"),
        format!("{prefix}/orders/+")
    );
    assert_eq!(
        b.mqtt_filter("orders.>").expect("valid"),
        format!("{prefix}/orders/+/#")
    );
    for bad in ["a/b", "a+", "a.#", "$SYS.x", "a b"] {
        match b.publish(bad, Message::new("x")).await {
            Err(Error::InvalidName {
                kind: NameKind::Topic,
                ..
            }) => {}
            other => panic!("{bad}: expected InvalidName(topic), got {other:?}"),
        }
        assert!(
            matches!(b.mqtt_filter(bad), Err(Error::InvalidName { .. })),
            "{bad}"
        );
    }
    let refused = b
        .publish("ok", Message::builder().header("wharf-id", "x").build())
        .await;
    assert!(
        matches!(
            refused,
            Err(Error::InvalidName {
                kind: NameKind::Header,
                ..
            })
        ),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_reaches_later_subscriptions_from_earliest_only() {
    let Some(b) = service::backend().await else {
        return;
    };
    let m = Message::builder()
        .key("k")
        .header("h", "v")
        .payload("last value")
        .build();
    b.publish_retained("config.a", m.clone())
        .await
        .expect("retain");
    let mut early = b
        .subscribe(SubscribeOptions::new("config.a").start(StartPosition::Earliest))
        .await
        .expect("subscribe");
    let d = expect_delivery(&mut early, "the retained message").await;
    assert_eq!(d.message().id(), m.id());
    assert_eq!(d.message().headers().get("h"), Some("v"));
    d.ack().await.expect("ack");
    let mut late = b
        .subscribe(SubscribeOptions::new("config.a").start(StartPosition::Latest))
        .await
        .expect("subscribe");
    expect_quiet(&mut late, QUIET, "retained message from Latest").await;
    b.clear_retained("config.a").await.expect("clear");
    let mut after = b
        .subscribe(SubscribeOptions::new("config.a").start(StartPosition::Earliest))
        .await
        .expect("subscribe");
    expect_quiet(&mut after, QUIET, "retained message after clearing").await;
}

/// Mosquitto's `max_queued_messages` (default 1000) bounds what a session
/// queues beyond its in-flight window; the rest is dropped while every
/// publish is still acknowledged. This test shows it on the machine's
/// Mosquitto (whatever its limit): a group that does not keep up loses
/// messages, and no publisher hears of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_servers_queue_limit_messages_are_dropped_while_publishes_succeed() {
    let Some(b) = service::backend().await else {
        return;
    };
    let mut sub = b
        .subscribe(group("flood", "slow").max_in_flight(1))
        .await
        .expect("subscribe");
    let n = 3000;
    for chunk in 0..(n / 500) {
        let msgs = (0..500)
            .map(|i| Message::new(format!("m{}", chunk * 500 + i)))
            .collect();
        b.publish_batch("flood", msgs)
            .await
            .expect("every publish is acknowledged");
    }
    let mut received = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
            Ok(Some(Ok(d))) => {
                received += 1;
                d.ack().await.expect("ack");
            }
            Ok(other) => panic!("subscription ended: {other:?}"),
            Err(_) => break,
        }
    }
    println!("published {n}, received {received}");
    assert!(received > 0);
    assert!(
        received < n,
        "every message arrived: the server's queue limit is above {n} (or 0)"
    );
    b.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_leaves_gives_what_the_server_queued_for_it_back_to_the_group() {
    let Some(b) = service::backend().await else {
        return;
    };
    let mut leaving = b
        .subscribe(group("tasks", "crew").max_in_flight(1))
        .await
        .expect("leaving member");
    let n = 20;
    let msgs = (0..n).map(|i| Message::new(format!("t{i}"))).collect();
    b.publish_batch("tasks", msgs).await.expect("publish");
    // The only member holds one; the server queues the rest behind it.
    let held = expect_delivery(&mut leaving, "the leaving member's first").await;
    let done = text(&held);
    let mut staying = b
        .subscribe(group("tasks", "crew"))
        .await
        .expect("staying member");
    leaving.close().await.expect("close");
    held.ack().await.expect("ack after close");
    let mut seen = HashSet::from([done]);
    while seen.len() < n {
        let d = expect_delivery(&mut staying, "every other message, on the staying member").await;
        assert!(seen.insert(text(&d)), "delivered twice: {}", text(&d));
        d.ack().await.expect("ack");
    }
    expect_quiet(&mut staying, QUIET, "more than was published").await;
}

/// A plain MQTT 5 client (rumqttc alone) connected to the test server,
/// with its event loop polled into a channel of received PUBLISHes.
async fn plain_client(
    id: &str,
) -> (
    rumqttc::v5::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Publish>,
) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let (host, port) = service::url()
        .trim_start_matches("mqtt://")
        .rsplit_once(':')
        .map(|(h, p)| (h.to_owned(), p.parse::<u16>().expect("port")))
        .expect("host:port");
    let (client, mut ev) = AsyncClient::new(MqttOptions::new(id, host, port), 16);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (connected, is_connected) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut connected = Some(connected);
        while let Ok(e) = ev.poll().await {
            match e {
                Event::Incoming(Packet::ConnAck(_)) => {
                    if let Some(c) = connected.take() {
                        let _ = c.send(());
                    }
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    let _ = tx.send(rumqttc::v5::mqttbytes::v5::Publish::default());
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let _ = tx.send(p);
                }
                _ => {}
            }
        }
    });
    is_connected.await.expect("the plain client connects");
    (client, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_properties_are_headers_both_ways_with_a_plain_mqtt_client() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::mqttbytes::QoS;
    let Some(b) = service::backend().await else {
        return;
    };
    let (plain, mut received) = plain_client(&wharf_testkit::unique_name("plain")).await;

    // Plain client → Wharf: user properties arrive as headers, in order.
    let mut sub = b
        .subscribe(SubscribeOptions::new("ext.in"))
        .await
        .expect("subscribe");
    let props = PublishProperties {
        user_properties: vec![("trace".into(), "abc".into()), ("a".into(), "1".into())],
        ..PublishProperties::default()
    };
    plain
        .publish_with_properties(
            b.mqtt_topic("ext.in").expect("valid"),
            QoS::AtLeastOnce,
            false,
            "raw",
            props,
        )
        .await
        .expect("plain publish");
    let d = expect_delivery(&mut sub, "the plain client's message").await;
    assert_eq!(d.message().payload().as_ref(), b"raw");
    assert_eq!(d.topic(), "ext.in");
    let headers: Vec<(&str, &str)> = d.message().headers().iter().collect();
    assert_eq!(headers, [("trace", "abc"), ("a", "1")]);
    assert_eq!(d.message().key(), None);
    d.ack().await.expect("ack");

    // Wharf → plain client: id, key, timestamp and headers as user properties.
    plain
        .subscribe(b.mqtt_topic("ext.out").expect("valid"), QoS::AtLeastOnce)
        .await
        .expect("plain subscribe");
    let suback = tokio::time::timeout(wharf_testkit::WAIT, received.recv()).await;
    assert!(matches!(suback, Ok(Some(_))), "the plain client's SUBACK");
    let m = Message::builder()
        .key("k-1")
        .header("z", "last")
        .header("b", "2")
        .payload("out")
        .build();
    b.publish("ext.out", m.clone()).await.expect("publish");
    let p = tokio::time::timeout(wharf_testkit::WAIT, received.recv())
        .await
        .expect("in time")
        .expect("a PUBLISH");
    assert_eq!(p.payload.as_ref(), b"out");
    let props = p.properties.expect("user properties").user_properties;
    let get = |n: &str| props.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(get("wharf-id"), Some(m.id().to_string().as_str()));
    assert_eq!(get("wharf-key"), Some("k-1"));
    assert!(get("wharf-timestamp-ms").is_some());
    let app: Vec<&str> = props
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !k.starts_with("wharf-"))
        .collect();
    assert_eq!(app, ["z", "b"], "headers in order");
    let _ = plain.disconnect().await;
}
