//! A flipped byte in one partition of the real `wharf serve`, after a clean
//! stop and after kill -9: the server starts again, the other partitions
//! and topics serve in full, the damaged partition up to the damage, with no
//! error reaching consumers; `wharf topic describe` and `/metrics` show the
//! damage; `wharf topic repair` (dry run, then real) makes the partition
//! serve again, losing nothing acknowledged outside the damaged batch.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

type Stored = BTreeMap<(u64, u64), String>;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Publishes `batches` batches of 10 messages, one key per batch; returns
/// (partition, offset) → payload of every acknowledged message.
async fn publish(c: &reqwest::Client, base: &str, topic: &str, batches: usize) -> Stored {
    let mut stored = BTreeMap::new();
    for i in 0..batches {
        let payloads: Vec<String> = (0..10).map(|j| format!("{topic}-{i}-{j}")).collect();
        let messages: Vec<Value> = payloads
            .iter()
            .map(|p| json!({"payload": p, "key": format!("k{}", i % 8)}))
            .collect();
        let r = c
            .post(format!("{base}/v1/topics/{topic}/messages"))
            .json(&json!({ "messages": messages }))
            .send()
            .await
            .expect("publish");
        assert_eq!(r.status().as_u16(), 200);
        let r: Value = r.json().await.expect("json");
        for (rc, p) in r["receipts"]
            .as_array()
            .expect("receipts")
            .iter()
            .zip(payloads)
        {
            let at = (
                rc["partition"].as_u64().expect("partition"),
                rc["offset"].as_u64().expect("offset"),
            );
            stored.insert(at, p);
        }
    }
    stored
}

/// Reads an SSE stream of `topic` for a new group `g` from the earliest
/// offset until it is quiet for a second; returns what it delivered and how
/// many `error` events came. (Each read uses its own group: a closed SSE
/// stream's server side lives on until it next writes, and would take the
/// group's next messages.)
async fn sse(c: &reqwest::Client, base: &str, topic: &str, g: &str) -> (Stored, usize) {
    let r = c
        .get(format!(
            "{base}/v1/topics/{topic}/events?group={g}&from=earliest"
        ))
        .send()
        .await
        .expect("sse");
    assert_eq!(r.status().as_u16(), 200);
    let mut body = r.bytes_stream();
    let mut text = String::new();
    while let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(1), body.next()).await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
    }
    let mut got = BTreeMap::new();
    let mut errors = 0;
    for ev in text.split("\n\n") {
        let kind = ev
            .lines()
            .find_map(|l| l.strip_prefix("event:"))
            .map(str::trim);
        let data = ev
            .lines()
            .find_map(|l| l.strip_prefix("data:"))
            .map(str::trim);
        match (kind, data) {
            (Some("message"), Some(d)) => {
                let d: Value = serde_json::from_str(d).expect("delivery json");
                let at = (
                    d["partition"].as_u64().expect("partition"),
                    d["offset"].as_u64().expect("offset"),
                );
                got.insert(
                    at,
                    d["message"]["payload"]
                        .as_str()
                        .expect("payload")
                        .to_owned(),
                );
            }
            (Some("error"), _) => errors += 1,
            _ => {}
        }
    }
    (got, errors)
}

fn flip_third_batch(seg: &Path) -> (u64, u64) {
    let mut bytes = std::fs::read(seg).expect("read segment");
    let mut pos = 0usize;
    for _ in 0..2 {
        pos += wharf_log::batch::BatchHeader::parse(&bytes[pos..])
            .expect("header")
            .len as usize;
    }
    let h = wharf_log::batch::BatchHeader::parse(&bytes[pos..]).expect("header");
    bytes[pos + 70] ^= 0x01;
    std::fs::write(seg, bytes).expect("write segment");
    (h.base_offset, h.next_offset())
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

async fn scenario(kill: bool, truncate: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = http();
    common::ok(&server.cli(&[
        "topic",
        "create",
        "t",
        "--partitions",
        "4",
        "--durability",
        "always",
    ]));
    common::ok(&server.cli(&[
        "topic",
        "create",
        "u",
        "--partitions",
        "2",
        "--durability",
        "always",
    ]));
    let stored = publish(&c, &base, "t", 40).await;
    let other = publish(&c, &base, "u", 10).await;
    if kill {
        server.kill9();
    } else {
        server.stop();
    }
    // The partition holding the most batches gets the damage.
    let v = (0..4u64)
        .max_by_key(|&p| stored.keys().filter(|k| k.0 == p).count())
        .expect("a partition");
    let end = stored.keys().filter(|k| k.0 == v).count() as u64;
    let seg = dir
        .path()
        .join("topics")
        .join("t")
        .join(v.to_string())
        .join("00000000000000000000.log");
    let (lo, hi) = flip_third_batch(&seg);

    server.start_again();
    // A new client: the old one's pooled connection died with the server.
    let c = http();
    let (got, errors) = sse(&c, &base, "t", "g1").await;
    assert_eq!(errors, 0, "no error reaches a consumer");
    let want: Stored = stored
        .iter()
        .filter(|((p, o), _)| *p != v || *o < lo)
        .map(|(k, p)| (*k, p.clone()))
        .collect();
    assert_eq!(
        got, want,
        "kill={kill}: other partitions in full, the damaged one up to the damage"
    );
    let (got_u, errors) = sse(&c, &base, "u", "g1").await;
    assert_eq!((got_u, errors), (other, 0), "another topic serves in full");

    let d: Value = serde_json::from_str(&common::ok(
        &server.cli(&["topic", "describe", "t", "--json"]),
    ))
    .expect("describe json");
    let damage = d["offsets"][v as usize]["damage"]
        .as_array()
        .expect("damage")
        .clone();
    assert_eq!(damage.len(), 1, "{d}");
    assert_eq!(
        (
            damage[0]["start_offset"].as_u64(),
            damage[0]["end_offset"].as_u64()
        ),
        (Some(lo), Some(hi))
    );
    assert!(damage[0]["file"]
        .as_str()
        .expect("file")
        .ends_with("00000000000000000000.log"));
    let table = common::ok(&server.cli(&["topic", "describe", "t"]));
    assert!(
        table.contains(&format!("DAMAGED partition {v}: offsets {lo}..{hi}")),
        "{table}"
    );
    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metric(&metrics, "wharf_storage_damage_detected_total").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            &format!("wharf_storage_damaged_batches{{topic=\"t\",partition=\"{v}\"}}")
        ),
        Some(1.0)
    );

    let vs = v.to_string();
    let how = if truncate {
        "--truncate-at"
    } else {
        "--skip-batch"
    };
    let dry: Value = serde_json::from_str(&common::ok(&server.cli(&[
        "topic",
        "repair",
        "t",
        &vs,
        how,
        "--dry-run",
        "--json",
    ])))
    .expect("repair json");
    let lost = if truncate { end - lo } else { hi - lo };
    assert_eq!(
        (dry["dry_run"].as_bool(), dry["lost_count"].as_u64()),
        (Some(true), Some(lost)),
        "{dry}"
    );
    assert_eq!(
        sse(&c, &base, "t", "g2").await,
        (want.clone(), 0),
        "a dry run skips nothing"
    );

    let out = common::ok(&server.cli(&["topic", "repair", "t", &vs, how]));
    assert!(out.contains(&format!("lost {lost} offsets")), "{out}");
    let (after, errors) = sse(&c, &base, "t", "g3").await;
    assert_eq!(errors, 0);
    let lost_range = if truncate { lo..end } else { lo..hi };
    let kept: Stored = stored
        .iter()
        .filter(|((p, o), _)| *p != v || !lost_range.contains(o))
        .map(|(k, p)| (*k, p.clone()))
        .collect();
    assert_eq!(
        after, kept,
        "everything but the offsets the repair reported lost"
    );
    if truncate {
        // The partition takes new messages again, from the cut.
        let fresh = publish(&c, &base, "t", 8).await;
        assert!(fresh.contains_key(&(v, lo)), "{fresh:?}");
        let mut all = kept.clone();
        all.extend(fresh);
        assert_eq!(sse(&c, &base, "t", "g4").await, (all, 0));
    }
    let d: Value = serde_json::from_str(&common::ok(
        &server.cli(&["topic", "describe", "t", "--json"]),
    ))
    .expect("describe json");
    assert!(
        d["offsets"]
            .as_array()
            .expect("offsets")
            .iter()
            .all(|p| p["damage"].as_array().is_some_and(Vec::is_empty)),
        "{d}"
    );
    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let action = if truncate { "truncate" } else { "skip_batch" };
    assert_eq!(
        metric(
            &metrics,
            &format!("wharf_storage_repairs_total{{action=\"{action}\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    server.stop();
}

#[tokio::test]
async fn a_flipped_byte_after_a_clean_stop_is_isolated_described_and_skipped_by_repair() {
    scenario(false, false).await;
}

#[tokio::test]
async fn a_flipped_byte_after_kill_9_leaves_the_server_starting_and_is_truncated_by_repair() {
    scenario(true, true).await;
}

#[tokio::test]
async fn a_flipped_byte_after_kill_9_is_skipped_by_repair() {
    scenario(true, false).await;
}

/// The per-topic policy, set through `wharf serve`: a topic created with
/// `wharf topic create --skip-damaged-batches` (gRPC) and one created over
/// HTTP with `"skip_damaged_batches": true` skip a damaged batch without an
/// operator — consumers get everything but that batch, no error — and
/// `topic describe` shows the policy; a topic without it still stops at the
/// damage.
#[tokio::test]
async fn the_skip_damaged_batches_policy_set_through_serve_skips_without_an_operator() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = common::Server::start(dir.path(), None);
    let base = server.url();
    let c = http();
    common::ok(&server.cli(&[
        "topic",
        "create",
        "viacli",
        "--partitions",
        "1",
        "--skip-damaged-batches",
    ]));
    let r = c
        .post(format!("{base}/v1/topics"))
        .json(&json!({"name": "viahttp", "partitions": 1, "skip_damaged_batches": true}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    let r: Value = c
        .get(format!("{base}/v1/topics/viahttp"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(r["skip_damaged_batches"], true, "{r}");
    common::ok(&server.cli(&["topic", "create", "plain", "--partitions", "1"]));
    // Asking for the policy on an existing topic without it changes nothing
    // and says so.
    let again = server.cli(&["topic", "create", "plain", "--skip-damaged-batches"]);
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        said.contains("--skip-damaged-batches skip (the topic has stop)"),
        "{said}"
    );

    let mut stored = BTreeMap::new();
    for t in ["viacli", "viahttp", "plain"] {
        stored.insert(t, publish(&c, &base, t, 6).await);
    }
    server.stop();
    let mut lost = BTreeMap::new();
    for t in ["viacli", "viahttp", "plain"] {
        let seg = dir
            .path()
            .join("topics")
            .join(t)
            .join("0")
            .join("00000000000000000000.log");
        lost.insert(t, flip_third_batch(&seg));
    }
    server.start_again();
    let c = http();

    for t in ["viacli", "viahttp"] {
        let (lo, hi) = lost[t];
        let want: Stored = stored[t]
            .iter()
            .filter(|((_, o), _)| !(lo..hi).contains(o))
            .map(|(k, p)| (*k, p.clone()))
            .collect();
        let (got, errors) = sse(&c, &base, t, "g1").await;
        assert_eq!(errors, 0, "{t}");
        assert_eq!(got, want, "{t}: everything but the damaged batch");
        let d: Value = serde_json::from_str(&common::ok(
            &server.cli(&["topic", "describe", t, "--json"]),
        ))
        .expect("describe json");
        assert_eq!(d["skip_damaged_batches"], true, "{d}");
        assert!(
            d["offsets"][0]["damage"]
                .as_array()
                .is_some_and(Vec::is_empty),
            "{t}: the skipped damage is repaired: {d}"
        );
        let table = common::ok(&server.cli(&["topic", "describe", t]));
        assert!(
            table.contains("ON_DAMAGE") && table.contains("skip"),
            "{table}"
        );
    }
    // Without the policy the partition stops at the damage.
    let (lo, _) = lost["plain"];
    let want: Stored = stored["plain"]
        .iter()
        .filter(|((_, o), _)| *o < lo)
        .map(|(k, p)| (*k, p.clone()))
        .collect();
    assert_eq!(sse(&c, &base, "plain", "g1").await, (want, 0));
    let table = common::ok(&server.cli(&["topic", "describe", "plain"]));
    assert!(table.contains("stop"), "{table}");
    server.stop();
}
