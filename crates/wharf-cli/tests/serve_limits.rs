//! What one client may send a real `wharf serve` and how long it may take:
//! header limits per message (HTTP and gRPC, typed errors, nothing stored,
//! other clients keep being answered), connection timeouts and the
//! connection cap, and a load of idle, slowloris and long-poll connections
//! during which `/healthz` keeps answering quickly.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wharf_core::{Error, Message, Publisher};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
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
    t["offsets"].as_array().map_or(0, |ps| {
        ps.iter()
            .map(|p| {
                p["end_offset"].as_u64().unwrap_or(0) - p["start_offset"].as_u64().unwrap_or(0)
            })
            .sum()
    })
}

/// The slowest `/healthz` answer while `busy` runs, sampling every 20 ms
/// on a connection of its own.
async fn slowest_healthz_during<F: std::future::Future>(
    base: &str,
    busy: F,
) -> (F::Output, Duration) {
    let c = http();
    let worst = std::cell::Cell::new(Duration::ZERO);
    let probe = async {
        loop {
            let t = Instant::now();
            let r = c
                .get(format!("{base}/healthz"))
                .send()
                .await
                .expect("healthz");
            assert_eq!(r.status().as_u16(), 200);
            worst.set(worst.get().max(t.elapsed()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let out = tokio::select! {
        out = busy => out,
        () = probe => unreachable!("the probe loops until `busy` ends"),
    };
    (out, worst.get())
}

/// The attack: 100k headers in one HTTP publish took 22 s of a
/// worker (header by header, each insert scanning the rest) and froze
/// `/healthz`. Now it is refused at once with a typed 400, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_with_100k_headers_is_refused_quickly_and_healthz_keeps_answering() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = http();
    let headers: serde_json::Map<String, Value> = (0..100_000)
        .map(|i| (format!("h{i}"), json!("v")))
        .collect();
    let body = json!({"payload": "x", "headers": headers});
    let publish = format!("{base}/v1/topics/limits.many/messages");
    let started = Instant::now();
    let ((status, err), worst) = slowest_healthz_during(&base, async {
        let r = c.post(&publish).json(&body).send().await.expect("publish");
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.expect("JSON error"))
    })
    .await;
    let took = started.elapsed();
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["code"], "too_many_headers", "{err}");
    assert!(took < Duration::from_secs(10), "refusing took {took:?}");
    assert!(
        worst < Duration::from_secs(2),
        "/healthz took up to {worst:?}"
    );

    // Header bytes over the limit: 413; at the limits: stored.
    let big = "v".repeat(70 * 1024);
    let r = c
        .post(&publish)
        .json(&json!({"payload": "x", "headers": {"big": big}}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status().as_u16(), 413);
    let err: Value = r.json().await.expect("JSON error");
    assert_eq!(err["error"]["code"], "headers_too_large", "{err}");
    assert_eq!(stored(&c, &base, "limits.many").await, 0);
    let at_limit: serde_json::Map<String, Value> =
        (0..256).map(|i| (format!("h{i:03}"), json!("v"))).collect();
    let r = c
        .post(&publish)
        .json(&json!({"payload": "x", "headers": at_limit}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(stored(&c, &base, "limits.many").await, 1);
}

/// The same limits over gRPC, set by `wharf serve` flags: the client gets
/// the typed errors back (INVALID_ARGUMENT / RESOURCE_EXHAUSTED on the wire).
#[tokio::test]
async fn header_limits_set_by_flags_refuse_grpc_publishes_with_typed_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start_with(
        dir.path(),
        None,
        "127.0.0.1:0",
        &["--max-headers", "4", "--max-header-bytes", "100"],
    );
    let client = wharf_client::Client::connect(&server.url(), None)
        .await
        .expect("connect");
    let with = |n: usize| {
        (0..n)
            .fold(Message::builder().payload("p"), |m, i| {
                m.header(format!("h{i}"), "v")
            })
            .build()
    };
    let err = client.publish("limits.grpc", with(5)).await.unwrap_err();
    assert!(
        matches!(err, Error::TooManyHeaders { count: 5, max: 4 }),
        "{err:?}"
    );
    let long = Message::builder()
        .payload("p")
        .header("h", "v".repeat(100))
        .build();
    let err = client.publish("limits.grpc", long).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::HeadersTooLarge {
                size: 101,
                max: 100
            }
        ),
        "{err:?}"
    );
    client
        .publish("limits.grpc", with(4))
        .await
        .expect("at the limit");
    let c = http();
    assert_eq!(stored(&c, &server.url(), "limits.grpc").await, 1);
    // HTTP shares the flags.
    let r = c
        .post(format!("{}/v1/topics/limits.grpc/messages", server.url()))
        .json(
            &json!({"payload": "x", "headers": {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5"}}),
        )
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status().as_u16(), 400);
}
