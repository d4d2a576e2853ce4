//! Authorization holes found from outside (issue #16 items 1–3), each
//! reproduced against a real `wharf serve`: a forged `wharf-original-topic`
//! and a DLQ replay that write where the token may not publish, a consume
//! stream whose dead-letter target writes where the token may not publish,
//! `/metrics` for any token, and gRPC reflection outside the API's auth.
//! The matrix covers every HTTP route and RPC, the event store's too
//! (rights on stream-name prefixes).

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

// ---------- the authorization matrix ----------

/// Rights a matrix token holds on `m.>` and `dlq.m.>` (never on `x.>`).
const P: u8 = 1;
const C: u8 = 2;
const A: u8 = 4;
const M: u8 = 8;
/// Every right on every topic.
const ROOT: u8 = 16;
/// Event store rights on streams starting with `m-` (never `x-`).
const ER: u8 = 32;
const EA: u8 = 64;
const EAD: u8 = 128;

/// The matrix tokens: each right alone, the pairs some calls need, none
/// (a valid token without rights), and root.
const MATRIX_TOKENS: [(&str, u8); 11] = [
    ("m-none", 0),
    ("m-publish", P),
    ("m-consume", C),
    ("m-admin", A),
    ("m-metrics", M),
    ("m-publish-admin", P | A),
    ("m-consume-publish", C | P),
    ("m-events-read", ER),
    ("m-events-append", EA),
    ("m-events-admin", EAD),
    ("m-root", ROOT | P | C | A | M | ER | EA | EAD),
];

fn matrix_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("matrix.toml");
    let mut text = String::new();
    for (token, rights) in MATRIX_TOKENS {
        let on = |r: u8| {
            if rights & ROOT != 0 {
                r#"[">"]"#
            } else if rights & r != 0 {
                r#"["m.>", "dlq.m.>"]"#
            } else {
                "[]"
            }
        };
        let streams = |r: u8| {
            if rights & ROOT != 0 {
                r#"["*"]"#
            } else if rights & r != 0 {
                r#"["m-"]"#
            } else {
                "[]"
            }
        };
        text.push_str(&format!(
            "[[tokens]]\ntoken = \"{token}\"\npublish = {}\nconsume = {}\nadmin = {}\nmetrics = {}\nevents_read = {}\nevents_append = {}\nevents_admin = {}\n\n",
            on(P),
            on(C),
            on(A),
            rights & M != 0 && rights & ROOT == 0,
            streams(ER),
            streams(EA),
            streams(EAD),
        ));
    }
    std::fs::write(&path, text).expect("write config");
    path
}

/// Who a call is for.
#[derive(Clone, Copy)]
enum Need {
    /// Anyone, without a token.
    Nothing,
    /// Any valid token.
    Token,
    /// A token holding every right in the mask (on `m.>`).
    All(u8),
    /// A token holding at least one right in the mask.
    Any(u8),
}

impl Need {
    fn allows(self, rights: u8) -> bool {
        match self {
            Need::Nothing | Need::Token => true,
            Need::All(mask) => rights & mask == mask,
            Need::Any(mask) => rights & mask != 0,
        }
    }
}

/// What a cell needs in place before its request (`{x}` in the path or
/// body is replaced by what the setup returns).
#[derive(Clone, Copy)]
enum Setup {
    None,
    /// A fresh long-poll lease on `m.t`.
    Lease,
    /// A fresh topic to delete.
    Topic,
    /// A letter in the dead-letter topic (first) bound for the topic (second).
    Letter(&'static str, &'static str),
    /// A fresh projection of streams `m-` into `m.t`.
    Projection,
}

struct HttpCase {
    /// The route as the OpenAPI document names it, `METHOD /path/{param}`.
    route: &'static str,
    /// What this row varies (a field that names a topic).
    what: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    setup: Setup,
    need: Need,
}

const fn http_case(
    route: &'static str,
    what: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    setup: Setup,
    need: Need,
) -> HttpCase {
    HttpCase {
        route,
        what,
        path,
        body,
        setup,
        need,
    }
}

/// Every HTTP route, and a row per field that names a topic.
const HTTP_MATRIX: &[HttpCase] = &[
    http_case(
        "GET /healthz",
        "",
        "/healthz",
        None,
        Setup::None,
        Need::Nothing,
    ),
    http_case(
        "GET /readyz",
        "",
        "/readyz",
        None,
        Setup::None,
        Need::Nothing,
    ),
    http_case(
        "GET /openapi.json",
        "",
        "/openapi.json",
        None,
        Setup::None,
        Need::Token,
    ),
    http_case(
        "GET /metrics",
        "",
        "/metrics",
        None,
        Setup::None,
        Need::Any(M),
    ),
    http_case(
        "GET /v1/topics",
        "",
        "/v1/topics",
        None,
        Setup::None,
        Need::Any(A),
    ),
    http_case(
        "POST /v1/topics",
        "",
        "/v1/topics",
        Some(r#"{"name":"m.new"}"#),
        Setup::None,
        Need::Any(A),
    ),
    http_case(
        "POST /v1/topics",
        "dead_letter_topic in m.>",
        "/v1/topics",
        Some(r#"{"name":"m.new2","dead_letter_topic":"m.dl"}"#),
        Setup::None,
        Need::All(A | P),
    ),
    http_case(
        "POST /v1/topics",
        "dead_letter_topic outside",
        "/v1/topics",
        Some(r#"{"name":"m.new3","dead_letter_topic":"x.t"}"#),
        Setup::None,
        Need::All(ROOT),
    ),
    http_case(
        "GET /v1/topics/{topic}",
        "",
        "/v1/topics/m.t",
        None,
        Setup::None,
        Need::Any(A),
    ),
    http_case(
        "DELETE /v1/topics/{topic}",
        "",
        "/v1/topics/{x}",
        None,
        Setup::Topic,
        Need::Any(A),
    ),
    http_case(
        "POST /v1/groups/{group}/topics/{topic}/reset",
        "",
        "/v1/groups/g/topics/m.t/reset",
        Some(r#"{"to":"earliest"}"#),
        Setup::None,
        Need::Any(A),
    ),
    http_case(
        "POST /v1/groups/{group}/topics/{topic}/reset",
        "topic outside",
        "/v1/groups/g/topics/x.t/reset",
        Some(r#"{"to":"latest"}"#),
        Setup::None,
        Need::All(ROOT),
    ),
    http_case(
        "GET /v1/whoami",
        "",
        "/v1/whoami",
        None,
        Setup::None,
        Need::Token,
    ),
    http_case(
        "GET /v1/topics/{topic}/partitions/{partition}/messages",
        "",
        "/v1/topics/m.t/partitions/0/messages?offset=0",
        None,
        Setup::None,
        Need::Any(A),
    ),
    http_case(
        "GET /v1/topics/{topic}/partitions/{partition}/messages",
        "topic outside",
        "/v1/topics/x.t/partitions/0/messages?time_ms=0",
        None,
        Setup::None,
        Need::All(ROOT),
    ),
    http_case(
        "POST /v1/topics/{topic}/partitions/{partition}/repair",
        "",
        "/v1/topics/m.t/partitions/0/repair",
        Some(r#"{"action":"skip_batch","dry_run":true}"#),
        Setup::None,
        Need::Any(A),
    ),
    http_case(
        "POST /v1/topics/{topic}/messages",
        "",
        "/v1/topics/m.t/messages",
        Some(r#"{"payload":"p"}"#),
        Setup::None,
        Need::Any(P),
    ),
    http_case(
        "POST /v1/topics/{topic}/messages",
        "wharf-original-topic in m.>",
        "/v1/topics/dlq.m.t/messages",
        Some(r#"{"payload":"p","headers":{"wharf-original-topic":"m.o"}}"#),
        Setup::None,
        Need::Any(P),
    ),
    http_case(
        "POST /v1/topics/{topic}/messages",
        "wharf-original-topic outside",
        "/v1/topics/dlq.m.t/messages",
        Some(r#"{"payload":"p","headers":{"wharf-original-topic":"x.t"}}"#),
        Setup::None,
        Need::All(ROOT),
    ),
    http_case(
        "POST /v1/topics/{topic}/consume",
        "",
        "/v1/topics/m.t/consume?group=mg&wait_ms=0",
        None,
        Setup::None,
        Need::Any(C),
    ),
    http_case(
        "GET /v1/topics/{topic}/events",
        "",
        "/v1/topics/m.t/events?group=mg",
        None,
        Setup::None,
        Need::Any(C),
    ),
    http_case(
        "GET /v1/topics/{topic}/ws",
        "",
        "/v1/topics/m.t/ws?group=mg",
        None,
        Setup::None,
        Need::Any(C),
    ),
    http_case(
        "POST /v1/deliveries/{id}/ack",
        "",
        "/v1/deliveries/{x}/ack",
        None,
        Setup::Lease,
        Need::Any(C),
    ),
    http_case(
        "POST /v1/deliveries/{id}/nack",
        "",
        "/v1/deliveries/{x}/nack",
        None,
        Setup::Lease,
        Need::Any(C),
    ),
    http_case(
        "POST /v1/deliveries/{id}/reject",
        "",
        "/v1/deliveries/{x}/reject",
        None,
        Setup::Lease,
        Need::Any(C),
    ),
    http_case(
        "POST /v1/deliveries/{id}/extend",
        "",
        "/v1/deliveries/{x}/extend",
        Some(r#"{"by_ms":1000}"#),
        Setup::Lease,
        Need::Any(C),
    ),
    http_case(
        "GET /v1/groups",
        "",
        "/v1/groups",
        None,
        Setup::None,
        Need::Any(A),
    ),
    http_case(
        "GET /v1/dlq/{topic}",
        "",
        "/v1/dlq/dlq.m.t",
        None,
        Setup::None,
        Need::Any(A),
    ),
    http_case(
        "GET /v1/dlq/{topic}/{id}",
        "",
        "/v1/dlq/dlq.m.t/{x}",
        None,
        Setup::Letter("dlq.m.t", "m.t"),
        Need::Any(A),
    ),
    http_case(
        "POST /v1/dlq/{topic}/replay",
        "letter bound for m.>",
        "/v1/dlq/dlq.m.r/replay",
        Some(r#"{"all":true}"#),
        Setup::Letter("dlq.m.r", "m.t"),
        Need::All(A | P),
    ),
    http_case(
        "POST /v1/dlq/{topic}/replay",
        "letter bound outside",
        "/v1/dlq/dlq.m.u/replay",
        Some(r#"{"id":"{x}"}"#),
        Setup::Letter("dlq.m.u", "x.t"),
        Need::All(ROOT),
    ),
    http_case(
        "POST /v1/dlq/{topic}/purge",
        "",
        "/v1/dlq/dlq.m.t/purge",
        None,
        Setup::None,
        Need::Any(A),
    ),
    http_case(
        "POST /v1/eventstore/streams/{stream}",
        "stream in m-",
        "/v1/eventstore/streams/m-1",
        Some(r#"{"events":[{"type":"T","payload":"p"}]}"#),
        Setup::None,
        Need::Any(EA),
    ),
    http_case(
        "POST /v1/eventstore/streams/{stream}",
        "stream outside",
        "/v1/eventstore/streams/x-1",
        Some(r#"{"events":[{"type":"T","payload":"p"}]}"#),
        Setup::None,
        Need::All(ROOT),
    ),
    http_case(
        "POST /v1/eventstore/streams/{stream}",
        "snapshot stream of m-",
        "/v1/eventstore/streams/$snapshot-m-1",
        Some(r#"{"events":[{"type":"$snapshot","payload":"p"}]}"#),
        Setup::None,
        Need::Any(EA),
    ),
    http_case(
        "POST /v1/eventstore/streams/{stream}",
        "condition (reads every stream)",
        "/v1/eventstore/streams/m-1",
        Some(r#"{"events":[{"type":"T","payload":"p"}],"condition":{"query":[{"tags":["t"]}]}}"#),
        Setup::None,
        Need::All(ROOT),
    ),
    http_case(
        "GET /v1/eventstore/streams/{stream}",
        "stream in m-",
        "/v1/eventstore/streams/m-1",
        None,
        Setup::None,
        Need::Any(ER),
    ),
    http_case(
        "GET /v1/eventstore/streams/{stream}",
        "stream outside",
        "/v1/eventstore/streams/x-1",
        None,
        Setup::None,
        Need::All(ROOT),
    ),
    http_case(
        "DELETE /v1/eventstore/streams/{stream}",
        "stream in m-",
        "/v1/eventstore/streams/m-2",
        None,
        Setup::None,
        Need::Any(EAD),
    ),
    http_case(
        "DELETE /v1/eventstore/streams/{stream}",
        "stream outside",
        "/v1/eventstore/streams/x-2?tombstone=true",
        None,
        Setup::None,
        Need::All(ROOT),
    ),
    http_case(
        "GET /v1/eventstore/streams/{stream}/info",
        "stream in m-",
        "/v1/eventstore/streams/m-1/info",
        None,
        Setup::None,
        Need::Any(ER),
    ),
    http_case(
        "GET /v1/eventstore/streams/{stream}/info",
        "stream outside",
        "/v1/eventstore/streams/x-1/info",
        None,
        Setup::None,
        Need::All(ROOT),
    ),
    http_case(
        "PUT /v1/eventstore/streams/{stream}/metadata",
        "stream in m-",
        "/v1/eventstore/streams/m-3/metadata",
        Some(r#"{"max_count":5}"#),
        Setup::None,
        Need::Any(EAD),
    ),
    http_case(
        "PUT /v1/eventstore/streams/{stream}/metadata",
        "stream outside",
        "/v1/eventstore/streams/x-3/metadata",
        Some(r#"{"max_count":5}"#),
        Setup::None,
        Need::All(ROOT),
    ),
    http_case(
        "GET /v1/eventstore/streams",
        "prefix m-",
        "/v1/eventstore/streams?prefix=m-",
        None,
        Setup::None,
        Need::Any(ER),
    ),
    http_case(
        "GET /v1/eventstore/streams",
        "every stream",
        "/v1/eventstore/streams",
        None,
        Setup::None,
        Need::All(ROOT),
    ),
    http_case(
        "GET /v1/eventstore/all",
        "prefix m-",
        "/v1/eventstore/all?prefix=m-",
        None,
        Setup::None,
        Need::Any(ER),
    ),
    http_case(
        "GET /v1/eventstore/all",
        "every stream",
        "/v1/eventstore/all",
        None,
        Setup::None,
        Need::All(ROOT),
    ),
    http_case(
        "GET /v1/eventstore/all",
        "prefix m- with system streams",
        "/v1/eventstore/all?prefix=m-&include_system=true",
        None,
        Setup::None,
        Need::All(ROOT),
    ),
    http_case(
        "GET /v1/eventstore/subscribe",
        "prefix m-",
        "/v1/eventstore/subscribe?prefix=m-",
        None,
        Setup::None,
        Need::Any(ER),
    ),
    http_case(
        "GET /v1/eventstore/subscribe",
        "prefix outside",
        "/v1/eventstore/subscribe?prefix=x-",
        None,
        Setup::None,
        Need::All(ROOT),
    ),
    http_case(
        "GET /v1/eventstore/head",
        "",
        "/v1/eventstore/head",
        None,
        Setup::None,
        Need::Token,
    ),
    http_case(
        "GET /v1/eventstore/projections",
        "",
        "/v1/eventstore/projections",
        None,
        Setup::None,
        Need::Any(ER),
    ),
    http_case(
        "POST /v1/eventstore/projections",
        "prefix in m-, topic in m.>",
        "/v1/eventstore/projections",
        Some(r#"{"name":"pm","topic":"m.t","prefix":"m-"}"#),
        Setup::None,
        Need::All(EAD | ER | P),
    ),
    http_case(
        "POST /v1/eventstore/projections",
        "topic outside",
        "/v1/eventstore/projections",
        Some(r#"{"name":"px","topic":"x.t","prefix":"m-"}"#),
        Setup::None,
        Need::All(ROOT),
    ),
    http_case(
        "POST /v1/eventstore/projections",
        "every stream",
        "/v1/eventstore/projections",
        Some(r#"{"name":"pa","topic":"m.t"}"#),
        Setup::None,
        Need::All(ROOT),
    ),
    http_case(
        "GET /v1/eventstore/projections/{name}",
        "",
        "/v1/eventstore/projections/{x}",
        None,
        Setup::Projection,
        Need::Any(ER),
    ),
    http_case(
        "DELETE /v1/eventstore/projections/{name}",
        "",
        "/v1/eventstore/projections/{x}",
        None,
        Setup::Projection,
        Need::Any(EAD),
    ),
    http_case(
        "POST /v1/eventstore/projections/{name}/rebuild",
        "",
        "/v1/eventstore/projections/{x}/rebuild",
        None,
        Setup::Projection,
        Need::All(EAD | ER | P),
    ),
];

async fn root_json(req: reqwest::RequestBuilder) -> Value {
    let r = req
        .bearer_auth("m-root")
        .send()
        .await
        .expect("setup request");
    assert!(r.status().is_success(), "setup: {}", r.status());
    r.json().await.unwrap_or(Value::Null)
}

/// Runs `setup` as root and returns what replaces `{x}`.
async fn run_setup(c: &reqwest::Client, base: &str, setup: Setup, n: usize) -> String {
    match setup {
        Setup::None => String::new(),
        Setup::Lease => {
            let publish = c
                .post(format!("{base}/v1/topics/m.t/messages"))
                .json(&json!({"payload": "lease"}));
            root_json(publish).await;
            let consume = c.post(format!(
                "{base}/v1/topics/m.t/consume?group=leases&wait_ms=5000"
            ));
            let r = root_json(consume).await;
            r["deliveries"][0]["delivery_id"]
                .as_str()
                .unwrap_or_else(|| panic!("a lease: {r}"))
                .to_owned()
        }
        Setup::Topic => {
            let name = format!("m.del{n}");
            let create = c
                .post(format!("{base}/v1/topics"))
                .json(&json!({"name": name}));
            root_json(create).await;
            name
        }
        Setup::Projection => {
            let name = format!("mp{n}");
            let create = c
                .post(format!("{base}/v1/eventstore/projections"))
                .json(&json!({"name": name, "topic": "m.t", "prefix": "m-"}));
            root_json(create).await;
            name
        }
        Setup::Letter(dlq, to) => {
            let publish = c
                .post(format!("{base}/v1/topics/{dlq}/messages"))
                .json(&forged(to));
            let r = root_json(publish).await;
            r["receipts"][0]["id"].as_str().expect("id").to_owned()
        }
    }
}

/// The HTTP status of one cell (the WebSocket route through a real upgrade).
async fn http_status(
    c: &reqwest::Client,
    base: &str,
    case: &HttpCase,
    x: &str,
    token: Option<&str>,
) -> u16 {
    let path = case.path.replace("{x}", x);
    let (method, _) = case.route.split_once(' ').expect("METHOD /path");
    if path.contains("/ws") {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let url = format!("{}{path}", base.replace("http://", "ws://"));
        let mut req = url.into_client_request().expect("ws request");
        if let Some(t) = token {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("ascii"),
            );
        }
        return match tokio_tungstenite::connect_async(req).await {
            Ok((_, resp)) => resp.status().as_u16(),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("ws {path}: {e}"),
        };
    }
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut r = c.request(method, format!("{base}{path}"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = case.body {
        r = r
            .header("content-type", "application/json")
            .body(b.replace("{x}", x));
    }
    // Streams (SSE) answer with their status before the first event.
    r.send().await.expect("request").status().as_u16()
}

/// Every OpenAPI operation as `METHOD /path`.
async fn openapi_routes(c: &reqwest::Client, base: &str) -> Vec<String> {
    let doc = root_json(c.get(format!("{base}/openapi.json"))).await;
    let mut out = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                out.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_route_and_topic_field_allows_exactly_the_tokens_with_the_right() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = matrix_config(dir.path());
    let server = common::Server::start(&dir.path().join("data"), Some(&cfg));
    let base = server.url();
    let c = http();
    for t in ["m.t", "x.t", "dlq.m.t"] {
        root_json(
            c.post(format!("{base}/v1/topics"))
                .json(&json!({"name": t})),
        )
        .await;
    }

    // A route without a row fails here: add it to HTTP_MATRIX.
    for route in openapi_routes(&c, &base).await {
        assert!(
            HTTP_MATRIX.iter().any(|case| case.route == route),
            "{route} has no row in HTTP_MATRIX"
        );
    }

    let mut wrong = Vec::new();
    let mut n = 0;
    for case in HTTP_MATRIX {
        let mut cells: Vec<(&str, Option<&str>, u8)> =
            vec![("no token", None, 0), ("wrong token", Some("wrong"), 0)];
        cells.extend(MATRIX_TOKENS.iter().map(|&(t, r)| (t, Some(t), r)));
        for (who, token, rights) in cells {
            n += 1;
            let x = run_setup(&c, &base, case.setup, n).await;
            let got = http_status(&c, &base, case, &x, token).await;
            let allowed = match case.need {
                Need::Nothing => true,
                _ if token.is_none() || token == Some("wrong") => false,
                need => need.allows(rights),
            };
            let ok = if allowed {
                got != 401 && got != 403 && got < 500
            } else if token.is_none() || token == Some("wrong") {
                got == 401
            } else {
                got == 403
            };
            if !ok {
                wrong.push(format!(
                    "{} [{}] as {who}: {got}, expected {}",
                    case.route,
                    case.what,
                    if allowed { "allowed" } else { "refused" }
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong cells:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

struct GrpcCase {
    rpc: &'static str,
    what: &'static str,
    setup: Setup,
    need: Need,
}

const fn grpc_case(rpc: &'static str, what: &'static str, setup: Setup, need: Need) -> GrpcCase {
    GrpcCase {
        rpc,
        what,
        setup,
        need,
    }
}

/// Every RPC, and a row per field that names a topic.
const GRPC_MATRIX: &[GrpcCase] = &[
    grpc_case("Info", "", Setup::None, Need::Token),
    grpc_case("Publish", "", Setup::None, Need::Any(P)),
    grpc_case(
        "Publish",
        "wharf-original-topic in m.>",
        Setup::None,
        Need::Any(P),
    ),
    grpc_case(
        "Publish",
        "wharf-original-topic outside",
        Setup::None,
        Need::All(ROOT),
    ),
    grpc_case("Consume", "", Setup::None, Need::Any(C)),
    grpc_case(
        "Consume",
        "dead_letter_topic in m.>",
        Setup::None,
        Need::All(C | P),
    ),
    grpc_case(
        "Consume",
        "dead_letter_topic outside",
        Setup::None,
        Need::All(ROOT),
    ),
    grpc_case("CreateTopic", "", Setup::None, Need::Any(A)),
    grpc_case(
        "CreateTopic",
        "dead_letter_topic in m.>",
        Setup::None,
        Need::All(A | P),
    ),
    grpc_case(
        "CreateTopic",
        "dead_letter_topic outside",
        Setup::None,
        Need::All(ROOT),
    ),
    grpc_case("EnsureTopic", "", Setup::None, Need::Any(A | P)),
    grpc_case("ListTopics", "", Setup::None, Need::Any(A)),
    grpc_case("DescribeTopic", "", Setup::None, Need::Any(A)),
    grpc_case("DeleteTopic", "", Setup::Topic, Need::Any(A)),
    grpc_case("SetPartitions", "", Setup::None, Need::Any(A)),
    grpc_case("RepairPartition", "", Setup::None, Need::Any(A)),
    grpc_case("ListGroups", "", Setup::None, Need::Any(A)),
    grpc_case("ResetGroup", "", Setup::None, Need::Any(A)),
    grpc_case("ResetGroup", "topic outside", Setup::None, Need::All(ROOT)),
    grpc_case("DlqList", "", Setup::None, Need::Any(A)),
    grpc_case("DlqShow", "", Setup::Letter("dlq.m.t", "m.t"), Need::Any(A)),
    grpc_case(
        "DlqReplay",
        "letter bound for m.>",
        Setup::Letter("dlq.m.r", "m.t"),
        Need::All(A | P),
    ),
    grpc_case(
        "DlqReplay",
        "letter bound outside",
        Setup::Letter("dlq.m.u", "x.t"),
        Need::All(ROOT),
    ),
    grpc_case("DlqPurge", "", Setup::None, Need::Any(A)),
    grpc_case("Append", "stream in m-", Setup::None, Need::Any(EA)),
    grpc_case("Append", "stream outside", Setup::None, Need::All(ROOT)),
    grpc_case(
        "Append",
        "condition (reads every stream)",
        Setup::None,
        Need::All(ROOT),
    ),
    grpc_case("ReadStream", "stream in m-", Setup::None, Need::Any(ER)),
    grpc_case("ReadStream", "stream outside", Setup::None, Need::All(ROOT)),
    grpc_case("ReadAll", "prefix m-", Setup::None, Need::Any(ER)),
    grpc_case("ReadAll", "every stream", Setup::None, Need::All(ROOT)),
    grpc_case("Subscribe", "prefix m-", Setup::None, Need::Any(ER)),
    grpc_case("Subscribe", "prefix outside", Setup::None, Need::All(ROOT)),
    grpc_case("StreamInfo", "stream in m-", Setup::None, Need::Any(ER)),
    grpc_case("StreamInfo", "stream outside", Setup::None, Need::All(ROOT)),
    grpc_case(
        "SetStreamMetadata",
        "stream in m-",
        Setup::None,
        Need::Any(EAD),
    ),
    grpc_case(
        "SetStreamMetadata",
        "stream outside",
        Setup::None,
        Need::All(ROOT),
    ),
    grpc_case("DeleteStream", "stream in m-", Setup::None, Need::Any(EAD)),
    grpc_case(
        "DeleteStream",
        "stream outside",
        Setup::None,
        Need::All(ROOT),
    ),
    grpc_case("ListStreams", "prefix m-", Setup::None, Need::Any(ER)),
    grpc_case("ListStreams", "every stream", Setup::None, Need::All(ROOT)),
    grpc_case("Head", "", Setup::None, Need::Token),
    grpc_case(
        "CreateProjection",
        "prefix in m-, topic in m.>",
        Setup::None,
        Need::All(EAD | ER | P),
    ),
    grpc_case(
        "CreateProjection",
        "topic outside",
        Setup::None,
        Need::All(ROOT),
    ),
    grpc_case(
        "CreateProjection",
        "every stream",
        Setup::None,
        Need::All(ROOT),
    ),
    grpc_case("ListProjections", "", Setup::None, Need::Any(ER)),
    grpc_case("ProjectionStatus", "", Setup::Projection, Need::Any(ER)),
    grpc_case("DeleteProjection", "", Setup::Projection, Need::Any(EAD)),
    grpc_case(
        "RebuildProjection",
        "",
        Setup::Projection,
        Need::All(EAD | ER | P),
    ),
    grpc_case("Limits", "", Setup::None, Need::Token),
];

/// The code one gRPC cell gets (`Ok` when the call was accepted).
async fn grpc_code(url: &str, case: &GrpcCase, x: &str, token: Option<&str>) -> Code {
    let mut c = wharf_client::raw_client(url, token).await.expect("connect");
    let header = |to: &str| v1::Header {
        name: "wharf-original-topic".into(),
        value: to.into(),
    };
    let publish = |headers: Vec<v1::Header>, topic: &str| v1::PublishRequest {
        topic: topic.into(),
        messages: vec![v1::Message {
            payload: b"p".to_vec().into(),
            headers,
            ..Default::default()
        }],
        ..Default::default()
    };
    let create = |name: &str, dlq: Option<&str>| v1::CreateTopicRequest {
        name: name.into(),
        dead_letter_topic: dlq.map(str::to_owned),
        ..Default::default()
    };
    let name = |n: &str| v1::TopicName { name: n.into() };
    let code = |e: Option<tonic::Status>| e.map_or(Code::Ok, |s| s.code());
    match (case.rpc, case.what) {
        ("Info", _) => code(c.info(v1::InfoRequest {}).await.err()),
        ("Publish", "") => code(c.publish(publish(vec![], "m.t")).await.err()),
        ("Publish", "wharf-original-topic in m.>") => code(
            c.publish(publish(vec![header("m.o")], "dlq.m.t"))
                .await
                .err(),
        ),
        ("Publish", _) => code(
            c.publish(publish(vec![header("x.t")], "dlq.m.t"))
                .await
                .err(),
        ),
        ("Consume", what) => {
            let dlq = match what {
                "" => None,
                "dead_letter_topic in m.>" => Some("m.dl"),
                _ => Some("x.t"),
            };
            let once = futures_util::stream::iter(vec![v1::ConsumeRequest {
                kind: Some(v1::consume_request::Kind::Subscribe(v1::SubscribeRequest {
                    pattern: "m.t".into(),
                    group: Some("mg".into()),
                    dead_letter_topic: dlq.map(str::to_owned),
                    ..Default::default()
                })),
            }])
            .chain(futures_util::stream::pending());
            code(c.consume(once).await.err())
        }
        ("CreateTopic", "") => code(c.create_topic(create("m.g1", None)).await.err()),
        ("CreateTopic", "dead_letter_topic in m.>") => {
            code(c.create_topic(create("m.g2", Some("m.dl"))).await.err())
        }
        ("CreateTopic", _) => code(c.create_topic(create("m.g3", Some("x.t"))).await.err()),
        ("EnsureTopic", _) => code(c.ensure_topic(name("m.t")).await.err()),
        ("ListTopics", _) => code(c.list_topics(v1::ListTopicsRequest {}).await.err()),
        ("DescribeTopic", _) => code(c.describe_topic(name("m.t")).await.err()),
        ("DeleteTopic", _) => code(c.delete_topic(name(x)).await.err()),
        ("SetPartitions", _) => code(
            c.set_partitions(v1::SetPartitionsRequest {
                name: "m.t".into(),
                partitions: 1,
            })
            .await
            .err(),
        ),
        ("RepairPartition", _) => code(
            c.repair_partition(v1::RepairPartitionRequest {
                topic: "m.t".into(),
                partition: 0,
                action: Some(v1::repair_partition_request::Action::SkipBatch(
                    v1::Empty {},
                )),
                dry_run: true,
            })
            .await
            .err(),
        ),
        ("ListGroups", _) => code(
            c.list_groups(v1::ListGroupsRequest { group: None })
                .await
                .err(),
        ),
        ("ResetGroup", what) => code(
            c.reset_group(v1::ResetGroupRequest {
                group: "g".into(),
                topic: if what.is_empty() { "m.t" } else { "x.t" }.into(),
                to: v1::StartKind::StartEarliest as i32,
                value: 0,
            })
            .await
            .err(),
        ),
        ("DlqList", _) => code(
            c.dlq_list(v1::DlqListRequest {
                topic: "dlq.m.t".into(),
                limit: 10,
                cursor: None,
            })
            .await
            .err(),
        ),
        ("DlqShow", _) => code(
            c.dlq_show(v1::DlqShowRequest {
                topic: "dlq.m.t".into(),
                id: x.into(),
            })
            .await
            .err(),
        ),
        ("DlqReplay", "letter bound for m.>") => code(
            c.dlq_replay(v1::DlqReplayRequest {
                topic: "dlq.m.r".into(),
                id: None,
            })
            .await
            .err(),
        ),
        ("DlqReplay", _) => code(
            c.dlq_replay(v1::DlqReplayRequest {
                topic: "dlq.m.u".into(),
                id: Some(x.into()),
            })
            .await
            .err(),
        ),
        ("DlqPurge", _) => code(c.dlq_purge(name("dlq.m.t")).await.err()),
        (rpc, what) => event_store_code(url, rpc, what, x, token).await,
    }
}

/// The code of one `wharf.v1.EventStore` cell: `m-…` streams inside the
/// matrix tokens' prefix, `x-…` outside.
async fn event_store_code(url: &str, rpc: &str, what: &str, x: &str, token: Option<&str>) -> Code {
    let mut c = wharf_client::raw_event_store_client(url, token)
        .await
        .expect("connect");
    let stream = if what.contains("outside") {
        "x-1"
    } else {
        "m-1"
    };
    let prefix = match what {
        "prefix m-" => Some("m-".to_owned()),
        "prefix outside" => Some("x-".to_owned()),
        _ => None,
    };
    let filter = Some(v1::EsFilter {
        stream_prefix: prefix.clone(),
        ..Default::default()
    });
    let event = v1::EsEvent {
        event_type: "T".into(),
        schema_version: 1,
        payload: b"p".to_vec().into(),
        ..Default::default()
    };
    let code = |e: Option<tonic::Status>| e.map_or(Code::Ok, |s| s.code());
    match rpc {
        "Append" => code(
            c.append(v1::EsAppendRequest {
                stream: stream.into(),
                events: vec![event],
                condition: what.starts_with("condition").then(|| v1::EsCondition {
                    query: Some(v1::EsQuery {
                        items: vec![v1::EsQueryItem {
                            tags: vec!["t".into()],
                            ..Default::default()
                        }],
                    }),
                    after: None,
                }),
                ..Default::default()
            })
            .await
            .err(),
        ),
        "ReadStream" => code(
            c.read_stream(v1::EsReadStreamRequest {
                stream: stream.into(),
                ..Default::default()
            })
            .await
            .err(),
        ),
        "ReadAll" => code(
            c.read_all(v1::EsReadAllRequest {
                filter,
                max_count: 10,
                ..Default::default()
            })
            .await
            .err(),
        ),
        "Subscribe" => code(
            c.subscribe(v1::EsSubscribeRequest {
                filter,
                ..Default::default()
            })
            .await
            .err(),
        ),
        "StreamInfo" => code(
            c.stream_info(v1::EsStreamName {
                stream: stream.into(),
            })
            .await
            .err(),
        ),
        "SetStreamMetadata" => code(
            c.set_stream_metadata(v1::EsSetMetadataRequest {
                stream: stream.into(),
                metadata: Some(v1::EsMetadata {
                    max_count: Some(5),
                    ..Default::default()
                }),
            })
            .await
            .err(),
        ),
        "DeleteStream" => code(
            c.delete_stream(v1::EsDeleteRequest {
                stream: stream.into(),
                ..Default::default()
            })
            .await
            .err(),
        ),
        "ListStreams" => code(
            c.list_streams(v1::EsListStreamsRequest {
                prefix: prefix.unwrap_or_default(),
                max_count: 10,
                ..Default::default()
            })
            .await
            .err(),
        ),
        "Head" => code(c.head(v1::Empty {}).await.err()),
        "Limits" => code(c.limits(v1::Empty {}).await.err()),
        "CreateProjection" => {
            let (name, topic, prefix) = match what {
                "topic outside" => ("gpx", "x.t", "m-"),
                "every stream" => ("gpa", "m.t", ""),
                _ => ("gpm", "m.t", "m-"),
            };
            code(
                c.create_projection(v1::EsProjectionSpec {
                    name: name.into(),
                    topic: topic.into(),
                    prefix: prefix.into(),
                })
                .await
                .err(),
            )
        }
        "ListProjections" => code(c.list_projections(v1::Empty {}).await.err()),
        "ProjectionStatus" => code(
            c.projection_status(v1::EsProjectionName { name: x.into() })
                .await
                .err(),
        ),
        "DeleteProjection" => code(
            c.delete_projection(v1::EsProjectionName { name: x.into() })
                .await
                .err(),
        ),
        "RebuildProjection" => code(
            c.rebuild_projection(v1::EsProjectionName { name: x.into() })
                .await
                .err(),
        ),
        _ => panic!("no call for {rpc} [{what}]"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_call_and_topic_field_allows_exactly_the_tokens_with_the_right() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = matrix_config(dir.path());
    let server = common::Server::start(&dir.path().join("data"), Some(&cfg));
    let base = server.url();
    let c = http();
    for t in ["m.t", "x.t", "dlq.m.t"] {
        root_json(
            c.post(format!("{base}/v1/topics"))
                .json(&json!({"name": t})),
        )
        .await;
    }

    // An RPC without a row fails here: add it to GRPC_MATRIX.
    let proto = include_str!("../../wharf-proto/proto/wharf.proto");
    let rpcs: Vec<&str> = proto
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .filter_map(|l| l.split('(').next())
        .map(str::trim)
        .collect();
    assert!(rpcs.len() >= 14, "{rpcs:?}");
    for rpc in &rpcs {
        assert!(
            GRPC_MATRIX.iter().any(|case| case.rpc == *rpc),
            "{rpc} has no row in GRPC_MATRIX"
        );
    }

    let mut wrong = Vec::new();
    let mut n = 0;
    for case in GRPC_MATRIX {
        let mut cells: Vec<(&str, Option<&str>, u8)> =
            vec![("no token", None, 0), ("wrong token", Some("wrong"), 0)];
        cells.extend(MATRIX_TOKENS.iter().map(|&(t, r)| (t, Some(t), r)));
        for (who, token, rights) in cells {
            n += 1;
            let x = run_setup(&c, &base, case.setup, n).await;
            let got = grpc_code(&base, case, &x, token).await;
            let valid = token.is_some() && token != Some("wrong");
            let allowed = valid && case.need.allows(rights);
            let ok = if allowed {
                !matches!(
                    got,
                    Code::Unauthenticated | Code::PermissionDenied | Code::Internal | Code::Unknown
                )
            } else if valid {
                got == Code::PermissionDenied
            } else {
                got == Code::Unauthenticated
            };
            if !ok {
                wrong.push(format!(
                    "{} [{}] as {who}: {got:?}, expected {}",
                    case.rpc,
                    case.what,
                    if allowed { "allowed" } else { "refused" }
                ));
            }
        }
    }
    // Reflection follows the API: any valid token, v1 and v1alpha.
    for (token, _) in MATRIX_TOKENS {
        assert!(
            list_services_v1(&base, Some(token)).await.is_ok(),
            "v1 as {token}"
        );
        assert!(
            list_services_v1alpha(&base, Some(token)).await.is_ok(),
            "v1alpha as {token}"
        );
    }
    assert!(
        wrong.is_empty(),
        "{} wrong cells:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
