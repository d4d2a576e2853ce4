//! The event store's HTTP/JSON and gRPC faces, from outside: a real
//! `wharf serve` driven by reqwest and by raw gRPC calls. Appends, reads
//! (stream forwards/backwards, global with filters), info, metadata,
//! delete, tombstone, listings, head and the SSE subscription; and every
//! kind of malformed request (bad JSON, negative / overflowing / too large
//! versions, an oversized event or body, a bad id, an unknown stream) is a
//! typed error that stores nothing — the head position does not move.

mod common;

use std::time::Duration;

use futures_util::StreamExt as _;
use prost::Message as _;
use serde_json::{json, Value};
use wharf_client::proto as v1;

/// The request limit of the test server: the store's append limit is
/// half of it (32 KiB), so an event between the two is the store's
/// `too_large`, a body over it the transport's `request_too_large`.
const MAX_REQUEST: usize = 64 * 1024;

fn start(dir: &std::path::Path) -> common::Server {
    let cfg = dir.join("wharf.toml");
    std::fs::write(&cfg, format!("max_request_bytes = {MAX_REQUEST}\n")).expect("config");
    common::Server::start(&dir.join("data"), Some(&cfg))
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

async fn head(c: &reqwest::Client, base: &str) -> u64 {
    let (st, body) = send(c.get(format!("{base}/v1/eventstore/head"))).await;
    assert_eq!(st, 200, "{body}");
    body["position"].as_u64().expect("position")
}

#[tokio::test]
async fn http_appends_reads_filters_and_manages_streams() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(dir.path());
    let base = server.url();
    let c = reqwest::Client::new();
    let (st, r) = send(
        c.post(format!("{base}/v1/eventstore/streams/order-1"))
            .json(&json!({
                "expected": "no_stream",
                "events": [
                    {"type": "OrderPlaced", "payload": {"total": 42}, "tags": ["customer:7"], "metadata": {"by": "test"}},
                    {"type": "OrderPaid", "payload": "paid", "schema_version": 2},
                ]
            })),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        (r["first_version"].as_u64(), r["last_version"].as_u64()),
        (Some(0), Some(1))
    );
    let (st, _) = send(
        c.post(format!("{base}/v1/eventstore/streams/invoice-1"))
            .json(&json!({"events": [{"type": "InvoiceSent", "payload": "/wA=", "encoding": "base64"}]})),
    )
    .await;
    assert_eq!(st, 200);

    // Forwards, backwards, from a version.
    let (st, r) = send(c.get(format!("{base}/v1/eventstore/streams/order-1"))).await;
    assert_eq!(st, 200, "{r}");
    let evs = r["events"].as_array().expect("events");
    assert_eq!(evs.len(), 2);
    assert_eq!(evs[0]["type"], "OrderPlaced");
    assert_eq!(evs[0]["payload"], "{\"total\":42}");
    assert_eq!(evs[0]["tags"], json!(["customer:7"]));
    assert_eq!(evs[0]["metadata"], json!({"by": "test"}));
    assert_eq!(evs[1]["schema_version"], 2);
    let (_, r) = send(c.get(format!(
        "{base}/v1/eventstore/streams/order-1?direction=backwards&max_count=1"
    )))
    .await;
    assert_eq!(r["events"][0]["type"], "OrderPaid");
    let (_, r) = send(c.get(format!("{base}/v1/eventstore/streams/order-1?from=1"))).await;
    assert_eq!(r["events"].as_array().map(Vec::len), Some(1));
    let (_, r) = send(c.get(format!("{base}/v1/eventstore/streams/invoice-1"))).await;
    assert_eq!(r["events"][0]["payload"], "/wA=");
    assert_eq!(r["events"][0]["encoding"], "base64", "not UTF-8: base64");

    // The global log, filtered by prefix, by type, by tag.
    let (_, r) = send(c.get(format!("{base}/v1/eventstore/all"))).await;
    assert_eq!(r["events"].as_array().map(Vec::len), Some(3));
    assert_eq!(r["is_end"], true);
    let (_, r) = send(c.get(format!("{base}/v1/eventstore/all?prefix=invoice-"))).await;
    assert_eq!(r["events"][0]["stream"], "invoice-1");
    assert_eq!(r["events"].as_array().map(Vec::len), Some(1));
    let (_, r) = send(c.get(format!(
        "{base}/v1/eventstore/all?types=OrderPaid,InvoiceSent"
    )))
    .await;
    assert_eq!(r["events"].as_array().map(Vec::len), Some(2));
    let (_, r) = send(c.get(format!("{base}/v1/eventstore/all?tags=customer:7"))).await;
    assert_eq!(r["events"].as_array().map(Vec::len), Some(1));

    // Conditional append: refused while an event tagged customer:7 lies
    // after the decision's position (position 0 is that event itself).
    let reserve = |after: Value| {
        c.post(format!("{base}/v1/eventstore/streams/credit-7"))
            .json(
                &json!({"events": [{"type": "CreditReserved", "payload": "{}"}],
                "condition": {"query": [{"tags": ["customer:7"]}], "after": after}}),
            )
    };
    let (st, r) = send(reserve(Value::Null)).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (409, Some("condition_failed")),
        "{r}"
    );
    assert_eq!(r["error"]["details"], json!({"after": null, "conflict": 0}));
    let (st, r) = send(reserve(json!(0))).await;
    assert_eq!(st, 200, "nothing tagged after 0: {r}");
    let (_, r) = send(c.get(format!("{base}/v1/eventstore/all?prefix=credit-"))).await;
    assert_eq!(r["events"].as_array().map(Vec::len), Some(1));

    // Info, metadata, listing, delete, tombstone.
    let (st, r) = send(
        c.put(format!("{base}/v1/eventstore/streams/order-1/metadata"))
            .json(&json!({"truncate_before": 1})),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let (_, r) = send(c.get(format!("{base}/v1/eventstore/streams/order-1/info"))).await;
    assert_eq!(r["version"], 1);
    assert_eq!(r["metadata"]["truncate_before"], 1);
    let (_, r) = send(c.get(format!("{base}/v1/eventstore/streams/order-1"))).await;
    assert_eq!(
        r["events"].as_array().map(Vec::len),
        Some(1),
        "truncated: {r}"
    );
    let (_, r) = send(c.get(format!("{base}/v1/eventstore/streams/never/info"))).await;
    assert_eq!(r["version"], Value::Null, "never written");
    let (_, r) = send(c.get(format!("{base}/v1/eventstore/streams?prefix=order-"))).await;
    assert_eq!(r["streams"], json!(["order-1"]));
    let (_, r) = send(c.get(format!("{base}/v1/eventstore/streams?max_count=1"))).await;
    assert_eq!(r["streams"], json!(["credit-7"]));
    let (_, r) = send(c.get(format!("{base}/v1/eventstore/streams?after=credit-7"))).await;
    assert_eq!(r["streams"], json!(["invoice-1", "order-1"]));
    let (st, r) = send(c.delete(format!("{base}/v1/eventstore/streams/order-1?expected=0"))).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (409, Some("wrong_expected_version"))
    );
    let (st, _) = send(c.delete(format!("{base}/v1/eventstore/streams/order-1?expected=1"))).await;
    assert_eq!(st, 200);
    let (st, r) = send(c.get(format!("{base}/v1/eventstore/streams/order-1"))).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (404, Some("stream_not_found"))
    );
    let (st, _) = send(c.delete(format!(
        "{base}/v1/eventstore/streams/invoice-1?tombstone=true"
    )))
    .await;
    assert_eq!(st, 200);
    let (st, r) = send(c.get(format!("{base}/v1/eventstore/streams/invoice-1"))).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (410, Some("stream_deleted"))
    );
    assert_eq!(r["error"]["details"]["stream"], "invoice-1");
}

#[tokio::test]
async fn http_conflict_is_409_naming_stream_expected_and_actual_and_stores_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(dir.path());
    let base = server.url();
    let c = reqwest::Client::new();
    let url = format!("{base}/v1/eventstore/streams/acct-1");
    let one = |expected: Value| json!({"expected": expected, "events": [{"type": "Opened", "payload": "x"}]});
    let (st, r) = send(c.post(&url).json(&one(json!(0)))).await;
    assert_eq!(st, 409, "{r}");
    assert_eq!(r["error"]["code"], "wrong_expected_version");
    assert_eq!(
        r["error"]["details"],
        json!({"stream": "acct-1", "expected": 0, "actual": "no_stream"})
    );
    assert_eq!(send(c.get(&url)).await.0, 404, "nothing stored");
    assert_eq!(
        send(c.post(&url).json(&one(json!("no_stream")))).await.0,
        200
    );
    let (st, r) = send(c.post(&url).json(&one(json!("no_stream")))).await;
    assert_eq!(st, 409);
    assert_eq!(
        r["error"]["details"],
        json!({"stream": "acct-1", "expected": "no_stream", "actual": 0})
    );
    let (_, r) = send(c.get(&url)).await;
    assert_eq!(r["events"].as_array().map(Vec::len), Some(1), "one copy");
}

#[tokio::test]
async fn malformed_http_requests_are_typed_errors_and_store_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(dir.path());
    let base = server.url();
    let c = reqwest::Client::new();
    let url = format!("{base}/v1/eventstore/streams/bad-1");
    let before = head(&c, &base).await;
    let ev = json!({"type": "T", "payload": "x"});
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("not JSON", c.post(&url).body("{nope").header("content-type", "application/json"), 400, "malformed_json"),
        ("unknown field", c.post(&url).json(&json!({"events": [ev], "extra": 1})), 400, "malformed_json"),
        ("no events", c.post(&url).json(&json!({"events": []})), 400, "invalid_argument"),
        ("negative version", c.post(&url).json(&json!({"expected": -1, "events": [ev]})), 400, "invalid_argument"),
        ("fractional version", c.post(&url).json(&json!({"expected": 1.5, "events": [ev]})), 400, "invalid_argument"),
        ("version past u64", c.post(&url).body(r#"{"expected": 18446744073709551616, "events": [{"type": "T", "payload": "x"}]}"#).header("content-type", "application/json"), 400, "invalid_argument"),
        ("version past i64", c.post(&url).json(&json!({"expected": 9_223_372_036_854_775_808_u64, "events": [ev]})), 400, "invalid_argument"),
        ("unknown expectation", c.post(&url).json(&json!({"expected": "sometimes", "events": [ev]})), 400, "invalid_argument"),
        ("negative schema version", c.post(&url).json(&json!({"events": [{"type": "T", "payload": "x", "schema_version": -1}]})), 400, "malformed_json"),
        ("schema version 0", c.post(&url).json(&json!({"events": [{"type": "T", "payload": "x", "schema_version": 0}]})), 400, "invalid_argument"),
        ("bad id", c.post(&url).json(&json!({"events": [{"id": "nope", "type": "T", "payload": "x"}]})), 400, "bad_request"),
        ("reserved type", c.post(&url).json(&json!({"events": [{"type": "$snapshot", "payload": "x"}]})), 400, "invalid_argument"),
        ("bad base64", c.post(&url).json(&json!({"events": [{"type": "T", "payload": "!!", "encoding": "base64"}]})), 400, "bad_request"),
        ("control character in the stream", c.post(format!("{base}/v1/eventstore/streams/a%07b")).json(&json!({"events": [ev]})), 400, "invalid_argument"),
        ("reserved stream", c.post(format!("{base}/v1/eventstore/streams/$all")).json(&json!({"events": [ev]})), 400, "invalid_argument"),
        ("oversized event", c.post(&url).json(&json!({"events": [{"type": "T", "payload": "x".repeat(40 * 1024)}]})), 413, "too_large"),
        ("oversized body", c.post(&url).json(&json!({"events": [{"type": "T", "payload": "x".repeat(MAX_REQUEST)}]})), 413, "request_too_large"),
        ("negative metadata", c.put(format!("{url}/metadata")).json(&json!({"max_count": -1})), 400, "malformed_json"),
        ("zero max count", c.put(format!("{url}/metadata")).json(&json!({"max_count": 0})), 400, "invalid_argument"),
        ("truncate past i64", c.put(format!("{url}/metadata")).json(&json!({"truncate_before": 9_223_372_036_854_775_808_u64})), 400, "invalid_argument"),
        ("from past i64", c.get(format!("{url}?from=9223372036854775808")), 400, "invalid_argument"),
        ("negative from", c.get(format!("{url}?from=-1")), 400, "invalid_argument"),
        ("bad direction", c.get(format!("{url}?direction=sideways")), 400, "bad_request"),
        ("global from past i64", c.get(format!("{base}/v1/eventstore/all?from=9223372036854775808")), 400, "invalid_argument"),
        ("unknown stream", c.get(&url), 404, "stream_not_found"),
        ("delete unknown stream", c.delete(&url), 404, "stream_not_found"),
    ];
    for (what, req, status, code) in cases {
        let (st, body) = send(req).await;
        assert_eq!(
            (st, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{what}: {body}"
        );
    }
    assert_eq!(head(&c, &base).await, before, "nothing was stored");
    let (_, r) = send(c.get(format!("{base}/v1/eventstore/streams"))).await;
    assert_eq!(r["streams"], json!([]), "no stream was created: {r}");
    // The typed fields of an oversized event.
    let (_, r) = send(
        c.post(&url)
            .json(&json!({"events": [{"type": "T", "payload": "x".repeat(40 * 1024)}]})),
    )
    .await;
    assert_eq!(r["error"]["details"]["what"], "event");
    assert_eq!(r["error"]["details"]["max"], 32 * 1024);
}

#[tokio::test]
async fn sse_subscription_catches_up_then_goes_live_in_commit_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(dir.path());
    let base = server.url();
    let c = reqwest::Client::new();
    let append = |stream: &str, ty: &str| {
        c.post(format!("{base}/v1/eventstore/streams/{stream}"))
            .json(&json!({"events": [{"type": ty, "payload": "{}"}]}))
    };
    assert_eq!(send(append("sub-1", "First")).await.0, 200);
    assert_eq!(send(append("other-1", "Elsewhere")).await.0, 200);
    let resp = c
        .get(format!("{base}/v1/eventstore/subscribe?prefix=sub-"))
        .send()
        .await
        .expect("subscribe");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(send(append("sub-1", "Second")).await.0, 200);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
            if text.contains("\"Second\"") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "events so far: {text}");
    assert!(text.contains("event: event"), "{text}");
    assert!(text.find("\"First\"") < text.find("\"Second\""), "{text}");
    assert!(!text.contains("Elsewhere"), "filtered by prefix: {text}");

    // A reconnect with Last-Event-ID (the first event's position) resumes
    // after it: Second comes first, First is not repeated.
    let first_id = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an SSE id")
        .to_owned();
    let resp = c
        .get(format!(
            "{base}/v1/eventstore/subscribe?prefix=sub-&from=start"
        ))
        .header("last-event-id", &first_id)
        .send()
        .await
        .expect("resubscribe");
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
            if text.contains("\"Second\"") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "events so far: {text}");
    assert!(!text.contains("\"First\""), "resumed after it: {text}");
}

/// A raw gRPC unary call of `msg` (encoded protobuf, or any bytes): the
/// status code.
async fn grpc_call(addr: &str, path: &str, msg: &[u8]) -> tonic::Code {
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(msg.len()).expect("len").to_be_bytes());
    body.extend_from_slice(msg);
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut h2, conn) = h2::client::handshake(tcp).await.expect("h2");
    tokio::spawn(conn);
    let request = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (resp, mut stream) = h2.send_request(request, false).expect("send");
    stream.send_data(body.into(), true).expect("data");
    let resp = resp.await.expect("response");
    let (parts, mut recv) = resp.into_parts();
    while let Some(chunk) = recv.data().await {
        let _ = chunk.expect("chunk");
    }
    let trailers = recv.trailers().await.ok().flatten();
    let headers = trailers.unwrap_or(parts.headers);
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Unknown, tonic::Code::from)
}

#[tokio::test]
async fn malformed_grpc_requests_are_typed_errors_and_store_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(dir.path());
    let addr = server.addr.clone();
    let c = reqwest::Client::new();
    let before = head(&c, &server.url()).await;
    let event = |id: Vec<u8>| v1::EsEvent {
        id: id.into(),
        event_type: "T".into(),
        schema_version: 1,
        payload: bytes::Bytes::from_static(b"x"),
        ..Default::default()
    };
    let append =
        |stream: &str, expected: i32, version: u64, events: Vec<v1::EsEvent>| v1::EsAppendRequest {
            stream: stream.into(),
            expected,
            expected_version: version,
            events,
            condition: None,
        };
    let exact = v1::EsExpectedKind::EsExpectedExact as i32;
    let path = "/wharf.v1.EventStore/Append";
    let cases = vec![
        (
            "short id",
            append("g-1", 0, 0, vec![event(vec![1, 2, 3])]),
            tonic::Code::InvalidArgument,
        ),
        (
            "version past i64",
            append("g-1", exact, u64::MAX, vec![event(vec![])]),
            tonic::Code::InvalidArgument,
        ),
        (
            "unknown expectation",
            append("g-1", 9, 0, vec![event(vec![])]),
            tonic::Code::InvalidArgument,
        ),
        (
            "empty stream name",
            append("", 0, 0, vec![event(vec![])]),
            tonic::Code::InvalidArgument,
        ),
        (
            "no events",
            append("g-1", 0, 0, vec![]),
            tonic::Code::InvalidArgument,
        ),
        (
            "oversized event",
            append(
                "g-1",
                0,
                0,
                vec![v1::EsEvent {
                    payload: vec![b'x'; 40 * 1024].into(),
                    ..event(vec![])
                }],
            ),
            tonic::Code::InvalidArgument,
        ),
        (
            "conflict",
            append("g-1", exact, 3, vec![event(vec![])]),
            tonic::Code::FailedPrecondition,
        ),
    ];
    for (what, req, code) in cases {
        let got = grpc_call(&addr, path, &req.encode_to_vec()).await;
        assert_eq!(got, code, "{what}");
    }
    let got = grpc_call(&addr, path, &[0xff, 0xff, 0xff]).await;
    assert_eq!(got, tonic::Code::InvalidArgument, "not protobuf");
    let got = grpc_call(
        &addr,
        "/wharf.v1.EventStore/ReadStream",
        &v1::EsReadStreamRequest {
            stream: "g-unknown".into(),
            ..Default::default()
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(got, tonic::Code::NotFound, "unknown stream");
    assert_eq!(head(&c, &server.url()).await, before, "nothing was stored");

    // Through the client, the conflict comes back typed with its fields.
    let store = wharf_client::RemoteEventStore::connect(&server.url(), None)
        .await
        .expect("connect");
    use wharf_eventstore::{EventData, EventStore, EventStoreError, ExpectedVersion, StreamId};
    let s = StreamId::new("g-2").expect("name");
    match store
        .append(
            &s,
            ExpectedVersion::Exact(5),
            vec![EventData::new("T", "x")],
        )
        .await
    {
        Err(EventStoreError::WrongExpectedVersion {
            stream,
            expected,
            actual,
        }) => {
            assert_eq!(stream, s);
            assert_eq!(expected, ExpectedVersion::Exact(5));
            assert_eq!(actual, wharf_eventstore::CurrentVersion::NoStream);
        }
        other => panic!("expected a typed conflict, got {other:?}"),
    }
}
