//! Starts the real `wharf` binary for integration tests: `wharf serve` on
//! port 0 (the bound address is read from its first line of output) with a
//! temp data dir, and runs CLI commands against it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_wharf");

/// A running `wharf serve` child process.
pub struct Server {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    config: Option<PathBuf>,
}

impl Server {
    /// Starts a server on a free port with data in `data_dir`.
    pub fn start(data_dir: &Path, config: Option<&Path>) -> Server {
        Self::start_on(data_dir, config, "127.0.0.1:0")
    }

    /// Starts a server listening on `listen`.
    pub fn start_on(data_dir: &Path, config: Option<&Path>, listen: &str) -> Server {
        Self::start_with(data_dir, config, listen, &[])
    }

    /// Starts a server listening on `listen` with extra `wharf serve` flags.
    pub fn start_with(
        data_dir: &Path,
        config: Option<&Path>,
        listen: &str,
        flags: &[&str],
    ) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .args(flags)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(listen)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd.spawn().expect("spawn wharf serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        reader
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Server {
            child: Some(child),
            addr,
            data_dir: data_dir.to_owned(),
            config: config.map(Path::to_owned),
        }
    }

    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM and wait for a clean exit (asserts exit status 0).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let st = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()
                .expect("run kill");
            assert!(st.success(), "kill -TERM failed");
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Some(status) = child.try_wait().expect("wait") {
                    assert!(status.success(), "wharf serve exited with {status}");
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "wharf serve did not stop after SIGTERM"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGKILL, no cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (SIGTERM) and starts again on the same data dir and port.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Starts again on the same data dir and address after a stop or kill.
    pub fn start_again(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may linger briefly; retry until it binds.
            let mut cmd = Command::new(BIN);
            cmd.arg("serve")
                .arg("--data-dir")
                .arg(&self.data_dir)
                .arg("--listen")
                .arg(&self.addr)
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            if let Some(c) = &self.config {
                cmd.arg("--config").arg(c);
            }
            let mut child = cmd.spawn().expect("spawn wharf serve");
            let stdout = child.stdout.take().expect("piped stdout");
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            reader.read_line(&mut line).expect("read");
            if line.contains("listening") {
                std::thread::spawn(move || {
                    let mut sink = String::new();
                    while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                        sink.clear();
                    }
                });
                self.child = Some(child);
                return;
            }
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "could not restart on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `wharf ARGS` against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_with(&self.url(), None, args, None)
    }

    /// Runs `wharf ARGS` against this server with `stdin` piped in.
    pub fn cli_stdin(&self, args: &[&str], stdin: &str) -> Output {
        cli_with(&self.url(), None, args, Some(stdin))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the CLI with `WHARF_URL` (and optionally `WHARF_TOKEN`).
pub fn cli_with(url: &str, token: Option<&str>, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("WHARF_URL", url)
        .env_remove("WHARF_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = token {
        cmd.env("WHARF_TOKEN", t);
    }
    let mut child = cmd.spawn().expect("spawn wharf");
    {
        let mut input = child.stdin.take().expect("piped stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("write stdin");
        }
    }
    child.wait_with_output().expect("wait for wharf")
}

/// Stdout as text, asserting the command succeeded.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a side-by-side `wharf bench` run of an adapter beside its bare
/// client looked like (see [`bench_side_by_side`]).
pub struct SideBySide {
    /// The bare row, then the adapter's.
    pub runs: Vec<serde_json::Value>,
    /// The topics the run named on stderr, as engines spell them (dots and
    /// dashes as `_`), one per target.
    pub topics: Vec<String>,
}

/// Runs `wharf bench --json --backend bare+<url> --backend <url>` and
/// checks what every such run promises: a row per target in that order,
/// each of `workload` over `count` messages at a positive rate with a
/// `durability` that says `ack` (what the engine's acknowledgement means),
/// the bare row marked as such, and the adapter's `ratio_to_bare` exactly
/// its rate over the bare row's.
pub fn bench_side_by_side(
    url: &str,
    workload: &str,
    count: u32,
    batch: u32,
    producers: u32,
    ack: &str,
) -> SideBySide {
    let bare = format!("bare+{url}");
    let (count_s, batch_s, producers_s) =
        (count.to_string(), batch.to_string(), producers.to_string());
    let out = Command::new(BIN)
        .args(["bench", "--backend", &bare, "--backend", url])
        .args([
            "--workload",
            workload,
            "--count",
            &count_s,
            "--batch",
            &batch_s,
        ])
        .args(["--producers", &producers_s, "--json"])
        .env_remove("WHARF_URL")
        .env_remove("WHARF_TOKEN")
        .output()
        .expect("run wharf");
    let runs: Vec<serde_json::Value> = serde_json::from_str(&ok(&out)).expect("json");
    assert_eq!(runs.len(), 2, "{runs:?}");
    let (b, a) = (&runs[0], &runs[1]);
    assert_eq!(b["backend"], bare.as_str());
    assert_eq!(a["backend"], url);
    for r in &runs {
        assert_eq!(r["workload"], workload, "{r}");
        assert_eq!(r["messages"], count, "{r}");
        assert!(r["msgs_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
        assert!(
            r["durability"].as_str().is_some_and(|d| d.contains(ack)),
            "each row says what its acknowledgement means: {r}"
        );
    }
    assert_eq!(b["bare"], true, "{b}");
    assert_eq!(a["bare_baseline"], bare.as_str());
    let ratio = a["ratio_to_bare"].as_f64().expect("a ratio to bare");
    let expected = a["msgs_per_sec"].as_f64().unwrap() / b["msgs_per_sec"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9, "{ratio} vs {expected}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let topics = stderr
        .lines()
        .filter_map(|l| l.split_once(": topic ").map(|(_, r)| r))
        .filter_map(|r| r.split_whitespace().next())
        .map(|t| t.replace(['.', '-'], "_"))
        .collect();
    SideBySide { runs, topics }
}

/// The test service's URL — `$env` when set, else `default` — when its
/// `host:port` (between `scheme://` and the first `/` or `?`, after any
/// `user@`) answers a TCP connect; `None`, reported, when it does not
/// (a failure under `WHARF_REQUIRE_SERVICES=1`).
pub fn service_url_or_skip(service: &str, env: &str, default: &str) -> Option<String> {
    let url = std::env::var(env).unwrap_or_else(|_| default.to_owned());
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let addr = authority.rsplit('@').next().unwrap_or_default();
    match std::net::TcpStream::connect(addr) {
        Ok(_) => Some(url),
        Err(e) => {
            wharf_testkit::service::report_unreachable(service, &url, &e);
            None
        }
    }
}
