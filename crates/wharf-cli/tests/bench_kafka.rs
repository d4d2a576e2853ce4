//! `wharf bench --backend kafka://…` and `bare+kafka://…` (the CLI's `kafka`
//! feature) against the test Kafka broker (`scripts/ensure-kafka.sh`;
//! skipped when it is down, failed under `WHARF_REQUIRE_SERVICES=1`):
//! publish and consume-with-ack, the adapter row printed as a ratio of the
//! bare rdkafka row. Checks the JSON a user reads, not the timings, and
//! that the run deletes the topics it created.

#![cfg(feature = "kafka")]

mod common;

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

fn kafka_or_skip() -> Option<String> {
    common::service_url_or_skip("kafka", "WHARF_TEST_KAFKA_URL", "kafka://127.0.0.1:19092")
}

/// The broker's topics whose names contain `part`.
fn topics_with(url: &str, part: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", url.trim_start_matches("kafka://"))
        .create()
        .expect("client");
    let md = c
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    md.topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|n| n.contains(part))
        .collect()
}

#[test]
fn bench_runs_bare_rdkafka_beside_the_kafka_adapter_and_deletes_its_topics() {
    let Some(url) = kafka_or_skip() else { return };
    for workload in ["publish", "consume"] {
        let run = common::bench_side_by_side(&url, workload, 1000, 100, 2, "acks=all");
        // The topics named on stderr are gone.
        assert_eq!(run.topics.len(), 2, "{:?}", run.topics);
        for n in run.topics {
            let left = topics_with(&url, &n);
            assert!(left.is_empty(), "left on the broker: {left:?}");
        }
    }
}

#[test]
fn the_detach_variant_drains_the_backlog_copying_each_record_and_deletes_its_topic() {
    let Some(url) = kafka_or_skip() else { return };
    let detach = format!("bare+{url}#detach");
    let out = std::process::Command::new(common::BIN)
        .args(["bench", "--backend", &detach, "--workload", "consume"])
        .args(["--count", "1000", "--batch", "100", "--json"])
        .env_remove("WHARF_URL")
        .env_remove("WHARF_TOKEN")
        .output()
        .expect("run wharf");
    let runs: Vec<serde_json::Value> = serde_json::from_str(&common::ok(&out)).expect("json");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["backend"], detach.as_str());
    assert_eq!(runs[0]["messages"], 1000, "{}", runs[0]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let topic = stderr
        .lines()
        .find_map(|l| l.split_once(": topic ").map(|(_, r)| r))
        .and_then(|r| r.split_whitespace().next())
        .expect("the topic is named on stderr")
        .replace(['.', '-'], "_");
    assert!(topics_with(&url, &topic).is_empty());
}
