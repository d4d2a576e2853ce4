//! The `wharf` CLI against a real server: topics, pub/sub (arguments and
//! stdin, keys, headers, JSON), groups, the dead-letter workflow, and
//! one-line errors with a non-zero exit.

mod common;

use serde_json::Value;
use wharf_core::{StartPosition, SubscribeOptions, Subscriber};

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn topic_commands_create_list_describe_and_delete() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let out = common::ok(&server.cli(&[
        "topic",
        "create",
        "cli.t",
        "--partitions",
        "3",
        "--durability",
        "interval:50",
        "--max-deliveries",
        "4",
        "--retention-bytes",
        "65536",
        "--segment-bytes",
        "16384",
    ]));
    assert!(
        out.contains("cli.t") && out.contains("interval:50"),
        "{out}"
    );
    let list: Value =
        serde_json::from_str(&common::ok(&server.cli(&["topic", "list", "--json"]))).expect("json");
    assert_eq!(list[0]["name"], "cli.t");
    assert_eq!(list[0]["partitions"], 3);
    assert_eq!(list[0]["max_deliveries"], 4);
    assert_eq!(list[0]["retention_bytes"], 65536);
    assert_eq!(list[0]["segment_bytes"], 16384);
    let d: Value = serde_json::from_str(&common::ok(
        &server.cli(&["topic", "describe", "cli.t", "--json"]),
    ))
    .expect("json");
    assert_eq!(d["offsets"].as_array().map(Vec::len), Some(3));
    assert_eq!(d["bytes"], 0, "an empty topic holds no bytes: {d}");
    common::ok(&server.cli(&["topic", "delete", "cli.t"]));
    let list: Value =
        serde_json::from_str(&common::ok(&server.cli(&["topic", "list", "--json"]))).expect("json");
    assert_eq!(list, serde_json::json!([]));
}

#[test]
fn pub_and_sub_carry_keys_headers_and_stdin_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    common::ok(&server.cli(&[
        "pub",
        "cli.orders",
        "--key",
        "c7",
        "--header",
        "source=cli",
        "--header",
        "v=2",
        "first",
    ]));
    let out = common::ok(&server.cli_stdin(&["pub", "cli.orders"], "second\nthird\n"));
    assert!(out.contains("published 2"), "{out}");
    let out = common::ok(&server.cli(&[
        "sub",
        "cli.orders",
        "--group",
        "g",
        "--from",
        "earliest",
        "--count",
        "3",
        "--json",
        "--timeout",
        "10",
    ]));
    let msgs = json_lines(&out);
    assert_eq!(msgs.len(), 3, "{out}");
    let first = msgs
        .iter()
        .find(|m| m["payload"] == "first")
        .expect("first");
    assert_eq!(first["key"], "c7");
    assert_eq!(first["headers"]["source"], "cli");
    assert_eq!(first["headers"]["v"], "2");
    let mut payloads: Vec<&str> = msgs.iter().filter_map(|m| m["payload"].as_str()).collect();
    payloads.sort_unstable();
    assert_eq!(payloads, ["first", "second", "third"]);
    // The group acked all three: nothing more arrives, and its lag is zero.
    let out = server.cli(&[
        "sub",
        "cli.orders",
        "--group",
        "g",
        "--count",
        "1",
        "--timeout",
        "0.5",
    ]);
    assert!(!out.status.success());
    let groups: Value = serde_json::from_str(&common::ok(
        &server.cli(&["group", "describe", "g", "--json"]),
    ))
    .expect("json");
    assert_eq!(groups[0]["lag"], 0, "{groups}");
}

#[test]
fn sub_with_count_takes_exactly_that_many_and_leaves_the_rest_untouched() {
    // With max deliveries 1, a message taken past `--count` and released
    // after being handed out would go straight to the DLQ: `sub --count`
    // must take exactly N (what the client buffered unseen is given back
    // without counting an attempt).
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    common::ok(&server.cli(&["topic", "create", "cli.count", "--max-deliveries", "1"]));
    for i in 0..5 {
        common::ok(&server.cli(&["pub", "cli.count", &format!("m{i}")]));
    }
    let sub = |n: &str| {
        let out = common::ok(&server.cli(&[
            "sub",
            "cli.count",
            "--group",
            "g",
            "--from",
            "earliest",
            "--count",
            n,
            "--json",
            "--timeout",
            "10",
        ]));
        json_lines(&out)
            .iter()
            .map(|v| {
                (
                    v["payload"].as_str().unwrap().to_owned(),
                    v["attempt"].as_u64(),
                )
            })
            .collect::<Vec<_>>()
    };
    let first = sub("2");
    let rest = sub("3");
    let mut all: Vec<_> = first.iter().chain(rest.iter()).cloned().collect();
    all.sort();
    let want: Vec<_> = (0..5).map(|i| (format!("m{i}"), Some(1))).collect();
    assert_eq!(all, want, "first {first:?}, rest {rest:?}");
    // Nothing was dead-lettered: the DLQ topic was never even created, and
    // listing it says so with an empty list.
    let topics: Value =
        serde_json::from_str(&common::ok(&server.cli(&["topic", "list", "--json"]))).expect("json");
    let names: Vec<&str> = topics
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"cli.count"), "{topics}");
    assert!(!names.contains(&"dlq.cli.count"), "{topics}");
    let dlq: Value = serde_json::from_str(&common::ok(&server.cli(&[
        "dlq",
        "list",
        "cli.count",
        "--json",
    ])))
    .expect("json");
    assert_eq!(dlq, serde_json::json!([]));
}

#[test]
fn errors_print_one_line_and_exit_non_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    for args in [
        vec!["topic", "describe", "cli.missing"],
        vec!["pub", "bad..topic", "x"],
        vec![
            "dlq",
            "show",
            "cli.none",
            "01234567-89ab-cdef-0123-456789abcdef",
        ],
    ] {
        let out = server.cli(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
    }
    let out = common::cli_with("http://127.0.0.1:1", None, &["topic", "list"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: nothing is listening at http://127.0.0.1:1"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_workflow_list_show_replay_and_purge() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let url = server.url();
    let run = |args: Vec<&'static str>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || common::cli_with(&url, None, &args, None))
    };
    common::ok(
        &run(vec!["pub", "cli.jobs", "--key", "k", "job-1"])
            .await
            .expect("join"),
    );
    common::ok(&run(vec!["pub", "cli.jobs", "job-2"]).await.expect("join"));

    // A consumer fails both messages to the dead-letter topic.
    let client = wharf_client::Client::connect(&url, None)
        .await
        .expect("connect");
    let mut sub = client
        .subscribe(
            SubscribeOptions::new("cli.jobs")
                .group("workers")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    for _ in 0..2 {
        let d = sub.next().await.expect("open").expect("delivery");
        d.reject("cannot parse job").await.expect("reject");
    }

    let list: Value = serde_json::from_str(&common::ok(
        &run(vec!["dlq", "list", "cli.jobs", "--json"])
            .await
            .expect("join"),
    ))
    .expect("json");
    let list = list.as_array().expect("array").clone();
    assert_eq!(list.len(), 2, "{list:?}");
    let job1 = list
        .iter()
        .find(|m| m["payload"] == "job-1")
        .expect("job-1 dead-lettered");
    assert_eq!(job1["headers"]["wharf-dlq-reason"], "cannot parse job");
    assert_eq!(job1["headers"]["wharf-original-topic"], "cli.jobs");
    let id: &'static str = Box::leak(job1["id"].as_str().expect("id").to_owned().into_boxed_str());
    // Listing does not consume: a second listing shows the same.
    let table = common::ok(&run(vec!["dlq", "list", "cli.jobs"]).await.expect("join"));
    assert!(
        table.contains(id) && table.contains("cannot parse job"),
        "{table}"
    );

    let show = common::ok(
        &run(vec!["dlq", "show", "cli.jobs", id])
            .await
            .expect("join"),
    );
    assert!(
        show.contains("payload:   job-1") && show.contains("wharf-dlq-reason = cannot parse job"),
        "{show}"
    );

    let replay = common::ok(
        &run(vec!["dlq", "replay", "cli.jobs", "--id", id])
            .await
            .expect("join"),
    );
    assert!(replay.contains("replayed 1"), "{replay}");
    // The replayed message is consumed again by the group, without DLQ headers.
    let d = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
        .await
        .expect("redelivered in time")
        .expect("open")
        .expect("delivery");
    assert_eq!(&d.message().payload()[..], b"job-1");
    assert_eq!(d.message().headers().get("wharf-dlq-reason"), None);
    assert_eq!(d.message().key().map(|k| &k[..]), Some(&b"k"[..]));
    d.ack().await.expect("ack");

    let left: Value = serde_json::from_str(&common::ok(
        &run(vec!["dlq", "list", "cli.jobs", "--json"])
            .await
            .expect("join"),
    ))
    .expect("json");
    assert_eq!(left.as_array().map(Vec::len), Some(1), "{left}");
    let purge = common::ok(&run(vec!["dlq", "purge", "cli.jobs"]).await.expect("join"));
    assert!(purge.contains("purged 1"), "{purge}");
    let left: Value = serde_json::from_str(&common::ok(
        &run(vec!["dlq", "list", "cli.jobs", "--json"])
            .await
            .expect("join"),
    ))
    .expect("json");
    assert_eq!(left, serde_json::json!([]));
    let none = common::ok(
        &run(vec!["dlq", "replay", "cli.jobs", "--all"])
            .await
            .expect("join"),
    );
    assert!(none.contains("replayed 0"), "{none}");
}

#[test]
fn bench_compares_embedded_and_a_server_and_leaves_no_topic_behind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let url = server.url();
    let out = common::ok(&server.cli(&[
        "bench",
        "--backend",
        "embedded",
        "--backend",
        &url,
        "--count",
        "2000",
        "--batch",
        "100",
        "--producers",
        "2",
        "--json",
    ]));
    let runs: Value = serde_json::from_str(&out).expect("json");
    let runs = runs.as_array().expect("one result per backend");
    assert_eq!(runs.len(), 2, "{out}");
    assert_eq!(runs[0]["backend"], "embedded");
    assert_eq!(runs[1]["backend"], url.as_str());
    for r in runs {
        assert_eq!(r["messages"], 2000, "{r}");
        assert!(r["msgs_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    }
    assert_eq!(runs[0]["ratio_to_first"], 1.0);
    let ratio = runs[1]["ratio_to_first"].as_f64().expect("a ratio");
    let expected =
        runs[1]["msgs_per_sec"].as_f64().unwrap() / runs[0]["msgs_per_sec"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9, "{ratio} vs {expected}");
    // CPU per message: the whole in-process run, and the client plus the
    // server (read from its Info call) for the remote one.
    let cpu = |r: &Value, k: &str| r["cpu"][k].as_f64();
    assert!(cpu(&runs[0], "bench_seconds").unwrap_or(0.0) > 0.0, "{out}");
    assert_eq!(runs[0]["cpu"]["server_seconds"], Value::Null, "{out}");
    let client = cpu(&runs[1], "bench_seconds").expect("client CPU");
    let server_cpu = cpu(&runs[1], "server_seconds").expect("server CPU");
    assert!(client > 0.0 && server_cpu > 0.0, "{out}");
    let per_msg = cpu(&runs[1], "us_per_msg").expect("per message");
    assert!(
        (per_msg - (client + server_cpu) * 1e6 / 2000.0).abs() < 1e-6,
        "{out}"
    );
    assert_eq!(cpu(&runs[0], "ratio_to_first"), Some(1.0), "{out}");

    let latency = common::ok(&server.cli(&[
        "bench",
        "--backend",
        &url,
        "--workload",
        "latency",
        "--count",
        "500",
        "--rate",
        "5000",
        "--fsync-probe",
        "0",
        "--json",
    ]));
    let latency: Value = serde_json::from_str(&latency).expect("json");
    assert_eq!(
        latency[0]["messages"], 500,
        "every message consumed: {latency}"
    );
    assert!(
        latency[0]["e2e_latency_ms"]["p99"].as_f64().unwrap_or(0.0) > 0.0,
        "{latency}"
    );

    // The benchmark topics were deleted from the server afterwards.
    let topics: Value =
        serde_json::from_str(&common::ok(&server.cli(&["topic", "list", "--json"]))).expect("json");
    assert_eq!(topics, serde_json::json!([]), "bench left topics behind");
}

#[test]
fn bench_runs_on_the_topic_defaults_unless_told_and_drains_a_backlog_with_a_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let url = server.url();
    let bench = |extra: &[&str]| -> Vec<Value> {
        let mut args = vec![
            "bench",
            "--backend",
            "embedded",
            "--backend",
            &url,
            "--count",
            "3000",
            "--batch",
            "100",
            "--producers",
            "2",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = common::ok(&server.cli(&args));
        let v: Value = serde_json::from_str(&out).expect("json");
        v.as_array().expect("one result per backend").clone()
    };
    // Headline runs use what a user gets: the 120 s dedup window, read back
    // from the broker and the server after they created the topic.
    for r in bench(&[]) {
        assert_eq!(r["dedup_window_ms"], 120_000, "{r}");
    }
    for r in bench(&["--dedup-window-ms", "0"]) {
        assert_eq!(r["dedup_window_ms"], 0, "dedup off when asked: {r}");
    }
    // The consume workload drains every message of the backlog, with two
    // group members, on both backends.
    let runs = bench(&["--workload", "consume", "--consumers", "2"]);
    assert_eq!(runs.len(), 2);
    for r in &runs {
        assert_eq!(r["workload"], "consume", "{r}");
        assert_eq!(r["messages"], 3000, "every message drained: {r}");
        assert!(r["msgs_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    }
    assert_eq!(runs[0]["ratio_to_first"], 1.0);
    assert!(
        runs[1]["cpu"]["server_seconds"].as_f64().is_some(),
        "{runs:?}"
    );
    let topics: Value =
        serde_json::from_str(&common::ok(&server.cli(&["topic", "list", "--json"]))).expect("json");
    assert_eq!(topics, serde_json::json!([]), "bench left topics behind");
}

#[test]
fn a_closed_standard_output_ends_sub_quietly_and_acks_nothing_unprinted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    common::ok(&server.cli_stdin(&["pub", "cli.pipe"], "one\ntwo\nthree\n"));
    // `wharf sub … | head -0`: the reading end is closed before anything is
    // written, so the first message's line already fails to print.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = std::process::Command::new(common::BIN)
        .args([
            "sub",
            "cli.pipe",
            "--group",
            "g",
            "--from",
            "earliest",
            "--count",
            "3",
            "--timeout",
            "10",
        ])
        .env("WHARF_URL", server.url())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Nothing printed, so nothing acknowledged: the group gets all three.
    let again = common::ok(&server.cli(&[
        "sub",
        "cli.pipe",
        "--group",
        "g",
        "--count",
        "3",
        "--json",
        "--timeout",
        "10",
    ]));
    let payloads: Vec<String> = json_lines(&again)
        .iter()
        .map(|m| m["payload"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(payloads, ["one", "two", "three"], "{again}");
}

/// Runs `wharf ARGS` with no server and no `WHARF_*` environment.
fn offline(args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::BIN)
        .args(args)
        .env_remove("WHARF_URL")
        .env_remove("WHARF_TOKEN")
        .env_remove("WHARF_CA_CERT")
        .output()
        .expect("run wharf")
}

#[test]
fn client_options_are_offered_by_client_commands_and_not_by_serve() {
    let serve = common::ok(&offline(&["serve", "--help"]));
    for opt in ["--url", "--token", "--ca-cert", "--json"] {
        assert!(!serve.contains(opt), "serve --help offers {opt}:\n{serve}");
    }
    let refused = offline(&["serve", "--url", "http://127.0.0.1:1"]);
    assert!(!refused.status.success(), "serve accepted --url");
    // On a nested command the options are accepted after the subcommand.
    let create = common::ok(&offline(&["topic", "create", "--help"]));
    for opt in ["--url", "--token", "--ca-cert", "--json"] {
        assert!(create.contains(opt), "topic create --help lacks {opt}");
    }
    // A command's own options are not filed under the connection heading.
    let publish = common::ok(&offline(&["pub", "--help"]));
    let (own, connection) = publish
        .split_once("Server connection:")
        .expect("a connection heading");
    assert!(own.contains("--key"), "{publish}");
    assert!(!connection.contains("--key"), "{publish}");
}

/// The standard error of a failed command, asserting it failed.
fn failed(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "command succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_shows_every_default_and_dlq_replay_needs_id_or_all() {
    let create = common::ok(&offline(&["topic", "create", "--help"]));
    for flag in [
        "--partitions",
        "--durability",
        "--retention-bytes",
        "--retention-ms",
        "--max-message-bytes",
        "--ttl-ms",
        "--dead-letter-topic",
        "--max-deliveries",
        "--visibility-timeout-ms",
        "--dedup-window-ms",
        "--segment-bytes",
    ] {
        let at = create
            .find(&format!("{flag} <"))
            .unwrap_or_else(|| panic!("no {flag} in:\n{create}"));
        // The option's text runs to the next option.
        let rest = &create[at + flag.len()..];
        let text = &rest[..rest.find("\n      --").unwrap_or(rest.len())];
        assert!(
            text.contains("[default: "),
            "{flag} shows no default: {text}"
        );
    }
    assert!(create.contains("[default: 1]"), "{create}");
    assert!(create.contains("[default: 1048576]"), "{create}");

    let sub = common::ok(&offline(&["sub", "--help"]));
    let sub = sub.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        sub.contains("[default: earliest with --group, latest without]"),
        "{sub}"
    );
    assert!(sub.contains("PARTITION:OFFSET"), "{sub}");

    let replay = common::ok(&offline(&["dlq", "replay", "--help"]));
    assert!(replay.contains("<--id <ID>|--all>"), "{replay}");
    let neither = failed(&offline(&["dlq", "replay", "orders"]));
    assert!(neither.contains("<--id <ID>|--all>"), "{neither}");
    assert!(
        !neither.contains("--url <URL>"),
        "--url shown as required: {neither}"
    );
    assert!(common::ok(&offline(&["sub", "--help"])).contains("[default: http://127.0.0.1:7420]"));
    let both = failed(&offline(&["dlq", "replay", "orders", "--id", "x", "--all"]));
    assert!(both.contains("cannot be used with"), "{both}");
}

#[test]
fn dlq_replay_before_anything_was_dead_lettered_replays_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    common::ok(&server.cli(&["topic", "create", "cli.clean"]));
    let out = common::ok(&server.cli(&["dlq", "replay", "cli.clean", "--all"]));
    assert_eq!(out.trim(), "replayed 0 message(s)");
    let err = failed(&server.cli(&["dlq", "replay", "cli.nosuchtopic", "--all"]));
    assert!(err.contains("unknown topic"), "{err}");
}

#[test]
fn a_bad_setting_is_one_sentence_without_repeated_jargon() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let err = failed(&server.cli(&["topic", "create", "cli.bad", "--partitions", "0"]));
    assert_eq!(
        err.trim(),
        "error: invalid partitions: must be between 1 and 4096"
    );
}

#[test]
fn an_unknown_topic_is_one_sentence_without_a_status_code() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let err = failed(&server.cli(&["topic", "describe", "cli.none"]));
    assert_eq!(err.trim(), "error: unknown topic \"cli.none\"");
}

#[test]
fn https_against_a_plain_server_says_to_use_http() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let url = format!("https://{}", server.addr);
    let err = failed(&common::cli_with(&url, None, &["topic", "list"], None));
    assert!(
        err.contains("does not use TLS: use http://"),
        "unclear error: {err}"
    );
}

#[test]
fn a_server_that_is_not_wharf_is_named_as_such() {
    // Answers every connection like a plain HTTP/1.1 web server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
            );
        }
    });
    let url = format!("http://{addr}");
    let err = failed(&common::cli_with(&url, None, &["topic", "list"], None));
    assert!(
        err.contains("did not answer as a Wharf server"),
        "unclear error: {err}"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let err = failed(&common::cli_with(&url, None, &["topic", "list"], None));
    assert!(
        err.contains("nothing is listening at"),
        "unclear error: {err}"
    );
}

#[test]
fn serve_on_a_data_dir_in_use_says_so_and_keeps_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    common::ok(&server.cli(&["topic", "create", "cli.kept"]));
    let data = dir.path().to_str().expect("utf-8");
    let err = failed(&offline(&[
        "serve",
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
    ]));
    assert!(
        err.contains("is in use by another running `wharf serve`"),
        "unclear error: {err}"
    );
    let list = common::ok(&server.cli(&["topic", "list"]));
    assert!(list.contains("cli.kept"), "{list}");
}

#[test]
fn a_failed_serve_leaves_no_new_data_dir_behind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").to_string();
    let parent = tempfile::tempdir().expect("temp dir");
    let data = parent.path().join("new-data");
    let err = failed(&offline(&[
        "serve",
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--listen",
        &port,
    ]));
    assert!(err.contains("cannot listen on"), "{err}");
    assert!(!data.exists(), "serve left {} behind", data.display());
}

#[test]
fn serve_listens_on_a_host_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start_on(dir.path(), None, "localhost:0");
    common::ok(&server.cli(&["topic", "create", "cli.named"]));
    let err = failed(&offline(&["serve", "--listen", "localhost"]));
    assert!(err.contains("has no port"), "{err}");
}

#[cfg(not(feature = "adapters"))]
#[test]
fn bench_on_an_adapter_url_names_the_feature_it_needs() {
    let err = failed(&offline(&[
        "bench",
        "--backend",
        "nats://127.0.0.1:4222",
        "--count",
        "10",
    ]));
    assert!(
        err.contains("`adapters` feature") && err.contains("--features adapters"),
        "{err}"
    );
}

#[test]
fn topic_create_on_an_existing_topic_names_what_it_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let created = common::ok(&server.cli(&["topic", "create", "cli.ex", "--partitions", "2"]));
    assert!(
        created.contains("dlq.cli.ex"),
        "no DLQ topic shown: {created}"
    );
    // The same settings again: fine, and said.
    let same = server.cli(&["topic", "create", "cli.ex", "--partitions", "2"]);
    common::ok(&same);
    assert!(
        String::from_utf8_lossy(&same.stderr).contains("already exists"),
        "{same:?}"
    );
    let err = failed(&server.cli(&[
        "topic",
        "create",
        "cli.ex",
        "--partitions",
        "4",
        "--ttl-ms",
        "1000",
    ]));
    assert!(
        err.contains("already exists and was not changed")
            && err.contains("--partitions 4 (the topic has 2)")
            && err.contains("--ttl-ms 1000 (the topic has none)"),
        "{err}"
    );
    let v: Value = serde_json::from_str(&common::ok(
        &server.cli(&["topic", "describe", "cli.ex", "--json"]),
    ))
    .expect("json");
    assert_eq!(v["partitions"], 2);
}

#[test]
fn sub_reads_one_partition_from_an_offset_and_shows_headers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    common::ok(&server.cli(&["topic", "create", "cli.po", "--partitions", "2"]));
    for i in 0..8 {
        let key = format!("k{i}");
        let body = format!("m{i}");
        common::ok(&server.cli(&["pub", "cli.po", &body, "--key", &key, "--header", "h=v"]));
    }
    let all = json_lines(&common::ok(&server.cli(&[
        "sub",
        "cli.po",
        "--from",
        "earliest",
        "--count",
        "8",
        "--timeout",
        "10",
        "--json",
    ])));
    let p1: Vec<&Value> = all.iter().filter(|m| m["partition"] == 1).collect();
    assert!(p1.len() >= 2, "keys all went to one partition: {all:?}");
    let from = p1[1]["offset"].as_u64().expect("offset");
    let want = p1.len() - 1;
    let got = json_lines(&common::ok(&server.cli(&[
        "sub",
        "cli.po",
        "--from",
        &format!("1:{from}"),
        "--count",
        &want.to_string(),
        "--timeout",
        "10",
        "--json",
    ])));
    assert_eq!(got.len(), want);
    for m in &got {
        assert_eq!(m["partition"], 1, "{m}");
        assert!(m["offset"].as_u64().expect("offset") >= from, "{m}");
    }
    let text = common::ok(&server.cli(&[
        "sub",
        "cli.po",
        "--from",
        "earliest",
        "--count",
        "1",
        "--timeout",
        "10",
        "--headers",
    ]));
    assert!(text.contains("\n  h: v"), "{text}");
    let err = failed(&server.cli(&["sub", "cli.po", "--group", "g", "--from", "1:0"]));
    assert!(err.contains("leave out --group"), "{err}");
}

#[test]
fn sub_from_a_partition_the_topic_lacks_names_the_partitions_it_has() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    common::ok(&server.cli(&["topic", "create", "cli.pr", "--partitions", "2"]));
    // Without the check it waited for a partition that will never deliver.
    let err = failed(&server.cli(&["sub", "cli.pr", "--from", "7:0", "--timeout", "30"]));
    assert_eq!(
        err.trim(),
        "error: --from 7:0: topic cli.pr has partitions 0 to 1 (`wharf topic describe cli.pr` shows them)"
    );
    common::ok(&server.cli(&["topic", "create", "cli.one"]));
    let err = failed(&server.cli(&["sub", "cli.one", "--from", "1:0", "--timeout", "30"]));
    assert!(err.contains("topic cli.one has only partition 0"), "{err}");
}

#[test]
fn sub_on_a_missing_topic_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let err = failed(&server.cli(&["sub", "cli.nosuch", "--timeout", "0.5"]));
    assert!(err.contains("topic cli.nosuch does not exist"), "{err}");
}

#[test]
fn every_metrics_family_has_help() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    common::ok(&server.cli(&["pub", "cli.m", "x"]));
    common::ok(&server.cli(&[
        "sub",
        "cli.m",
        "--group",
        "g",
        "--count",
        "1",
        "--timeout",
        "10",
    ]));
    let mut s = std::net::TcpStream::connect(&server.addr).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.0\r\nhost: wharf\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    let types: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(types.contains(&"wharf_published_messages_total"), "{body}");
    for family in types {
        assert!(
            body.contains(&format!("# HELP {family} ")),
            "{family} has no # HELP"
        );
    }
}
