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
use serde_json::Value;

fn kafka_or_skip() -> Option<String> {
    let url =
        std::env::var("WHARF_TEST_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:19092".into());
    let addr = url.trim_start_matches("kafka://").to_owned();
    match std::net::TcpStream::connect(&addr) {
        Ok(_) => Some(url),
        Err(e) => {
            wharf_testkit::service::report_unreachable("kafka", &url, &e);
            None
        }
    }
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
    let bare = format!("bare+{url}");
    for workload in ["publish", "consume"] {
        let out = std::process::Command::new(common::BIN)
            .args(["bench", "--backend", &bare, "--backend", &url])
            .args(["--workload", workload, "--count", "1000", "--batch", "100"])
            .args(["--producers", "2", "--json"])
            .env_remove("WHARF_URL")
            .env_remove("WHARF_TOKEN")
            .output()
            .expect("run wharf");
        let stdout = common::ok(&out);
        let runs: Vec<Value> = serde_json::from_str(&stdout).expect("json");
        assert_eq!(runs.len(), 2, "{runs:?}");
        let (b, a) = (&runs[0], &runs[1]);
        assert_eq!(b["backend"], bare);
        assert_eq!(a["backend"], url);
        for r in &runs {
            assert_eq!(r["workload"], workload, "{r}");
            assert_eq!(r["messages"], 1000, "{r}");
            assert!(r["msgs_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
            assert!(
                r["durability"]
                    .as_str()
                    .is_some_and(|d| d.contains("acks=all")),
                "{r}"
            );
        }
        assert_eq!(b["bare"], true, "{b}");
        assert_eq!(a["bare_baseline"], bare);
        let ratio = a["ratio_to_bare"].as_f64().expect("a ratio to bare");
        let expected = a["msgs_per_sec"].as_f64().unwrap() / b["msgs_per_sec"].as_f64().unwrap();
        assert!((ratio - expected).abs() < 1e-9, "{ratio} vs {expected}");
        // The topics named on stderr are gone.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let names: Vec<String> = stderr
            .lines()
            .filter_map(|l| l.split_once(": topic ").map(|(_, r)| r))
            .filter_map(|r| r.split_whitespace().next())
            .map(|t| t.replace(['.', '-'], "_"))
            .collect();
        assert_eq!(names.len(), 2, "{stderr}");
        for n in names {
            let left = topics_with(&url, &n);
            assert!(left.is_empty(), "left on the broker: {left:?}");
        }
    }
}
