//! The raw gRPC consume stream of a real `wharf serve`: the server sends no
//! more deliveries than the client granted, settles by delivery id (an
//! unknown id is a typed error on the same stream; `AckMany` names the ids
//! it could not ack), and redelivers what was unsettled when the stream ends.

mod common;

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use wharf_client::proto as v1;
use wharf_client::proto::{consume_request, consume_response};

fn req(kind: consume_request::Kind) -> v1::ConsumeRequest {
    v1::ConsumeRequest { kind: Some(kind) }
}

async fn next_kind(
    s: &mut tonic::Streaming<v1::ConsumeResponse>,
) -> Option<consume_response::Kind> {
    match tokio::time::timeout(Duration::from_millis(500), s.message()).await {
        Ok(Ok(Some(r))) => r.kind,
        _ => None,
    }
}

/// Opens a consume stream on `pattern` for group `g` from the earliest
/// offset with `credit` granted, and checks the server confirmed it.
async fn subscribe(
    raw: &mut wharf_client::RawClient,
    pattern: &str,
    credit: u32,
) -> (
    mpsc::UnboundedSender<v1::ConsumeRequest>,
    tonic::Streaming<v1::ConsumeResponse>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(req(consume_request::Kind::Subscribe(
        v1::SubscribeRequest {
            pattern: pattern.into(),
            group: Some("g".into()),
            start: v1::StartKind::StartEarliest as i32,
            ..Default::default()
        },
    )))
    .expect("send");
    tx.send(req(consume_request::Kind::Credit(credit)))
        .expect("send");
    let mut stream = raw
        .consume(UnboundedReceiverStream::new(rx))
        .await
        .expect("consume")
        .into_inner();
    assert!(matches!(
        next_kind(&mut stream).await,
        Some(consume_response::Kind::Subscribed(true))
    ));
    (tx, stream)
}

/// The delivery ids of the next `n` responses, which must be deliveries.
async fn take_delivery_ids(s: &mut tonic::Streaming<v1::ConsumeResponse>, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    for _ in 0..n {
        match next_kind(s).await {
            Some(consume_response::Kind::Delivery(d)) => ids.push(d.delivery_id),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    ids
}

/// The next delivery of a client subscription, within ten seconds.
async fn next_delivery(sub: &mut wharf_core::Subscription) -> wharf_core::Delivery {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("ok")
}

#[tokio::test]
async fn consume_stream_respects_credit_and_settles_by_delivery_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let mut raw = wharf_client::raw_client(&server.url(), None)
        .await
        .expect("connect");
    let messages = (0..5)
        .map(|i| v1::Message {
            payload: format!("m{i}").into_bytes().into(),
            ..Default::default()
        })
        .collect();
    raw.publish(v1::PublishRequest {
        topic: "grpc.credit".into(),
        messages,
        ..Default::default()
    })
    .await
    .expect("publish");

    let (tx, mut stream) = subscribe(&mut raw, "grpc.credit", 2).await;

    let ids = take_delivery_ids(&mut stream, 2).await;
    // Credit used up: nothing more arrives until more is granted.
    assert!(
        next_kind(&mut stream).await.is_none(),
        "a delivery beyond the granted credit"
    );
    tx.send(req(consume_request::Kind::Credit(1)))
        .expect("send");
    let third = match next_kind(&mut stream).await {
        Some(consume_response::Kind::Delivery(d)) => d,
        other => panic!("expected a third delivery, got {other:?}"),
    };
    assert_eq!(&third.message.expect("message").payload[..], b"m2");

    // Ack by id; an unknown id is a typed error on the same stream.
    let settle = |request_id, delivery_id| {
        req(consume_request::Kind::Settle(v1::Settle {
            request_id,
            delivery_id,
            action: v1::SettleAction::SettleAck as i32,
            ..Default::default()
        }))
    };
    tx.send(settle(1, ids[0])).expect("send");
    match next_kind(&mut stream).await {
        Some(consume_response::Kind::Result(r)) => assert_eq!((r.request_id, r.error), (1, None)),
        other => panic!("expected a settle result, got {other:?}"),
    }
    tx.send(settle(2, 999)).expect("send");
    match next_kind(&mut stream).await {
        Some(consume_response::Kind::Result(r)) => {
            assert_eq!(r.request_id, 2);
            let e = r.error.expect("an error");
            assert_eq!(
                e.kind,
                v1::error_detail::Kind::UnknownDelivery as i32,
                "{e:?}"
            );
        }
        other => panic!("expected a settle result, got {other:?}"),
    }

    // Ending the stream drops the unsettled deliveries: a new consumer of
    // the group gets m1 and m2 again (plus m3, m4), never the acked m0.
    drop(tx);
    drop(stream);
    let client = wharf_client::Client::connect(&server.url(), None)
        .await
        .expect("connect");
    let mut sub = wharf_core::Subscriber::subscribe(
        &client,
        wharf_core::SubscribeOptions::new("grpc.credit").group("g"),
    )
    .await
    .expect("subscribe");
    let mut got = Vec::new();
    for _ in 0..4 {
        let d = next_delivery(&mut sub).await;
        got.push(String::from_utf8_lossy(d.message().payload()).into_owned());
        d.ack().await.expect("ack");
    }
    got.sort();
    assert_eq!(got, ["m1", "m2", "m3", "m4"]);
}

#[tokio::test]
async fn ack_many_acks_known_ids_and_names_the_unknown_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let mut raw = wharf_client::raw_client(&server.url(), None)
        .await
        .expect("connect");
    let messages = (0..3)
        .map(|i| v1::Message {
            payload: format!("m{i}").into_bytes().into(),
            ..Default::default()
        })
        .collect();
    let published = raw
        .publish(v1::PublishRequest {
            topic: "grpc.ackmany".into(),
            messages,
            compact_receipts: true,
        })
        .await
        .expect("publish")
        .into_inner();
    // The messages had no ids, so the server answers with full receipts.
    assert_eq!(published.receipts.len(), 3);

    let (tx, mut stream) = subscribe(&mut raw, "grpc.ackmany", 3).await;
    let ids = take_delivery_ids(&mut stream, 3).await;
    tx.send(req(consume_request::Kind::AckMany(v1::AckMany {
        request_id: 7,
        delivery_ids: vec![ids[0], 999, ids[2]],
    })))
    .expect("send");
    match next_kind(&mut stream).await {
        Some(consume_response::Kind::Result(r)) => {
            assert_eq!((r.request_id, r.error), (7, None));
            assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
            assert_eq!(r.failures[0].delivery_id, 999);
            let kind = r.failures[0].error.as_ref().map(|e| e.kind);
            assert_eq!(kind, Some(v1::error_detail::Kind::UnknownDelivery as i32));
        }
        other => panic!("expected a settle result, got {other:?}"),
    }

    // Only the delivery left out of the batch comes back to the group.
    drop(tx);
    drop(stream);
    let client = wharf_client::Client::connect(&server.url(), None)
        .await
        .expect("connect");
    let mut sub = wharf_core::Subscriber::subscribe(
        &client,
        wharf_core::SubscribeOptions::new("grpc.ackmany").group("g"),
    )
    .await
    .expect("subscribe");
    let d = next_delivery(&mut sub).await;
    assert_eq!(&d.message().payload()[..], b"m1");
    d.ack().await.expect("ack");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.next())
            .await
            .is_err(),
        "an acked delivery came back"
    );
}

#[tokio::test]
async fn server_reflection_lists_the_wharf_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let channel = wharf_client::Conn::connect(&server.url(), None)
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(futures_util::stream::iter(vec![request]))
        .await
        .expect("reflection call")
        .into_inner();
    let response = responses.message().await.expect("ok").expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "wharf.v1.Wharf"), "{names:?}");
}

#[tokio::test]
async fn closing_a_remote_subscription_returns_what_it_never_handed_out() {
    use wharf_core::{Message, Publisher, StartPosition, SubscribeOptions, Subscriber};
    // The server pushes up to the granted credit ahead of `next`; with max
    // deliveries 1, counting those buffered, never handed out deliveries
    // as failed attempts would dead-letter messages no handler saw.
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    common::ok(&server.cli(&["topic", "create", "unseen", "--max-deliveries", "1"]));
    let client = wharf_client::Client::connect(&server.url(), None)
        .await
        .expect("connect");
    let batch: Vec<Message> = (0..10).map(|i| Message::new(format!("m{i}"))).collect();
    client
        .publish_batch("unseen", batch)
        .await
        .expect("publish");
    let opts = || {
        SubscribeOptions::new("unseen")
            .group("g")
            .start(StartPosition::Earliest)
            .max_in_flight(16)
    };
    let text =
        |d: &wharf_core::Delivery| String::from_utf8_lossy(d.message().payload()).into_owned();
    let mut sub = client.subscribe(opts()).await.expect("subscribe");
    let d = next_delivery(&mut sub).await;
    assert_eq!(text(&d), "m0");
    d.ack().await.expect("ack");
    // Let the server push the rest into the client's buffer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sub.close().await.expect("close");
    drop(sub);
    let mut sub = client.subscribe(opts()).await.expect("subscribe again");
    for i in 1..10 {
        let d = next_delivery(&mut sub).await;
        assert_eq!(text(&d), format!("m{i}"));
        assert_eq!(d.attempt(), 1, "m{i} had never been handed out");
        d.ack().await.expect("ack");
    }
    let dlq = common::ok(&server.cli(&["dlq", "list", "unseen", "--json"]));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&dlq).expect("json"),
        serde_json::json!([]),
        "{dlq}"
    );
}
