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
    let url = std::env::var("WHARF_TEST_PUBSUB_URL")
        .unwrap_or_else(|_| "pubsub://127.0.0.1:18085/wharf-test".into());
    let addr = url
        .trim_start_matches("pubsub://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    match std::net::TcpStream::connect(&addr) {
        Ok(_) => Some(url),
        Err(e) => {
            wharf_testkit::service::report_unreachable("pubsub", &url, &e);
            None
        }
    }
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
                    .is_some_and(|d| d.contains("emulator's memory")),
                "{r}"
            );
        }
        assert_eq!(b["bare"], true, "{b}");
        assert_eq!(a["bare_baseline"], bare);
        let ratio = a["ratio_to_bare"].as_f64().expect("a ratio to bare");
        let expected = a["msgs_per_sec"].as_f64().unwrap() / b["msgs_per_sec"].as_f64().unwrap();
        assert!((ratio - expected).abs() < 1e-9, "{ratio} vs {expected}");
        // What the topics named on stderr left behind is gone.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let names: Vec<String> = stderr
            .lines()
            .filter_map(|l| l.split_once(": topic ").map(|(_, r)| r))
            .filter_map(|r| r.split_whitespace().next())
            .map(|t| t.replace(['.', '-'], "_"))
            .collect();
        assert_eq!(names.len(), 2, "{stderr}");
        for n in names {
            let left = resources_with(&url, &n);
            assert!(left.is_empty(), "left on the emulator: {left:?}");
        }
    }
}
