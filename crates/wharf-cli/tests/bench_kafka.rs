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
