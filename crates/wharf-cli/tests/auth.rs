//! Token auth on every protected HTTP route and gRPC call of a real
//! `wharf serve`: no token and a wrong token are refused with 401 /
//! UNAUTHENTICATED, a token without the right for the topic with 403 /
//! PERMISSION_DENIED; health stays open.

mod common;

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tonic::Code;
use wharf_client::proto as v1;

const ADMIN: &str = "admin-token";
const ORDERS: &str = "orders-only-token";
const TOPIC: &str = "payments.x";

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("wharf.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[tokens]]
token = "{ADMIN}"
publish = [">"]
consume = [">"]
admin = [">"]

[[tokens]]
token = "{ORDERS}"
publish = ["orders.>"]
consume = ["orders.>"]
admin = ["orders.>"]
"#
        ),
    )
    .expect("write config");
    path
}

async fn status(
    c: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> u16 {
    let mut r = c.request(method, url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().await.expect("request").status().as_u16()
}

#[tokio::test]
async fn every_http_route_refuses_missing_wrong_and_insufficient_tokens() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path());
    let server = common::Server::start(&dir.path().join("data"), Some(&cfg));
    let base = server.url();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    // Set up: a topic with a message, a leased delivery, and a dead letter, as admin.
    assert_eq!(
        status(
            &c,
            Method::POST,
            &format!("{base}/v1/topics"),
            Some(ADMIN),
            Some(json!({"name": TOPIC}))
        )
        .await,
        201
    );
    for _ in 0..2 {
        let st = status(
            &c,
            Method::POST,
            &format!("{base}/v1/topics/{TOPIC}/messages"),
            Some(ADMIN),
            Some(json!({"payload": "p"})),
        )
        .await;
        assert_eq!(st, 200);
    }
    let r: Value = c
        .post(format!(
            "{base}/v1/topics/{TOPIC}/consume?group=g&max=2&wait_ms=2000"
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("consume")
        .json()
        .await
        .expect("json");
    let lease = r["deliveries"][0]["delivery_id"]
        .as_str()
        .expect("lease")
        .to_owned();
    let doomed = r["deliveries"][1]["delivery_id"]
        .as_str()
        .expect("lease")
        .to_owned();
    assert_eq!(
        status(
            &c,
            Method::POST,
            &format!("{base}/v1/deliveries/{doomed}/reject"),
            Some(ADMIN),
            None
        )
        .await,
        204
    );

    let routes: Vec<(Method, String, Option<Value>, bool)> = vec![
        // (method, path, body, forbidden for ORDERS: false = any valid token may use it)
        (Method::GET, "/metrics".into(), None, true),
        (Method::GET, "/openapi.json".into(), None, false),
        (Method::GET, "/v1/topics".into(), None, false),
        (
            Method::POST,
            "/v1/topics".into(),
            Some(json!({"name": TOPIC})),
            true,
        ),
        (Method::GET, format!("/v1/topics/{TOPIC}"), None, true),
        (Method::DELETE, format!("/v1/topics/{TOPIC}"), None, true),
        (
            Method::POST,
            format!("/v1/topics/{TOPIC}/messages"),
            Some(json!({"payload": "x"})),
            true,
        ),
        (
            Method::POST,
            format!("/v1/topics/{TOPIC}/consume?group=g&wait_ms=10"),
            None,
            true,
        ),
        (
            Method::GET,
            format!("/v1/topics/{TOPIC}/events?group=g"),
            None,
            true,
        ),
        (
            Method::POST,
            format!("/v1/deliveries/{lease}/ack"),
            None,
            true,
        ),
        (
            Method::POST,
            format!("/v1/deliveries/{lease}/nack"),
            None,
            true,
        ),
        (
            Method::POST,
            format!("/v1/deliveries/{lease}/reject"),
            None,
            true,
        ),
        (
            Method::POST,
            format!("/v1/deliveries/{lease}/extend"),
            Some(json!({"by_ms": 1000})),
            true,
        ),
        (Method::GET, "/v1/groups".into(), None, false),
        (Method::GET, format!("/v1/dlq/dlq.{TOPIC}"), None, true),
        (
            Method::GET,
            format!("/v1/dlq/dlq.{TOPIC}/01234567-89ab-cdef-0123-456789abcdef"),
            None,
            true,
        ),
        (
            Method::POST,
            format!("/v1/dlq/dlq.{TOPIC}/replay"),
            Some(json!({"all": true})),
            true,
        ),
        (
            Method::POST,
            format!("/v1/dlq/dlq.{TOPIC}/purge"),
            None,
            true,
        ),
    ];
    for (method, path, body, scoped) in &routes {
        let url = format!("{base}{path}");
        assert_eq!(
            status(&c, method.clone(), &url, None, body.clone()).await,
            401,
            "{method} {path} without token"
        );
        assert_eq!(
            status(&c, method.clone(), &url, Some("wrong"), body.clone()).await,
            401,
            "{method} {path} wrong token"
        );
        if *scoped {
            assert_eq!(
                status(&c, method.clone(), &url, Some(ORDERS), body.clone()).await,
                403,
                "{method} {path} without the right"
            );
        }
    }
    // Listings are filtered to what the token may see.
    let topics: Value = c
        .get(format!("{base}/v1/topics"))
        .bearer_auth(ORDERS)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(topics, json!([]));
    // The WebSocket route refuses before upgrading.
    let url = format!("ws://{}/v1/topics/{TOPIC}/ws", server.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!("ws without token: {:?}", other.map(|_| ())),
    }
    // Health stays open; nothing was published by the refused requests.
    assert_eq!(
        status(&c, Method::GET, &format!("{base}/healthz"), None, None).await,
        200
    );
    assert_eq!(
        status(&c, Method::GET, &format!("{base}/readyz"), None, None).await,
        200
    );
    let t: Value = c
        .get(format!("{base}/v1/topics/{TOPIC}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("describe")
        .json()
        .await
        .expect("json");
    assert_eq!(t["offsets"][0]["end_offset"], 2, "{t}");
}

async fn grpc_codes(url: &str, token: Option<&str>) -> Vec<(&'static str, Code)> {
    let mut c = wharf_client::raw_client(url, token).await.expect("connect");
    let name = || v1::TopicName { name: TOPIC.into() };
    let code = |r: Result<tonic::Status, ()>| r.map_or(Code::Ok, |s| s.code());
    let mut out = vec![
        (
            "Info",
            code(c.info(v1::InfoRequest {}).await.err().ok_or(())),
        ),
        (
            "Publish",
            code(
                c.publish(v1::PublishRequest {
                    topic: TOPIC.into(),
                    messages: vec![v1::Message {
                        payload: b"x".to_vec().into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .await
                .err()
                .ok_or(()),
            ),
        ),
        (
            "CreateTopic",
            code(
                c.create_topic(v1::CreateTopicRequest {
                    name: TOPIC.into(),
                    ..Default::default()
                })
                .await
                .err()
                .ok_or(()),
            ),
        ),
        (
            "EnsureTopic",
            code(c.ensure_topic(name()).await.err().ok_or(())),
        ),
        (
            "ListTopics",
            code(
                c.list_topics(v1::ListTopicsRequest {})
                    .await
                    .err()
                    .ok_or(()),
            ),
        ),
        (
            "DescribeTopic",
            code(c.describe_topic(name()).await.err().ok_or(())),
        ),
        (
            "SetPartitions",
            code(
                c.set_partitions(v1::SetPartitionsRequest {
                    name: TOPIC.into(),
                    partitions: 2,
                })
                .await
                .err()
                .ok_or(()),
            ),
        ),
        (
            "ListGroups",
            code(
                c.list_groups(v1::ListGroupsRequest { group: None })
                    .await
                    .err()
                    .ok_or(()),
            ),
        ),
        (
            "DlqList",
            code(
                c.dlq_list(v1::DlqListRequest {
                    topic: format!("dlq.{TOPIC}"),
                    limit: 10,
                    cursor: None,
                })
                .await
                .err()
                .ok_or(()),
            ),
        ),
        (
            "DlqShow",
            code(
                c.dlq_show(v1::DlqShowRequest {
                    topic: format!("dlq.{TOPIC}"),
                    id: "01234567-89ab-cdef-0123-456789abcdef".into(),
                })
                .await
                .err()
                .ok_or(()),
            ),
        ),
        (
            "DlqReplay",
            code(
                c.dlq_replay(v1::DlqReplayRequest {
                    topic: format!("dlq.{TOPIC}"),
                    id: None,
                })
                .await
                .err()
                .ok_or(()),
            ),
        ),
        (
            "DlqPurge",
            code(
                c.dlq_purge(v1::TopicName {
                    name: format!("dlq.{TOPIC}"),
                })
                .await
                .err()
                .ok_or(()),
            ),
        ),
        (
            "DeleteTopic",
            code(c.delete_topic(name()).await.err().ok_or(())),
        ),
    ];
    let subscribe = v1::ConsumeRequest {
        kind: Some(v1::consume_request::Kind::Subscribe(v1::SubscribeRequest {
            pattern: TOPIC.into(),
            group: Some("g".into()),
            ..Default::default()
        })),
    };
    let r = c.consume(tokio_stream_once(subscribe)).await;
    out.push(("Consume", r.err().map_or(Code::Ok, |s| s.code())));
    out
}

fn tokio_stream_once(
    m: v1::ConsumeRequest,
) -> impl futures_util::Stream<Item = v1::ConsumeRequest> + Send + 'static {
    futures_util::stream::iter(vec![m]).chain(futures_util::stream::pending())
}

use futures_util::StreamExt as _;

#[tokio::test]
async fn every_grpc_call_refuses_missing_wrong_and_insufficient_tokens() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path());
    let server = common::Server::start(&dir.path().join("data"), Some(&cfg));
    let url = server.url();
    let mut admin = wharf_client::raw_client(&url, Some(ADMIN))
        .await
        .expect("connect");
    admin
        .create_topic(v1::CreateTopicRequest {
            name: TOPIC.into(),
            ..Default::default()
        })
        .await
        .expect("admin creates");
    admin
        .create_topic(v1::CreateTopicRequest {
            name: format!("dlq.{TOPIC}"),
            ..Default::default()
        })
        .await
        .expect("admin creates dlq");

    for (call, code) in grpc_codes(&url, None).await {
        assert_eq!(code, Code::Unauthenticated, "{call} without token");
    }
    for (call, code) in grpc_codes(&url, Some("wrong")).await {
        assert_eq!(code, Code::Unauthenticated, "{call} with a wrong token");
    }
    for (call, code) in grpc_codes(&url, Some(ORDERS)).await {
        match call {
            // Info only needs a valid token; listings are filtered instead.
            "Info" | "ListTopics" | "ListGroups" => assert_eq!(code, Code::Ok, "{call}"),
            _ => assert_eq!(code, Code::PermissionDenied, "{call} without the right"),
        }
    }
    // The admin token may do everything (this deletes the topic last).
    for (call, code) in grpc_codes(&url, Some(ADMIN)).await {
        match call {
            // Allowed, and the dead letter it asks for does not exist.
            "DlqShow" => assert_eq!(code, Code::NotFound, "{call} as admin"),
            _ => assert_eq!(code, Code::Ok, "{call} as admin"),
        }
    }
    // The client library surfaces a refused connect as an error.
    let refused = wharf_client::Client::connect(&url, Some("wrong")).await;
    assert!(refused.is_err());
}

/// The client's publish reads the response itself (not through tonic's
/// `Grpc::unary`): a refused publish is an error naming why, and stores
/// nothing; an allowed one lands.
#[tokio::test]
async fn the_client_library_reports_a_refused_publish_and_stores_nothing() {
    use wharf_core::{Message, Publisher as _};
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path());
    let server = common::Server::start(&dir.path().join("data"), Some(&cfg));
    let url = server.url();
    let admin = wharf_client::Client::connect(&url, Some(ADMIN))
        .await
        .expect("connect");
    admin
        .raw()
        .create_topic(v1::CreateTopicRequest {
            name: TOPIC.into(),
            ..Default::default()
        })
        .await
        .expect("admin creates");
    let orders = wharf_client::Client::connect(&url, Some(ORDERS))
        .await
        .expect("connect");
    let err = orders
        .publish_batch(TOPIC, vec![Message::new("a"), Message::new("b")])
        .await
        .expect_err("no publish right on payments.>");
    assert!(
        err.to_string().contains("permission denied"),
        "names the refusal: {err}"
    );
    let receipts = admin
        .publish_batch(TOPIC, vec![Message::new("c"), Message::new("d")])
        .await
        .expect("admin publishes");
    assert_eq!(
        receipts.iter().map(|r| r.offset).collect::<Vec<_>>(),
        [Some(0), Some(1)],
        "the refused batch stored nothing"
    );
}
