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
