//! The web console against the real `wharf serve`: the static shell is
//! served without a token with its content types and Content-Security-Policy
//! while the data routes it calls need one (and the routes added for it —
//! whoami, browsing a partition, resetting a group — do what they say); and two end-to-end runs in
//! Debian's chromium driven by playwright-core (`tools/console-e2e/`,
//! installed by `scripts/console-tools.sh`): a message rejected into the
//! DLQ is replayed from the page and the broker agrees; a wrong token shows
//! no data and the live tail shows a message published while the page is
//! open. Without chromium, node or playwright-core the browser tests skip,
//! or fail under `WHARF_REQUIRE_SERVICES=1`. Screenshots of every page go
//! to `target/console-screenshots/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const ADMIN: &str = "console-admin-token";
const READER: &str = "console-reader-token";

fn config(dir: &Path) -> PathBuf {
    let path = dir.join("console.toml");
    std::fs::write(
        &path,
        format!(
            r#"
# Long-poll subscriptions end 1 s after their last poll, so a group reset
# (refused while a consumer is bound) can go through soon after.
poller_idle_ms = 1000

[[tokens]]
token = "{ADMIN}"
name = "ops"
publish = [">"]
consume = [">"]
admin = [">"]
events_read = ["*"]

[[tokens]]
token = "{READER}"
name = "viewer"
consume = [">"]
"#
        ),
    )
    .expect("write config");
    path
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("client")
}

#[tokio::test]
async fn console_shell_needs_no_token_but_its_data_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(&dir.path().join("data"), Some(&config(dir.path())));
    let base = server.url();
    let c = client();

    for (path, ty) in [
        ("/", "text/html; charset=utf-8"),
        ("/console/js/app.js", "text/javascript; charset=utf-8"),
        ("/console/style.css", "text/css; charset=utf-8"),
    ] {
        let res = c.get(format!("{base}{path}")).send().await.expect("get");
        assert_eq!(res.status(), 200, "{path} without a token");
        assert_eq!(res.headers()["content-type"], ty, "{path}");
        let csp = res.headers()["content-security-policy"]
            .to_str()
            .expect("ascii");
        assert!(
            csp.contains("default-src 'none'")
                && csp.contains("script-src 'self'")
                && !csp.contains("unsafe"),
            "{path}: {csp}"
        );
        assert_eq!(res.headers()["x-content-type-options"], "nosniff");
        assert!(res.headers().contains_key("etag"), "{path}");
    }
    let html = c
        .get(format!("{base}/"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(html.contains("/console/js/app.js"), "{html}");

    // The data the pages show needs the token, as every API route does.
    let bearer = |t: &str| format!("Bearer {t}");
    for path in [
        "/v1/topics",
        "/v1/groups",
        "/v1/whoami",
        "/metrics",
        "/v1/topics/t/partitions/0/messages",
    ] {
        let none = c.get(format!("{base}{path}")).send().await.expect("get");
        assert_eq!(none.status(), 401, "{path} without a token");
        let wrong = c
            .get(format!("{base}{path}"))
            .header("authorization", bearer("wrong"))
            .send()
            .await
            .expect("get");
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
    }

    // whoami tells the console which buttons to show.
    let me: Value = c
        .get(format!("{base}/v1/whoami"))
        .header("authorization", bearer(READER))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(me["auth"], true);
    assert_eq!(me["name"], "viewer");
    assert_eq!(me["consume"], serde_json::json!([">"]));
    assert_eq!(me["admin"], serde_json::json!([]));
    assert_eq!(me["metrics"], false);

    // Browsing stored messages reads without consuming, with admin only.
    let publish = c
        .post(format!("{base}/v1/topics/browse.me/messages"))
        .header("authorization", bearer(ADMIN))
        .json(&serde_json::json!({"messages": [{"payload": "a"}, {"payload": "b"}, {"payload": "c"}]}))
        .send()
        .await
        .expect("publish");
    assert_eq!(publish.status(), 200);
    let as_reader = c
        .get(format!("{base}/v1/topics/browse.me/partitions/0/messages"))
        .header("authorization", bearer(READER))
        .send()
        .await
        .expect("get");
    assert_eq!(as_reader.status(), 403);
    for _ in 0..2 {
        let page: Value = c
            .get(format!(
                "{base}/v1/topics/browse.me/partitions/0/messages?offset=1&limit=1"
            ))
            .header("authorization", bearer(ADMIN))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(page["messages"][0]["offset"], 1);
        assert_eq!(page["messages"][0]["message"]["payload"], "b");
        assert_eq!(page["next_offset"], 2);
        assert_eq!(page["end_offset"], 3);
    }
    let by_time: Value = c
        .get(format!(
            "{base}/v1/topics/browse.me/partitions/0/messages?time_ms=0"
        ))
        .header("authorization", bearer(ADMIN))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(by_time["from_offset"], 0);
    assert_eq!(by_time["messages"].as_array().map(Vec::len), Some(3));
    assert!(by_time["next_offset"].is_null());
    let bad = c
        .get(format!("{base}/v1/topics/browse.me/partitions/7/messages"))
        .header("authorization", bearer(ADMIN))
        .send()
        .await
        .expect("get");
    assert_eq!(bad.status(), 404, "a partition the topic lacks");

    // Resetting a group: unknown group, bad target, then one that moves.
    let reset = |group: &str, to: &str| {
        c.post(format!("{base}/v1/groups/{group}/topics/browse.me/reset"))
            .header("authorization", bearer(ADMIN))
            .json(&serde_json::json!({ "to": to }))
            .send()
    };
    assert_eq!(
        reset("nobody", "earliest").await.expect("post").status(),
        404
    );
    let polled = c
        .post(format!(
            "{base}/v1/topics/browse.me/consume?group=g&max=3&wait_ms=2000"
        ))
        .header("authorization", bearer(ADMIN))
        .send()
        .await
        .expect("poll");
    assert_eq!(polled.status(), 200);
    // Its three deliveries are unsettled (leased for the server's lease time).
    assert_eq!(reset("g", "latest").await.expect("post").status(), 409);
    let polled: Value = polled.json().await.expect("json");
    for d in polled["deliveries"].as_array().expect("deliveries") {
        let id = d["delivery_id"].as_str().expect("delivery id");
        let acked = c
            .post(format!("{base}/v1/deliveries/{id}/ack"))
            .header("authorization", bearer(ADMIN))
            .send()
            .await
            .expect("ack");
        assert_eq!(acked.status(), 204);
    }
    assert_eq!(reset("g", "sideways").await.expect("post").status(), 400);
    // The long poll's subscription stays bound until poller_idle_ms passes.
    let mut moved = None;
    for _ in 0..40 {
        let r = reset("g", "1").await.expect("post");
        if r.status() == 200 {
            moved = Some(r.json::<Value>().await.expect("json"));
            break;
        }
        assert_eq!(r.status(), 409);
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let moved = moved.expect("the reset went through once the poller idled out");
    assert_eq!(
        moved["partitions"],
        serde_json::json!([{"partition": 0, "offset": 1}])
    );
    let groups: Value = c
        .get(format!("{base}/v1/groups?group=g&topic=browse.me"))
        .header("authorization", bearer(ADMIN))
        .send()
        .await
        .expect("groups")
        .json()
        .await
        .expect("json");
    assert_eq!(groups[0]["lag"], 2, "offsets 1 and 2 unsettled: {groups}");
}

/// What the browser tests need, or why they cannot run.
struct Browser {
    node: PathBuf,
    chromium: PathBuf,
    dir: PathBuf,
}

fn browser() -> Option<Browser> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/console-e2e");
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let node = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("node"))
            .find(|n| n.is_file())
    });
    let why = if !chromium.is_file() {
        format!("{} is missing", chromium.display())
    } else if node.is_none() {
        "node is missing".to_owned()
    } else if !dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        format!("playwright-core is missing in {}", dir.display())
    } else {
        return Some(Browser {
            node: node.expect("checked"),
            chromium,
            dir,
        });
    };
    let why = format!("{why}: run scripts/console-tools.sh");
    assert!(
        !wharf_testkit::service::required(),
        "{why} (WHARF_REQUIRE_SERVICES=1)"
    );
    println!("skipped: {why}");
    None
}

/// `target/console-screenshots/`.
fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .join("console-screenshots")
}

/// Runs one scenario of `console.test.mjs`; returns its `RESULT` JSON.
/// The screenshots it must write are removed first, so a stale one from an
/// earlier run cannot pass for it.
fn run_scenario(
    b: &Browser,
    server: &common::Server,
    scenario: &str,
    screenshots: &[&str],
) -> Value {
    for name in screenshots {
        let _ = std::fs::remove_file(screenshot_dir().join(format!("{name}.png")));
    }
    let out = Command::new(&b.node)
        .arg("console.test.mjs")
        .arg(scenario)
        .current_dir(&b.dir)
        .env("WHARF_URL", server.url())
        .env("ADMIN_TOKEN", ADMIN)
        .env("READER_TOKEN", READER)
        .env("CHROMIUM", &b.chromium)
        .env("SCREENSHOT_DIR", screenshot_dir())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{scenario} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in:\n{stdout}"));
    for name in screenshots {
        assert!(
            screenshot_dir().join(format!("{name}.png")).is_file(),
            "{scenario} wrote no screenshot {name}.png"
        );
    }
    serde_json::from_str(line).expect("RESULT is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_replays_a_dead_letter_from_the_page_and_the_broker_agrees() {
    let Some(b) = browser() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(&dir.path().join("data"), Some(&config(dir.path())));
    let r = {
        let server = &server;
        let b = &b;
        tokio::task::block_in_place(|| {
            run_scenario(
                b,
                server,
                "dlq-replay",
                &[
                    "overview",
                    "overview-phone",
                    "topics",
                    "topic",
                    "groups",
                    "group",
                    "dlq-topics",
                    "dlq-letters",
                    "streams",
                    "projections",
                ],
            )
        })
    };
    // Checked again here, independently of the page and the script: the
    // letter is gone from the DLQ and stored twice in its topic (the
    // original and the replayed copy, same id).
    let (topic, dlq, id) = (
        r["topic"].as_str().expect("topic"),
        r["dlq"].as_str().expect("dlq"),
        r["id"].as_str().expect("id"),
    );
    let c = client();
    let base = server.url();
    let get = |path: String| {
        c.get(format!("{base}{path}"))
            .header("authorization", format!("Bearer {ADMIN}"))
            .send()
    };
    let letters: Value = get(format!("/v1/dlq/{dlq}"))
        .await
        .expect("dlq")
        .json()
        .await
        .expect("json");
    assert_eq!(letters["letters"], serde_json::json!([]));
    let t: Value = get(format!("/v1/topics/{topic}"))
        .await
        .expect("topic")
        .json()
        .await
        .expect("json");
    let mut copies = 0;
    for p in t["offsets"].as_array().expect("offsets") {
        let page: Value = get(format!(
            "/v1/topics/{topic}/partitions/{}/messages",
            p["partition"]
        ))
        .await
        .expect("browse")
        .json()
        .await
        .expect("json");
        copies += page["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter(|m| m["message"]["id"] == id)
            .count();
    }
    assert_eq!(copies, 2, "the original and the replayed copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_nothing_for_a_wrong_token_and_tails_live() {
    let Some(b) = browser() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::Server::start(&dir.path().join("data"), Some(&config(dir.path())));
    let r = tokio::task::block_in_place(|| {
        run_scenario(
            &b,
            &server,
            "auth-and-tail",
            &["login-refused", "live-tail"],
        )
    });
    assert!(r["topic"].is_string(), "{r}");
}
