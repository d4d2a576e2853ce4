//! `wharf events` through the real binary against a real `wharf serve`:
//! append with expected versions, read forwards/backwards, list streams,
//! tail the global log (catch-up, then live), as tables and as `--json`;
//! a conflict, bad input and a token without the right are one error line
//! and a non-zero exit, with nothing stored.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_str(&ok(out)).expect("JSON output")
}

#[test]
fn events_append_read_streams_as_tables_and_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let table = ok(&server.cli(&[
        "events",
        "append",
        "order-1",
        "OrderPlaced",
        r#"{"total":42}"#,
        "--expected",
        "no_stream",
        "--tag",
        "customer:7",
        "--meta",
        "by=cli",
    ]));
    let mut lines = table.lines();
    assert!(
        lines.next().expect("header").starts_with("STREAM"),
        "{table}"
    );
    let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
    assert_eq!(&row[..3], &["order-1", "0", "0"], "{table}");
    let r = json(&server.cli(&[
        "events",
        "append",
        "order-1",
        "OrderPaid",
        "--expected",
        "0",
        "--json",
    ]));
    assert_eq!(
        (r["stream"].as_str(), r["version"].as_u64()),
        (Some("order-1"), Some(1))
    );
    ok(&server.cli(&["events", "append", "invoice-1", "InvoiceSent", "paid"]));

    let table = ok(&server.cli(&["events", "read", "order-1"]));
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows[0].starts_with("STREAM") && rows[0].contains("PAYLOAD"),
        "{table}"
    );
    assert!(
        rows[1].contains("OrderPlaced")
            && rows[1].contains("customer:7")
            && rows[1].contains(r#"{"total":42}"#),
        "{table}"
    );
    assert!(rows[2].contains("OrderPaid"), "{table}");
    let evs = json(&server.cli(&[
        "events",
        "read",
        "order-1",
        "--backwards",
        "--count",
        "1",
        "--json",
    ]));
    assert_eq!(evs.as_array().map(Vec::len), Some(1));
    assert_eq!(evs[0]["type"], "OrderPaid");
    let evs = json(&server.cli(&["events", "read", "order-1", "--json"]));
    assert_eq!(evs[0]["metadata"]["by"], "cli");
    assert_eq!(evs[0]["payload"], r#"{"total":42}"#);

    let table = ok(&server.cli(&["events", "streams"]));
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        vec![vec!["invoice-1", "0", "live"], vec!["order-1", "1", "live"]],
        "{table}"
    );
    let streams = json(&server.cli(&["events", "streams", "--prefix", "order-", "--json"]));
    assert_eq!(
        streams,
        serde_json::json!([{"stream": "order-1", "version": 1, "state": "live"}])
    );
}

#[test]
fn events_conflicts_bad_input_and_missing_rights_fail_with_one_line_and_store_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("wharf.toml");
    std::fs::write(
        &cfg,
        "[[tokens]]\ntoken = \"root\"\nevents_read = [\"*\"]\nevents_append = [\"*\"]\n\n[[tokens]]\ntoken = \"reader\"\nevents_read = [\"order-\"]\n",
    )
    .expect("config");
    let server = common::Server::start(&dir.path().join("data"), Some(&cfg));
    let url = server.url();
    let root = |args: &[&str]| common::cli_with(&url, Some("root"), args, None);
    let err = failed(&root(&[
        "events",
        "append",
        "order-1",
        "T",
        "--expected",
        "5",
    ]));
    assert!(
        err.contains(
            "wrong expected version on stream order-1: expected version 5, actual no stream"
        ),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let err = failed(&root(&[
        "events",
        "append",
        "order-1",
        "T",
        "--expected",
        "-1",
    ]));
    assert!(err.contains("--expected \"-1\""), "{err}");
    let err = failed(&root(&[
        "events",
        "append",
        "order-1",
        "T",
        "--expected",
        "9223372036854775808",
    ]));
    assert!(err.contains("expected version"), "{err}");
    let err = failed(&root(&["events", "append", "a\u{7}b", "T"]));
    assert!(err.contains("invalid stream"), "{err}");
    let err = failed(&root(&["events", "append", "order-1", "$snapshot"]));
    assert!(err.contains("invalid event type"), "{err}");
    let err = failed(&common::cli_with(
        &url,
        Some("reader"),
        &["events", "append", "order-1", "T"],
        None,
    ));
    assert!(
        err.contains("permission denied") && err.contains("events_append"),
        "{err}"
    );
    let err = failed(&common::cli_with(
        &url,
        Some("reader"),
        &["events", "streams"],
        None,
    ));
    assert!(err.contains("permission denied"), "{err}");
    let err = failed(&root(&["events", "read", "order-1"]));
    assert!(
        err.contains("stream order-1 not found"),
        "nothing was stored: {err}"
    );
    let streams =
        serde_json::from_str::<Value>(&ok(&root(&["events", "streams", "--json"]))).expect("json");
    assert_eq!(streams, serde_json::json!([]));
}

#[test]
fn events_tail_catches_up_then_prints_live_events() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    ok(&server.cli(&["events", "append", "order-1", "First"]));
    ok(&server.cli(&["events", "append", "other-1", "Elsewhere"]));
    let mut tail = Command::new(common::BIN)
        .args([
            "events", "tail", "--from", "start", "--prefix", "order-", "--count", "2", "--json",
        ])
        .env("WHARF_URL", server.url())
        .env_remove("WHARF_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn tail");
    let mut out = BufReader::new(tail.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("first line");
    let first: Value = serde_json::from_str(&first).expect("JSON line");
    assert_eq!(first["type"], "First", "caught up");
    // Live: appended after the tail printed the stored event.
    ok(&server.cli(&["events", "append", "order-1", "Second"]));
    let mut second = String::new();
    out.read_line(&mut second).expect("second line");
    let second: Value = serde_json::from_str(&second).expect("JSON line");
    assert_eq!(
        (second["type"].as_str(), second["version"].as_u64()),
        (Some("Second"), Some(1))
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = tail.try_wait().expect("wait") {
            assert!(st.success(), "tail exited with {st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tail did not stop after --count 2"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
