//! The HTTP/JSON API of a real `wharf serve`: long-poll round trip with
//! ack/nack, SSE and WebSocket streams, health/metrics/OpenAPI, and bad
//! input (right status, server keeps serving, nothing stored).

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

async fn post(c: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = c.post(url).json(&body).send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn stored(c: &reqwest::Client, base: &str, topic: &str) -> u64 {
    let t: Value = c
        .get(format!("{base}/v1/topics/{topic}"))
        .send()
        .await
        .expect("describe")
        .json()
        .await
        .expect("json");
    t["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|p| p["end_offset"].as_u64().unwrap_or(0) - p["start_offset"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn long_poll_round_trip_with_nack_ack_and_base64_payloads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = http();
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/http.orders/messages"),
        json!({"payload": "hello", "key": "k1", "headers": {"source": "test"}}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["receipts"][0]["offset"], 0);
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/http.orders/messages"),
        json!({"messages": [{"payload": "AAEC/w==", "encoding": "base64"}]}),
    )
    .await;
    assert_eq!(st, 200, "{r}");

    let consume = format!("{base}/v1/topics/http.orders/consume?group=g&max=10&wait_ms=2000");
    let (st, r) = post(&c, consume.clone(), json!({})).await;
    assert_eq!(st, 200, "{r}");
    let ds = r["deliveries"].as_array().expect("deliveries").clone();
    assert_eq!(ds.len(), 2, "{r}");
    assert_eq!(ds[0]["message"]["payload"], "hello");
    assert_eq!(ds[0]["message"]["key"], "k1");
    assert_eq!(ds[0]["message"]["headers"]["source"], "test");
    assert_eq!(ds[1]["message"]["encoding"], "base64");
    assert_eq!(ds[1]["message"]["payload"], "AAEC/w==");

    let first = ds[0]["delivery_id"].as_str().expect("id").to_owned();
    let second = ds[1]["delivery_id"].as_str().expect("id").to_owned();
    let (st, _) = post(&c, format!("{base}/v1/deliveries/{first}/nack"), json!({})).await;
    assert_eq!(st, 204);
    let (st, _) = post(
        &c,
        format!("{base}/v1/deliveries/{second}/extend"),
        json!({"by_ms": 60000}),
    )
    .await;
    assert_eq!(st, 204);
    let (st, _) = post(&c, format!("{base}/v1/deliveries/{second}/ack"), json!({})).await;
    assert_eq!(st, 204);
    let (_, r) = post(&c, consume.clone(), json!({})).await;
    let again = &r["deliveries"][0];
    assert_eq!(again["message"]["payload"], "hello", "{r}");
    assert_eq!(again["attempt"], 2);
    let id = again["delivery_id"].as_str().expect("id").to_owned();
    let (st, _) = post(&c, format!("{base}/v1/deliveries/{id}/ack"), json!({})).await;
    assert_eq!(st, 204);
    // Settling twice: the delivery is no longer held.
    let (st, r) = post(&c, format!("{base}/v1/deliveries/{id}/ack"), json!({})).await;
    assert_eq!(st, 404);
    assert_eq!(r["error"]["code"], "unknown_delivery");
    let (_, r) = post(
        &c,
        format!("{base}/v1/topics/http.orders/consume?group=g&wait_ms=300"),
        json!({}),
    )
    .await;
    assert_eq!(r["deliveries"].as_array().map(Vec::len), Some(0), "{r}");
}

#[tokio::test]
async fn unsettled_long_poll_delivery_is_redelivered_after_its_lease() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = http();
    post(
        &c,
        format!("{base}/v1/topics/http.lease/messages"),
        json!({"payload": "x"}),
    )
    .await;
    let url = format!("{base}/v1/topics/http.lease/consume?group=g&wait_ms=2000&lease_ms=300");
    let (_, r) = post(&c, url.clone(), json!({})).await;
    assert_eq!(r["deliveries"][0]["attempt"], 1, "{r}");
    let (_, r) = post(
        &c,
        format!("{base}/v1/topics/http.lease/consume?group=g&wait_ms=5000"),
        json!({}),
    )
    .await;
    assert_eq!(r["deliveries"][0]["message"]["payload"], "x", "{r}");
    assert_eq!(r["deliveries"][0]["attempt"], 2, "{r}");
}

#[tokio::test]
async fn sse_stream_delivers_published_messages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = http();
    post(
        &c,
        format!("{base}/v1/topics/http.sse/messages"),
        json!({"payload": "first"}),
    )
    .await;
    let resp = c
        .get(format!(
            "{base}/v1/topics/http.sse/events?group=s&from=earliest"
        ))
        .send()
        .await
        .expect("sse");
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/event-stream"));
    post(
        &c,
        format!("{base}/v1/topics/http.sse/messages"),
        json!({"payload": "second"}),
    )
    .await;
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
            if text.contains("\"second\"") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "events so far: {text}");
    assert!(text.contains("event: message"));
    assert!(text.find("\"first\"") < text.find("\"second\""), "{text}");
}

#[tokio::test]
async fn websocket_stream_delivers_and_takes_manual_acks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = http();
    post(
        &c,
        format!("{base}/v1/topics/http.ws/messages"),
        json!({"payload": "over ws"}),
    )
    .await;
    let url = format!(
        "ws://{}/v1/topics/http.ws/ws?group=w&from=earliest&ack=manual",
        server.addr
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect");
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a message in time")
        .expect("open")
        .expect("ok");
    let d: Value = serde_json::from_str(msg.to_text().expect("text")).expect("json");
    assert_eq!(d["message"]["payload"], "over ws");
    let id = d["delivery_id"]
        .as_str()
        .expect("manual mode gives ids")
        .to_owned();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({"op": "ack", "delivery_id": id}).to_string().into(),
    ))
    .await
    .expect("send ack");
    // The ack lands: the group's lag drops to zero.
    let mut lag = None;
    for _ in 0..50 {
        let groups: Value = c
            .get(format!("{base}/v1/groups"))
            .send()
            .await
            .expect("groups")
            .json()
            .await
            .expect("json");
        lag = groups
            .as_array()
            .and_then(|gs| gs.iter().find(|g| g["group"] == "w"))
            .map(|g| g["lag"].clone());
        if lag == Some(json!(0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lag, Some(json!(0)));
    ws.close(None).await.expect("close");
}

/// The body of `GET url` as text.
async fn text(c: &reqwest::Client, url: String) -> String {
    c.get(url)
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("text")
}

#[tokio::test]
async fn health_metrics_and_openapi_are_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = http();
    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .expect("healthz")
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        c.get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status()
            .as_u16(),
        200
    );
    post(
        &c,
        format!("{base}/v1/topics/http.metrics/messages"),
        json!({"payload": "m"}),
    )
    .await;
    let metrics = text(&c, format!("{base}/metrics")).await;
    assert!(
        metrics.contains("wharf_published_messages_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wharf_topic_messages{topic=\"http.metrics\"} 1\n"),
        "{metrics}"
    );
    // The standard process series, with plausible values.
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert!(value("process_cpu_seconds_total") > 0.0, "{metrics}");
    assert!(value("process_resident_memory_bytes") > 1e6, "{metrics}");
    assert!(value("process_open_fds") >= 3.0, "{metrics}");
    // Gauges describe what exists now: a deleted topic is gone from them.
    let deleted = c
        .delete(format!("{base}/v1/topics/http.metrics"))
        .send()
        .await
        .expect("delete topic");
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let metrics = text(&c, format!("{base}/metrics")).await;
    assert!(
        !metrics.contains("wharf_topic_messages{topic=\"http.metrics\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE wharf_topic_messages gauge"),
        "{metrics}"
    );
    let doc: Value = c
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    assert!(
        doc["paths"]["/v1/topics/{topic}/messages"]["post"].is_object(),
        "{doc}"
    );
    assert!(doc["paths"]["/v1/deliveries/{id}/ack"]["post"].is_object());
    assert!(doc["components"]["schemas"]["PublishMessage"].is_object());
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_stores_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("wharf.toml");
    std::fs::write(&cfg, "max_request_bytes = 4096\n").expect("config");
    let server = common::Server::start(&dir.path().join("data"), Some(&cfg));
    let base = server.url();
    let c = http();
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics"),
        json!({"name": "http.bad", "max_message_bytes": 100}),
    )
    .await;
    assert_eq!(st, 201, "{r}");
    let publish = format!("{base}/v1/topics/http.bad/messages");

    // Body over the request limit: 413 with a clear message.
    let (st, r) = post(&c, publish.clone(), json!({"payload": "x".repeat(10_000)})).await;
    assert_eq!(st, 413, "{r}");
    assert_eq!(r["error"]["code"], "request_too_large");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("4096"),
        "{r}"
    );
    // Message over the topic's limit: 413, and nothing of its batch stored.
    let (st, r) = post(
        &c,
        publish.clone(),
        json!({"messages": [{"payload": "ok"}, {"payload": "y".repeat(200)}]}),
    )
    .await;
    assert_eq!(st, 413, "{r}");
    assert_eq!(r["error"]["code"], "message_too_large");
    // Malformed JSON and a bad base64 payload: 400.
    let r = c
        .post(publish.clone())
        .header("content-type", "application/json")
        .body("{\"payload\": ")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    let r: Value = r.json().await.expect("json");
    assert_eq!(r["error"]["code"], "malformed_json");
    let (st, _) = post(
        &c,
        publish.clone(),
        json!({"payload": "***", "encoding": "base64"}),
    )
    .await;
    assert_eq!(st, 400);
    // Invalid topic name: 400 invalid_name.
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/bad..name/messages"),
        json!({"payload": "x"}),
    )
    .await;
    assert_eq!(st, 400, "{r}");
    assert_eq!(r["error"]["code"], "invalid_name");
    // Unknown delivery id: 404; unknown topic: 404.
    let (st, r) = post(&c, format!("{base}/v1/deliveries/nope/ack"), json!({})).await;
    assert_eq!(
        (st, r["error"]["code"].clone()),
        (404, json!("unknown_delivery"))
    );
    let st = c
        .get(format!("{base}/v1/topics/http.missing"))
        .send()
        .await
        .expect("get")
        .status();
    assert_eq!(st.as_u16(), 404);

    // gRPC: an oversized request is RESOURCE_EXHAUSTED, a malformed one INVALID_ARGUMENT.
    let mut raw = wharf_client::raw_client(&base, None).await.expect("grpc");
    let big = wharf_client::proto::PublishRequest {
        topic: "http.bad".into(),
        messages: vec![wharf_client::proto::Message {
            payload: vec![b'z'; 10_000].into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let err = raw.publish(big).await.expect_err("too large");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("h2 client");
    let mut frame = vec![0u8, 0, 0, 0, 4];
    frame.extend_from_slice(&[0x0a, 0xff, 0xff, 0xff]);
    let r = h2
        .post(format!("{base}/wharf.v1.Wharf/Publish"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(frame)
        .send()
        .await
        .expect("grpc over h2");
    let code = r
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    assert_eq!(
        code.as_deref(),
        Some("3"),
        "grpc-status INVALID_ARGUMENT, headers {:?}",
        r.headers()
    );

    // Still serving, and nothing from the rejected requests was stored.
    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .expect("healthz")
            .status()
            .as_u16(),
        200
    );
    assert_eq!(stored(&c, &base, "http.bad").await, 0);
    let (st, _) = post(&c, publish, json!({"payload": "fine"})).await;
    assert_eq!(st, 200);
    assert_eq!(stored(&c, &base, "http.bad").await, 1);
}

/// A typo in an HTTP path is a 404 with the JSON error body, not a `200`
/// with gRPC headers; a gRPC request (by content type) for an unknown
/// method still gets gRPC's UNIMPLEMENTED.
#[tokio::test]
async fn unknown_http_paths_are_404_json_and_unknown_grpc_methods_unimplemented() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = http();
    for (method, path) in [
        ("POST", "/v1/topic/orders/messages"),
        ("GET", "/nope"),
        ("POST", "/wharf.v1.Wharf/NoSuchCall"),
    ] {
        let r = c
            .request(method.parse().expect("method"), format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(r#"{"payload":"x"}"#)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 404, "{method} {path}");
        assert!(
            r.headers().get("grpc-status").is_none(),
            "{method} {path}: {:?}",
            r.headers()
        );
        let body: Value = r.json().await.expect("JSON error body");
        assert_eq!(body["error"]["code"], "not_found", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(path)),
            "{body}"
        );
    }
    for path in ["/wharf.v1.Wharf/NoSuchCall", "/no.such.Service/Call"] {
        let r = c
            .post(format!("{base}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(vec![0u8, 0, 0, 0, 0])
            .send()
            .await
            .expect("grpc request");
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert_eq!(
            r.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"12"[..]),
            "{path}: {:?}",
            r.headers()
        );
    }
    // Known routes are unaffected.
    let (st, _) = post(
        &c,
        format!("{base}/v1/topics/http.known/messages"),
        json!({"payload": "x"}),
    )
    .await;
    assert_eq!(st, 200);
}

/// Long-polls `topic` for group `group` and returns how many deliveries came.
async fn consume_count(c: &reqwest::Client, base: &str, topic: &str, group: &str) -> usize {
    let (st, r) = post(
        c,
        format!("{base}/v1/topics/{topic}/consume?group={group}&max=100&wait_ms=500"),
        json!({}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    r["deliveries"].as_array().expect("deliveries").len()
}

#[tokio::test]
async fn dlq_routes_act_on_the_dead_letter_topic_never_on_the_topic_itself() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = http();
    for i in 0..2 {
        let (st, r) = post(
            &c,
            format!("{base}/v1/topics/http.jobs/messages"),
            json!({"payload": format!("job {i}")}),
        )
        .await;
        assert_eq!(st, 200, "{r}");
    }
    // `jobs` has no dead letters: its own messages are not listed as letters.
    let page: Value = c
        .get(format!("{base}/v1/dlq/http.jobs"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(page["letters"], json!([]), "{page}");
    // Purge on the topic purges its (empty) dead-letter topic, not the topic.
    let (st, r) = post(&c, format!("{base}/v1/dlq/http.jobs/purge"), json!({})).await;
    assert_eq!((st, r["count"].as_u64()), (200, Some(0)), "{r}");
    assert_eq!(consume_count(&c, &base, "http.jobs", "g").await, 2);

    // A rejected delivery is a letter, listed under both names and purged
    // for real: neither listed nor replayable afterwards.
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/http.jobs/messages"),
        json!({"payload": "poison"}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let (_, r) = post(
        &c,
        format!("{base}/v1/topics/http.jobs/consume?group=g&wait_ms=2000"),
        json!({}),
    )
    .await;
    let id = r["deliveries"][0]["delivery_id"]
        .as_str()
        .expect("delivery")
        .to_owned();
    let (st, _) = post(&c, format!("{base}/v1/deliveries/{id}/reject"), json!({})).await;
    assert_eq!(st, 204);
    for name in ["http.jobs", "dlq.http.jobs"] {
        let page: Value = c
            .get(format!("{base}/v1/dlq/{name}"))
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        assert_eq!(
            page["letters"].as_array().map(Vec::len),
            Some(1),
            "{name}: {page}"
        );
    }
    let (st, r) = post(&c, format!("{base}/v1/dlq/http.jobs/purge"), json!({})).await;
    assert_eq!((st, r["count"].as_u64()), (200, Some(1)), "{r}");
    let page: Value = c
        .get(format!("{base}/v1/dlq/dlq.http.jobs"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(page["letters"], json!([]), "{page}");
    let (st, r) = post(
        &c,
        format!("{base}/v1/dlq/http.jobs/replay"),
        json!({"all": true}),
    )
    .await;
    assert_eq!((st, r["count"].as_u64()), (200, Some(0)), "{r}");
}

#[tokio::test]
async fn a_json_value_payload_is_stored_as_its_json_text() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = http();
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/http.values/messages"),
        json!({"messages": [{"payload": {"id": 5}}, {"payload": [1, true, null]}, {"payload": 7}]}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let (_, r) = post(
        &c,
        format!("{base}/v1/topics/http.values/consume?group=g&max=10&wait_ms=2000"),
        json!({}),
    )
    .await;
    let payloads: Vec<&str> = r["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .map(|d| d["message"]["payload"].as_str().expect("text payload"))
        .collect();
    assert_eq!(payloads, [r#"{"id":5}"#, "[1,true,null]", "7"]);
    // What is wrong is said plainly, not as "no variant of an untagged enum".
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/http.values/messages"),
        json!({"paylod": "typo"}),
    )
    .await;
    assert_eq!(st, 400, "{r}");
    let msg = r["error"]["message"].as_str().expect("message");
    assert!(msg.contains("paylod") && !msg.contains("untagged"), "{msg}");
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/http.values/messages"),
        json!({"payload": {"a": 1}, "encoding": "base64"}),
    )
    .await;
    assert_eq!(st, 400, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .expect("message")
            .contains("base64"),
        "{r}"
    );
}

#[tokio::test]
async fn get_on_post_only_routes_answers_405_with_allow() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = http();
    for path in [
        "/v1/dlq/dlq.orders/replay",
        "/v1/dlq/dlq.orders/purge",
        "/v1/dlq/orders/replay",
        "/v1/topics/orders/consume",
        "/v1/deliveries/x/ack",
    ] {
        let r = c.get(format!("{base}{path}")).send().await.expect("get");
        assert_eq!(r.status().as_u16(), 405, "{path}");
        assert_eq!(
            r.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some("POST"),
            "{path}"
        );
    }
}

async fn topic_names(c: &reqwest::Client, base: &str) -> Vec<String> {
    let topics: Value = c
        .get(format!("{base}/v1/topics"))
        .send()
        .await
        .expect("list topics")
        .json()
        .await
        .expect("json");
    topics
        .as_array()
        .expect("topics")
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_refused_publish_creates_no_topic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("wharf.toml");
    std::fs::write(&cfg, "max_headers = 1\n").expect("config");
    let server = common::Server::start(&dir.path().join("data"), Some(&cfg));
    let base = server.url();
    let c = http();
    // Over the default topic's 1 MiB message limit, within the 16 MiB body limit.
    let big = "a".repeat(2 * 1024 * 1024);
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/http.big/messages"),
        json!({"payload": big}),
    )
    .await;
    assert_eq!(st, 413, "{r}");
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/http.headers/messages"),
        json!({"payload": "x", "headers": {"a": "1", "b": "2"}}),
    )
    .await;
    assert_eq!(st, 400, "{r}");
    let names = topic_names(&c, &base).await;
    assert!(
        !names.iter().any(|n| n == "http.big" || n == "http.headers"),
        "{names:?}"
    );
    // An accepted publish does create its topic.
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/http.big/messages"),
        json!({"payload": "small"}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert!(topic_names(&c, &base).await.iter().any(|n| n == "http.big"));
}

#[tokio::test]
async fn with_auto_create_off_an_unknown_topic_is_a_typed_404() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start_with(
        dir.path(),
        None,
        "127.0.0.1:0",
        &["--no-auto-create-topics"],
    );
    let base = server.url();
    let c = http();
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/http.auto/messages"),
        json!({"payload": "x"}),
    )
    .await;
    assert_eq!(st, 404, "{r}");
    assert_eq!(r["error"]["code"], "unknown_topic", "{r}");
    assert!(topic_names(&c, &base).await.is_empty());
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics"),
        json!({"name": "http.auto"}),
    )
    .await;
    assert_eq!(st, 201, "{r}");
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/http.auto/messages"),
        json!({"payload": "x"}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
}

#[tokio::test]
async fn groups_and_their_lag_survive_a_restart_without_consumers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = http();
    for i in 0..3 {
        let (st, r) = post(
            &c,
            format!("{base}/v1/topics/http.stalled/messages"),
            json!({"payload": format!("m{i}")}),
        )
        .await;
        assert_eq!(st, 200, "{r}");
    }
    let (_, r) = post(
        &c,
        format!("{base}/v1/topics/http.stalled/consume?group=billing&wait_ms=2000"),
        json!({}),
    )
    .await;
    let id = r["deliveries"][0]["delivery_id"]
        .as_str()
        .expect("delivery")
        .to_owned();
    let (st, _) = post(&c, format!("{base}/v1/deliveries/{id}/ack"), json!({})).await;
    assert_eq!(st, 204);
    server.restart();
    // Nobody consumes after the restart: the stalled group and its lag show.
    let c = http();
    let groups: Value = c
        .get(format!("{base}/v1/groups?group=billing"))
        .send()
        .await
        .expect("groups")
        .json()
        .await
        .expect("json");
    assert_eq!(groups.as_array().map(Vec::len), Some(1), "{groups}");
    assert_eq!(groups[0]["topic"], "http.stalled", "{groups}");
    assert_eq!(groups[0]["lag"], 2, "{groups}");
    assert_eq!(groups[0]["members"], json!([]), "{groups}");
    let metrics = text(&c, format!("{base}/metrics")).await;
    let lag = metrics
        .lines()
        .find(|l| {
            l.starts_with("wharf_consumer_lag{")
                && l.contains("group=\"billing\"")
                && l.contains("topic=\"http.stalled\"")
        })
        .unwrap_or_else(|| panic!("no lag series for billing in {metrics}"));
    assert!(lag.ends_with(" 2"), "{lag}");
    let out = common::ok(&server.cli(&["group", "list"]));
    assert!(out.contains("billing"), "{out}");
}

/// Retention, the segment size it acts in steps of and the dedup window are
/// set by `POST /v1/topics` and shown back; a segment under 4096 bytes is a
/// 400. (Their effect is the conformance suite's retention and dedup-window
/// cases, run through gRPC `CreateTopic` against the same server.)
#[tokio::test]
async fn retention_segment_size_and_dedup_window_are_set_over_http() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let (base, c) = (server.url(), http());
    let (st, t) = post(
        &c,
        format!("{base}/v1/topics"),
        json!({"name": "http.kept", "retention_bytes": 65536, "retention_ms": 300,
               "segment_bytes": 16384, "dedup_window_ms": 1000}),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    assert_eq!(
        (
            &t["retention_bytes"],
            &t["retention_ms"],
            &t["segment_bytes"],
            &t["dedup_window_ms"]
        ),
        (&json!(65536), &json!(300), &json!(16384), &json!(1000)),
        "{t}"
    );
    let (st, t) = post(
        &c,
        format!("{base}/v1/topics"),
        json!({"name": "http.defaults"}),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    assert_eq!(t["segment_bytes"], 64 * 1024 * 1024, "{t}");
    let (st, err) = post(
        &c,
        format!("{base}/v1/topics"),
        json!({"name": "http.tiny", "segment_bytes": 100}),
    )
    .await;
    assert_eq!(st, 400, "{err}");
}

/// A topic's bytes on disk are in `GET /v1/topics/{name}` and in the list,
/// per partition (`offsets[].bytes`) and in total (`bytes`): zero when
/// empty, more than the payloads once messages are stored.
#[tokio::test]
async fn topic_bytes_are_described_and_listed_over_http() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let (base, c) = (server.url(), http());
    let (st, t) = post(
        &c,
        format!("{base}/v1/topics"),
        json!({"name": "http.sized", "partitions": 2}),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    assert_eq!(t["bytes"], 0, "an empty topic holds no bytes: {t}");
    let payload = "x".repeat(1000);
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/http.sized/messages"),
        json!({"messages": (0..5).map(|_| json!({"payload": payload})).collect::<Vec<_>>()}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    let get = |path: String| {
        let c = c.clone();
        async move {
            c.get(path)
                .send()
                .await
                .expect("get")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let t = get(format!("{base}/v1/topics/http.sized")).await;
    let total = t["bytes"].as_u64().expect("bytes is a number");
    assert!(total > 5 * 1000, "five 1000-byte payloads are on disk: {t}");
    let parts: u64 = t["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|p| p["bytes"].as_u64().expect("per-partition bytes"))
        .sum();
    assert_eq!(parts, total, "the total is the partitions' sum: {t}");
    let list = get(format!("{base}/v1/topics")).await;
    let listed = list
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["name"] == "http.sized")
        .expect("listed");
    assert_eq!(listed["bytes"], total, "{listed}");
}
