//! Operator views against a real `wharf serve`: `group describe` (members,
//! committed offsets that move with acks, stream assignment) over the CLI
//! and HTTP, dead-letter listing that reads without leasing (paging, show,
//! replay), and the fsync latency histogram on `/metrics`.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use wharf_core::{Delivery, GroupMode, StartPosition, SubscribeOptions, Subscriber, Subscription};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

async fn get_json(c: &reqwest::Client, url: String) -> (u16, Value) {
    let r = c.get(url).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json body"))
}

/// Runs the CLI off the async runtime and returns the output.
async fn cli(url: &str, args: &[&str]) -> std::process::Output {
    let url = url.to_owned();
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::cli_with(&url, None, &args, None)
    })
    .await
    .expect("join")
}

async fn cli_json(url: &str, args: &[&str]) -> Value {
    serde_json::from_str(&common::ok(&cli(url, args).await)).expect("JSON output")
}

/// `wharf group describe GROUP TOPIC --json`, the one entry.
async fn describe(url: &str, group: &str, topic: &str) -> Value {
    let v = cli_json(url, &["group", "describe", group, topic, "--json"]).await;
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    v[0].clone()
}

fn committed(g: &Value) -> Vec<u64> {
    g["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["committed_offset"].as_u64().expect("committed_offset"))
        .collect()
}

/// Describes until `done` holds (acks reach the server asynchronously).
async fn describe_until(
    url: &str,
    group: &str,
    topic: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let g = describe(url, group, topic).await;
        if done(&g) {
            return g;
        }
        assert!(Instant::now() < deadline, "never reached: {g}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery in time")
        .expect("open")
        .expect("delivery")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_describe_shows_members_and_committed_offsets_that_move_after_acks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let url = server.url();
    let c = http();
    common::ok(&cli(&url, &["topic", "create", "gd.jobs", "--partitions", "2"]).await);
    for i in 0..4 {
        common::ok(&cli(&url, &["pub", "gd.jobs", &format!("job-{i}")]).await);
    }
    let client = wharf_client::Client::connect(&url, None)
        .await
        .expect("connect");

    // Queue mode: one member takes everything; offsets move only with acks.
    let mut q = client
        .subscribe(
            SubscribeOptions::new("gd.jobs")
                .group("gd.queue")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(next(&mut q).await);
    }
    let g = describe(&url, "gd.queue", "gd.jobs").await;
    assert_eq!(g["mode"], "queue", "{g}");
    assert_eq!(g["members"].as_array().map(Vec::len), Some(1), "{g}");
    assert_eq!(committed(&g), [0, 0], "leased is not settled: {g}");
    assert_eq!(g["lag"], 4, "{g}");
    for p in g["partitions"].as_array().expect("partitions") {
        assert_eq!(p["end_offset"], 2, "{g}");
        assert_eq!(
            p["member"],
            Value::Null,
            "queue mode assigns no partition: {g}"
        );
    }
    // Ack partition 0's first message only.
    let first_p0 = held
        .iter()
        .position(|d| d.info().partition == 0 && d.info().offset == Some(0))
        .expect("partition 0 offset 0 delivered");
    held.remove(first_p0).ack().await.expect("ack");
    let g = describe_until(&url, "gd.queue", "gd.jobs", |g| committed(g) == [1, 0]).await;
    assert_eq!(g["lag"], 3, "{g}");
    assert_eq!(g["partitions"][0]["lag"], 1, "{g}");
    for d in held.drain(..) {
        d.ack().await.expect("ack");
    }
    let g = describe_until(&url, "gd.queue", "gd.jobs", |g| committed(g) == [2, 2]).await;
    assert_eq!(g["lag"], 0, "{g}");

    // The same over HTTP, filtered by group.
    let (status, http_groups) = get_json(&c, format!("{url}/v1/groups?group=gd.queue")).await;
    assert_eq!(status, 200);
    let h = &http_groups[0];
    assert_eq!(
        http_groups.as_array().map(Vec::len),
        Some(1),
        "{http_groups}"
    );
    assert_eq!(h["mode"], "queue");
    assert_eq!(h["members"], g["members"]);
    assert_eq!(h["partitions"][1]["committed_offset"], 2, "{h}");
    assert_eq!(h["partitions"][1]["end_offset"], 2, "{h}");
    assert_eq!(h["lag"], 0);

    // The human table has the same columns.
    let table = common::ok(&cli(&url, &["group", "describe", "gd.queue"]).await);
    assert!(
        table.contains("mode:     queue") && table.contains("COMMITTED_OFFSET"),
        "{table}"
    );

    // Stream mode: two members, one partition each; acks move only the
    // acked partition. Messages are published once both members joined, so
    // neither prefetches the other's partition.
    common::ok(&cli(&url, &["topic", "create", "gd.events", "--partitions", "2"]).await);
    let stream = || {
        SubscribeOptions::new("gd.events")
            .group("gd.stream")
            .mode(GroupMode::Stream)
            .start(StartPosition::Earliest)
    };
    let mut a = client.subscribe(stream()).await.expect("a");
    let mut b = client.subscribe(stream()).await.expect("b");
    let g = describe_until(&url, "gd.stream", "gd.events", |g| {
        g["members"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    assert_eq!(g["mode"], "stream", "{g}");
    let members = g["members"].as_array().expect("members").clone();
    let owners: Vec<Value> = g["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["member"].clone())
        .collect();
    assert_eq!(owners, [members[0].clone(), members[1].clone()], "{g}");
    // Keyless messages go round-robin: one to each partition.
    for i in 0..2 {
        common::ok(&cli(&url, &["pub", "gd.events", &format!("event-{i}")]).await);
    }
    let da = next(&mut a).await;
    let db = next(&mut b).await;
    assert_ne!(da.info().partition, db.info().partition);
    let g = describe(&url, "gd.stream", "gd.events").await;
    assert_eq!(committed(&g), [0, 0], "{g}");
    assert_eq!(g["lag"], 2, "{g}");
    let pa = da.info().partition as usize;
    da.ack().await.expect("ack");
    let g = describe_until(&url, "gd.stream", "gd.events", |g| committed(g)[pa] == 1).await;
    assert_eq!(committed(&g)[1 - pa], 0, "{g}");
    assert_eq!(g["lag"], 1, "{g}");
    db.ack().await.expect("ack");
    describe_until(&url, "gd.stream", "gd.events", |g| committed(g) == [1, 1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_reset_moves_an_idle_group_and_refuses_one_in_use() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let url = server.url();
    common::ok(&cli(&url, &["topic", "create", "gr.jobs", "--partitions", "2"]).await);
    for i in 0..4 {
        common::ok(&cli(&url, &["pub", "gr.jobs", &format!("job-{i}")]).await);
    }
    let client = wharf_client::Client::connect(&url, None)
        .await
        .expect("connect");
    let subscribe = || async {
        client
            .subscribe(
                SubscribeOptions::new("gr.jobs")
                    .group("gr.g")
                    .start(StartPosition::Earliest),
            )
            .await
            .expect("subscribe")
    };
    let mut sub = subscribe().await;
    for _ in 0..4 {
        next(&mut sub).await.ack().await.expect("ack");
    }
    describe_until(&url, "gr.g", "gr.jobs", |g| committed(g) == [2, 2]).await;

    // In use: refused with a sentence that says so, and nothing moves.
    let busy = cli(
        &url,
        &["group", "reset", "gr.g", "gr.jobs", "--to", "earliest"],
    )
    .await;
    assert!(!busy.status.success());
    let err = String::from_utf8_lossy(&busy.stderr);
    assert!(err.contains("in use"), "{err}");
    assert_eq!(committed(&describe(&url, "gr.g", "gr.jobs").await), [2, 2]);
    drop(sub);

    // Idle: back to the start; the group reads everything again.
    let moved = loop {
        let out = cli(
            &url,
            &[
                "group", "reset", "gr.g", "gr.jobs", "--to", "earliest", "--json",
            ],
        )
        .await;
        if out.status.success() {
            break serde_json::from_slice::<Value>(&out.stdout).expect("JSON output");
        }
        // The dropped subscription's stream ends on the server a moment later.
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("in use"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(moved["group"], "gr.g", "{moved}");
    let offsets: Vec<u64> = moved["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(offsets, [0, 0], "{moved}");
    assert_eq!(committed(&describe(&url, "gr.g", "gr.jobs").await), [0, 0]);
    let mut sub = subscribe().await;
    let mut again: Vec<String> = Vec::new();
    for _ in 0..4 {
        let d = next(&mut sub).await;
        again.push(String::from_utf8_lossy(d.message().payload()).into_owned());
        d.ack().await.expect("ack");
    }
    again.sort();
    assert_eq!(again, ["job-0", "job-1", "job-2", "job-3"]);
    drop(sub);

    // To an offset in every partition, in the table form.
    let table = loop {
        let out = cli(&url, &["group", "reset", "gr.g", "gr.jobs", "--to", "1"]).await;
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        table.contains("PARTITION") && table.contains("OFFSET"),
        "{table}"
    );
    assert_eq!(committed(&describe(&url, "gr.g", "gr.jobs").await), [1, 1]);

    // Bad input: typed refusals, nothing moved.
    for (args, says) in [
        (
            &["group", "reset", "gr.g", "gr.jobs", "--to", "sometime"][..],
            "sometime",
        ),
        (
            &["group", "reset", "gr.g", "gr.jobs", "--to", "99"][..],
            "99",
        ),
        (
            &["group", "reset", "gr.none", "gr.jobs", "--to", "latest"][..],
            "no position",
        ),
        (
            &["group", "reset", "gr.g", "gr.nope", "--to", "latest"][..],
            "gr.nope",
        ),
    ] {
        let out = cli(&url, args).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    }
    // Over gRPC, a request without a target is refused as such.
    let e = client
        .raw()
        .reset_group(wharf_client::proto::ResetGroupRequest {
            group: "gr.g".into(),
            topic: "gr.jobs".into(),
            to: wharf_client::proto::StartKind::StartDefault as i32,
            value: 0,
        })
        .await
        .expect_err("no target");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert_eq!(committed(&describe(&url, "gr.g", "gr.jobs").await), [1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_listing_reads_without_leasing_pages_and_stays_consistent_with_replay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let url = server.url();
    let c = http();
    for i in 0..3 {
        common::ok(&cli(&url, &["pub", "dl.jobs", &format!("job-{i}")]).await);
    }
    let client = wharf_client::Client::connect(&url, None)
        .await
        .expect("connect");
    let mut workers = client
        .subscribe(
            SubscribeOptions::new("dl.jobs")
                .group("workers")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    for _ in 0..3 {
        next(&mut workers)
            .await
            .reject("cannot parse job")
            .await
            .expect("reject");
    }

    // Listing twice returns the same letters, in offset order.
    let first = cli_json(&url, &["dlq", "list", "dl.jobs", "--json"]).await;
    let second = cli_json(&url, &["dlq", "list", "dl.jobs", "--json"]).await;
    assert_eq!(first, second);
    let letters = first.as_array().expect("array").clone();
    assert_eq!(letters.len(), 3, "{first}");
    let payloads: Vec<&str> = letters
        .iter()
        .map(|l| l["payload"].as_str().expect("payload"))
        .collect();
    assert_eq!(payloads, ["job-0", "job-1", "job-2"]);
    let ids: Vec<String> = letters
        .iter()
        .map(|l| l["id"].as_str().expect("id").to_owned())
        .collect();

    // Paging: two, then the rest from the printed cursor.
    let out = cli(&url, &["dlq", "list", "dl.jobs", "--limit", "2", "--json"]).await;
    let page: Value = serde_json::from_str(&common::ok(&out)).expect("json");
    assert_eq!(page.as_array().map(Vec::len), Some(2), "{page}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--cursor 0:2"), "{stderr}");
    let out = cli(
        &url,
        &[
            "dlq", "list", "dl.jobs", "--limit", "2", "--cursor", "0:2", "--json",
        ],
    )
    .await;
    let rest: Value = serde_json::from_str(&common::ok(&out)).expect("json");
    assert_eq!(rest.as_array().map(Vec::len), Some(1), "{rest}");
    assert_eq!(rest[0]["id"], ids[2].as_str());
    assert!(
        String::from_utf8_lossy(&out.stderr).is_empty(),
        "no more pages"
    );

    // The HTTP listing pages the same way and shows one letter by id.
    let (status, p1) = get_json(&c, format!("{url}/v1/dlq/dlq.dl.jobs?limit=2")).await;
    assert_eq!(status, 200, "{p1}");
    assert_eq!(p1["letters"].as_array().map(Vec::len), Some(2), "{p1}");
    assert_eq!(p1["letters"][0]["message"]["id"], ids[0].as_str());
    assert_eq!(p1["next_cursor"], "0:2");
    let (_, p2) = get_json(&c, format!("{url}/v1/dlq/dlq.dl.jobs?limit=2&cursor=0:2")).await;
    assert_eq!(p2["letters"][0]["offset"], 2, "{p2}");
    assert_eq!(p2["next_cursor"], Value::Null, "{p2}");
    let (status, one) = get_json(&c, format!("{url}/v1/dlq/dlq.dl.jobs/{}", ids[1])).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["message"]["payload"], "job-1");
    assert_eq!(
        one["message"]["headers"]["wharf-dlq-reason"],
        "cannot parse job"
    );
    let (status, _) = get_json(
        &c,
        format!("{url}/v1/dlq/dlq.dl.jobs/01234567-89ab-cdef-0123-456789abcdef"),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = get_json(&c, format!("{url}/v1/dlq/dlq.dl.jobs/not-an-id")).await;
    assert_eq!(status, 400);
    let (status, _) = get_json(&c, format!("{url}/v1/dlq/dlq.dl.jobs?cursor=nope")).await;
    assert_eq!(status, 400);

    // The OpenAPI document describes the new shapes (derived from the code).
    let (_, doc) = get_json(&c, format!("{url}/openapi.json")).await;
    assert!(
        doc["paths"]["/v1/dlq/{topic}/{id}"]["get"].is_object(),
        "{doc}"
    );
    for schema in ["DlqPageJson", "DeadLetterJson", "GroupPartitionJson"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    assert!(doc["components"]["schemas"]["GroupJson"]["properties"]["members"].is_object());

    // `dlq show` finds a letter by reading too.
    let shown = cli_json(&url, &["dlq", "show", "dl.jobs", &ids[2], "--json"]).await;
    assert_eq!(shown["payload"], "job-2", "{shown}");
    assert_eq!(shown["offset"], 2, "{shown}");

    // Nothing was leased: no redrive group exists, and a group consuming
    // the dead-letter topic gets every letter on its first attempt.
    let groups = cli_json(&url, &["group", "list", "--json"]).await;
    assert!(
        !groups.to_string().contains(wharf_broker::REDRIVE_GROUP),
        "{groups}"
    );
    let mut audit = client
        .subscribe(
            SubscribeOptions::new("dlq.dl.jobs")
                .group("audit")
                .start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    for want in &ids {
        let d = next(&mut audit).await;
        assert_eq!(d.message().id().to_string(), *want);
        assert_eq!(d.info().attempt, 1, "listing counted a delivery attempt");
        d.ack().await.expect("ack");
    }

    // Replay one: it leaves the listing and comes back to its topic; the
    // other two remain until replayed all.
    let replay = common::ok(&cli(&url, &["dlq", "replay", "dl.jobs", "--id", &ids[1]]).await);
    assert!(replay.contains("replayed 1"), "{replay}");
    let d = next(&mut workers).await;
    assert_eq!(&d.message().payload()[..], b"job-1");
    assert_eq!(d.message().headers().get("wharf-dlq-reason"), None);
    d.ack().await.expect("ack");
    let left = cli_json(&url, &["dlq", "list", "dl.jobs", "--json"]).await;
    let left_ids: Vec<&str> = left
        .as_array()
        .expect("array")
        .iter()
        .map(|l| l["id"].as_str().expect("id"))
        .collect();
    assert_eq!(left_ids, [ids[0].as_str(), ids[2].as_str()]);
    let out = cli(&url, &["dlq", "show", "dl.jobs", &ids[1]]).await;
    assert!(!out.status.success(), "a replayed letter is not shown");
    let all = common::ok(&cli(&url, &["dlq", "replay", "dl.jobs", "--all"]).await);
    assert!(all.contains("replayed 2"), "{all}");
    assert_eq!(
        cli_json(&url, &["dlq", "list", "dl.jobs", "--json"]).await,
        serde_json::json!([])
    );
    for _ in 0..2 {
        next(&mut workers).await.ack().await.expect("ack");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_include_the_fsync_histogram_after_an_always_publish() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(dir.path(), None);
    let url = server.url();
    let c = http();
    let count = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("wharf_fsync_duration_seconds_count "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no fsync count in {text}"))
    };
    let scrape = || async {
        c.get(format!("{url}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    };
    common::ok(
        &cli(
            &url,
            &["topic", "create", "m.fsync", "--durability", "always"],
        )
        .await,
    );
    let before = count(&scrape().await);
    common::ok(&cli(&url, &["pub", "m.fsync", "durable"]).await);
    let text = scrape().await;
    assert!(
        text.contains("# TYPE wharf_fsync_duration_seconds histogram"),
        "{text}"
    );
    let after = count(&text);
    assert!(after > before, "fsync count {before} -> {after}");
    let inf = text
        .lines()
        .find_map(|l| l.strip_prefix("wharf_fsync_duration_seconds_bucket{le=\"+Inf\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("+Inf bucket");
    assert_eq!(inf, after);
    let sum: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("wharf_fsync_duration_seconds_sum "))
        .and_then(|v| v.parse().ok())
        .expect("sum");
    assert!(sum > 0.0, "{text}");
}
