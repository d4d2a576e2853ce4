//! `wharf bench --backend bare+redis://…` (and `bare+nats://…`,
//! `bare+amqp://…`, `bare+postgres://…`): the same load through the engine's own client
//! beside the adapter's row, against the shared services (skipped when one
//! is down, failed under `WHARF_REQUIRE_SERVICES=1`). Checks the JSON a user
//! reads, not the timings; and that a failed or interrupted run still deletes
//! what it created on the shared service.

#![cfg(feature = "adapters")]

mod common;

use serde_json::Value;

fn rabbitmq_or_skip() -> Option<String> {
    common::service_url_or_skip(
        "rabbitmq",
        "WHARF_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
}

fn redis_or_skip() -> Option<String> {
    common::service_url_or_skip("redis", "WHARF_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

fn nats_or_skip() -> Option<String> {
    common::service_url_or_skip("nats", "WHARF_TEST_NATS_URL", "nats://127.0.0.1:4222")
}

fn postgres_or_skip() -> Option<String> {
    common::service_url_or_skip(
        "postgres",
        "WHARF_TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    )
}

/// `wharf bench` with `args` and `--json`: one result per backend.
fn bench(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = std::process::Command::new(common::BIN)
        .args(&all)
        .env_remove("WHARF_URL")
        .env_remove("WHARF_TOKEN")
        .output()
        .expect("run wharf");
    let out = common::ok(&out);
    let v: Value = serde_json::from_str(&out).expect("json");
    v.as_array().expect("one result per backend").clone()
}

/// The bare row and the adapter row of one run, checked for what both carry.
fn check_pair(runs: &[Value], url: &str, workload: &str, messages: u64) {
    assert_eq!(runs.len(), 2, "{runs:?}");
    let (bare, adapter) = (&runs[0], &runs[1]);
    assert_eq!(bare["backend"], format!("bare+{url}"));
    assert_eq!(adapter["backend"], url);
    for r in runs {
        assert_eq!(r["workload"], workload, "{r}");
        assert_eq!(r["messages"], messages, "{r}");
        assert!(r["msgs_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
        assert!(
            r["durability"].as_str().is_some_and(|d| !d.is_empty()),
            "each row says what its acknowledgement means: {r}"
        );
    }
    if workload == "consume" {
        for r in runs {
            // Subscribing (a RabbitMQ group's backlog copy) is not in the
            // rate but printed beside it.
            assert!(
                r["subscribe_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
                "{r}"
            );
        }
    }
    assert_eq!(bare["bare"], true, "{bare}");
    assert!(adapter.get("bare").is_none(), "{adapter}");
    assert_eq!(adapter["bare_baseline"], format!("bare+{url}"));
    let ratio = adapter["ratio_to_bare"].as_f64().expect("a ratio to bare");
    let expected =
        adapter["msgs_per_sec"].as_f64().unwrap() / bare["msgs_per_sec"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9, "{ratio} vs {expected}");
    assert!(bare.get("ratio_to_bare").is_none(), "{bare}");
}

#[test]
fn bench_publish_prints_the_redis_adapter_as_a_ratio_of_bare_xadd() {
    let Some(url) = redis_or_skip() else { return };
    let bare = format!("bare+{url}");
    let runs = bench(&[
        "--backend",
        &bare,
        "--backend",
        &url,
        "--count",
        "2000",
        "--batch",
        "100",
        "--producers",
        "2",
    ]);
    check_pair(&runs, &url, "publish", 2000);
    for r in &runs {
        assert!(r["batch_latency_ms"]["p50"].as_f64().is_some(), "{r}");
    }
}

#[test]
fn bench_consume_drains_the_backlog_bare_and_through_the_adapter_with_dedup_off() {
    let Some(url) = redis_or_skip() else { return };
    let bare = format!("bare+{url}");
    let runs = bench(&[
        "--backend",
        &bare,
        "--backend",
        &url,
        "--workload",
        "consume",
        "--count",
        "3000",
        "--batch",
        "250",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--dedup-window-ms",
        "0",
    ]);
    check_pair(&runs, &url, "consume", 3000);
}

/// Publish then consume, bare and through the adapter, for `url`.
fn publish_and_consume(url: &str) {
    let bare = format!("bare+{url}");
    for workload in ["publish", "consume"] {
        let runs = bench(&[
            "--backend",
            &bare,
            "--backend",
            url,
            "--workload",
            workload,
            "--count",
            "1000",
            "--batch",
            "100",
            "--producers",
            "2",
        ]);
        check_pair(&runs, url, workload, 1000);
    }
}

#[test]
fn bench_runs_bare_nats_jetstream_beside_the_adapter() {
    let Some(url) = nats_or_skip() else { return };
    publish_and_consume(&url);
}

#[test]
fn bench_runs_bare_postgres_beside_the_adapter() {
    let Some(url) = postgres_or_skip() else {
        return;
    };
    publish_and_consume(&url);
}

#[test]
fn bench_runs_bare_rabbitmq_beside_the_adapter() {
    let Some(url) = rabbitmq_or_skip() else {
        return;
    };
    publish_and_consume(&url);
}

#[test]
fn bench_bare_refuses_the_latency_workload_and_unknown_schemes() {
    let Some(url) = redis_or_skip() else { return };
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::BIN)
            .arg("bench")
            .args(args)
            .output()
            .expect("run wharf");
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let bare = format!("bare+{url}");
    let err = run(&["--backend", &bare, "--workload", "latency", "--count", "10"]);
    assert!(err.contains("publish and consume workloads only"), "{err}");
    // (mqtt:// has a bare form with the `mqtt` feature: a scheme no engine has.)
    let err = run(&["--backend", "bare+gopher://127.0.0.1:70", "--count", "10"]);
    assert!(err.contains("bare client is available for"), "{err}");
    let err = run(&["--backend", &format!("{bare}#msg-id"), "--count", "10"]);
    assert!(err.contains("unknown variant #msg-id"), "{err}");
}

#[test]
fn bench_runs_the_bare_variants_that_price_an_adapters_promise() {
    if let Some(url) = nats_or_skip() {
        let with_id = format!("bare+{url}#msg-id");
        let runs = bench(&["--backend", &with_id, "--count", "500", "--batch", "100"]);
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(runs[0]["backend"], with_id);
        assert_eq!(runs[0]["messages"], 500, "{}", runs[0]);
    }
    if let Some(url) = rabbitmq_or_skip() {
        let priority = format!("bare+{url}#x-max-priority");
        let runs = bench(&[
            "--backend",
            &priority,
            "--workload",
            "consume",
            "--count",
            "500",
            "--batch",
            "100",
        ]);
        assert_eq!(runs[0]["backend"], priority);
        assert_eq!(runs[0]["messages"], 500, "{}", runs[0]);
    }
}

/// The JetStream stream an adapter run on `topic` creates (see
/// `crates/wharf-cli/src/adapters.rs`), read from the line `wharf bench`
/// prints on stderr for it.
fn bench_stream(stderr: &str) -> String {
    let topic = stderr
        .lines()
        .find_map(|l| l.split_once(": topic ").map(|(_, rest)| rest))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no topic named on stderr: {stderr}"));
    format!("BENCH_{}", topic.replace(['.', '-'], "_"))
}

/// Whether the NATS server at `url` has a stream named `name`.
fn stream_exists(url: &str, name: &str) -> bool {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = async_nats::connect(url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        js.get_stream(name).await.is_ok()
    })
}

#[test]
fn a_failed_bench_deletes_what_it_created_on_the_service() {
    let Some(url) = nats_or_skip() else { return };
    // 2 MB is over the server's max_payload: the first publish fails.
    let out = std::process::Command::new(common::BIN)
        .args(["bench", "--backend", &url, "--size", "2000000"])
        .args(["--count", "2", "--batch", "1", "--producers", "1"])
        .output()
        .expect("run wharf");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a 2 MB publish must fail: {stderr}");
    let stream = bench_stream(&stderr);
    assert!(
        !stream_exists(&url, &stream),
        "{stream} left on the server after a failed run: {stderr}"
    );
}

#[test]
fn an_interrupted_bench_deletes_what_it_created_on_the_service() {
    let Some(url) = nats_or_skip() else { return };
    let mut child = std::process::Command::new(common::BIN)
        .args(["bench", "--backend", &url, "--count", "100000000"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run wharf");
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first).expect("read stderr");
    let stream = bench_stream(&first);
    // The line is printed before the stream is made (so a failed creation
    // is named too): wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !stream_exists(&url, &stream) {
        assert!(
            std::time::Instant::now() < deadline,
            "{stream} not created within 20 s: {first}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The run is under way (or about to be): interrupt it.
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("read stderr");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "an interrupted run fails: {rest}");
    assert!(rest.contains("interrupted by SIGTERM"), "{rest}");
    assert!(
        !stream_exists(&url, &stream),
        "{stream} left on the server after SIGTERM: {rest}"
    );
}
