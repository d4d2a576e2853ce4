//! The gRPC message size limit of a real `wharf serve`, from outside, on
//! every RPC: raw HTTP/2 calls whose message header announces one byte over
//! `max_request_bytes` (and nothing of the message follows, so the answer
//! cannot come from decoding it) end with RESOURCE_EXHAUSTED naming the
//! limit and the size — also mid-stream on Consume — while the connection
//! and the server go on serving; a message of exactly the limit passes the
//! size check and is handled as usual. The RPC list is read from the
//! proto's descriptor, so a new RPC is covered without editing this file.

mod common;

use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tonic::codegen::http;
use wharf_client::proto::{self as v1, consume_request, consume_response};
use wharf_core::{Message, Publisher, StartPosition, SubscribeOptions, Subscriber};

/// The limit the test server runs with.
const MAX: usize = 64 * 1024;
/// How long a call may take to answer before the test calls it hung.
const PATIENCE: Duration = Duration::from_secs(10);

fn start(dir: &std::path::Path) -> common::Server {
    let cfg = dir.join("wharf.toml");
    std::fs::write(&cfg, format!("max_request_bytes = {MAX}\n")).expect("write config");
    common::Server::start(&dir.join("data"), Some(&cfg))
}

/// Every RPC path of the `wharf.v1.Wharf` service in the proto, plus the
/// reflection services served on the same port.
fn every_rpc() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(wharf_proto::FILE_DESCRIPTOR_SET)
        .expect("the embedded descriptor set decodes");
    let mut paths = Vec::new();
    for file in &set.file {
        for service in &file.service {
            let name = format!("{}.{}", file.package(), service.name());
            for method in &service.method {
                paths.push(format!("/{name}/{}", method.name()));
            }
        }
    }
    assert!(
        paths.len() >= 15 && paths.iter().any(|p| p == "/wharf.v1.Wharf/Consume"),
        "the descriptor lists the service: {paths:?}"
    );
    paths.push("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".into());
    paths.push("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".into());
    paths
}

/// The RPCs of the proto that answer a request with a server stream that
/// stays open (a subscription): their answer to an accepted request is
/// response headers without a status, not an end.
fn live_streams() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(wharf_proto::FILE_DESCRIPTOR_SET)
        .expect("the embedded descriptor set decodes");
    let mut paths = Vec::new();
    for file in &set.file {
        for service in &file.service {
            let name = format!("{}.{}", file.package(), service.name());
            for method in &service.method {
                if method.server_streaming() && !method.client_streaming() {
                    paths.push(format!("/{name}/{}", method.name()));
                }
            }
        }
    }
    paths
}

/// A message header announcing `len` bytes.
fn header(len: u32) -> Bytes {
    let mut h = vec![0u8];
    h.extend_from_slice(&len.to_be_bytes());
    Bytes::from(h)
}

/// A framed message.
fn framed(message: &[u8]) -> Bytes {
    let mut v = header(u32::try_from(message.len()).expect("fits")).to_vec();
    v.extend_from_slice(message);
    Bytes::from(v)
}

/// A protobuf message of exactly `size` bytes that every request type
/// decodes as its defaults: one unknown length-delimited field (number
/// 1000), which decoders skip.
fn padding_message(size: usize) -> Vec<u8> {
    const TAG: [u8; 2] = [0xC2, 0x3E]; // field 1000, wire type 2
    for varint_len in 1..=5 {
        let Some(body) = size.checked_sub(TAG.len() + varint_len) else {
            continue;
        };
        let mut len = Vec::new();
        prost::encoding::encode_varint(body as u64, &mut len);
        if len.len() == varint_len {
            let mut m = TAG.to_vec();
            m.extend_from_slice(&len);
            m.resize(size, b'p');
            return m;
        }
    }
    panic!("no padding of {size} bytes");
}

type Conn = h2::client::SendRequest<Bytes>;

async fn connect(addr: &str) -> Conn {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// A call under way: what is still to be sent goes on `send`.
struct Call {
    send: h2::SendStream<Bytes>,
    response: h2::client::ResponseFuture,
}

async fn open_call(conn: &Conn, addr: &str, path: &str) -> Call {
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let mut conn = conn.clone().ready().await.expect("connection ready");
    let (response, send) = conn.send_request(req, false).expect("send request");
    Call { send, response }
}

/// The end of a call: its grpc-status and grpc-message, and the response
/// messages' bytes received before it.
#[derive(Debug)]
struct Ended {
    status: Option<String>,
    message: String,
    data: Vec<u8>,
}

fn grpc_status(h: &http::HeaderMap) -> Option<(String, String)> {
    let status = h.get("grpc-status")?.to_str().ok()?.to_owned();
    let message = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .replace("%20", " ");
    Some((status, message))
}

/// Reads the response to its end (trailers-only, or data then trailers).
async fn finish(response: h2::client::ResponseFuture) -> Ended {
    let read = async {
        let res = response.await.expect("response");
        assert_eq!(res.status(), 200, "gRPC answers over HTTP 200");
        if let Some((status, message)) = grpc_status(res.headers()) {
            return Ended {
                status: Some(status),
                message,
                data: Vec::new(),
            };
        }
        let mut body = res.into_body();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("response data");
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.expect("trailers");
        let (status, message) = trailers
            .as_ref()
            .and_then(grpc_status)
            .map_or((None, String::new()), |(s, m)| (Some(s), m));
        Ended {
            status,
            message,
            data,
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the call answered in time")
}

/// Sends `chunks` on a new call to `path`; ends the request only if `end`.
async fn call(conn: &Conn, addr: &str, path: &str, chunks: &[Bytes], end: bool) -> Ended {
    let mut c = open_call(conn, addr, path).await;
    for (i, chunk) in chunks.iter().enumerate() {
        c.send.reserve_capacity(chunk.len());
        c.send
            .send_data(chunk.clone(), end && i + 1 == chunks.len())
            .expect("send data");
    }
    if chunks.is_empty() && end {
        c.send.send_data(Bytes::new(), true).expect("end");
    }
    let ended = finish(c.response).await;
    drop(c.send);
    ended
}

fn assert_refused(e: &Ended, path: &str, len: u64) {
    assert_eq!(
        e.status.as_deref(),
        Some("8"),
        "{path}: RESOURCE_EXHAUSTED expected, got {e:?}"
    );
    let want = format!("message of {len} bytes is larger than the limit of {MAX} bytes");
    assert!(
        e.message.starts_with(&want),
        "{path}: the message names the size and the limit: {:?}",
        e.message
    );
}

/// The connection still answers: `Info` succeeds on it.
async fn assert_info_answers(conn: &Conn, addr: &str, after: &str) {
    let e = call(
        conn,
        addr,
        "/wharf.v1.Wharf/Info",
        &[framed(&v1::InfoRequest {}.encode_to_vec())],
        true,
    )
    .await;
    assert_eq!(e.status.as_deref(), Some("0"), "Info after {after}: {e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_is_resource_exhausted_before_it_is_read_on_every_rpc() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(dir.path());
    let addr = server.addr.clone();
    let conn = connect(&addr).await;
    let over = u32::try_from(MAX + 1).expect("fits");
    let paths = every_rpc();
    for path in &paths {
        // Only the header: the message itself never comes, and the request
        // stays open, so an answer proves nothing waited for or decoded it.
        let e = call(&conn, &addr, path, &[header(over)], false).await;
        assert_refused(&e, path, u64::from(over));
        // The largest length a header can announce, with the request ended.
        let e = call(&conn, &addr, path, &[header(u32::MAX)], true).await;
        assert_refused(&e, path, u64::from(u32::MAX));
        assert_info_answers(&conn, &addr, path).await;
    }
    // Each refusal is counted.
    let metrics = reqwest::get(format!("{}/metrics", server.url()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let count = metrics
        .lines()
        .find(|l| l.starts_with("wharf_refused_requests_total{reason=\"too_large\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<usize>().ok());
    assert_eq!(count, Some(2 * paths.len()), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_exactly_the_limit_passes_the_size_check_on_every_rpc() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(dir.path());
    let addr = server.addr.clone();
    let conn = connect(&addr).await;
    let exact = framed(&padding_message(MAX));
    assert_eq!(exact.len(), MAX + 5);
    let live = live_streams();
    assert!(
        live.iter().any(|p| p == "/wharf.v1.EventStore/Subscribe"),
        "{live:?}"
    );
    for path in every_rpc() {
        if live.contains(&path) {
            // Accepted: the stream opens (headers, no status) and stays open.
            let mut c = open_call(&conn, &addr, &path).await;
            c.send.reserve_capacity(exact.len());
            c.send.send_data(exact.clone(), true).expect("send data");
            let res = tokio::time::timeout(PATIENCE, c.response)
                .await
                .expect("the stream opened in time")
                .expect("response");
            assert_eq!(res.status(), 200, "{path}");
            assert_eq!(
                grpc_status(res.headers()),
                None,
                "{path}: a message of exactly the limit refused"
            );
            continue;
        }
        let e = call(&conn, &addr, &path, std::slice::from_ref(&exact), true).await;
        assert_ne!(
            e.status.as_deref(),
            Some("8"),
            "{path}: a message of exactly the limit refused: {e:?}"
        );
        assert!(e.status.is_some(), "{path}: no grpc-status: {e:?}");
        // Requests without required fields are answered in full.
        if [
            "/wharf.v1.Wharf/Info",
            "/wharf.v1.Wharf/ListTopics",
            "/wharf.v1.Wharf/ListGroups",
        ]
        .contains(&path.as_str())
        {
            assert_eq!(e.status.as_deref(), Some("0"), "{path}: {e:?}");
            assert!(!e.data.is_empty(), "{path}: no response message");
        }
    }
    // Split across many small chunks, the same message still passes.
    let chunks: Vec<Bytes> = exact.chunks(1000).map(Bytes::copy_from_slice).collect();
    let e = call(&conn, &addr, "/wharf.v1.Wharf/Info", &chunks, true).await;
    assert_eq!(e.status.as_deref(), Some("0"), "Info in chunks: {e:?}");
    // A publish of a message filling the limit is stored.
    let client = wharf_client::Client::connect(&server.url(), None)
        .await
        .expect("client");
    let topic = "limits.exact";
    let mut payload_len = MAX - 100;
    for attempt in 0.. {
        assert!(attempt < 10, "no publish request of exactly {MAX} bytes");
        let req = wharf_client::proto::PublishRequest {
            topic: topic.into(),
            messages: vec![v1::Message {
                payload: vec![b'x'; payload_len].into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let len = req.encoded_len();
        if len == MAX {
            let e = call(
                &conn,
                &addr,
                "/wharf.v1.Wharf/Publish",
                &[framed(&req.encode_to_vec())],
                true,
            )
            .await;
            assert_eq!(
                e.status.as_deref(),
                Some("0"),
                "publish at the limit: {e:?}"
            );
            break;
        }
        payload_len = payload_len + MAX - len;
    }
    let mut sub = client
        .subscribe(SubscribeOptions::new(topic).start(StartPosition::Earliest))
        .await
        .expect("subscribe");
    let d = tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("delivery");
    assert_eq!(d.message().payload().len(), payload_len);
    d.ack().await.expect("ack");
}

fn consume_frame(kind: consume_request::Kind) -> Bytes {
    framed(&v1::ConsumeRequest { kind: Some(kind) }.encode_to_vec())
}

/// A consume stream under way — subscribed, a delivery received and acked —
/// ends with RESOURCE_EXHAUSTED when the client sends a message header over
/// the limit; the message comes back to the group, and other clients of the
/// server (and other calls on the same connection) carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_mid_stream_ends_consume_with_resource_exhausted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(dir.path());
    let addr = server.addr.clone();
    let client = wharf_client::Client::connect(&server.url(), None)
        .await
        .expect("client");
    let topic = "limits.stream";
    for i in 0..2 {
        client
            .publish(topic, Message::new(format!("m{i}")))
            .await
            .expect("publish");
    }
    let conn = connect(&addr).await;
    let mut c = open_call(&conn, &addr, "/wharf.v1.Wharf/Consume").await;
    let subscribe = consume_frame(consume_request::Kind::Subscribe(v1::SubscribeRequest {
        pattern: topic.into(),
        group: Some("g".into()),
        start: v1::StartKind::StartEarliest as i32,
        ..Default::default()
    }));
    c.send.send_data(subscribe, false).expect("send subscribe");
    c.send
        .send_data(consume_frame(consume_request::Kind::Credit(1)), false)
        .expect("send credit");
    let res = tokio::time::timeout(PATIENCE, c.response)
        .await
        .expect("in time")
        .expect("response");
    assert!(grpc_status(res.headers()).is_none(), "the stream is open");
    let mut body = res.into_body();
    // Read response messages until a delivery arrives.
    let mut buf = Vec::new();
    let delivery = loop {
        let chunk = tokio::time::timeout(PATIENCE, body.data())
            .await
            .expect("in time")
            .expect("the stream goes on")
            .expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        let mut found = None;
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 5 + len {
                break;
            }
            let msg = v1::ConsumeResponse::decode(&buf[5..5 + len]).expect("response");
            buf.drain(..5 + len);
            if let Some(consume_response::Kind::Delivery(d)) = msg.kind {
                found = Some(d);
            }
        }
        if let Some(d) = found {
            break d;
        }
    };
    assert_eq!(&delivery.message.expect("message").payload[..], b"m0");
    // Mid-stream: a header over the limit, and nothing after it.
    let over = u32::try_from(MAX + 1).expect("fits");
    c.send.send_data(header(over), false).expect("send header");
    let read_to_end = async {
        while let Some(chunk) = body.data().await {
            let Ok(chunk) = chunk else { break };
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        body.trailers().await.expect("trailers")
    };
    let trailers = tokio::time::timeout(PATIENCE, read_to_end)
        .await
        .expect("the stream ended in time")
        .expect("trailers");
    let (status, message) = grpc_status(&trailers).expect("grpc-status trailer");
    assert_refused(
        &Ended {
            status: Some(status),
            message,
            data: Vec::new(),
        },
        "Consume mid-stream",
        u64::from(over),
    );
    // The same connection still serves calls, and the unsettled delivery
    // comes back to the group for another client.
    assert_info_answers(&conn, &addr, "Consume mid-stream").await;
    let mut sub = client
        .subscribe(
            SubscribeOptions::new(topic)
                .group("g")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    let mut got = Vec::new();
    while got.len() < 2 {
        let d = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("delivery");
        got.push(String::from_utf8_lossy(d.message().payload()).into_owned());
        d.ack().await.expect("ack");
    }
    got.sort();
    assert_eq!(got, ["m0", "m1"]);
}
