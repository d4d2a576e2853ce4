//! `wharf bench --backend sqs://…` and `bare+sqs://…` (the CLI's `sqs`
//! feature) against the SQS test server (moto, `scripts/ensure-moto.sh`;
//! skipped when it is down, failed under `WHARF_REQUIRE_SERVICES=1`):
//! publish and consume-with-ack, the adapter row printed as a ratio of the
//! bare aws-sdk-sqs row. Checks the JSON a user reads, not the timings, and
//! that the run deletes the queues it created.

#![cfg(feature = "sqs")]

mod common;

use serde_json::Value;

fn sqs_or_skip() -> Option<String> {
    let url = std::env::var("WHARF_TEST_SQS_URL")
        .unwrap_or_else(|_| "sqs://127.0.0.1:15000?region=us-east-1&wait=1".into());
    let addr = url
        .trim_start_matches("sqs://")
        .split(['?', '/'])
        .next()
        .unwrap_or_default()
        .to_owned();
    match std::net::TcpStream::connect(&addr) {
        Ok(_) => Some(url),
        Err(e) => {
            wharf_testkit::service::report_unreachable("sqs (moto)", &url, &e);
            None
        }
    }
}

/// The server's queue names that contain `part`.
fn queues_with(url: &str, part: &str) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cfg = wharf_sqs::SqsConfig::from_url(url).expect("url");
        let b = wharf_sqs::SqsBackend::connect(cfg).await.expect("connect");
        let out = b.client().list_queues().send().await.expect("list queues");
        out.queue_urls()
            .iter()
            .filter_map(|u| u.rsplit('/').next())
            .filter(|n| n.contains(part))
            .map(str::to_owned)
            .collect()
    })
}

#[test]
fn bench_runs_bare_aws_sdk_sqs_beside_the_sqs_adapter_and_deletes_its_queues() {
    let Some(url) = sqs_or_skip() else { return };
    let bare = format!("bare+{url}");
    for workload in ["publish", "consume"] {
        let out = std::process::Command::new(common::BIN)
            .args(["bench", "--backend", &bare, "--backend", &url])
            .args(["--workload", workload, "--count", "200", "--batch", "50"])
            .args(["--producers", "1", "--json"])
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
            assert_eq!(r["messages"], 200, "{r}");
            assert!(r["msgs_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
            assert!(
                r["durability"].as_str().is_some_and(|d| d.contains("SQS")),
                "{r}"
            );
        }
        assert_eq!(b["bare"], true, "{b}");
        assert_eq!(a["bare_baseline"], bare);
        let ratio = a["ratio_to_bare"].as_f64().expect("a ratio to bare");
        let expected = a["msgs_per_sec"].as_f64().unwrap() / b["msgs_per_sec"].as_f64().unwrap();
        assert!((ratio - expected).abs() < 1e-9, "{ratio} vs {expected}");
        // The queues of the topics named on stderr are gone.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let names: Vec<String> = stderr
            .lines()
            .filter_map(|l| l.split_once(": topic ").map(|(_, r)| r))
            .filter_map(|r| r.split_whitespace().next())
            .map(|t| t.replace(['.', '-'], "_"))
            .collect();
        assert_eq!(names.len(), 2, "{stderr}");
        for n in names {
            let left = queues_with(&url, &n);
            assert!(left.is_empty(), "left on the server: {left:?}");
        }
    }
}
