//! Projections hosted by `wharf serve`, through the real binary: `wharf
//! projection create|list|status|rebuild --wait|delete` publish the event
//! store's events (under a stream prefix) into a topic that a group
//! consumes; the definition and its checkpoint survive a restart without
//! republishing; a rebuild replays (the dedup window drops the copies);
//! the lag is in `/metrics`; a kill -9 mid-projection still delivers every
//! event once; a token sees and rebuilds only projections of streams it may
//! read; a failing projection shows its error and resumes while the others
//! run; the gRPC calls match; bad input is a typed error that stores nothing.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_while_projecting_delivers_every_event_once() {
    use wharf_core::{StartPosition, SubscribeOptions, Subscriber as _};

    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = reqwest::Client::new();
    ok(&server.cli(&["topic", "create", "es.crash"]));
    ok(&server.cli(&["projection", "create", "crash", "--topic", "es.crash"]));

    // 4,000 events in 8 appends, then kill -9 straight away: the projection
    // is (most likely) between a publish and its checkpoint, or behind.
    const STREAMS: usize = 8;
    const PER: usize = 500;
    for s in 0..STREAMS {
        let events: Vec<Value> = (0..PER)
            .map(|i| json!({"type": "E", "payload": format!("{s}-{i}")}))
            .collect();
        let r = c
            .post(format!("{base}/v1/eventstore/streams/s-{s}"))
            .json(&json!({ "events": events }))
            .send()
            .await
            .expect("append");
        assert!(r.status().is_success(), "append: {}", r.status());
    }
    server.kill9();
    server.start_again();

    let client = wharf_client::Client::connect(&server.url(), None)
        .await
        .expect("connect");
    let mut sub = client
        .subscribe(
            SubscribeOptions::new("es.crash")
                .group("readers")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    let mut seen = std::collections::BTreeMap::<(String, u64), u32>::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < STREAMS * PER {
        let left = deadline.saturating_duration_since(Instant::now());
        let d = tokio::time::timeout(left, sub.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} events", seen.len(), STREAMS * PER))
            .expect("open")
            .expect("delivery");
        let e = wharf_eventstore::topic::recorded_event(d.message()).expect("an event");
        *seen
            .entry((e.stream.as_str().to_owned(), e.version))
            .or_default() += 1;
        d.ack().await.expect("ack");
    }
    // Anything published twice would arrive now.
    let extra = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
    assert!(extra.is_err(), "a delivery beyond every event once");
    assert!(
        seen.values().all(|&n| n == 1),
        "duplicates: {:?}",
        seen.iter().filter(|e| *e.1 > 1).take(5).collect::<Vec<_>>()
    );
    assert_eq!(
        stored(&c, &server.url(), "es.crash").await,
        (STREAMS * PER) as u64,
        "each event stored once"
    );
    let s = wait_caught_up(&server, "crash").await;
    assert_eq!(s["checkpoint"], json!(STREAMS * PER), "{s}");
    // How much the restarted server published (0: the kill came after all).
    println!("published after the restart: {}", s["applied"]);
}

#[test]
fn a_token_sees_and_rebuilds_only_projections_of_streams_it_may_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("wharf.toml");
    std::fs::write(
        &cfg,
        r#"
[[tokens]]
token = "root"
publish = [">"]
consume = [">"]
admin = [">"]
events_read = ["*"]
events_append = ["*"]
events_admin = ["*"]

[[tokens]]
token = "orders"
publish = ["es.>"]
events_read = ["order-"]
events_admin = ["order-"]
"#,
    )
    .expect("config");
    let server = common::Server::start(&dir.path().join("data"), Some(&cfg));
    let url = server.url();
    let as_ = |token: Option<&str>, args: &[&str]| common::cli_with(&url, token, args, None);
    ok(&as_(Some("root"), &["topic", "create", "es.orders"]));
    ok(&as_(Some("root"), &["topic", "create", "es.invoices"]));
    ok(&as_(
        Some("root"),
        &[
            "projection",
            "create",
            "invoices",
            "--topic",
            "es.invoices",
            "--prefix",
            "invoice-",
        ],
    ));
    // The right prefix and topic: allowed; another prefix: refused, nothing stored.
    ok(&as_(
        Some("orders"),
        &[
            "projection",
            "create",
            "orders",
            "--topic",
            "es.orders",
            "--prefix",
            "order-",
        ],
    ));
    let err = failed(&as_(
        Some("orders"),
        &["projection", "create", "all", "--topic", "es.orders"],
    ));
    assert!(err.contains("events_admin") && err.contains("403"), "{err}");

    let list = ok(&as_(Some("orders"), &["projection", "list", "--json"]));
    let names: Vec<String> = list
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json")["name"]
                .as_str()
                .expect("name")
                .to_owned()
        })
        .collect();
    assert_eq!(names, vec!["orders"], "only its own prefix: {list}");
    let list = ok(&as_(Some("root"), &["projection", "list", "--json"]));
    assert_eq!(list.lines().count(), 2, "root sees both: {list}");

    let err = failed(&as_(Some("orders"), &["projection", "status", "invoices"]));
    assert!(err.contains("events_read") && err.contains("403"), "{err}");
    let err = failed(&as_(Some("orders"), &["projection", "rebuild", "invoices"]));
    assert!(err.contains("403"), "{err}");
    ok(&as_(
        Some("orders"),
        &["projection", "rebuild", "orders", "--wait"],
    ));
    let err = failed(&as_(None, &["projection", "list"]));
    assert!(err.contains("401"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_over_grpc_are_the_same_with_typed_statuses() {
    use prost::Message as _;
    use tonic::Code;
    use wharf_client::proto as v1;

    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    ok(&server.cli(&["topic", "create", "es.g"]));
    let mut c = wharf_client::raw_event_store_client(&server.url(), None)
        .await
        .expect("connect");
    let spec = |name: &str, topic: &str| v1::EsProjectionSpec {
        name: name.into(),
        topic: topic.into(),
        prefix: "g-".into(),
    };

    let e = c
        .create_projection(spec("a/b", "es.g"))
        .await
        .expect_err("bad name");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let d = v1::EsErrorDetail::decode(e.details()).expect("an EsErrorDetail");
    assert_eq!(d.field, "name", "{d:?}");
    let e = c
        .create_projection(spec("g", "es.none"))
        .await
        .expect_err("no topic");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = c
        .projection_status(v1::EsProjectionName { name: "g".into() })
        .await
        .expect_err("nothing defined");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    let p = c
        .create_projection(spec("g", "es.g"))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(p.spec.as_ref().map(|s| s.prefix.as_str()), Some("g-"));
    let e = c
        .create_projection(spec("g", "es.g"))
        .await
        .expect_err("taken");
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    ok(&server.cli(&["events", "append", "g-1", "E"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = c
            .projection_status(v1::EsProjectionName { name: "g".into() })
            .await
            .expect("status")
            .into_inner();
        if p.caught_up && p.applied == 1 {
            assert_eq!((p.checkpoint, p.head), (1, 1), "{p:?}");
            break;
        }
        assert!(Instant::now() < deadline, "not caught up: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = c
        .rebuild_projection(v1::EsProjectionName { name: "g".into() })
        .await
        .expect("rebuild")
        .into_inner();
    assert_eq!(p.spec.map(|s| s.name), Some("g".to_owned()), "rebuilt");
    let list = c
        .list_projections(v1::Empty {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.projections.len(), 1);
    c.delete_projection(v1::EsProjectionName { name: "g".into() })
        .await
        .expect("delete");
    let list = c
        .list_projections(v1::Empty {})
        .await
        .expect("list")
        .into_inner();
    assert!(list.projections.is_empty(), "{list:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_projection_shows_its_error_and_resumes_while_others_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("wharf.toml");
    std::fs::write(&cfg, "auto_create_topics = false\n").expect("config");
    let server = common::Server::start(&dir.path().join("data"), Some(&cfg));
    let base = server.url();
    let c = reqwest::Client::new();
    for t in ["es.b", "es.f"] {
        ok(&server.cli(&["topic", "create", t]));
    }
    ok(&server.cli(&["projection", "create", "broken", "--topic", "es.b"]));
    ok(&server.cli(&["projection", "create", "fine", "--topic", "es.f"]));
    ok(&server.cli(&["topic", "delete", "es.b"]));
    ok(&server.cli(&["events", "append", "s-1", "E"]));

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = json_out(&server.cli(&["projection", "status", "broken", "--json"]));
        if s["state"] == json!("failed") {
            assert!(
                s["error"].as_str().is_some_and(|e| e.contains("es.b")),
                "{s}"
            );
            assert!(s["failures"].as_u64() >= Some(1), "{s}");
            assert_eq!(s["caught_up"], json!(false), "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "never failed: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let table = ok(&server.cli(&["projection", "list"]));
    assert!(
        table.contains("failed: "),
        "the error in the table: {table}"
    );
    let fine = wait_caught_up(&server, "fine").await;
    assert_eq!(fine["applied"], json!(1), "the other one runs: {fine}");
    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wharf_projection_failures_total{projection=\"broken\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the failures series");
    assert!(failures >= 1.0, "failures counted in /metrics: {failures}");

    ok(&server.cli(&["topic", "create", "es.b"]));
    let s = wait_caught_up(&server, "broken").await;
    assert_eq!(s["applied"], json!(1), "resumed: {s}");
    assert_eq!(stored(&c, &base, "es.b").await, 1);
}
