//! Projections hosted by `wharf serve`, through the real binary: `wharf
//! projection create|list|status|rebuild --wait|delete` publish the event
//! store's events (under a stream prefix) into a topic that a group
//! consumes; the definition and its checkpoint survive a restart without
//! republishing; a rebuild replays (the dedup window drops the copies);
//! the lag is in `/metrics`; bad input is a typed error that stores nothing.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_out(out: &std::process::Output) -> Value {
    serde_json::from_str(&ok(out)).expect("JSON output")
}

/// Messages stored in `topic` (all partitions).
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

/// Long-polls `group` on `topic` until `n` deliveries arrived (acking
/// each), then once more to see that nothing else comes; returns the
/// `(stream, version)` of each delivery.
async fn consume(
    c: &reqwest::Client,
    base: &str,
    topic: &str,
    group: &str,
    n: usize,
) -> Vec<(String, u64)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let wait = if got.len() < n { 2000 } else { 500 };
        let r: Value = c
            .post(format!(
                "{base}/v1/topics/{topic}/consume?group={group}&wait_ms={wait}&max=100"
            ))
            .send()
            .await
            .expect("consume")
            .json()
            .await
            .expect("json");
        let ds = r["deliveries"].as_array().cloned().unwrap_or_default();
        if ds.is_empty() && got.len() >= n {
            return got;
        }
        for d in ds {
            let h = &d["message"]["headers"];
            let h = if h.is_null() { &d["headers"] } else { h };
            got.push((
                h["wharf-event-stream"]
                    .as_str()
                    .expect("stream header")
                    .to_owned(),
                h["wharf-event-version"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .expect("version header"),
            ));
            let id = d["delivery_id"].as_str().expect("delivery id");
            let a = c
                .post(format!("{base}/v1/deliveries/{id}/ack"))
                .send()
                .await
                .expect("ack");
            assert!(a.status().is_success(), "ack: {}", a.status());
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} deliveries: {got:?}",
            got.len()
        );
    }
}

async fn wait_caught_up(server: &common::Server, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = json_out(&server.cli(&["projection", "status", name, "--json"]));
        if s["caught_up"] == json!(true) && s["state"] == json!("running") {
            return s;
        }
        assert!(Instant::now() < deadline, "not caught up: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_publishes_its_prefix_to_a_topic_once_across_restarts_and_rebuilds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = reqwest::Client::new();
    ok(&server.cli(&["topic", "create", "es.orders"]));

    let table = ok(&server.cli(&[
        "projection",
        "create",
        "orders",
        "--topic",
        "es.orders",
        "--prefix",
        "order-",
    ]));
    let mut lines = table.lines();
    assert!(lines.next().expect("header").starts_with("NAME"), "{table}");
    let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
    assert_eq!(&row[..3], &["orders", "es.orders", "order-"], "{table}");

    ok(&server.cli(&["events", "append", "order-1", "OrderPlaced"]));
    ok(&server.cli(&["events", "append", "invoice-1", "InvoiceSent"]));
    ok(&server.cli(&["events", "append", "order-1", "OrderPaid"]));

    let got = consume(&c, &base, "es.orders", "mailer", 2).await;
    assert_eq!(
        got,
        vec![("order-1".to_owned(), 0), ("order-1".to_owned(), 1)],
        "the prefix's events, in order, nothing else"
    );
    let s = wait_caught_up(&server, "orders").await;
    assert_eq!(s["applied"], json!(2), "{s}");
    assert_eq!(s["checkpoint"], json!(3), "after the last order event: {s}");
    assert_eq!(s["head"], json!(3), "{s}");

    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("wharf_projection_lag{projection=\"orders\"} 0"),
        "lag in /metrics"
    );
    assert!(
        metrics.contains("wharf_projection_events_total{projection=\"orders\"} 2"),
        "events in /metrics"
    );

    // A restart: the definition and its checkpoint are back; nothing is
    // published again, a new event is.
    server.restart();
    let list = ok(&server.cli(&["projection", "list"]));
    assert!(
        list.lines().any(|l| l.starts_with("orders ")),
        "defined after the restart: {list}"
    );
    ok(&server.cli(&["events", "append", "order-2", "OrderPlaced"]));
    let got = consume(&c, &base, "es.orders", "mailer", 1).await;
    assert_eq!(got, vec![("order-2".to_owned(), 0)], "only the new event");
    let s = wait_caught_up(&server, "orders").await;
    assert_eq!(
        s["applied"],
        json!(1),
        "one event published since the restart: {s}"
    );
    assert_eq!(
        stored(&c, &base, "es.orders").await,
        3,
        "no republished copy stored"
    );

    // A rebuild publishes the log again; the topic's dedup window drops
    // the copies, so the group sees nothing twice.
    let progress = ok(&server.cli(&["projection", "rebuild", "orders", "--wait"]));
    assert!(
        progress
            .lines()
            .last()
            .is_some_and(|l| l.ends_with("(caught up)")),
        "{progress}"
    );
    assert!(progress.contains("head 4"), "{progress}");
    let s = json_out(&server.cli(&["projection", "status", "orders", "--json"]));
    assert_eq!(s["applied"], json!(3), "replayed every order event: {s}");
    assert_eq!(
        stored(&c, &base, "es.orders").await,
        3,
        "copies dropped by dedup"
    );
    assert!(consume(&c, &base, "es.orders", "mailer", 0)
        .await
        .is_empty());

    let out = json_out(&server.cli(&["projection", "delete", "orders", "--json"]));
    assert_eq!(out["deleted"], json!("orders"));
    assert_eq!(ok(&server.cli(&["projection", "list", "--json"])), "");
    let err = failed(&server.cli(&["projection", "status", "orders"]));
    assert!(err.contains("no projection named \"orders\""), "{err}");
    server.restart();
    assert_eq!(
        ok(&server.cli(&["projection", "list", "--json"])),
        "",
        "deleted for good"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_projection_definitions_are_typed_errors_that_store_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = reqwest::Client::new();
    ok(&server.cli(&["topic", "create", "es.t"]));

    let post = |body: String| {
        let c = c.clone();
        let url = format!("{base}/v1/eventstore/projections");
        async move {
            let r = c
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("post");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("json"))
        }
    };
    let cases = [
        (
            json!({"name": "a/b", "topic": "es.t"}).to_string(),
            400,
            "invalid_argument",
            Some("name"),
        ),
        (
            json!({"name": ".x", "topic": "es.t"}).to_string(),
            400,
            "invalid_argument",
            Some("name"),
        ),
        (
            json!({"name": "p", "topic": "es.*"}).to_string(),
            400,
            "invalid_argument",
            Some("topic"),
        ),
        (
            json!({"name": "p", "topic": "es.t", "prefix": "a\nb"}).to_string(),
            400,
            "invalid_argument",
            Some("prefix"),
        ),
        (
            json!({"name": "p", "topic": "es.missing"}).to_string(),
            404,
            "unknown_topic",
            None,
        ),
        (
            json!({"name": "p", "topic": "es.t", "extra": 1}).to_string(),
            400,
            "malformed_json",
            None,
        ),
        ("{".to_owned(), 400, "malformed_json", None),
    ];
    for (body, status, code, field) in cases {
        let (got, v) = post(body.clone()).await;
        assert_eq!(
            (got, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {v}"
        );
        if let Some(f) = field {
            assert_eq!(v["error"]["details"]["field"], json!(f), "{body}: {v}");
        }
    }
    assert_eq!(
        ok(&server.cli(&["projection", "list", "--json"])),
        "",
        "nothing defined"
    );
    let specs = dir.path().join("projections/projections.json");
    assert!(!specs.exists(), "nothing written");

    ok(&server.cli(&["projection", "create", "p", "--topic", "es.t"]));
    let (got, v) = post(json!({"name": "p", "topic": "es.t"}).to_string()).await;
    assert_eq!(
        (got, v["error"]["code"].as_str()),
        (409, Some("projection_exists")),
        "{v}"
    );
    let err = failed(&server.cli(&["projection", "rebuild", "nope"]));
    assert!(err.contains("no projection named \"nope\""), "{err}");
    let err = failed(&server.cli(&["projection", "create", "q", "--topic", "es.none"]));
    assert!(err.contains("does not exist"), "{err}");
    let list = json_out(&server.cli(&["projection", "list", "--json"]));
    assert_eq!(list["name"], json!("p"), "only the good one: {list}");
}
