//! The event store's rights matrix, from outside: a real `wharf serve`
//! with tokens holding `events_read` / `events_append` / `events_admin` on
//! stream-name prefixes (and one with only topic rights), driven over
//! HTTP (reqwest) and gRPC (`RemoteEventStore`). Every field that names
//! streams is a decision: the path's stream, a global read's or listing's
//! prefix (every stream without one, or with system streams), and an
//! append condition, which reads every stream. Refused requests store
//! nothing.

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use wharf_eventstore::{
    AppendCondition, AppendRequest, EventData, EventStore, EventStoreError, ExpectedVersion,
    GlobalFilter, Position, Query, ReadStream, StreamId, StreamMetadata, SubscribeFrom,
};

const CONFIG: &str = r#"
[[tokens]]
token = "orders"
events_read = ["order-"]
events_append = ["order-"]

[[tokens]]
token = "reader"
events_read = ["order-"]

[[tokens]]
token = "root"
events_read = ["*"]
events_append = ["*"]
events_admin = ["*"]

[[tokens]]
token = "topics"
publish = [">"]
consume = [">"]
admin = [">"]
"#;

fn start(dir: &std::path::Path) -> common::Server {
    let cfg = dir.join("wharf.toml");
    std::fs::write(&cfg, CONFIG).expect("config");
    common::Server::start(&dir.join("data"), Some(&cfg))
}

fn one(ty: &str) -> Value {
    json!({"events": [{"type": ty, "payload": "{}"}]})
}

/// One request of the matrix: method, path (after the base URL), body.
struct Req {
    method: &'static str,
    path: String,
    body: Option<Value>,
}

fn req(method: &'static str, path: &str, body: Option<Value>) -> Req {
    Req {
        method,
        path: path.to_owned(),
        body,
    }
}

async fn status(c: &reqwest::Client, base: &str, token: Option<&str>, r: &Req) -> u16 {
    let url = format!("{base}{}", r.path);
    let mut b = match r.method {
        "GET" => c.get(url),
        "POST" => c.post(url),
        "PUT" => c.put(url),
        "DELETE" => c.delete(url),
        m => panic!("method {m}"),
    };
    if let Some(t) = token {
        b = b.bearer_auth(t);
    }
    if let Some(body) = &r.body {
        b = b.json(body);
    }
    // An accepted subscription streams: its status is all this needs.
    b.timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

async fn head(c: &reqwest::Client, base: &str) -> u64 {
    let v: Value = c
        .get(format!("{base}/v1/eventstore/head"))
        .bearer_auth("root")
        .send()
        .await
        .expect("head")
        .json()
        .await
        .expect("json");
    v["position"].as_u64().expect("position")
}

#[tokio::test]
async fn http_rights_matrix_over_every_stream_naming_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(dir.path());
    let base = server.url();
    let c = reqwest::Client::new();
    for s in ["order-1", "invoice-1"] {
        let r = req(
            "POST",
            &format!("/v1/eventstore/streams/{s}"),
            Some(one("Seeded")),
        );
        assert_eq!(status(&c, &base, Some("root"), &r).await, 200, "seed {s}");
    }
    let conditional = json!({"events": [{"type": "T", "payload": "{}"}],
        "condition": {"query": [{"tags": ["x"]}]}});
    let snapshot = json!({"events": [{"type": "$snapshot", "payload": "{}"}]});
    // Refused first: none of them may store anything.
    let refused: Vec<(Option<&str>, Req, u16)> = vec![
        (
            None,
            req("POST", "/v1/eventstore/streams/order-1", Some(one("T"))),
            401,
        ),
        (
            Some("nope"),
            req("POST", "/v1/eventstore/streams/order-1", Some(one("T"))),
            401,
        ),
        (None, req("GET", "/v1/eventstore/head", None), 401),
        (
            Some("reader"),
            req("POST", "/v1/eventstore/streams/order-1", Some(one("T"))),
            403,
        ),
        (
            Some("topics"),
            req("POST", "/v1/eventstore/streams/order-1", Some(one("T"))),
            403,
        ),
        (
            Some("orders"),
            req("POST", "/v1/eventstore/streams/invoice-1", Some(one("T"))),
            403,
        ),
        (
            Some("orders"),
            req(
                "POST",
                "/v1/eventstore/streams/$snapshot-invoice-1",
                Some(snapshot.clone()),
            ),
            403,
        ),
        (
            Some("orders"),
            req(
                "POST",
                "/v1/eventstore/streams/order-1",
                Some(conditional.clone()),
            ),
            403,
        ),
        (
            Some("topics"),
            req("GET", "/v1/eventstore/streams/order-1", None),
            403,
        ),
        (
            Some("orders"),
            req("GET", "/v1/eventstore/streams/invoice-1", None),
            403,
        ),
        (
            Some("orders"),
            req("GET", "/v1/eventstore/streams/invoice-1/info", None),
            403,
        ),
        (
            Some("orders"),
            req(
                "PUT",
                "/v1/eventstore/streams/order-1/metadata",
                Some(json!({"max_count": 1})),
            ),
            403,
        ),
        (
            Some("orders"),
            req("DELETE", "/v1/eventstore/streams/order-1", None),
            403,
        ),
        (
            Some("orders"),
            req(
                "DELETE",
                "/v1/eventstore/streams/order-1?tombstone=true",
                None,
            ),
            403,
        ),
        (Some("orders"), req("GET", "/v1/eventstore/all", None), 403),
        (
            Some("orders"),
            req("GET", "/v1/eventstore/all?prefix=ord", None),
            403,
        ),
        (
            Some("orders"),
            req("GET", "/v1/eventstore/all?prefix=invoice-", None),
            403,
        ),
        (
            Some("orders"),
            req(
                "GET",
                "/v1/eventstore/all?prefix=order-&include_system=true",
                None,
            ),
            403,
        ),
        (
            Some("orders"),
            req("GET", "/v1/eventstore/subscribe", None),
            403,
        ),
        (
            Some("orders"),
            req("GET", "/v1/eventstore/subscribe?prefix=invoice-", None),
            403,
        ),
        (
            Some("orders"),
            req("GET", "/v1/eventstore/streams", None),
            403,
        ),
        (
            Some("orders"),
            req("GET", "/v1/eventstore/streams?prefix=in", None),
            403,
        ),
        (
            Some("topics"),
            req("GET", "/v1/eventstore/streams?prefix=order-", None),
            403,
        ),
    ];
    let before = head(&c, &base).await;
    for (token, r, want) in &refused {
        assert_eq!(
            status(&c, &base, *token, r).await,
            *want,
            "{token:?} {} {}",
            r.method,
            r.path
        );
    }
    assert_eq!(
        head(&c, &base).await,
        before,
        "refused requests stored nothing"
    );
    let info: Value = c
        .get(format!("{base}/v1/eventstore/streams/order-1/info"))
        .bearer_auth("root")
        .send()
        .await
        .expect("info")
        .json()
        .await
        .expect("json");
    assert_eq!(info["version"], 0, "order-1 untouched: {info}");
    assert_eq!(info["soft_deleted"], false);

    let allowed: Vec<(&str, Req)> = vec![
        (
            "orders",
            req("POST", "/v1/eventstore/streams/order-1", Some(one("T"))),
        ),
        (
            "orders",
            req(
                "POST",
                "/v1/eventstore/streams/$snapshot-order-1",
                Some(snapshot),
            ),
        ),
        (
            "root",
            req("POST", "/v1/eventstore/streams/order-1", Some(conditional)),
        ),
        ("reader", req("GET", "/v1/eventstore/streams/order-1", None)),
        (
            "orders",
            req("GET", "/v1/eventstore/streams/order-1/info", None),
        ),
        (
            "orders",
            req("GET", "/v1/eventstore/all?prefix=order-", None),
        ),
        (
            "orders",
            req("GET", "/v1/eventstore/all?prefix=order-eu-", None),
        ),
        (
            "orders",
            req("GET", "/v1/eventstore/subscribe?prefix=order-", None),
        ),
        (
            "orders",
            req("GET", "/v1/eventstore/streams?prefix=order-", None),
        ),
        ("topics", req("GET", "/v1/eventstore/head", None)),
        (
            "root",
            req("GET", "/v1/eventstore/all?include_system=true", None),
        ),
        (
            "root",
            req(
                "PUT",
                "/v1/eventstore/streams/order-1/metadata",
                Some(json!({"max_count": 10})),
            ),
        ),
        (
            "root",
            req(
                "DELETE",
                "/v1/eventstore/streams/invoice-1?tombstone=true",
                None,
            ),
        ),
    ];
    for (token, r) in &allowed {
        assert_eq!(
            status(&c, &base, Some(token), r).await,
            200,
            "{token} {} {}",
            r.method,
            r.path
        );
    }
}

async fn connect(url: &str, token: &str) -> wharf_client::RemoteEventStore {
    wharf_client::RemoteEventStore::connect(url, Some(token))
        .await
        .expect("connect")
}

fn denied<T: std::fmt::Debug>(r: Result<T, EventStoreError>, what: &str) {
    assert!(
        matches!(r, Err(EventStoreError::PermissionDenied { .. })),
        "{what}: expected PermissionDenied, got {r:?}"
    );
}

#[tokio::test]
async fn grpc_rights_matrix_through_the_remote_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(dir.path());
    let url = server.url();
    let root = connect(&url, "root").await;
    let order = StreamId::new("order-1").expect("name");
    let invoice = StreamId::new("invoice-1").expect("name");
    for s in [&order, &invoice] {
        root.append(
            s,
            ExpectedVersion::NoStream,
            vec![EventData::new("Seeded", "{}")],
        )
        .await
        .expect("seed");
    }
    let head = root.head().await.expect("head");

    match wharf_client::RemoteEventStore::connect(&url, Some("nope")).await {
        Err(EventStoreError::PermissionDenied { .. }) => {}
        other => panic!("an unknown token: {other:?}"),
    }
    let orders = connect(&url, "orders").await;
    let reader = connect(&url, "reader").await;
    let topics = connect(&url, "topics").await;
    let ev = || vec![EventData::new("T", "{}")];
    denied(
        orders.append(&invoice, ExpectedVersion::Any, ev()).await,
        "append elsewhere",
    );
    denied(
        reader.append(&order, ExpectedVersion::Any, ev()).await,
        "append with read only",
    );
    denied(
        topics.append(&order, ExpectedVersion::Any, ev()).await,
        "topic rights",
    );
    let conditional = AppendRequest::new(order.clone(), ExpectedVersion::Any, ev())
        .condition(AppendCondition::new(Query::tags(["x"])).after(Position(0)));
    denied(
        orders.append_with(conditional.clone()).await,
        "a condition reads every stream",
    );
    denied(
        orders.read_stream(&invoice, ReadStream::forwards()).await,
        "read elsewhere",
    );
    denied(orders.stream_info(&invoice).await, "info elsewhere");
    denied(
        orders
            .set_stream_metadata(&order, StreamMetadata::new().with_max_count(1))
            .await,
        "metadata without admin",
    );
    denied(
        orders.delete_stream(&order, ExpectedVersion::Any).await,
        "delete",
    );
    denied(
        orders.tombstone_stream(&order, ExpectedVersion::Any).await,
        "tombstone",
    );
    denied(
        orders
            .read_all(Position::START, &GlobalFilter::all(), 10)
            .await,
        "global read without a prefix",
    );
    denied(
        orders
            .read_all(
                Position::START,
                &GlobalFilter::all().stream_prefix("ord"),
                10,
            )
            .await,
        "a wider prefix",
    );
    denied(
        orders
            .subscribe(
                SubscribeFrom::Start,
                GlobalFilter::all().stream_prefix("invoice-"),
            )
            .await,
        "subscribe elsewhere",
    );
    denied(orders.list_streams("", None, 10).await, "list every stream");
    assert_eq!(root.head().await.expect("head"), head, "nothing stored");

    // What the rights do grant.
    orders
        .append(&order, ExpectedVersion::Exact(0), ev())
        .await
        .expect("append within the prefix");
    assert_eq!(
        reader
            .read_stream(&order, ReadStream::forwards())
            .await
            .expect("read")
            .len(),
        2
    );
    let page = orders
        .read_all(
            Position::START,
            &GlobalFilter::all().stream_prefix("order-"),
            10,
        )
        .await
        .expect("global read within the prefix");
    assert!(page.events.iter().all(|e| e.stream == order));
    let mut sub = orders
        .subscribe(
            SubscribeFrom::Start,
            GlobalFilter::all().stream_prefix("order-"),
        )
        .await
        .expect("subscribe within the prefix");
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("event");
    assert_eq!(first.stream, order);
    assert_eq!(
        orders.list_streams("order-", None, 10).await.expect("list"),
        vec![order.clone()]
    );
    root.append_with(conditional)
        .await
        .expect("root may condition");
    root.tombstone_stream(&invoice, ExpectedVersion::Any)
        .await
        .expect("root administers");
}
