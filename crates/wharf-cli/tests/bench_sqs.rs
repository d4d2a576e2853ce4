//! `wharf bench --backend sqs://…` and `bare+sqs://…` (the CLI's `sqs`
//! feature) against the SQS test server (moto, `scripts/ensure-moto.sh`;
//! skipped when it is down, failed under `WHARF_REQUIRE_SERVICES=1`):
//! publish and consume-with-ack, the adapter row printed as a ratio of the
//! bare aws-sdk-sqs row. Checks the JSON a user reads, not the timings, and
//! that the run deletes the queues it created.

#![cfg(feature = "sqs")]

mod common;

fn sqs_or_skip() -> Option<String> {
    common::service_url_or_skip(
        "sqs (moto)",
        "WHARF_TEST_SQS_URL",
        "sqs://127.0.0.1:15000?region=us-east-1&wait=1",
    )
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
    for workload in ["publish", "consume"] {
        let run = common::bench_side_by_side(&url, workload, 200, 50, 1, "SQS");
        // The queues of the topics named on stderr are gone.
        assert_eq!(run.topics.len(), 2, "{:?}", run.topics);
        for n in run.topics {
            let left = queues_with(&url, &n);
            assert!(left.is_empty(), "left on the server: {left:?}");
        }
    }
}
