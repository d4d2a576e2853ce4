//! Authorization holes found from outside (issue #16 items 1–3), each
//! reproduced against a real `wharf serve`: a forged `wharf-original-topic`
//! and a DLQ replay that write where the token may not publish, a consume
//! stream whose dead-letter target writes where the token may not publish,
//! `/metrics` for any token, and gRPC reflection outside the API's auth.

mod common;

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{json, Value};
use tonic::Code;
use wharf_client::proto as v1;

const ADMIN: &str = "admin-token";
/// Publish and admin on `a.>` and `dlq.a.>`, consume on `a.>`.
const A_OWNER: &str = "a-owner-token";
/// Consume `a.x`, nothing else.
const CONSUMER: &str = "consume-a-x-token";
/// Consume `a.x` and publish to its dead-letter topic `dlq.a.x`.
const DLQ_CONSUMER: &str = "consume-a-x-dlq-token";
/// Only the metrics right.
const METRICS: &str = "metrics-token";

const SECRET: &str = "secret.t";

fn config(dir: &std::path::Path, metrics: bool) -> std::path::PathBuf {
    let path = dir.join("wharf.toml");
    let mut text = format!(
        r#"
[[tokens]]
token = "{ADMIN}"
publish = [">"]
consume = [">"]
admin = [">"]

[[tokens]]
token = "{A_OWNER}"
publish = ["a.>", "dlq.a.>"]
consume = ["a.>"]
admin = ["a.>", "dlq.a.>"]

[[tokens]]
token = "{CONSUMER}"
consume = ["a.x"]

[[tokens]]
token = "{DLQ_CONSUMER}"
consume = ["a.x"]
publish = ["dlq.a.x"]
"#
    );
    if metrics {
        text.push_str(&format!(
            "\n[[tokens]]\ntoken = \"{METRICS}\"\nmetrics = true\n"
        ));
    }
    std::fs::write(&path, text).expect("write config");
    path
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn post(c: &reqwest::Client, url: String, token: &str, body: Value) -> (u16, Value) {
    let r = c
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The end offset of partition 0 of `topic`, as the admin sees it.
async fn end_offset(c: &reqwest::Client, base: &str, topic: &str) -> u64 {
    let t: Value = c
        .get(format!("{base}/v1/topics/{topic}"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("describe")
        .json()
        .await
        .expect("json");
    t["offsets"][0]["end_offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no offsets in {t}"))
}

async fn create(c: &reqwest::Client, base: &str, body: Value) {
    let (st, b) = post(c, format!("{base}/v1/topics"), ADMIN, body).await;
    assert_eq!(st, 201, "{b}");
}

fn forged(to: &str) -> Value {
    json!({"payload": "forged", "headers": {"wharf-original-topic": to}})
}

#[tokio::test]
async fn a_publish_may_not_name_an_original_topic_the_token_may_not_publish_to() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path(), false);
    let server = common::Server::start(&dir.path().join("data"), Some(&cfg));
    let base = server.url();
    let c = http();
    create(&c, &base, json!({"name": SECRET})).await;
    create(&c, &base, json!({"name": "dlq.a.x"})).await;

    // HTTP, one message and a batch with one forged message among good ones.
    let url = format!("{base}/v1/topics/dlq.a.x/messages");
    let (st, body) = post(&c, url.clone(), A_OWNER, forged(SECRET)).await;
    assert_eq!(st, 403, "{body}");
    assert!(body.to_string().contains(SECRET), "names the topic: {body}");
    let batch = json!({"messages": [{"payload": "ok"}, forged(SECRET)]});
    let (st, body) = post(&c, url.clone(), A_OWNER, batch).await;
    assert_eq!(st, 403, "{body}");

    // gRPC.
    let mut owner = wharf_client::raw_client(&base, Some(A_OWNER))
        .await
        .expect("connect");
    let err = owner
        .publish(v1::PublishRequest {
            topic: "dlq.a.x".into(),
            messages: vec![v1::Message {
                payload: b"forged".to_vec().into(),
                headers: vec![v1::Header {
                    name: "wharf-original-topic".into(),
                    value: SECRET.into(),
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect_err("forged original topic over gRPC");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(end_offset(&c, &base, "dlq.a.x").await, 0, "nothing stored");

    // Naming a topic the token may publish to is what the router's
    // dead-letter and retry-topic middleware do: allowed.
    let (st, body) = post(&c, url, A_OWNER, forged("a.y")).await;
    assert_eq!(st, 200, "{body}");
    // So is any original topic for a token that may publish everywhere.
    let url = format!("{base}/v1/topics/dlq.a.x/messages");
    let (st, body) = post(&c, url, ADMIN, forged(SECRET)).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(end_offset(&c, &base, "dlq.a.x").await, 2);
}

#[tokio::test]
async fn dlq_replay_needs_the_publish_right_on_the_letters_original_topic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path(), false);
    let server = common::Server::start(&dir.path().join("data"), Some(&cfg));
    let base = server.url();
    let c = http();
    create(&c, &base, json!({"name": SECRET})).await;
    // A letter in dlq.a.x bound for secret.t, written by a token that may.
    let (st, body) = post(
        &c,
        format!("{base}/v1/topics/dlq.a.x/messages"),
        ADMIN,
        forged(SECRET),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let id = body["receipts"][0]["id"].as_str().expect("id").to_owned();

    let replay = format!("{base}/v1/dlq/dlq.a.x/replay");
    let (st, body) = post(&c, replay.clone(), A_OWNER, json!({"id": id})).await;
    assert_eq!(st, 403, "HTTP replay by id: {body}");
    assert!(body.to_string().contains(SECRET), "names the topic: {body}");
    let (st, body) = post(&c, replay.clone(), A_OWNER, json!({"all": true})).await;
    assert_eq!(st, 403, "HTTP replay all: {body}");

    let mut owner = wharf_client::raw_client(&base, Some(A_OWNER))
        .await
        .expect("connect");
    for which in [Some(id.clone()), None] {
        let err = owner
            .dlq_replay(v1::DlqReplayRequest {
                topic: "dlq.a.x".into(),
                id: which.clone(),
            })
            .await
            .expect_err("gRPC replay");
        assert_eq!(err.code(), Code::PermissionDenied, "{which:?}: {err:?}");
    }
    let out = common::cli_with(
        &base,
        Some(A_OWNER),
        &["dlq", "replay", "a.x", "--all"],
        None,
    );
    assert!(!out.status.success(), "CLI replay refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(end_offset(&c, &base, SECRET).await, 0, "nothing replayed");
    let listed: Value = c
        .get(format!("{base}/v1/dlq/dlq.a.x"))
        .bearer_auth(A_OWNER)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(
        listed["letters"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );

    // A token with the right replays it.
    let (st, body) = post(&c, replay, ADMIN, json!({"id": id})).await;
    assert_eq!((st, &body["count"]), (200, &json!(1)), "{body}");
    assert_eq!(end_offset(&c, &base, SECRET).await, 1);
}

fn subscribe(dead_letter_topic: Option<&str>) -> v1::ConsumeRequest {
    v1::ConsumeRequest {
        kind: Some(v1::consume_request::Kind::Subscribe(v1::SubscribeRequest {
            pattern: "a.x".into(),
            group: Some("g".into()),
            start: v1::StartKind::StartEarliest as i32,
            dead_letter_topic: dead_letter_topic.map(str::to_owned),
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn a_consume_stream_may_dead_letter_only_where_the_token_may_publish() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path(), false);
    let server = common::Server::start(&dir.path().join("data"), Some(&cfg));
    let base = server.url();
    let c = http();
    create(&c, &base, json!({"name": SECRET})).await;
    create(&c, &base, json!({"name": "a.x"})).await;
    let (st, _) = post(
        &c,
        format!("{base}/v1/topics/a.x/messages"),
        ADMIN,
        json!({"payload": "p"}),
    )
    .await;
    assert_eq!(st, 200);

    let mut consumer = wharf_client::raw_client(&base, Some(CONSUMER))
        .await
        .expect("connect");
    let requests = futures_util::stream::iter(vec![
        subscribe(Some(SECRET)),
        v1::ConsumeRequest {
            kind: Some(v1::consume_request::Kind::Credit(1)),
        },
    ]);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let result = consumer
        .consume(requests.chain(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await;
    if let Ok(stream) = result {
        // The hole: the subscription is accepted and a reject lands in secret.t.
        let mut stream = stream.into_inner();
        while let Some(Ok(m)) = stream.next().await {
            if let Some(v1::consume_response::Kind::Delivery(d)) = &m.kind {
                let reject = v1::Settle {
                    request_id: 1,
                    delivery_id: d.delivery_id,
                    action: v1::SettleAction::SettleReject as i32,
                    ..Default::default()
                };
                let _ = tx
                    .send(v1::ConsumeRequest {
                        kind: Some(v1::consume_request::Kind::Settle(reject)),
                    })
                    .await;
            }
            if matches!(m.kind, Some(v1::consume_response::Kind::Result(_))) {
                break;
            }
        }
        panic!(
            "subscribe with dead_letter_topic {SECRET} was accepted; {SECRET} now ends at {}",
            end_offset(&c, &base, SECRET).await
        );
    }
    let Err(err) = result else {
        unreachable!("an accepted subscription panicked above")
    };
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains(SECRET), "{err:?}");
    drop(tx);

    // With the publish right on the named dead-letter topic it is allowed.
    let mut dlq_consumer = wharf_client::raw_client(&base, Some(DLQ_CONSUMER))
        .await
        .expect("connect");
    let once = futures_util::stream::iter(vec![subscribe(Some("dlq.a.x"))])
        .chain(futures_util::stream::pending());
    dlq_consumer
        .consume(once)
        .await
        .expect("dead-letter topic the token may publish to");

    // A topic's configured dead-letter topic is a write target too.
    let (st, body) = post(
        &c,
        format!("{base}/v1/topics"),
        A_OWNER,
        json!({"name": "a.z", "dead_letter_topic": SECRET}),
    )
    .await;
    assert_eq!(st, 403, "HTTP create topic: {body}");
    let mut owner = wharf_client::raw_client(&base, Some(A_OWNER))
        .await
        .expect("connect");
    let err = owner
        .create_topic(v1::CreateTopicRequest {
            name: "a.z".into(),
            dead_letter_topic: Some(SECRET.into()),
            ..Default::default()
        })
        .await
        .expect_err("gRPC create topic");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(end_offset(&c, &base, SECRET).await, 0);
}

#[tokio::test]
async fn metrics_need_the_metrics_right() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path(), true);
    let server = common::Server::start(&dir.path().join("data"), Some(&cfg));
    let url = format!("{}/metrics", server.url());
    let c = http();
    let get = |token: Option<&'static str>| {
        let mut r = c.get(&url);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move { r.send().await.expect("get").status().as_u16() }
    };
    assert_eq!(get(None).await, 401);
    assert_eq!(get(Some(A_OWNER)).await, 403, "a token without the right");
    assert_eq!(get(Some(CONSUMER)).await, 403, "a token without the right");
    assert_eq!(get(Some(METRICS)).await, 200);
    assert_eq!(get(Some(ADMIN)).await, 200, "admin on every topic");
}

#[tokio::test]
async fn metrics_are_open_when_auth_is_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(&dir.path().join("data"), None);
    let r = http()
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
}

async fn list_services_v1(url: &str, token: Option<&str>) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let channel = wharf_client::Conn::connect(url, None)
        .await
        .expect("connect");
    let auth = token.map(|t| format!("Bearer {t}"));
    let channel = tonic::service::interceptor::InterceptedService::new(
        channel,
        move |mut req: tonic::Request<()>| {
            if let Some(a) = &auth {
                req.metadata_mut()
                    .insert("authorization", a.parse().expect("ascii"));
            }
            Ok(req)
        },
    );
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(futures_util::stream::iter(vec![request]))
        .await?
        .into_inner();
    let response = responses.message().await?.expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response: {response:?}");
    };
    Ok(list.service.into_iter().map(|s| s.name).collect())
}

async fn list_services_v1alpha(
    url: &str,
    token: Option<&str>,
) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    let channel = wharf_client::Conn::connect(url, None)
        .await
        .expect("connect");
    let auth = token.map(|t| format!("Bearer {t}"));
    let channel = tonic::service::interceptor::InterceptedService::new(
        channel,
        move |mut req: tonic::Request<()>| {
            if let Some(a) = &auth {
                req.metadata_mut()
                    .insert("authorization", a.parse().expect("ascii"));
            }
            Ok(req)
        },
    );
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(futures_util::stream::iter(vec![request]))
        .await?
        .into_inner();
    let response = responses.message().await?.expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response: {response:?}");
    };
    Ok(list.service.into_iter().map(|s| s.name).collect())
}

#[tokio::test]
async fn reflection_needs_a_token_like_the_api_and_speaks_v1_and_v1alpha() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path(), false);
    let server = common::Server::start(&dir.path().join("data"), Some(&cfg));
    let url = server.url();
    for token in [None, Some("wrong")] {
        let v1 = list_services_v1(&url, token).await.map_err(|s| s.code());
        assert_eq!(v1, Err(Code::Unauthenticated), "v1 with {token:?}");
        let alpha = list_services_v1alpha(&url, token)
            .await
            .map_err(|s| s.code());
        assert_eq!(alpha, Err(Code::Unauthenticated), "v1alpha with {token:?}");
    }
    let v1 = list_services_v1(&url, Some(CONSUMER)).await.expect("v1");
    assert!(v1.iter().any(|n| n == "wharf.v1.Wharf"), "{v1:?}");
    let alpha = list_services_v1alpha(&url, Some(CONSUMER))
        .await
        .expect("v1alpha");
    assert!(alpha.iter().any(|n| n == "wharf.v1.Wharf"), "{alpha:?}");
}
