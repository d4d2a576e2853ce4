//! `wharf bench --backend pubsub://…` and `bare+pubsub://…` (the CLI's
//! `pubsub` feature) against the Pub/Sub emulator
//! (`scripts/ensure-pubsub.sh`; skipped when it is down, failed under
//! `WHARF_REQUIRE_SERVICES=1`): publish and consume-with-ack, the adapter
//! row printed as a ratio of the bare gcloud-pubsub row. Checks the JSON a
//! user reads, not the timings, and that the run deletes the topics and
//! subscriptions it created.

#![cfg(feature = "pubsub")]

mod common;

use serde_json::Value;

fn pubsub_or_skip() -> Option<String> {
    common::service_url_or_skip(
        "pubsub",
        "WHARF_TEST_PUBSUB_URL",
        "pubsub://127.0.0.1:18085/wharf-test",
    )
}

/// Names of the project's topics and subscriptions containing `part`,
/// through the emulator's REST gateway.
fn resources_with(url: &str, part: &str) -> Vec<String> {
    let rest = url.trim_start_matches("pubsub://");
    let (host, project) = rest.split_once('/').unwrap_or((rest, "wharf"));
    let mut found = Vec::new();
    for kind in ["topics", "subscriptions"] {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                &format!("http://{host}/v1/projects/{project}/{kind}?pageSize=1000"),
            ])
            .output()
            .expect("curl");
        let listing: Value = serde_json::from_slice(&out.stdout).expect("a JSON listing");
        for r in listing[kind].as_array().into_iter().flatten() {
            let name = r["name"].as_str().unwrap_or_default();
            if name.contains(part) {
                found.push(name.to_owned());
            }
        }
    }
    found
}

#[test]
fn bench_runs_bare_gcloud_pubsub_beside_the_pubsub_adapter_and_deletes_what_it_made() {
    let Some(url) = pubsub_or_skip() else { return };
    for workload in ["publish", "consume"] {
        let run = common::bench_side_by_side(&url, workload, 1000, 100, 2, "emulator's memory");
        // What the topics named on stderr left behind is gone.
        assert_eq!(run.topics.len(), 2, "{:?}", run.topics);
        for n in run.topics {
            let left = resources_with(&url, &n);
            assert!(left.is_empty(), "left on the emulator: {left:?}");
        }
    }
}
