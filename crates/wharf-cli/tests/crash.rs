//! `kill -9` during a publish load: after a restart on the same data dir,
//! every publish the server acknowledged is consumable.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wharf_core::{Message, Publisher, StartPosition, SubscribeOptions, Subscriber};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_publish_survives_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = common::Server::start(dir.path(), None);
    common::ok(&server.cli(&[
        "topic",
        "create",
        "crash.t",
        "--partitions",
        "2",
        "--durability",
        "always",
    ]));
    let client = wharf_client::Client::connect(&server.url(), None)
        .await
        .expect("connect");
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut publishers = Vec::new();
    for p in 0..4 {
        let (client, acked) = (client.clone(), acked.clone());
        publishers.push(tokio::spawn(async move {
            for batch in 0.. {
                let payloads: Vec<String> =
                    (0..20).map(|i| format!("p{p}-b{batch}-m{i}")).collect();
                let msgs = payloads.iter().map(|s| Message::new(s.clone())).collect();
                match client.publish_batch("crash.t", msgs).await {
                    Ok(_) => acked.lock().expect("lock").extend(payloads),
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill9();
    for p in publishers {
        tokio::time::timeout(Duration::from_secs(20), p)
            .await
            .expect("publishers notice the crash")
            .expect("join");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 100,
        "only {} publishes acknowledged before the crash",
        acked.len()
    );

    server.start_again();
    let client = wharf_client::Client::connect(&server.url(), None)
        .await
        .expect("reconnect");
    let mut sub = client
        .subscribe(
            SubscribeOptions::new("crash.t")
                .group("verify")
                .start(StartPosition::Earliest)
                .max_in_flight(1024),
        )
        .await
        .expect("subscribe");
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !acked.is_subset(&seen) {
        assert!(
            Instant::now() < deadline,
            "{} acknowledged messages missing",
            acked.difference(&seen).count()
        );
        match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(Ok(d))) => {
                seen.insert(String::from_utf8_lossy(d.message().payload()).into_owned());
                d.ack().await.expect("ack");
            }
            other => panic!(
                "stream stalled with {} acknowledged messages missing: {:?}",
                acked.difference(&seen).count(),
                other.map(|o| o.map(|r| r.map(|_| ())))
            ),
        }
    }
    assert!(acked.is_subset(&seen));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_resubscribes_and_publishes_again_after_a_server_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = common::Server::start(dir.path(), None);
    let client = wharf_client::Client::connect(&server.url(), None)
        .await
        .expect("connect");
    let mut sub = client
        .subscribe(
            SubscribeOptions::new("crash.resume")
                .group("g")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    client
        .publish("crash.resume", Message::new("before"))
        .await
        .expect("publish");
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("ok");
    assert_eq!(&d.message().payload()[..], b"before");
    d.ack().await.expect("ack");

    server.restart();

    // The same client publishes again once the server is back (with retries
    // while the channel reconnects) and the subscription resumes by itself.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match client.publish("crash.resume", Message::new("after")).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    e.is_transient(),
                    "non-transient error while reconnecting: {e}"
                );
                assert!(Instant::now() < deadline, "publish never recovered: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let d = tokio::time::timeout(Duration::from_secs(15), sub.next())
        .await
        .expect("resubscribed in time")
        .expect("open")
        .expect("ok");
    assert_eq!(&d.message().payload()[..], b"after");
    d.ack().await.expect("ack on the new stream");
}
