//! `wharf serve` on a small, full file system (a tmpfs mounted for the
//! test): a publish answers 507 and stores none of its messages, `/readyz`
//! and `/metrics` report it, deleting a topic frees space, and publishing
//! resumes without a restart. Needs `mount` (root, or `sudo -n`); without
//! it the test skips, or fails under `WHARF_REQUIRE_SERVICES=1`.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A tmpfs mounted at a temp dir; unmounted on drop (also while a failing
/// test unwinds).
struct Tmpfs {
    dir: tempfile::TempDir,
    sudo: bool,
}

fn run_mount(sudo: bool, args: &[&str]) -> Result<(), String> {
    let mut cmd = if sudo {
        let mut c = Command::new("sudo");
        c.arg("-n");
        c
    } else {
        Command::new(args[0])
    };
    let args = if sudo { args } else { &args[1..] };
    match cmd.args(args).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir
            .path()
            .to_str()
            .ok_or("temp path is not UTF-8")?
            .to_owned();
        let opt = format!("size={size}");
        let args = ["mount", "-t", "tmpfs", "-o", &opt, "tmpfs", &path];
        match run_mount(false, &args) {
            Ok(()) => Ok(Tmpfs { dir, sudo: false }),
            Err(direct) => match run_mount(true, &args) {
                Ok(()) => Ok(Tmpfs { dir, sudo: true }),
                Err(sudo) => Err(format!("mount: {direct}; sudo -n mount: {sudo}")),
            },
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let path = self.dir.path().to_string_lossy().into_owned();
        if let Err(e) = run_mount(self.sudo, &["umount", "-l", &path]) {
            eprintln!("could not unmount {path}: {e}");
        }
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn post(c: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = c.post(url).json(&body).send().await.expect("request");
    let st = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    (st, body)
}

async fn status(c: &reqwest::Client, url: String) -> u16 {
    c.get(url).send().await.expect("request").status().as_u16()
}

/// Fills the file system with `filler` until a write fails.
fn fill(filler: &PathBuf) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(filler)
        .expect("open filler");
    let chunk = vec![7u8; 4096];
    loop {
        match f.write_all(&chunk).and_then(|()| f.sync_data()) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(28), "{e}");
                return;
            }
        }
    }
}

/// Every payload the group `g` receives from `topic` within a short wait.
async fn consume_all(c: &reqwest::Client, base: &str, topic: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let (st, r) = post(
            c,
            format!("{base}/v1/topics/{topic}/consume?group=g&max=100&wait_ms=500"),
            json!({}),
        )
        .await;
        assert_eq!(st, 200, "{r}");
        let ds = r["deliveries"].as_array().cloned().unwrap_or_default();
        if ds.is_empty() {
            return out;
        }
        for d in ds {
            out.push(d["message"]["payload"].as_str().unwrap_or("").to_owned());
            let id = d["delivery_id"].as_str().expect("id").to_owned();
            let (st, _) = post(c, format!("{base}/v1/deliveries/{id}/ack"), json!({})).await;
            assert_eq!(st, 204);
        }
    }
}

fn batch(prefix: &str, n: usize) -> Value {
    let messages: Vec<Value> = (0..n)
        .map(|i| json!({"payload": format!("{prefix}-{i}"), "key": format!("k{i}")}))
        .collect();
    json!({ "messages": messages })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_507_stores_nothing_and_publishing_resumes_once_space_is_freed() {
    let fs = match Tmpfs::mount("24m") {
        Ok(fs) => fs,
        Err(e) => {
            wharf_testkit::service::report_unreachable("tmpfs mount", "mount -t tmpfs", &e);
            return;
        }
    };
    let data = fs.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let server = common::Server::start(&data, None);
    let base = server.url();
    let c = http();
    for (topic, parts) in [("full.small", "4"), ("full.big", "1")] {
        common::ok(&server.cli(&["topic", "create", topic, "--partitions", parts]));
    }
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/full.small/messages"),
        batch("before", 10),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(status(&c, format!("{base}/readyz")).await, 200);

    // Fill the disk the way it fills in production: by publishing.
    let big = "x".repeat(256 * 1024);
    let mut accepted = 0;
    let full = loop {
        let (st, r) = post(
            &c,
            format!("{base}/v1/topics/full.big/messages"),
            json!({ "payload": big }),
        )
        .await;
        if st != 200 {
            break (st, r);
        }
        accepted += 1;
        assert!(accepted < 200, "a 24 MiB file system never filled");
    };
    assert_eq!(full.0, 507, "{}", full.1);
    assert_eq!(full.1["error"]["code"], "storage_full", "{}", full.1);
    // Take the last free bytes too, so even a small batch cannot fit.
    fill(&fs.path().join("filler"));

    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/full.small/messages"),
        batch("failed", 50),
    )
    .await;
    assert_eq!(st, 507, "a publish on a full disk: {r}");
    assert_eq!(r["error"]["code"], "storage_full", "{r}");
    assert_eq!(
        status(&c, format!("{base}/readyz")).await,
        503,
        "/readyz while writes fail"
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
        metrics.lines().any(|l| l == "wharf_storage_full 1"),
        "no wharf_storage_full 1 in /metrics:\n{metrics}"
    );
    // Reads keep working while the disk is full.
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/full.small/consume?group=peek&max=100&wait_ms=200"),
        json!({}),
    )
    .await;
    assert_eq!(st, 200, "{r}");

    // Free space by deleting a topic: no restart.
    let r = c
        .delete(format!("{base}/v1/topics/full.big"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status().as_u16(), 204, "deleting a topic on a full disk");
    std::fs::remove_file(fs.path().join("filler")).expect("remove filler");

    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&c, format!("{base}/readyz")).await != 200 {
        assert!(
            Instant::now() < deadline,
            "/readyz did not recover after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (st, r) = post(
        &c,
        format!("{base}/v1/topics/full.small/messages"),
        batch("after", 50),
    )
    .await;
    assert_eq!(st, 200, "publishing after space was freed: {r}");
    common::ok(&server.cli(&["topic", "create", "full.new"]));

    let got = consume_all(&c, &base, "full.small").await;
    assert!(
        !got.iter().any(|p| p.starts_with("failed-")),
        "a publish answered 507 was partly stored: {:?}",
        got.iter()
            .filter(|p| p.starts_with("failed-"))
            .collect::<Vec<_>>()
    );
    assert_eq!(got.iter().filter(|p| p.starts_with("before-")).count(), 10);
    assert_eq!(got.iter().filter(|p| p.starts_with("after-")).count(), 50);
    drop(server);
}
