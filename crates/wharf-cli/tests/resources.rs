//! One client must not stall or exhaust a real `wharf serve`: long polls
//! sharing a group each honour their own `wait_ms`, abandoned groups and
//! pollers are released (RSS stays bounded), caps answer with typed errors,
//! and creating or deleting a large topic does not stall other topics.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
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

/// 200 long polls on one group, each with `wait_ms=1000`: every one answers
/// within its wait (plus a margin for a loaded machine), none waits for the
/// others' waits in turn, and a message published meanwhile reaches exactly
/// one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_polls_sharing_a_group_each_return_within_their_wait() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = http();
    // Make the topic and the group first, so every poll below shares them.
    let url = format!("{base}/v1/topics/polls.shared/consume?group=g&wait_ms=0");
    let (st, r) = post(&c, url, json!({})).await;
    assert_eq!(st, 200, "{r}");

    let url = format!("{base}/v1/topics/polls.shared/consume?group=g&wait_ms=1000");
    let polls: Vec<_> = (0..200)
        .map(|_| {
            let c = c.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let (st, r) = post(&c, url, json!({})).await;
                (st, r, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/polls.shared/messages"),
        json!({"payload": "one"}),
    )
    .await;
    assert_eq!(st, 200, "{r}");

    let mut delivered = 0;
    let mut slowest = Duration::ZERO;
    for p in polls {
        let (st, r, took) = p.await.expect("poll task");
        assert_eq!(st, 200, "{r}");
        delivered += r["deliveries"].as_array().expect("deliveries").len();
        slowest = slowest.max(took);
    }
    assert_eq!(delivered, 1, "the one message reaches exactly one poll");
    // wait_ms=1000; 5 s leaves room for a loaded machine, while polls
    // waiting for each other's waits in turn take 200 s.
    assert!(
        slowest < Duration::from_secs(6),
        "slowest poll took {slowest:?} with wait_ms=1000"
    );
}
